"""Streaming tiled prediction: scene -> tiles -> U-Net batches -> blended strips -> outputs.

Memory is bounded by one strip of tile rows: reading runs ahead in background threads, logits are
blended into a rolling :class:`~geounet.prediction.blend.Stitcher`, and each finished strip goes straight to
the probability/mask GeoTIFFs and the strip vectorizer. The scene is never held whole.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import rasterio
import torch
import torch.nn.functional as F

from geounet.errors import BandMismatchError, GeounetError, OutputError, TilingError
from geounet.geodata import normalize
from geounet.geodata.cog import StripWriter
from geounet.geodata.raster import (
    AtomicOutputs,
    ReadAhead,
    Scene,
    WindowReader,
    gdal_options,
    open_scene,
    pixel_size_m,
    resolve_bands,
)
from geounet.geodata.style import (
    line_qml,
    mask_qml,
    probability_qml,
    vector_qml,
    write_category_names,
    write_sidecar_qml,
)
from geounet.geodata.tiling import Tile, check_tile_size, fit_tile, tile_windows
from geounet.network.backends import OnnxNet, load_backend, load_onnx, onnxruntime_available
from geounet.network.checkpoint import is_onnx, load_model, resolve_model
from geounet.network.contract import ModelMeta
from geounet.network.unet import UNet, autocast_dtype, fuse_batchnorm, resolve_device
from geounet.prediction.blend import Strip, StripAssembler
from geounet.vectors.centerline import CenterlineOptions, StripCenterliner
from geounet.vectors.vectorize import (
    MASK_NODATA,
    WRITE_BATCH,
    StripVectorizer,
    VectorWriter,
    band_rows,
    import_vector_libraries,
    split_at_valleys,
    vector_driver,
)

logger = logging.getLogger(__name__)


#: Cores smaller than this (m²) do not start a basin of their own (see ``split_seeds``).
SEED_MIN_M2 = 4.0


def split_px(split_m: float, scene: Scene) -> float:
    """A neck width in metres as pixels of the scene (0 when off or the unit is unknown)."""
    if split_m <= 0:
        return 0.0
    g = pixel_size_m(scene)
    return split_m / g if g else 0.0


ProbDtype = Literal["float32", "uint8"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
Backend = Literal["auto", "torch", "onnxruntime"]

#: What ``precision="auto"`` runs on a CPU with native bf16 (AVX512-BF16 or AMX). bf16: on the
#: bundled model's 12 held-out images its masks agree with float32's on 99.967 % of pixels, with
#: the same object matches and pixel F1 0.7069 against 0.7070 (benchmarks/README.md, "bf16
#: inference"). CPUs without it emulate bf16, several times slower: float32 there.
CPU_AUTO_PRECISION: Precision = "bf16"


def inference_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of the network for ``precision`` on ``device`` (None: float32):
    :func:`geounet.network.unet.autocast_dtype`, with ``auto`` on the CPU as :data:`CPU_AUTO_PRECISION`
    says.

    Raises:
        GeounetError: An unknown precision.
    """
    try:
        dtype = autocast_dtype(device, precision)
    except ValueError as exc:
        raise GeounetError(str(exc)) from None
    if precision == "auto" and device.type == "cpu" and CPU_AUTO_PRECISION == "fp32":
        return None
    return dtype


#: Finished strips that may wait for the strip worker before the model waits for it.
STRIPS_IN_FLIGHT = 2
#: Keys of ``PredictResult.timings``. On the main thread (they add up to the run, with opening
#: and tiling): ``read_wait`` (waiting for the reader threads), ``model``, ``stitch``,
#: ``strips`` (handling finished strips inline), ``strips_wait`` (waiting for the strip worker
#: thread when it runs) and ``tail`` (after the last tile: the last strips, COG copies, vector
#: finish and write; of which ``imports``: loading pandas/pyogrio for the vector file, once per
#: process). What strip handling and the tail spent, wherever they ran: ``postprocess``,
#: ``write``, ``vectorize``.
TIMINGS = (
    "read_wait",
    "model",
    "stitch",
    "strips",
    "strips_wait",
    "tail",
    "imports",
    "postprocess",
    "write",
    "vectorize",
)
#: progress(done, total): tiles done so far out of total.
Progress = Callable[[int, int], None]
#: Forward passes per tile with test-time augmentation: the 8 symmetries of the square (the
#: dihedral group D4), 4 quarter turns each with and without a mirror.
TTA_VARIANTS = 8

