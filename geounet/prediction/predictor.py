"""Streaming tiled prediction: scene -> tiles -> U-Net batches -> blended strips -> outputs.

:class:`Predictor` loads a model once and runs it over scenes; :func:`predict_raster` is one
scene with a model loaded for it. Memory is bounded by one strip of tile rows: reading runs
ahead in background threads, logits are blended into a rolling
:class:`~geounet.prediction.blend.Stitcher`, and each finished strip goes straight to the outputs
(:mod:`.sinks`). The scene is never held whole. What a run is asked and returns is in
:mod:`.config`, what it settles before the first tile in :mod:`.plan`, the stages its loop chains
in :mod:`.stages`, and the symmetries of test-time augmentation in :mod:`.tta`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import torch
import torch.nn.functional as F

from geounet.errors import GeounetError, OutputError, TilingError
from geounet.geodata import normalize
from geounet.geodata.raster import (
    AtomicOutputs,
    ReadAhead,
    WindowReader,
    gdal_options,
    open_scene,
    resolve_bands,
)
from geounet.geodata.tiling import check_tile_size, fit_tile, tile_windows
from geounet.network.backends import OnnxNet, load_backend, load_onnx
from geounet.network.checkpoint import is_onnx, load_model, resolve_model
from geounet.network.contract import ModelMeta
from geounet.network.unet import UNet, fuse_batchnorm, resolve_device
from geounet.prediction.blend import StripAssembler
from geounet.prediction.config import (
    TIMINGS,
    Backend,
    Precision,
    PredictConfig,
    PredictResult,
    Progress,
    line_output,
)
from geounet.prediction.plan import (
    RunPlan,
    check_dtype,
    choose_backend,
    inference_dtype,
    resample_factor,
)
from geounet.prediction.sinks import StripSinks, style_clash
from geounet.prediction.stages import (
    StripWorker,
    TileBatch,
    TileBatcher,
    release_free_memory,
    spare_cores,
)
from geounet.prediction.tta import TTA_VARIANTS, dihedral, undo_dihedral
from geounet.vectors.writer import vector_driver

logger = logging.getLogger(__name__)


class Predictor:
    """A loaded model ready to run over scenes (keeps the model between scenes).

    Load it once and call `run` for each scene; `predict_raster` is one scene with a model
    loaded for it.

    ```python
    from geounet import PredictConfig, Predictor

    predictor = Predictor("buildings")
    for scene in ["a.tif", "b.tif"]:
        predictor.run(scene, scene.replace(".tif", ".gpkg"), config=PredictConfig(overwrite=True))
    ```

    On CUDA the network runs in bf16 autocast (unless ``precision="fp32"``) with channels_last
    tensors, inputs are copied from pinned memory without blocking, cuDNN picks its fastest
    kernels, and the batch size (when not given) is chosen from the free GPU memory.

    Args:
        model: A bundled model's name, a model file path, or an already loaded
            ``(UNet, ModelMeta)`` pair (copied: the caller's network is left as it is). An
            ``.onnx`` file from `geounet.network.export.export_onnx` runs through onnxruntime
            (`geounet.network.backends.OnnxNet`) with the same contract and normalization.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        compile: Run the network through ``torch.compile`` (worth it for long runs on a GPU).
        precision: ``auto``, ``fp32``, ``bf16`` or ``int8`` (see `PredictConfig`).
        backend: ``auto``, ``torch`` or ``onnxruntime`` (see
            `geounet.prediction.plan.choose_backend`); an ``.onnx`` file always runs in
            onnxruntime.

    Attributes:
        meta: The model's contract (`ModelMeta`): bands, normalization, classes, tile size.
        net: The network as it runs: the PyTorch U-Net with BatchNorm folded into its
            convolutions, in channels_last layout (compiled with ``compile``), or an
            onnxruntime session wrapper.
        device: The ``torch.device`` the network runs on.
        backend: ``torch`` or ``onnxruntime``: what runs the network, once ``auto`` is settled.
        amp: The autocast dtype (``torch.bfloat16``), or None for float32 (and int8).

    Raises:
        GeounetError: A model that cannot be loaded (`CheckpointError`), or options that do
            not apply to it: ``compile`` or ``precision="bf16"`` with an ONNX file or the
            onnxruntime backend; ``precision="int8"`` for a model without an int8 copy, off the
            CPU, or with ``compile`` or ``backend="torch"``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | tuple[UNet, ModelMeta],
        device: str = "auto",
        *,
        compile: bool = False,
        precision: Precision = "auto",
        backend: Backend = "auto",
    ) -> None:
        self._auto_batch: dict[int, int] = {}
        self.net: torch.nn.Module
        if precision == "int8":
            self._load_int8(model, device, compile=compile, backend=backend)
            return
        self.device = resolve_device(device)
        self.backend = "torch"
        # an explicit onnxruntime backend settles precision auto as float32 (what it runs)
        settled = "fp32" if precision == "auto" and backend == "onnxruntime" else precision
        self.amp: torch.dtype | None = inference_dtype(self.device, settled)
        path = None if isinstance(model, tuple) else resolve_model(model)
        if path is not None and is_onnx(path):
            if compile:
                raise GeounetError(
                    "--compile applies to PyTorch models; an ONNX model runs in onnxruntime"
                )
            if precision == "bf16":
                raise GeounetError(
                    "--precision bf16 applies to PyTorch models; an ONNX model runs in float32"
                )
            if backend == "torch":
                raise GeounetError(
                    "--backend torch runs .safetensors models; an ONNX model runs in onnxruntime"
                )
            self.amp = None
            onnx_net, self.meta = load_onnx(path, device=device)
            self.net, self.device, self.backend = onnx_net, onnx_net.device, "onnxruntime"
            return
        if (
            choose_backend(
                backend, self.device, self.amp, compile=compile, model_file=path is not None
            )
            == "onnxruntime"
        ):
            try:
                onnx_net, self.meta = load_backend(
                    model if path is None else path, device=self.device.type
                )
            except GeounetError as exc:
                if backend == "onnxruntime":
                    raise
                logger.info("running PyTorch: the onnxruntime backend is not available (%s)", exc)
            else:
                self.amp = None
                self.net, self.device, self.backend = onnx_net, onnx_net.device, "onnxruntime"
                logger.info(
                    "the network runs in onnxruntime (%s); --backend torch runs PyTorch",
                    self.device.type,
                )
                return
        if isinstance(model, tuple):  # a copy: the caller's network stays as it was
            net, self.meta = copy.deepcopy(model[0]), model[1]
        else:
            net, self.meta = load_model(model)
        # BatchNorm folded into the convolutions: one pass and one activation less per conv.
        # channels_last suits both cuDNN and oneDNN: on this project's CPUs it is 1.7x faster.
        # Module.to takes memory_format at run time; torch's stubs leave it out of its overloads.
        net = fuse_batchnorm(net).to(self.device).eval()
        self.net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    def _load_int8(
        self,
        model: str | os.PathLike[str] | tuple[UNet, ModelMeta],
        device: str,
        *,
        compile: bool,
        backend: str,
    ) -> None:
        """``precision="int8"``: the model's int8 graph (``NAME-int8.onnx`` beside it, or an int8
        ONNX file itself) in onnxruntime on the CPU."""
        from geounet.network.quantize import int8_path, int8_sibling

        if isinstance(model, tuple):
            raise GeounetError(
                "--precision int8 runs a model's int8 ONNX file; pass the model file"
            )
        if compile or backend == "torch":
            raise GeounetError(
                "--precision int8 runs in onnxruntime; drop --compile and --backend torch"
            )
        if device not in ("auto", "cpu"):
            raise GeounetError("--precision int8 runs on the CPU; use --device cpu")
        graph = int8_sibling(model)
        if graph is None:
            path = resolve_model(model)
            raise GeounetError(
                f"{path.name} has no int8 copy; write one with `geounet model quantize {model} "
                f"--images TRAINING_IMAGES... -o {int8_path(path)}`"
            )
        self.amp = None
        onnx_net, self.meta = load_onnx(graph, device="cpu")
        self.net, self.device, self.backend = onnx_net, onnx_net.device, "onnxruntime"
        logger.info("the network runs in int8 (%s, onnxruntime)", graph.name)

    def array_scaling(
        self, batch: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(offset, scale)`` for arrays without a scene: the model's fixed scaling, or the
        stretch of the arrays' own valid pixels for a model that stretches each scene.

        Args:
            batch: (N, bands, H, W) raw pixel values.
            valid: (N, H, W) validity; only valid pixels enter the stretch.

        Returns:
            Per-band float32 ``offset`` and ``scale``: the network sees ``(x - offset) / scale``.
        """
        norm = self.meta.normalization
        if norm.get("mode") != "scene":
            return normalize.fixed_scaling(norm, self.meta.mean, self.meta.std)
        values = np.moveaxis(batch, 1, 0)[:, valid]
        lo, hi = normalize.stretch_bounds(values, float(norm["low"]), float(norm["high"]))
        return normalize.affine(lo, hi, self.meta.mean, self.meta.std)

    def batch_size_for(self, tile_size: int) -> int:
        """A batch size that fits: 1 on the CPU; on CUDA, from a probe of one tile's memory.

        Args:
            tile_size: Tile size in pixels, as the network sees it.

        Returns:
            Tiles per forward pass.

        On the CPU one tile at a time is both the fastest per tile (the activations stay in
        cache: 230 ms against 390 ms per 512 px tile at batch 4 for a width-16 U-Net on 2 cores)
        and the leanest.

        The probe runs one tile, measures the peak memory it needed, and fills about 60 % of
        the GPU's free memory with such tiles (between 1 and 128).
        """
        if self.device.type != "cuda":
            return 1
        if isinstance(self.net, OnnxNet):  # onnxruntime's memory is not torch's to probe
            return self.net.batch_size
        if tile_size not in self._auto_batch:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            probe = np.zeros((1, self.meta.bands, tile_size, tile_size), np.float32)
            self.forward(probe, np.ones((1, tile_size, tile_size), bool))
            per_tile = max(1, torch.cuda.max_memory_allocated(self.device) - base)
            free, _total = torch.cuda.mem_get_info(self.device)
            self._auto_batch[tile_size] = int(max(1, min(128, 0.6 * free // per_tile)))
            logger.info(
                "batch size %d (%.0f MB per tile, %.0f MB free)",
                self._auto_batch[tile_size],
                per_tile / 2**20,
                free / 2**20,
            )
        return self._auto_batch[tile_size]

    @torch.inference_mode()
    def forward(
        self,
        batch: npt.NDArray[np.float32],
        valid: npt.NDArray[np.bool_],
        *,
        tta: bool = False,
        max_batch: int | None = None,
        scaling: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
        net_size: int | None = None,
    ) -> npt.NDArray[np.float32]:
        """Logits for raw tiles.

        Args:
            batch: (N, bands, H, W) raw pixel values.
            valid: (N, H, W) validity; invalid pixels are set to the band mean (0 after
                normalization) so nodata does not leak extreme values into the network.
            tta: Test-time augmentation: the mean of ``undo_dihedral(net(dihedral(x, k)), k)``
                over the 8 symmetries ``k`` of the square (see `dihedral`), 8 times the
                network's work. Validity is applied before the transforms, as without TTA.
            max_batch: With ``tta``, at most this many tiles per forward pass (None: all 8 N
                variants in one pass): the variants go through the network in groups of
                ``max(1, max_batch // N)``, one variant of the N tiles at a time when N is
                already ``max_batch``. Without ``tta`` the N tiles make one pass, as given.

            scaling: Per-band ``(offset, scale)`` of the scene the tiles come from (see
                `geounet.geodata.normalize.scene_scaling`; `run` passes it). None: the
                model's fixed scaling, or for a model that stretches each scene, the stretch of
                these tiles' own valid pixels.
            net_size: Resample the (square) tiles to this size for the network (bilinear,
                antialiased when shrinking) and the logits back to the tiles' size (bilinear).

        Returns:
            float32 (N, outputs, H, W) logits on the CPU.
        """
        x = torch.from_numpy(batch)
        if scaling is None:
            scaling = self.array_scaling(batch, valid)
        offset, scale = (
            torch.from_numpy(np.asarray(v, np.float32)).view(1, -1, 1, 1) for v in scaling
        )
        x = (x - offset) / scale
        x = x * torch.from_numpy(valid).unsqueeze(1)
        size = x.shape[-1]
        if net_size is not None and net_size != size:
            x = F.interpolate(
                x,
                size=(net_size, net_size),
                mode="bilinear",
                align_corners=False,
                antialias=net_size < size,
            )
            y = self._forward_tta(x, max_batch) if tta else self._forward_plain(x)
            back = F.interpolate(
                torch.from_numpy(y), size=(size, size), mode="bilinear", align_corners=False
            )
            return back.contiguous().numpy()
        if tta:
            return self._forward_tta(x, max_batch)
        return self._forward_plain(x)

    def _forward_plain(self, x: torch.Tensor) -> npt.NDArray[np.float32]:
        """Logits of normalized tiles ``x`` (N, bands, H, W), on the CPU."""
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None
        ):
            y: torch.Tensor = self.net(x)
        return y.float().cpu().contiguous().numpy()

    def _forward_tta(self, x: torch.Tensor, max_batch: int | None) -> npt.NDArray[np.float32]:
        """Mean logits over the 8 dihedral variants of normalized tiles ``x`` (N, bands, H, W)."""
        n = x.shape[0]
        per_pass = max(1, (max_batch or TTA_VARIANTS * n) // n)
        # Quarter turns swap rows and columns: variants of a non-square batch share a pass only
        # with variants of the same shape. (Tiles are square; whole-scene calls need not be.)
        square = x.shape[-2] == x.shape[-1]
        groups = [list(range(TTA_VARIANTS))] if square else [[0, 2, 4, 6], [1, 3, 5, 7]]
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        total = torch.zeros((n, self.meta.outputs, *x.shape[-2:]), device=x.device)
        for group in groups:
            for i in range(0, len(group), per_pass):
                ks = group[i : i + per_pass]
                xs = torch.cat([dihedral(x, k) for k in ks])
                xs = xs.contiguous(memory_format=torch.channels_last)
                with torch.autocast(
                    self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None
                ):
                    ys = self.net(xs).float()
                for k, y in zip(ks, ys.split(n), strict=True):
                    total += undo_dihedral(y, k)
        total /= TTA_VARIANTS  # a power of two: the division itself is exact
        return total.cpu().contiguous().numpy()

    def run(
        self,
        scene_path: str | os.PathLike[str],
        out: str | os.PathLike[str] | None = None,
        *,
        probabilities: str | os.PathLike[str] | None = None,
        mask: str | os.PathLike[str] | None = None,
        config: PredictConfig | None = None,
        progress: Progress | None = None,
    ) -> PredictResult:
        """Predict one scene with the loaded model.

        Args:
            scene_path: GeoTIFF path or GDAL-readable URL.
            out: Vector output (.gpkg, .geojson, .fgb, .shp, .parquet), in the scene's CRS
                unless ``config.to_crs`` says otherwise; None for none.
            probabilities: Optional probability GeoTIFF (a COG on the scene's grid).
            mask: Optional class-mask GeoTIFF (a COG on the scene's grid: uint8, nodata 255).
            config: Options (None: the defaults and the model's); its ``device``,
                ``compile``, ``precision`` and ``backend`` are the `Predictor`'s own and are
                not read here.
            progress: Called as ``progress(done, total)`` after each tile.

        Returns:
            What was written, with feature counts and timings.

        Raises:
            GeounetError: Any bad input or unwritable output; no output is left behind.
        """
        # GDAL's block cache defaults to 5% of RAM and would grow with the scene; a strip of
        # blocks is all the streaming order ever revisits.
        env: dict[str, Any] = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": 64}
        env.update(gdal_options(scene_path))
        with rasterio.Env(**env):
            return self._run(
                scene_path,
                out,
                probabilities=probabilities,
                mask=mask,
                config=config,
                progress=progress,
            )

    def _run(
        self,
        scene_path: str | os.PathLike[str],
        out: str | os.PathLike[str] | None,
        *,
        probabilities: str | os.PathLike[str] | None,
        mask: str | os.PathLike[str] | None,
        config: PredictConfig | None,
        progress: Progress | None,
    ) -> PredictResult:
        cfg = config or PredictConfig()
        t_start = time.perf_counter()
        if out is None and probabilities is None and mask is None:
            raise OutputError("nothing to write: give a vector output, --probabilities or --mask")
        if out is not None:
            vector_driver(out)
        plan = self.plan(scene_path, cfg)
        scene, tiles = plan.scene, plan.tiles
        timings = dict.fromkeys(TIMINGS, 0.0)
        with AtomicOutputs() as outputs:
            vectors = outputs.reserve(out, overwrite=cfg.overwrite) if out is not None else None
            line_path, line_layer = line_output(out, self.meta) if out is not None else (None, None)
            lines = None
            if line_path is not None and vectors is not None and out is not None:
                lines = (
                    vectors
                    if line_path == Path(out)
                    else outputs.reserve(line_path, overwrite=cfg.overwrite),
                    line_layer,
                )
            sinks = StripSinks(
                self.meta,
                cfg,
                scene,
                lines=lines,
                vectors=vectors,
                probabilities=outputs.reserve(probabilities, overwrite=cfg.overwrite)
                if probabilities
                else None,
                mask=outputs.reserve(mask, overwrite=cfg.overwrite) if mask else None,
                timings=timings,
                vector_style=not style_clash(out, probabilities, mask),
            )
            reader = WindowReader(scene, plan.bands, plan.tile_size)
            scaling = normalize.scene_scaling(
                self.meta.normalization,
                self.meta.mean,
                self.meta.std,
                reader.handle(),
                scene,
                plan.bands,
            )
            assembler = StripAssembler(
                tiles, scene.height, scene.width, self.meta.outputs, plan.overlap
            )
            batcher = TileBatcher(plan.batch_size)
            reads = ReadAhead(reader, tiles, threads=cfg.readers, ahead=max(2 * plan.batch_size, 4))
            worker = StripWorker(sinks.handle, background=self._strip_thread(cfg), timings=timings)

            def blend(batch: TileBatch) -> None:
                t0 = time.perf_counter()
                logits = self.forward(
                    batch.data,
                    batch.valid,
                    tta=cfg.tta,
                    max_batch=plan.batch_size,
                    scaling=scaling,
                    net_size=plan.net_size,
                )
                t1 = time.perf_counter()
                for t, lg, vd in zip(batch.tiles, logits, batch.valid, strict=True):
                    assembler.add(t, lg[:, : t.height, : t.width], vd[: t.height, : t.width])
                timings["model"] += t1 - t0
                timings["stitch"] += time.perf_counter() - t1

            def finish_through(index: int) -> None:
                t0 = time.perf_counter()
                strips = assembler.finished(index)
                timings["stitch"] += time.perf_counter() - t0
                for strip in strips:
                    worker.submit(strip)

            try:
                for index, (tile, data, valid) in enumerate(reads):
                    if batcher.add(index, tile, data, valid):
                        blend(batcher.take())
                    # Batches run across rows of tiles (full batches on a GPU); a row of tiles
                    # is finished once all its tiles are blended.
                    finish_through(batcher.waiting_from - 1)
                    if progress is not None:
                        progress(index + 1, len(tiles))
                if batcher.tiles:
                    blend(batcher.take())
                finish_through(len(tiles) - 1)
                t_tail = time.perf_counter()
                worker.drain()
                assembler.stitcher.release()  # the strip buffer and the network's freed activations
                release_free_memory()  # go back to the OS before the tail allocates its own
                sinks.close(worker)
                timings["tail"] = time.perf_counter() - t_tail
            except BaseException:
                worker.shutdown()  # nothing may touch the writers now
                sinks.abort()
                raise
            finally:
                worker.shutdown()
                reads.close()
                timings["read_wait"] = reads.wait
                reader.close()
        return PredictResult(
            scene=str(scene_path),
            vectors=Path(out) if out is not None else None,
            probabilities=Path(probabilities) if probabilities else None,
            mask=Path(mask) if mask else None,
            features=sinks.features,
            tiles=len(tiles),
            tiles_skipped=batcher.skipped,
            seconds=time.perf_counter() - t_start,
            timings=timings,
            resample_factor=plan.factor,
            class_counts=sinks.class_counts(),
            lines=line_path,
            line_features=sinks.line_features,
            bands=tuple(plan.bands),
            bands_by_colour=tuple(self.meta.band_names)
            if cfg.bands is None and tuple(plan.bands) != plan.scene.data_bands
            else (),
        )

    def plan(self, scene_path: str | os.PathLike[str], cfg: PredictConfig) -> RunPlan:
        """Open a scene, check it against the model, and lay out its tiles.

        Args:
            scene_path: GeoTIFF path or GDAL-readable URL.
            cfg: The run's options (tile size, overlap, bands, resampling, batch size).

        Returns:
            The scene, the bands to read, the tiles (in scene pixels), the network's tile size
            and the resampling factor, and the batch size.

        Raises:
            GeounetError: A scene the model cannot read (bands, dtype, tile size).
        """
        meta = self.meta
        # An ONNX graph exported with a fixed size takes tiles of that size only.
        fixed = self.net.fixed_size if isinstance(self.net, OnnxNet) else None
        if fixed and cfg.tile_size not in (None, fixed):
            raise TilingError(
                f"{self.net.name} takes {fixed} px tiles only (exported with a fixed size); "
                f"drop --tile-size, or export the model again with --dynamic-size"
            )
        tile_size = fixed or cfg.tile_size or meta.tile_size
        overlap = meta.overlap if cfg.overlap is None else cfg.overlap
        multiple = 2**meta.depth
        check_tile_size(tile_size, overlap, multiple=multiple)
        scene = open_scene(scene_path)
        bands = resolve_bands(scene, cfg.bands, meta.bands, meta.band_names)
        check_dtype(scene, meta)
        # With resampling, tiles and overlap are laid out in scene pixels over the ground that a
        # model tile covers; the network still sees tile_size pixels.
        factor = resample_factor(meta, scene, cfg.resample)
        # A scene smaller than a tile (in model pixels) gets a tile of its own size, not a frame
        # of padding around it; a fixed-size graph cannot take that tile, so the reader pads
        # the scene to its size and masks the padding instead.
        extent = math.ceil(max(scene.height, scene.width) / factor - 1e-6)
        if not fixed:
            fitted, overlap = fit_tile(tile_size, overlap, extent, multiple=multiple)
            if fitted != tile_size:
                logger.info("scene smaller than a %d px tile: one tile of %d px", tile_size, fitted)
                tile_size = fitted
        net_size = tile_size if factor != 1.0 else None
        if factor != 1.0:
            assert meta.gsd is not None  # resample_factor is 1 for a model without it
            tile_size, overlap = max(1, round(tile_size * factor)), round(overlap * factor)
            logger.info(
                "scene pixels %.3g m, model %.3g m: windows resampled x%.2f",
                meta.gsd / factor,
                meta.gsd,
                1 / factor,
            )
        return RunPlan(
            scene=scene,
            bands=list(bands),
            tiles=tile_windows(scene.height, scene.width, tile_size, overlap),
            tile_size=tile_size,
            overlap=overlap,
            net_size=net_size,
            factor=factor,
            batch_size=cfg.batch_size or self.batch_size_for(tile_size),
        )

    def _strip_thread(self, cfg: PredictConfig) -> bool:
        """Whether finished strips go to a background thread (see :class:`StripWorker`).

        On a CPU whose cores all run the network the thread would only slow it
        (benchmarks/contention.py, 2 cores: each forward 4-7x slower while the thread works).
        """
        if cfg.strip_thread is not None:
            return cfg.strip_thread
        return self.device.type == "cuda" or spare_cores()


def predict_raster(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    model: str | os.PathLike[str] | tuple[UNet, ModelMeta],
    probabilities: str | os.PathLike[str] | None = None,
    mask: str | os.PathLike[str] | None = None,
    config: PredictConfig | None = None,
    progress: Progress | None = None,
) -> PredictResult:
    """Segment a scene and write polygons (and optionally probability and mask GeoTIFFs).

    ```python
    import geounet

    result = geounet.predict_raster("scene.tif", "buildings.gpkg", model="buildings")
    print(result.features, result.vectors)
    ```

    Args:
        scene: GeoTIFF path or GDAL-readable URL.
        out: Vector output (.geojson, .gpkg, .fgb, .shp, .parquet), in the scene's CRS unless
            ``config.to_crs`` says otherwise; None for none (then give ``probabilities`` or
            ``mask``).
        model: A bundled model's name, a model file (``.safetensors`` or ``.onnx``) or a loaded
            ``(UNet, ModelMeta)`` pair.
        probabilities: Optional probability GeoTIFF (a COG on the scene's grid).
        mask: Optional class-mask GeoTIFF (a COG on the scene's grid: uint8, nodata 255).
        config: Options (None: the defaults and the model's).
        progress: Called as ``progress(done, total)`` after each tile.

    Returns:
        What was written (paths), feature counts, tiles and timings.

    Raises:
        GeounetError: Any bad input or unwritable output; no output is left behind.
    """
    cfg = config or PredictConfig()
    return Predictor(
        model, device=cfg.device, compile=cfg.compile, precision=cfg.precision, backend=cfg.backend
    ).run(scene, out, probabilities=probabilities, mask=mask, config=cfg, progress=progress)
