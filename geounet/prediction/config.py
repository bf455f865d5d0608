"""What a prediction run is asked and what it returns.

:class:`PredictConfig` holds a run's options (the CLI flags mirror them), :class:`PolygonOptions`
those that shape polygons, resolved against the model's defaults, and :class:`PredictResult` what
the run produced, with the :data:`TIMINGS` it reports and where the centerlines went
(:func:`line_output`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from geounet.geodata.raster import Scene, pixel_size_m
from geounet.network.contract import ModelMeta
from geounet.vectors.strips import StripVectorizer
from geounet.vectors.writer import vector_driver

ProbDtype = Literal["float32", "uint8"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "int8"]
Backend = Literal["auto", "torch", "onnxruntime"]


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
            1.5x (`geounet.prediction.plan.RESAMPLE_RATIO`; either way), each tile is read at the scene's resolution over
            the ground a model tile covers, resampled to the model's pixel size for the network,
            and its logits resampled back before blending, so every output stays on the scene's
            own grid. ``off``: the network sees the scene's pixels as they are.
        regularize: Square polygon outlines (right angles along each building's dominant
            orientation, small jogs removed; `geounet.vectors.polygons.regularize_polygon`).
            None: the model's default (its metadata says; off for the bundled building model, where it lowered object F1).
        split_m: Split polygons where parts meet through a neck narrower than this many
            metres (touching buildings; `geounet.vectors.separate.split_necks`); 0 = off,
            None = the model's default.
        split_seeds: Binary models: cut objects apart along the valleys of the probability
            between cores at or above this probability (a seeded watershed, before the mask is
            written and vectorized; `geounet.vectors.separate.split_at_valleys`); 0 = off, None =
            the model's default. A model with a core channel (``core_m``) takes its cores from
            that channel: P is then the core probability.
        precision: The network's arithmetic: ``fp32``, ``bf16`` (autocast) or ``auto``: bf16
            on CUDA and on CPUs with native bf16 (see `geounet.prediction.plan.CPU_AUTO_PRECISION`), float32 on
            other CPUs, where bf16 is emulated. ``int8``: the model's int8 copy (``NAME-int8.onnx``
            beside it, `geounet.network.quantize`; the bundled ``buildings`` has one) in
            onnxruntime on the CPU, about twice as fast as float32, masks equal on 99.7 % of pixels.
        backend: What runs the network: ``torch``, ``onnxruntime`` (the model exported in memory
            and cached, `geounet.network.backends.load_backend`) or ``auto`` (see
            `geounet.prediction.plan.choose_backend`).
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
    """What a run produced.

    Attributes:
        scene: The scene predicted, as given.
        vectors: The vector file written (None without ``out``).
        probabilities: The probability GeoTIFF written (None without it).
        mask: The class-mask GeoTIFF written (None without it).
        features: Features written: polygons and centerlines together.
        tiles: Tiles in the scene's grid.
        tiles_skipped: Tiles that held only nodata and never went through the network.
        seconds: Wall time of the run.
        timings: Seconds per part of the run, by the keys of `TIMINGS`.
        resample_factor: Scene pixels per model pixel (1: the network saw the scene's own
            pixels; see `PredictConfig.resample`).
        class_counts: Pixels of each foreground class in the mask, by class name (classes
            with none left out).
        lines: The file that holds the centerlines of line classes; ``vectors`` itself when
            the model has line classes only, a second file (or the same GeoPackage, in layer
            ``<stem>_lines``) beside it when it has polygon classes too, None without line
            classes (see `line_output`).
        line_features: Centerlines written (included in ``features``).
        bands: The 1-based scene bands the model read, in its order.
        bands_by_colour: The colour names those bands were found by (their colour
            interpretation), or empty when they were taken as given or in file order.
    """

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


def split_px(split_m: float, scene: Scene) -> float:
    """A neck width in metres as pixels of the scene (0 when off or the unit is unknown)."""
    if split_m <= 0:
        return 0.0
    g = pixel_size_m(scene)
    return split_m / g if g else 0.0


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