#: ``resample="auto"`` acts when scene and model pixel sizes differ by more than this factor.
RESAMPLE_RATIO = 1.5


def resample_factor(meta: ModelMeta, scene: Scene, mode: str = "auto") -> float:
    """Scene pixels per model pixel for prediction: 1 (no resampling) unless ``mode`` is
    ``auto``, both pixel sizes are known, and they differ by more than :data:`RESAMPLE_RATIO`."""
    if mode == "off" or not meta.gsd:
        return 1.0
    size = pixel_size_m(scene)
    if not size:
        return 1.0
    factor = meta.gsd / size
    return factor if max(factor, 1 / factor) > RESAMPLE_RATIO else 1.0


@dataclass
class PredictConfig:
    """Options of a prediction run (CLI flags mirror these).

    Attributes:
        tile_size: Window size in pixels (None: the model's default).
        overlap: Pixels shared by neighbouring windows (None: the model's default).
        batch_size: Tiles per forward pass (None: 1 on CPU; on CUDA, from free GPU memory).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threshold: Probability at or above which a pixel is foreground (binary models).
        bands: 1-based bands to feed the model (None: every band but alpha).
        min_area_m2: Drop polygons smaller than this (None: the model's default, 0 for most).
        simplify: Douglas-Peucker tolerance in pixels (0: none).
        to_crs: Reproject the vector output (e.g. ``EPSG:4326``); None keeps the scene's CRS.
        prob_dtype: ``float32`` (nodata NaN) or ``uint8`` (0..254 = 0..1, nodata 255).
        readers: Background reader threads.
        overwrite: Replace existing outputs.
        compile: ``torch.compile`` the network first.
        strip_thread: Post-process, write and vectorize finished strips on a background thread
            (None: on CUDA, or when PyTorch's threads leave a CPU core free).
        tta: Test-time augmentation: run every tile under the 8 rotations and mirrors of the
            square, turn the logits back and average them (before the sigmoid/softmax and the
            blending). Costs 8 forward passes per tile: about 8 times the network's time.
        resample: ``auto``: when the scene's pixel size differs from the model's by more than
            :data:`RESAMPLE_RATIO` (either way), each tile is read at the scene's resolution over
            the ground a model tile covers, resampled to the model's pixel size for the network,
            and its logits resampled back before blending, so every output stays on the scene's
            own grid. ``off``: the network sees the scene's pixels as they are.
        regularize: Square polygon outlines (right angles along each building's dominant
            orientation, small jogs removed; :func:`geounet.vectors.vectorize.regularize_polygon`).
            None: the model's default (its metadata says; off for the bundled building model, where it lowered object F1).
        split_m: Split polygons where parts meet through a neck narrower than this many
            metres (touching buildings; :func:`geounet.vectors.vectorize.split_necks`); 0 = off,
            None = the model's default.
        split_seeds: Binary models: cut objects apart along the valleys of the probability
            between cores at or above this probability (a seeded watershed, before the mask is
            written and vectorized; :func:`geounet.vectors.vectorize.split_at_valleys`); 0 = off, None =
            the model's default. A model with a core channel (``core_m``) takes its cores from
            that channel: P is then the core probability.
        precision: The network's arithmetic: ``fp32``, ``bf16`` (autocast) or ``auto``: bf16
            on CUDA and on CPUs with native bf16 (see :data:`CPU_AUTO_PRECISION`), float32 on
            other CPUs, where bf16 is emulated.
        backend: What runs the network: ``torch``, ``onnxruntime`` (the model exported in memory
            and cached, :func:`geounet.network.backends.load_backend`) or ``auto`` (see
            :func:`choose_backend`).
    """

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: Device = "auto"
    threshold: float = 0.5
    bands: Sequence[int] | None = None
    min_area_m2: float | None = None
    simplify: float = 0.0
    to_crs: str | None = None
    prob_dtype: ProbDtype = "float32"
    readers: int = 2
    overwrite: bool = False
    compile: bool = False
    strip_thread: bool | None = None
    tta: bool = False
    resample: Literal["auto", "off"] = "auto"
    regularize: bool | None = None
    split_m: float | None = None
    split_seeds: float | None = None
    precision: Precision = "auto"
    backend: Backend = "auto"


