"""The model contract: what a model expects of its input and says of its output.

:class:`ModelMeta` is the JSON document stored beside a model's weights (in the safetensors
header, :mod:`geounet.network.checkpoint`, or in an exported ONNX file's metadata,
:mod:`geounet.network.onnx_file`): format version, architecture and its arguments, bands
(count, names), expected dtype, per-band normalization, class names, colours and geometries,
default tile size and overlap, ground sample distance, and training provenance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from geounet.errors import CheckpointError, GeounetError
from geounet.geodata import normalize
from geounet.network.unet import ARCHITECTURES

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
            `geounet.geodata.normalize`); empty: ``mean``/``std`` are in raw units. A per-scene
            stretch also records the typical stretch of the training images
            (``typical_lo``/``typical_hi``), which the ONNX export folds in for Deepness.
        regularize: Square polygon outlines by default when predicting (building models).
        min_area_m2: Drop polygons smaller than this by default when predicting.
        split_m: Split polygons at necks narrower than this (metres) by default when
            predicting (touching buildings; `geounet.vectors.separate.split_necks`); 0 = off.
        split_seeds: Cut a binary model's objects apart along the probability valleys between
            cores at or above this probability by default when predicting (touching
            buildings; `geounet.vectors.separate.split_at_valleys`); 0 = off.
        class_geometry: What ``predict`` writes for a class, by name: ``polygon`` (outlines) or
            ``line`` (centerlines, `geounet.vectors.centerline`). A class not named is a polygon
            class (every model file from before this field).
        line_width_m: Full width in metres the line classes were buffered to when training
            (None: unknown); the default of the centerline and line-evaluation distances.
        core_m: Binary models: when above 0, the network has one output channel more, the
            probability that a pixel lies in an object's core (its footprint shrunk by this
            many metres, each object on its own). ``predict`` grows objects from those cores,
            so that touching buildings come out apart (`geounet.vectors.separate.split_at_valleys`).
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
        """``polygon`` or ``line``: what a class is vectorized as.

        Args:
            name: A class name (one of `classes`).

        Returns:
            ``line`` for a line class (centerlines), else ``polygon``.
        """
        return self.class_geometry.get(name, "polygon")

    @property
    def line_class_ids(self) -> list[int]:
        """Mask values of the line classes (see `mask_classes`)."""
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

        Args:
            data: The parsed JSON document; keys this version does not know are ignored.
            source: The file's name, for error messages.

        Returns:
            The validated contract.

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
        """Check internal consistency: a known architecture, one band name, mean and std per
        input band, one class name per output, a core channel on binary models only, known
        class geometries and a valid normalization record.

        Args:
            source: The file's name, for error messages.

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
