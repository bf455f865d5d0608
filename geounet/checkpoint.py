"""Model files: safetensors weights with the model's input contract as JSON metadata.

One file. The safetensors header's ``__metadata__`` holds ``geounet`` = a JSON document
(:class:`ModelMeta`): format version, architecture and its arguments, bands (count, names),
expected dtype, per-band mean/std (raw units), class names and colours, default tile size and
overlap, ground sample distance, and training provenance. Loading parses that JSON and the tensor
header; nothing is ever unpickled, so a file from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geounet import normalize
from geounet.errors import CheckpointError, GeounetError
from geounet.model import ARCHITECTURES, UNet

#: Version of the metadata layout; files from a newer version are refused.
FORMAT_VERSION = 1
META_KEY = "geounet"

#: What a class can be vectorized as (``ModelMeta.class_geometry``).
CLASS_GEOMETRIES = ("polygon", "line")

DEFAULT_COLOURS = [
    "#e41a1c",
    "#377eb8",
    "#4daf4a",
    "#984ea3",
    "#ff7f00",
    "#ffff33",
    "#a65628",
    "#f781bf",
]


@dataclass
class ModelMeta:
    """The input contract and provenance of a model.

    Attributes:
        architecture: Registry name (``unet``).
        arch_args: Constructor arguments (in_channels, classes, width, depth).
        band_names: One name per input band, in order.
        dtype: Raster dtype the model was trained on (``uint8``, ``uint16``, ``float32``...).
        mean: Per-band mean, raw units; input is ``(x - mean) / std``.
        std: Per-band standard deviation, raw units.
        classes: Class names. Binary models (one output channel) name the foreground only;
            multi-class models name every channel, background first.
        colours: ``#rrggbb`` per class name.
        tile_size: Default tile size in pixels.
        overlap: Default overlap in pixels.
        gsd: Ground sample distance in metres the model was trained at (None if unknown).
        provenance: Free-form training record (data, epochs, metrics, time).
        normalization: How raw values are stretched before ``mean``/``std`` (see
            :mod:`geounet.normalize`); empty: ``mean``/``std`` are in raw units. A per-scene
            stretch also records the typical stretch of the training images
            (``typical_lo``/``typical_hi``), which the ONNX export folds in for Deepness.
        regularize: Square polygon outlines by default when predicting (building models).
        min_area_m2: Drop polygons smaller than this by default when predicting.
        split_m: Split polygons at necks narrower than this (metres) by default when
            predicting (touching buildings; :func:`geounet.vectorize.split_necks`); 0 = off.
        split_seeds: Cut a binary model's objects apart along the probability valleys between
            cores at or above this probability by default when predicting (touching
            buildings; :func:`geounet.vectorize.split_at_valleys`); 0 = off.
        class_geometry: What ``predict`` writes for a class, by name: ``polygon`` (outlines) or
            ``line`` (centerlines, :mod:`geounet.centerline`). A class not named is a polygon
            class (every model file from before this field).
        line_width_m: Full width in metres the line classes were buffered to when training
            (None: unknown); the default of the centerline and line-evaluation distances.
        core_m: Binary models: when above 0, the network has one output channel more, the
            probability that a pixel lies in an object's core (its footprint shrunk by this
            many metres, each object on its own). ``predict`` grows objects from those cores,
            so that touching buildings come out apart (:func:`geounet.vectorize.split_at_valleys`).
        format_version: Layout version of this metadata.
    """

    architecture: str
    arch_args: dict[str, int]
    band_names: list[str]
    dtype: str
    mean: list[float]
    std: list[float]
    classes: list[str]
    colours: list[str] = field(default_factory=list)
    tile_size: int = 512
    overlap: int = 64
    gsd: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    regularize: bool = False
    min_area_m2: float = 0.0
    split_m: float = 0.0
    split_seeds: float = 0.0
    class_geometry: dict[str, str] = field(default_factory=dict)
    line_width_m: float | None = None
    core_m: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def bands(self) -> int:
        """Input band count."""
        return len(self.band_names)

    @property
    def outputs(self) -> int:
        """The network's output channels (the class channels, then the core channel if any)."""
        return int(self.arch_args["classes"])

    @property
    def class_channels(self) -> int:
        """Output channels of the classes (1 for a binary model): all but the core channel."""
        return self.outputs - (1 if self.core_m > 0 else 0)

    @property
    def binary(self) -> bool:
        """One class channel (sigmoid) rather than one per class (softmax)."""
        return self.class_channels == 1

    @property
    def depth(self) -> int:
        """U-Net depth (tiles must be divisible by ``2**depth``)."""
        return int(self.arch_args.get("depth", 4))

    @property
    def mask_classes(self) -> list[str]:
        """Names by mask value: 0 is background, then the classes."""
        return ["background", *self.classes] if self.binary else list(self.classes)

    def geometry_of(self, name: str) -> str:
        """``polygon`` or ``line``: what a class is vectorized as."""
        return self.class_geometry.get(name, "polygon")

    @property
    def line_class_ids(self) -> list[int]:
        """Mask values of the line classes (see :attr:`mask_classes`)."""
        return [
            i for i, n in enumerate(self.mask_classes) if i > 0 and self.geometry_of(n) == "line"
        ]

    @property
    def polygon_class_ids(self) -> list[int]:
        """Mask values of the polygon classes."""
        return [
            i for i, n in enumerate(self.mask_classes) if i > 0 and self.geometry_of(n) == "polygon"
        ]

    def to_json(self) -> str:
        """The metadata as one JSON document."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "model") -> ModelMeta:
        """Build and validate metadata read from a file.

        Raises:
            CheckpointError: Missing keys, a newer format, or inconsistent values.
        """
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CheckpointError(f"{source}: geounet metadata has no format_version")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} was written by a newer geounet (model format {version}, this one "
                f"reads up to {FORMAT_VERSION}); upgrade geounet"
            )
        known = set(cls.__dataclass_fields__)
        try:
            meta = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CheckpointError(f"{source}: incomplete geounet metadata ({exc})") from exc
        meta.validate(source)
        return meta

    def validate(self, source: str = "model") -> None:
        """Check internal consistency.

        Raises:
            CheckpointError: Naming what is inconsistent.
        """
        if self.architecture not in ARCHITECTURES:
            raise CheckpointError(
                f"{source}: unknown architecture {self.architecture!r} "
                f"(known: {', '.join(ARCHITECTURES)})"
            )
        args = self.arch_args
        if args.get("in_channels") != self.bands:
            raise CheckpointError(
                f"{source}: {self.bands} band names for {args.get('in_channels')} inputs"
            )
        if len(self.mean) != self.bands or len(self.std) != self.bands:
            raise CheckpointError(f"{source}: mean/std must have one value per band ({self.bands})")
        if any(s <= 0 for s in self.std):
            raise CheckpointError(f"{source}: std values must be positive")
        n_out = args.get("classes", 0) - (1 if self.core_m > 0 else 0)
        if self.core_m < 0 or (self.core_m > 0 and n_out != 1):
            raise CheckpointError(
                f"{source}: a core channel (core_m {self.core_m}) needs a binary model"
            )
        if (n_out == 1 and len(self.classes) != 1) or (n_out > 1 and len(self.classes) != n_out):
            raise CheckpointError(f"{source}: {len(self.classes)} class names for {n_out} outputs")
        for name, kind in self.class_geometry.items():
            if name not in self.classes:
                raise CheckpointError(
                    f"{source}: class_geometry names {name!r}, not a class ({', '.join(self.classes)})"
                )
            if kind not in CLASS_GEOMETRIES:
                raise CheckpointError(
                    f"{source}: class {name!r} has geometry {kind!r}; use one of {', '.join(CLASS_GEOMETRIES)}"
                )
        try:
            normalize.check(self.normalization, self.bands, source)
        except GeounetError as exc:
            raise CheckpointError(str(exc)) from exc


def default_normalization(dtype: str, bands: int) -> tuple[list[float], list[float]]:
    """Mean/std for an untrained model: the middle and a quarter of the dtype's usual range."""
    ranges = {"uint8": 255.0, "uint16": 2047.0, "int16": 2047.0}
    top = ranges.get(dtype, 1.0)
    return [top / 2] * bands, [top / 4] * bands