@dataclass(frozen=True)
class PolygonOptions:
    """How a class mask becomes polygons: the run's options where given, else the model's
    defaults (see :class:`PredictConfig`; without a model, everything off)."""

    min_area_m2: float = 0.0
    regularize: bool = False
    split_m: float = 0.0
    simplify: float = 0.0
    split_seeds: float = 0.0

    @classmethod
    def resolve(cls, cfg: PredictConfig | None, meta: ModelMeta | None) -> PolygonOptions:
        """The options of a run with ``cfg`` (None: all defaults) and a model ``meta``."""
        cfg = cfg or PredictConfig()
        return cls(
            min_area_m2=cfg.min_area_m2
            if cfg.min_area_m2 is not None
            else meta.min_area_m2
            if meta
            else 0.0,
            regularize=cfg.regularize
            if cfg.regularize is not None
            else bool(meta and meta.regularize),
            split_m=cfg.split_m if cfg.split_m is not None else meta.split_m if meta else 0.0,
            simplify=cfg.simplify,
            split_seeds=cfg.split_seeds
            if cfg.split_seeds is not None
            else meta.split_seeds
            if meta
            else 0.0,
        )

    def vectorizer(self, scene: Scene, class_names: Sequence[str]) -> StripVectorizer:
        """A :class:`StripVectorizer` for ``scene`` with these options."""
        return StripVectorizer(
            scene.transform,
            scene.crs,
            class_names,
            simplify=self.simplify,
            min_area_m2=self.min_area_m2,
            regularize=bool(self.regularize),
            split_px=split_px(self.split_m, scene),
        )


@dataclass
class PredictResult:
    """What a run produced (``features`` counts polygons and lines; ``lines``: the file with the
    centerlines when it is not ``vectors``, see :func:`line_output`)."""

    scene: str
    vectors: Path | None
    probabilities: Path | None
    mask: Path | None
    features: int
    tiles: int
    tiles_skipped: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    #: Scene pixels per model pixel (1: the network saw the scene's own pixels).
    resample_factor: float = 1.0
    class_counts: dict[str, int] = field(default_factory=dict)
    lines: Path | None = None
    line_features: int = 0
    #: The 1-based scene bands the model read, in its order, and their colour names where they
    #: were found by colour interpretation rather than taken in file order (else empty).
    bands: tuple[int, ...] = ()
    bands_by_colour: tuple[str, ...] = ()


def line_output(out: str | os.PathLike[str], meta: ModelMeta) -> tuple[Path | None, str | None]:
    """Where a model's centerlines go for the vector output ``out``: (file, GeoPackage layer).

    A model with line classes only writes them to ``out`` itself. With polygon classes too, a
    GeoPackage gets a second layer, ``<stem>_lines``, and any other format a second file beside
    it, ``<stem>_lines<suffix>``. (None, None): no line class.
    """
    path = Path(out)
    if not meta.line_class_ids:
        return None, None
    if not meta.polygon_class_ids:
        return path, None
    if vector_driver(path) == "GPKG":
        return path, f"{path.stem}_lines"
    return path.with_name(f"{path.stem}_lines{path.suffix}"), None




def choose_backend(
    backend: str,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    compile: bool,
    model_file: bool = True,
) -> str:
    """The backend that runs a PyTorch model: ``torch`` or ``onnxruntime``.

    ``auto`` picks onnxruntime for a model file on the CPU in float32 when onnx and onnxruntime
    are installed and the network is not compiled; PyTorch otherwise (CUDA, bf16, and a loaded
    ``(UNet, ModelMeta)`` pair, which has no file to key the export's cache by). On this project's 2-core AVX2
    CPUs onnxruntime ran the bundled model's 512 px tiles faster than PyTorch float32 in
    interleaved runs (benchmarks/README.md, "Backends: PyTorch or onnxruntime").

    Raises:
        GeounetError: An unknown backend, or ``onnxruntime`` with bf16 or ``compile``.
    """
    if backend not in ("auto", "torch", "onnxruntime"):
        raise GeounetError(f"unknown backend {backend!r}; use auto, torch or onnxruntime")
    if backend == "onnxruntime":
        if amp is not None and device.type == "cpu":
            raise GeounetError(
                "--backend onnxruntime runs float32 on the CPU; use --precision fp32 or --backend torch"
            )
        if compile:
            raise GeounetError("--compile applies to --backend torch")
        return backend
    if (
        backend == "auto"
        and model_file
        and device.type == "cpu"
        and amp is None
        and not compile
        and onnxruntime_available()
    ):
        return "onnxruntime"
    return "torch"


def check_dtype(scene: Scene, meta: ModelMeta) -> None:
    """Refuse a scene whose dtype differs from the one the model was trained on, unless the
    model stretches each scene by its own percentiles (``normalization`` mode ``scene``, as the
    bundled building model does): then a 16-bit or float scene reaches the network scaled like
    an 8-bit one (its 2nd and 98th percentiles at 0 and 1), and is taken with a warning.

    Raises:
        BandMismatchError: With how to fix it.
    """
    if np.dtype(scene.dtype) == np.dtype(meta.dtype):
        return
    norm = meta.normalization or {}
    if normalize.any_dtype(norm):
        logger.warning(
            "%s is %s, the model was trained on %s: it is read through the scene's own %g-%g "
            "percentile stretch, as the model's training images were",
            scene.name,
            scene.dtype,
            meta.dtype,
            norm.get("low", 2),
            norm.get("high", 98),
        )
        return
    raise BandMismatchError(
        f"model expects {meta.dtype} pixels, {scene.name} is {scene.dtype}; rescale it "
        f"(gdal_translate -ot {_gdal_type(meta.dtype)} -scale) or use a model trained on {scene.dtype}"
    )


def _gdal_type(dtype: str) -> str:
    return {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}.get(
        dtype, dtype
    )


class Predictor:
    """A loaded model ready to run over scenes (keeps the model between scenes).

    Args:
        model: A model file path, or an already loaded ``(UNet, ModelMeta)`` pair. An ``.onnx``
            file from :func:`geounet.network.export.export_onnx` runs through onnxruntime
            (:class:`~geounet.network.backends.OnnxNet`) with the same contract and normalization.
        device: ``auto``, ``cpu`` or ``cuda``.
        compile: Run the network through ``torch.compile`` (worth it for long runs on a GPU).
        precision: ``auto``, ``fp32`` or ``bf16`` (see :class:`PredictConfig`).
        backend: ``auto``, ``torch`` or ``onnxruntime`` (see :func:`choose_backend`); an
            ``.onnx`` file always runs in onnxruntime.

    On CUDA the network runs in bf16 autocast (unless ``precision="fp32"``) with channels_last
    tensors, inputs are copied from pinned memory without blocking, cuDNN picks its fastest
    kernels, and the batch size (when not given) is chosen from the free GPU memory.
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
        self.device = resolve_device(device)
        self.backend = "torch"
        self._auto_batch: dict[int, int] = {}
        self.net: torch.nn.Module
        self.amp: torch.dtype | None = inference_dtype(self.device, precision)
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
        self.net = fuse_batchnorm(net).to(self.device).eval().to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    def array_scaling(
        self, batch: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(offset, scale)`` for arrays without a scene: the model's fixed scaling, or the
        stretch of the arrays' own valid pixels for a model that stretches each scene."""
        norm = self.meta.normalization
        if norm.get("mode") != "scene":
            return normalize.fixed_scaling(norm, self.meta.mean, self.meta.std)
        values = np.moveaxis(batch, 1, 0)[:, valid]
        lo, hi = normalize.stretch_bounds(values, float(norm["low"]), float(norm["high"]))
        return normalize.affine(lo, hi, self.meta.mean, self.meta.std)

    def batch_size_for(self, tile_size: int) -> int:
        """A batch size that fits: 1 on the CPU; on CUDA, from a probe of one tile's memory.

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
                over the 8 symmetries ``k`` of the square (see :func:`dihedral`), 8 times the
                network's work. Validity is applied before the transforms, as without TTA.
            max_batch: With ``tta``, at most this many tiles per forward pass (None: all 8 N
                variants in one pass): the variants go through the network in groups of
                ``max(1, max_batch // N)``, one variant of the N tiles at a time when N is
                already ``max_batch``. Without ``tta`` the N tiles make one pass, as given.

            scaling: Per-band ``(offset, scale)`` of the scene the tiles come from (see
                :func:`geounet.geodata.normalize.scene_scaling`; :meth:`run` passes it). None: the
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
            y = self.net(x)
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
        """Predict one scene. See :func:`predict_raster`."""
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
            if line_path is not None and vectors is not None:
                lines = (
                    vectors
                    if line_path == Path(out)
                    else outputs.reserve(line_path, overwrite=cfg.overwrite),
                    line_layer,
                )  # type: ignore[arg-type]
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
                vector_style=not _style_clash(out, probabilities, mask),
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


@dataclass
class RunPlan:
    """A scene checked against the model, and how it is cut up (:meth:`Predictor.plan`).

    ``tile_size`` and ``overlap`` are in scene pixels; ``net_size`` is the size the network sees
    when windows are resampled (None when not), ``factor`` scene pixels per model pixel.
    """

    scene: Scene
    bands: list[int]
    tiles: list[Tile]
    tile_size: int
    overlap: int
    net_size: int | None
    factor: float
    batch_size: int


@dataclass
class TileBatch:
    """Tiles that go through the network together, with their raw pixels and validity."""

    tiles: list[Tile]
    data: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]


class TileBatcher:
    """The batching stage: groups tiles that have valid pixels into batches of ``size``.

    Tiles without a valid pixel (all nodata) are counted in :attr:`skipped` and never batched.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.tiles: list[Tile] = []
        self._data: list[npt.NDArray[np.float32]] = []
        self._valid: list[npt.NDArray[np.bool_]] = []
        self._first = 0
        self._seen = 0
        self.skipped = 0

    def add(
        self, index: int, tile: Tile, data: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
    ) -> bool:
        """Add tile number ``index`` (consecutive from 0); True when the batch is full."""
        self._seen = index + 1
        if not valid.any():
            self.skipped += 1
        else:
            if not self.tiles:
                self._first = index
            self.tiles.append(tile)
            self._data.append(data)
            self._valid.append(valid)
        return len(self.tiles) >= self.size

    @property
    def waiting_from(self) -> int:
        """Index of the first tile not yet handed out in a batch (every earlier one was)."""
        return self._first if self.tiles else self._seen

    def take(self) -> TileBatch:
        """The batch so far (the batcher starts a new one)."""
        batch = TileBatch(list(self.tiles), np.stack(self._data), np.stack(self._valid))
        self.tiles.clear()
        self._data.clear()
        self._valid.clear()
        return batch