def build_model(meta: ModelMeta) -> UNet:
    """A fresh network for the metadata's architecture."""
    return ARCHITECTURES[meta.architecture](**meta.arch_args)


def save_model(
    model: torch.nn.Module, meta: ModelMeta, path: str | os.PathLike[str], *, half: bool = False
) -> None:
    """Write weights and metadata to one safetensors file (not atomically: see AtomicOutputs).

    Args:
        model: The network (its ``state_dict`` is saved; DDP wrappers are unwrapped).
        meta: Its contract.
        path: Destination.
        half: Store convolution weights and biases as float16 (half the size; BatchNorm
            statistics stay float32). Loading widens them back to float32.
    """
    meta.validate(str(path))
    module = getattr(model, "module", model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    if half:
        bn = {name for name, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        state = {
            k: v.half() if v.is_floating_point() and k.rsplit(".", 1)[0] not in bn else v
            for k, v in state.items()
        }
    save_file(state, str(path), metadata={META_KEY: meta.to_json()})


#: Folder of the models shipped inside the package (``-m NAME``).
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
#: The model ``geounet predict`` uses when none is named.
DEFAULT_MODEL = "buildings"


def bundled_models() -> dict[str, Path]:
    """Models shipped with geounet, by name (the file name without ``.safetensors``)."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.safetensors"))}


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model file from a path, a bundled model's name, or None (the default bundled model).

    An existing path always wins over a bundled name.

    Raises:
        CheckpointError: None given and no bundled default, or a name that is neither a file nor
            a bundled model.
    """
    bundled = bundled_models()
    if model is None:
        if DEFAULT_MODEL not in bundled:
            raise CheckpointError(
                f"no model given and the bundled {DEFAULT_MODEL!r} model is not installed; pass -m MODEL"
            )
        return bundled[DEFAULT_MODEL]
    p = Path(model)
    if p.exists() or str(model) not in bundled:
        return p
    return bundled[str(model)]


def is_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether a model path names an ONNX file (``.onnx``, see :mod:`geounet.export`)."""
    return Path(path).suffix.lower() == ".onnx"


def read_meta(path: str | os.PathLike[str] | None) -> ModelMeta:
    """Read only the metadata of a model file (or bundled model, see :func:`resolve_model`).

    An ``.onnx`` file written by :func:`geounet.export.export_onnx` gives the contract it carries.

    Raises:
        CheckpointError: Missing file, not safetensors (e.g. a pickle), or no geounet metadata.
    """
    p = resolve_model(path)
    path = p
    if not p.exists():
        names = ", ".join(bundled_models()) or "none installed"
        raise CheckpointError(
            f"{path}: model file not found (bundled models: {names}); create one with `geounet train`"
        )
    if p.is_dir():
        raise CheckpointError(f"{path} is a directory; pass a .safetensors model file")
    if is_onnx(p):
        from geounet.export import read_onnx_meta

        return read_onnx_meta(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises SafetensorError/OSError for bad headers
        raise CheckpointError(
            f"{p.name} is not a safetensors model file ({str(exc).splitlines()[0][:120]}); "
            f"geounet never loads pickled checkpoints: convert the weights to safetensors"
        ) from exc
    if raw is None:
        raise CheckpointError(
            f"{p.name} has no geounet metadata; it is a plain safetensors file, not a geounet model"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p.name}: geounet metadata is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{p.name}: geounet metadata is not a JSON object")
    return ModelMeta.from_dict(data, source=p.name)


def load_model(
    path: str | os.PathLike[str] | None, *, device: str | torch.device = "cpu"
) -> tuple[UNet, ModelMeta]:
    """Load a model file (or bundled model): metadata, then weights into a freshly built network
    (float32, eval mode; weights stored as float16 are widened).

    Raises:
        CheckpointError: Anything wrong with the file, including weights that do not match the
            architecture in its metadata.
    """
    path = resolve_model(path)
    if is_onnx(path) and Path(path).is_file():
        raise CheckpointError(
            f"{Path(path).name} is an ONNX model: geounet runs it for prediction only (predict, "
            f"evaluate, batch without Dask); training and export need the .safetensors file"
        )
    meta = read_meta(path)
    name = Path(path).name
    model = build_model(meta)
    try:
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{name}: weights do not match the {meta.architecture} described in its metadata "
            f"({str(exc).splitlines()[0][:160]})"
        ) from exc
    model.eval()
    return model.to(device), meta


def file_hash(path: str | os.PathLike[str] | None) -> str:
    """SHA-256 of a model file (model identity for manifests)."""
    h = hashlib.sha256()
    with open(resolve_model(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_model(
    *,
    bands: int,
    classes: int | list[str],
    width: int = 64,
    depth: int = 4,
    seed: int = 0,
    dtype: str = "uint8",
    tile_size: int = 512,
    overlap: int = 64,
    band_names: list[str] | None = None,
) -> tuple[UNet, ModelMeta]:
    """A seeded, untrained model and its metadata.

    Args:
        bands: Input bands.
        classes: Number of output channels (1 = binary) or class names (one name = binary,
            several = multi-class with background first).
        width: First-level channels.
        depth: Down/up steps.
        seed: Weight-initialization seed.
        dtype: Raster dtype the model expects.
        tile_size: Default tile size.
        overlap: Default overlap.
        band_names: Optional names (default ``band1..``).
    """
    if isinstance(classes, int):
        names = ["foreground"] if classes == 1 else [f"class{i}" for i in range(classes)]
        if classes > 1:
            names[0] = "background"
    else:
        names = list(classes)
    n_out = 1 if len(names) == 1 else len(names)
    mean, std = default_normalization(dtype, bands)
    meta = ModelMeta(
        architecture="unet",
        arch_args={"in_channels": bands, "classes": n_out, "width": width, "depth": depth},
        band_names=band_names or [f"band{i}" for i in range(1, bands + 1)],
        dtype=dtype,
        mean=mean,
        std=std,
        classes=names,
        colours=[DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(len(names))],
        tile_size=tile_size,
        overlap=overlap,
        provenance={"created": "geounet model create", "seed": seed, "trained": False},
    )
    meta.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(meta)
    model.eval()
    return model, meta