class StripWorker:
    """The policy for finished strips: handled inline, or in order on one background thread.

    In the background, at most :data:`STRIPS_IN_FLIGHT` strips wait before :meth:`submit`
    waits for the oldest; a failure of the thread is raised by the next :meth:`submit` or
    :meth:`drain`. :meth:`call` runs other work (closing the writers) on the same thread.

    Args:
        handle: What to do with a strip.
        background: Use the thread (True) or handle strips in the caller's thread.
        timings: ``strips`` (inline handling) and ``strips_wait`` (waiting for the thread) add up here.
    """

    def __init__(
        self, handle: Callable[[Strip], None], *, background: bool, timings: dict[str, float]
    ) -> None:
        self._handle = handle
        self.background = background
        self._timings = timings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-strips")
        self._in_flight: deque[Future[None]] = deque()

    def submit(self, strip: Strip) -> None:
        """Handle a strip (strips must come in scene order)."""
        t0 = time.perf_counter()
        while self._in_flight and (
            self._in_flight[0].done() or len(self._in_flight) >= STRIPS_IN_FLIGHT
        ):
            self._in_flight.popleft().result()  # re-raises a failure of the strip thread
        self._timings["strips_wait"] += time.perf_counter() - t0
        if not self.background:
            t0 = time.perf_counter()
            self._handle(strip)
            self._timings["strips"] += time.perf_counter() - t0
            return
        self._in_flight.append(self._pool.submit(self._handle, strip))

    def drain(self) -> None:
        """Wait until every submitted strip is handled."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def call(self, fn: Callable[[], None]) -> Future[None]:
        """Run ``fn`` on the strip thread (after the strips submitted before)."""
        return self._pool.submit(fn)

    def shutdown(self) -> None:
        """Drop strips not started and wait for the one in progress."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class StripSinks:
    """The output stage: each finished strip to probabilities, class mask and polygons.

    :meth:`handle` turns a strip's logits into probabilities and classes and passes them to
    the probability and mask GeoTIFF writers and to the strip vectorizer (whichever were
    asked for). :meth:`close` finishes them: the COG copies run on the strip thread beside the
    vector file's writing; :meth:`abort` drops them after a failure.

    Args:
        meta: The model's contract (classes, colours, defaults of the polygon options).
        cfg: The run's options.
        scene: The scene (grid, CRS).
        vectors, probabilities, mask: Temporary paths of the outputs asked for, or None.
        timings: ``postprocess``, ``write``, ``vectorize`` and ``imports`` add up here.
        vector_style: Write the vector layer's QGIS style (see :func:`_style_clash`).
    """

    def __init__(
        self,
        meta: ModelMeta,
        cfg: PredictConfig,
        scene: Scene,
        *,
        vectors: Path | None,
        probabilities: Path | None,
        mask: Path | None,
        timings: dict[str, float],
        vector_style: bool = True,
        lines: tuple[Path, str | None] | None = None,
    ) -> None:
        self.meta = meta
        self.cfg = cfg
        self.timings = timings
        self.names = meta.mask_classes
        self.counts = np.zeros(256, dtype=np.int64)
        self.features = 0
        self._prob_path, self._mask_path = probabilities, mask
        n_out = meta.class_channels  # a core channel is not written
        self.probabilities: StripWriter | None = None
        self.mask: StripWriter | None = None
        self.vectorizer: StripVectorizer | None = None
        self.vector_writer: VectorWriter | None = None
        if probabilities is not None:
            self.probabilities = StripWriter(
                probabilities,
                scene,
                count=n_out,
                dtype=cfg.prob_dtype,
                nodata=float("nan") if cfg.prob_dtype == "float32" else 255,
                descriptions=[f"probability of {c}" for c in meta.classes],
            )
            if cfg.prob_dtype == "uint8":
                self.probabilities.dataset.scales = [1 / 254] * n_out
        if mask is not None:
            self.mask = StripWriter(
                mask,
                scene,
                count=1,
                dtype="uint8",
                nodata=MASK_NODATA,
                descriptions=["class"],
                overview_resampling="nearest",
            )
            self.mask.dataset.write_colormap(1, _colormap(meta))
            self.mask.dataset.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(self.names)})
        # Line classes go to the centerliner only (see line_output for where their file is).
        self._line_ids = np.asarray(meta.line_class_ids, dtype=np.uint8)
        polygon_options = PolygonOptions.resolve(cfg, meta)
        # Touching objects cut along probability valleys (binary models; mask and polygons).
        self.seeds = polygon_options.split_seeds if meta.binary else 0.0
        if cfg.split_seeds and not meta.binary:
            logger.warning(
                "--split-seeds applies to binary models only; this model has %d classes",
                len(meta.classes),
            )
        self.seed_px = max(4, round(SEED_MIN_M2 / (pixel_size_m(scene) or 1.0) ** 2))
        self.centerliner: StripCenterliner | None = None
        self.line_writer: VectorWriter | None = None
        self.line_features = 0
        if vectors is not None and meta.polygon_class_ids:
            self.vectorizer = polygon_options.vectorizer(scene, self.names)
            style = vector_qml(self.names[1:], _class_colours(meta)) if vector_style else None
            self.vector_writer = VectorWriter(vectors, style=style)
        if lines is not None:
            options = CenterlineOptions(
                line_width_m=meta.line_width_m or 4.0, simplify=cfg.simplify or 1.0
            )
            self.centerliner = StripCenterliner(
                scene.transform, scene.crs, self.names, meta.line_class_ids, options
            )
            colours = {value: colour for value, _, colour in _mask_entries(meta)}
            style = (
                line_qml(
                    [self.names[i] for i in meta.line_class_ids],
                    [colours[i] for i in meta.line_class_ids],
                    meta.line_width_m,
                )
                if vector_style
                else None
            )
            self.line_writer = VectorWriter(lines[0], style=style, layer=lines[1], lines=True)

    @property
    def writers(self) -> list[StripWriter]:
        """The raster writers in use."""
        return [w for w in (self.probabilities, self.mask) if w is not None]

    def handle(self, strip: Strip) -> None:
        """Post-process one strip and hand it to every output."""
        t0 = time.perf_counter()
        cls, score, probs = _postprocess(strip, self.meta, self.cfg.threshold)
        if self.seeds > 0:
            # A model with a core channel grows its objects from the cores it predicts; others
            # from the cores of their own probability.
            core = probs[self.meta.class_channels] if self.meta.core_m > 0 else None
            cls = split_at_valleys(cls, score, self.seeds, self.seed_px, core=core)
        # Band by band: bincount widens uint8 to int64, 8 bytes a pixel of a wide strip at once.
        step = band_rows(cls.shape[1])
        for r0 in range(0, cls.shape[0], step):
            self.counts += np.bincount(cls[r0 : r0 + step].ravel(), minlength=256)[:256]
        t1 = time.perf_counter()
        if self.probabilities is not None:
            self.probabilities.write(
                strip.row_off,
                _prob_array(probs[: self.meta.class_channels], strip.valid, self.cfg.prob_dtype),
            )
        if self.mask is not None:
            self.mask.write(strip.row_off, cls[None])
        t2 = time.perf_counter()
        self.timings["postprocess"] += t1 - t0
        self.timings["write"] += t2 - t1
        if self.centerliner is not None:
            t0 = time.perf_counter()
            self.centerliner.add(strip.row_off, cls, score)
            self.timings["vectorize"] += time.perf_counter() - t0
            if self.centerliner.ready >= WRITE_BATCH:
                self._write_lines()
        if self.vectorizer is not None:
            if len(self._line_ids):
                cls = np.where(np.isin(cls, self._line_ids), 0, cls).astype(np.uint8)
            # Band by band, writing finished polygons between bands: what waits for the file
            # stays near one batch, even when a wide strip holds hundreds of thousands.
            step = band_rows(strip.logits.shape[-1])
            for r0 in range(0, strip.height, step):
                t0 = time.perf_counter()
                self.vectorizer.add(strip.row_off + r0, cls[r0 : r0 + step], score[r0 : r0 + step])
                self.timings["vectorize"] += time.perf_counter() - t0
                if self.vectorizer.ready >= WRITE_BATCH:
                    self._write_polygons()

    def _write_polygons(self, *, final: bool = False) -> None:
        """Finished polygons to the vector file, in batches of :data:`WRITE_BATCH` (all of them
        with ``final``, after the last strip)."""
        assert self.vectorizer is not None and self.vector_writer is not None
        self._drain(self.vectorizer, self.vector_writer, final=final)

    def _write_lines(self, *, final: bool = False) -> None:
        """Finished centerlines to their file, in batches (all of them with ``final``)."""
        assert self.centerliner is not None and self.line_writer is not None
        self._drain(self.centerliner, self.line_writer, final=final)

    def _drain(
        self, source: StripVectorizer | StripCenterliner, writer: VectorWriter, *, final: bool
    ) -> None:
        """What ``source`` has finished to ``writer``, a batch at a time (``--to-crs`` applied);
        with ``final``, everything, and an empty file with its columns if nothing came."""
        self.timings["imports"] += import_vector_libraries()
        while True:
            t0 = time.perf_counter()
            frame = source.take(WRITE_BATCH, final=final)
            t1 = time.perf_counter()
            self.timings["vectorize"] += t1 - t0
            if frame is None:
                if final and writer.features == 0:
                    writer.write(source.finish())
                return
            if self.cfg.to_crs:
                frame = _reproject(frame, self.cfg.to_crs)
            writer.write(frame)
            self.timings["write"] += time.perf_counter() - t1

    def close(self, worker: StripWorker) -> None:
        """Finish every output (after the last strip): COG copies on ``worker``'s thread beside
        the vector file, then the QGIS styles."""
        timings = self.timings
        closing = [
            worker.call(functools.partial(_timed, w.close, timings, "write")) for w in self.writers
        ]
        if self.vector_writer is not None:
            self._write_polygons(final=True)
            t0 = time.perf_counter()
            self.features = self.vector_writer.close()
            timings["write"] += time.perf_counter() - t0
        if self.line_writer is not None:
            self._write_lines(final=True)
            t0 = time.perf_counter()
            self.line_features = self.line_writer.close()
            self.features += self.line_features
            timings["write"] += time.perf_counter() - t0
        for fut in closing:
            fut.result()
        if self._prob_path is not None:
            write_sidecar_qml(
                self._prob_path, probability_qml(254 if self.cfg.prob_dtype == "uint8" else 1.0)
            )
        if self._mask_path is not None:
            write_sidecar_qml(self._mask_path, mask_qml(_mask_entries(self.meta)))
            write_category_names(self._mask_path, self.names)

    def abort(self) -> None:
        """Drop the writers after a failure (the temporary files go with AtomicOutputs)."""
        for w in self.writers:
            w.abort()
        if self.vector_writer is not None:
            self.vector_writer.abort()
        if self.line_writer is not None:
            self.line_writer.abort()

    def class_counts(self) -> dict[str, int]:
        """Pixels of each foreground class so far, by name."""
        return {
            name: int(self.counts[i])
            for i, name in enumerate(self.names)
            if i > 0 and self.counts[i]
        }


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th symmetry of the square (0..7) applied to the last two axes (rows, cols).

    ``k % 4`` quarter turns counter-clockwise (:func:`torch.rot90` from rows towards columns),
    after a left-right mirror when ``k >= 4``; ``k = 0`` is the identity.
    """
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def undo_dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k)`` equals ``x``."""
    y = torch.rot90(y, -(k % 4), dims=(-2, -1))
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return y


def release_free_memory() -> None:
    """Hand memory the C allocator holds but no longer uses back to the OS (glibc; else no-op).

    glibc keeps freed blocks of large arrays in its heap for reuse; between the tile loop and the
    tail (COG copies, vector writing) that is dead weight in the peak.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def spare_cores() -> bool:
    """Whether this process may use more CPU cores than PyTorch's intra-op threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


def _style_clash(
    out: str | os.PathLike[str] | None, *rasters: str | os.PathLike[str] | None
) -> bool:
    """Whether a non-GeoPackage vector output's style file (its ``.qml`` beside it) is the name
    that a raster output of the same stem needs for its own style."""
    if out is None or vector_driver(out) == "GPKG":
        return False
    return Path(out).with_suffix(".qml") in {Path(p).with_suffix(".qml") for p in rasters if p}


def _timed(fn: Callable[[], None], timings: dict[str, float], key: str) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        timings[key] += time.perf_counter() - t0


def _reproject(frame: Any, to_crs: str) -> Any:
    try:
        return frame.to_crs(to_crs)
    except Exception as exc:  # pyproj.CRSError and friends
        raise GeounetError(f"cannot reproject to {to_crs!r}: {str(exc).splitlines()[0]}") from exc


def _postprocess(
    strip: Strip, meta: ModelMeta, threshold: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Logits -> (class mask with nodata 255, score, probabilities).

    The score is the probability of each pixel's class; for a binary model, the foreground
    probability everywhere (the probabilities' own band: only foreground pixels are scored).

    Works in place on the strip's logits (they become the probabilities), a few strip-sized
    arrays in all.
    """
    logits = strip.logits
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative logits: p = 0
        if meta.binary:
            probs = np.negative(logits, out=logits)
            np.exp(probs, out=probs)
            probs += 1.0
            np.reciprocal(probs, out=probs)
            fg = probs[0] >= threshold
            # Only foreground is vectorized, so the foreground probability is the score that
            # matters (no strip-sized copy with 1 - p in the background).
            score = probs[0]
            cls = fg.view(np.uint8)
        else:
            probs = np.subtract(logits, logits.max(axis=0, keepdims=True), out=logits)
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=0, keepdims=True)
            cls = probs.argmax(axis=0).astype(np.uint8)
            score = probs.max(axis=0)
    if not strip.valid.all():
        cls[~strip.valid] = MASK_NODATA
    return cls, score.astype(np.float32, copy=False), probs.astype(np.float32, copy=False)


def _prob_array(
    probs: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_], dtype: ProbDtype
) -> npt.NDArray[Any]:
    """Probabilities as written: uint8 0..254 (nodata 255), or float32 with NaN nodata (in place)."""
    if dtype == "uint8":
        out = np.rint(probs * 254).astype(np.uint8)
        out[:, ~valid] = 255
        return out
    if not valid.all():
        probs[:, ~valid] = np.nan
    return probs


def _mask_entries(meta: ModelMeta) -> list[tuple[int, str, str]]:
    """(mask value, class name, #colour) of every foreground class."""
    colours = meta.colours or []
    offset = 1 if meta.binary else 0
    out = []
    for i, name in enumerate(meta.classes):
        value = i + offset
        if value:
            out.append((value, name, colours[i] if i < len(colours) else "#ff0000"))
    return out


def _class_colours(meta: ModelMeta) -> list[str]:
    """Colours of the foreground classes, in mask-value order."""
    return [colour for _, _, colour in _mask_entries(meta)]


def _colormap(meta: ModelMeta) -> dict[int, tuple[int, int, int, int]]:
    cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for value, _, hexc in _mask_entries(meta):
        r, g, b = (int(hexc[k : k + 2], 16) for k in (1, 3, 5))
        cmap[value] = (r, g, b, 255)
    return cmap


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

    Args:
        scene: GeoTIFF path or GDAL-readable URL.
        out: Vector output (.geojson, .gpkg, .fgb, .shp, .parquet), in the scene's CRS unless
            ``config.to_crs`` says otherwise.
        model: Model file or a loaded ``(UNet, ModelMeta)``.
        probabilities: Optional probability GeoTIFF in the scene's grid.
        mask: Optional class-mask GeoTIFF (uint8, nodata 255).
        config: Options.
        progress: Called as ``progress(done, total)`` after each tile.

    Returns:
        Paths, feature count and timings.

    Raises:
        GeounetError: Any bad input or unwritable output; no output is left behind.
    """
    cfg = config or PredictConfig()
    return Predictor(
        model, device=cfg.device, compile=cfg.compile, precision=cfg.precision, backend=cfg.backend
    ).run(scene, out, probabilities=probabilities, mask=mask, config=cfg, progress=progress)
