"""A model file as a STAC Item with the Machine Learning Model (MLM) extension.

:func:`model_item` describes a geounet model (a ``.safetensors`` file, a bundled model's name,
or an exported ``.onnx`` file) as a STAC 1.1 Item: architecture, input bands, tile shape and
scaling, classes with their mask values and colours, framework, training licences, and the
weights as the ``mlm:model`` asset. ``geounet model info MODEL --stac OUT.json`` writes it with
:func:`write_model_item`; ``geounet batch --stac-out`` puts it in the results catalog and links
every result to it (:func:`geounet.archive.stac.write_results_catalog`).

The Item has no geometry: a model is not tied to a place (its training data's places are in the
description). The scaling is written as MLM's ``value_scaling`` where it is fixed (one z-score
per band); a model that stretches each scene by its own percentiles names geounet's function
for it as the ``pre_processing_function`` instead, since no fixed scaling can say that.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geounet import __version__
from geounet.errors import OutputError
from geounet.vectors.strips import MASK_NODATA

if TYPE_CHECKING:
    from geounet.network.contract import ModelMeta

#: STAC version of the documents written.
STAC_VERSION = "1.1.0"
MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"

#: Media types of model files (the MLM extension's recommendations).
SAFETENSORS_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=safetensors"
ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"

#: Licence names as written in model provenance -> SPDX identifiers.
_SPDX = {
    "cc by 4.0": "CC-BY-4.0",
    "cc by-sa 4.0": "CC-BY-SA-4.0",
    "cc by-nc 4.0": "CC-BY-NC-4.0",
    "cc by-nc-sa 4.0": "CC-BY-NC-SA-4.0",
    "cc0": "CC0-1.0",
    "cc0 1.0": "CC0-1.0",
    "odbl": "ODbL-1.0",
    "odbl 1.0": "ODbL-1.0",
    "public domain": "CC0-1.0",
}
# An SPDX licence identifier as STAC's ``license`` field takes it.
_SPDX_ID = re.compile(r"^[A-Za-z0-9][\w.+-]*-\d+(\.\d+)*$|^(MIT|CC0-1\.0)$")
# MLM's pattern for ``mlm:name``.
_MLM_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]$")


def spdx_license(text: str) -> str | None:
    """The SPDX identifier of a licence as written in provenance (``CC BY-SA 4.0``), if known."""
    key = " ".join(text.strip().lower().replace("_", " ").split())
    if key in _SPDX:
        return _SPDX[key]
    return text.strip() if _SPDX_ID.match(text.strip()) else None


def data_license(meta: ModelMeta) -> tuple[str, list[dict[str, Any]]]:
    """STAC ``license`` and ``providers`` of the data a model was trained on.

    The licence is the one SPDX identifier of every training data set named in the model's
    provenance (``provenance.data[].licence``), else ``other`` (several licences, or one that has
    no SPDX identifier; the providers then say each). Each data set becomes a ``licensor``
    provider.

    Returns:
        (licence, providers).
    """
    data = meta.provenance.get("data")
    sources = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    providers = []
    ids: set[str | None] = set()
    for source in sources:
        licence = str(source.get("licence") or source.get("license") or "unknown licence")
        name = str(source.get("name") or source.get("attribution") or "training data")
        providers.append(
            {
                "name": str(source.get("attribution") or name),
                "description": f"Training data: {name}; licence: {licence}",
                "roles": ["licensor"],
            }
        )
        ids.add(spdx_license(licence))
    single = ids.pop() if len(ids) == 1 else None
    return single or "other", providers


def mlm_name(name: str) -> str:
    """``name`` as MLM's ``mlm:name`` takes it (a letter first, letters, digits, ``_.-`` and
    spaces, 3 characters at least)."""
    clean = re.sub(r"[^a-zA-Z0-9_.\-\s]", "-", name).strip(" _.-")
    if not clean or not clean[0].isalpha():
        clean = f"geounet-{clean}".rstrip(" _.-")
    return clean if _MLM_NAME.match(clean) else f"geounet-model-{clean}".rstrip(" _.-")


def mask_classes(meta: ModelMeta) -> list[dict[str, Any]]:
    """The classification extension's class objects of a model's class mask: each value, name,
    description and colour (``rrggbb``), and the nodata value.

    Mask values are those :func:`geounet.prediction.predictor.predict_raster` writes: 0 background and 1 the
    class for a binary model; the class index for a multi-class one; 255 nodata.
    """
    colours = list(meta.colours or [])
    offset = 1 if meta.binary else 0
    by_value: dict[int, str | None] = {0: None}  # background: transparent in the mask's colour map
    for i in range(len(meta.classes)):
        if i + offset:
            by_value[i + offset] = colours[i] if i < len(colours) else None
    out = []
    for value, name in enumerate(meta.mask_classes):
        entry: dict[str, Any] = {
            "value": value,
            "name": name,
            "description": "background (no class)"
            if value == 0
            else f"{name} ({meta.geometry_of(name)} class)",
        }
        colour = by_value.get(value)
        if colour and re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            entry["color_hint"] = colour[1:].lower()
        out.append(entry)
    out.append(
        {
            "value": MASK_NODATA,
            "name": "nodata",
            "description": "no data: outside the scene, or nodata in it",
            "nodata": True,
        }
    )
    return out


def _total_parameters(meta: ModelMeta) -> int:
    from geounet.network.checkpoint import build_model

    return sum(int(p.numel()) for p in build_model(meta).parameters())


def _created(meta: ModelMeta, path: Path) -> str:
    """When the model was made: its training's end, else the file's modification time (UTC)."""
    for key in ("finished_at", "created_at", "trained_at"):
        value = meta.provenance.get(key)
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return mtime.strftime("%Y-%m-%dT%H:%M:%SZ")


def _scaling(meta: ModelMeta) -> tuple[list[dict[str, Any]] | None, str]:
    """MLM ``value_scaling`` (None where each scene sets it) and a sentence on the scaling."""
    from geounet.geodata.normalize import describe, fixed_scaling

    if meta.normalization.get("mode") == "scene":
        low, high = meta.normalization["low"], meta.normalization["high"]
        return None, (
            f"Each band of each scene is stretched so that its {low:g}th and {high:g}th "
            f"percentiles map to 0 and 1, then standardized with mean {_fmt(meta.mean)} and "
            f"std {_fmt(meta.std)} (geounet.geodata.normalize.scene_scaling)."
        )
    offset, scale = fixed_scaling(meta.normalization, meta.mean, meta.std)
    scaling = [
        {"type": "z-score", "mean": round(float(m), 9), "stddev": round(float(s), 9)}
        for m, s in zip(offset, scale, strict=True)
    ]
    return (
        scaling,
        f"Raw band values x are fed as (x - mean) / stddev per band ({describe(meta.normalization)}).",
    )


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def model_item(
    model: str | os.PathLike[str] | None,
    *,
    meta: ModelMeta | None = None,
    sha256: str | None = None,
    href: str | None = None,
) -> dict[str, Any]:
    """The STAC Item (MLM extension v1.4.0) of a model file, as a JSON-ready dict.

    Args:
        model: A model file (``.safetensors`` or exported ``.onnx``) or a bundled model's name.
        meta: Its metadata, if already read.
        sha256: Its SHA-256, if already computed.
        href: The weights asset's href (default: the file's absolute path).

    Returns:
        The Item: id and ``mlm:name`` from the file name; no links (the caller adds them).

    Raises:
        CheckpointError: The model file cannot be read.
    """
    from geounet.network.checkpoint import file_hash, is_onnx, read_meta, resolve_model

    path = resolve_model(model).resolve()
    meta = meta if meta is not None else read_meta(path)
    sha256 = sha256 or file_hash(path)
    onnx = is_onnx(path)
    name = mlm_name(path.stem)
    size = meta.tile_size
    if onnx:
        from geounet.network.onnx_file import onnx_properties

        size = onnx_properties(path)["geounet_onnx"].get("fixed_size") or size
    value_scaling, scaling_text = _scaling(meta)
    licence, providers = data_license(meta)
    classes = [c for c in mask_classes(meta) if c["value"] != MASK_NODATA]
    task = "semantic-segmentation"
    model_input: dict[str, Any] = {
        "name": "input" if onnx else "image",
        "bands": list(meta.band_names),
        "input": {
            "shape": [-1, meta.bands, size, size],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
        },
        "description": (
            f"{meta.bands} bands ({', '.join(meta.band_names)}) of a {meta.dtype} scene, tiles of "
            f"{size} x {size} px overlapping by {meta.overlap} px "
            + (
                "(this graph takes only that size). "
                if onnx and size != meta.tile_size
                else f"(any multiple of {2**meta.depth} px works). "
            )
            + scaling_text
            + (f" Scenes are resampled to {meta.gsd:g} m pixels." if meta.gsd else "")
        ),
        "value_scaling": value_scaling,
        "resize_type": "interpolation-linear" if meta.gsd else None,
        "pre_processing_function": {
            "format": "python",
            "expression": "geounet.geodata.normalize:scene_scaling",
        },
    }
    channels = meta.outputs if not onnx else meta.class_channels
    activation = "sigmoid" if meta.binary else "softmax"
    if meta.binary:
        decision = (
            f"mask value 1 ({meta.classes[0]}) where the {activation} of channel 0 is at least 0.5"
        )
    else:
        decision = "mask value = the channel of the highest score"
    output: dict[str, Any] = {
        "name": "probabilities" if onnx else "logits",
        "tasks": [task],
        "result": {
            "shape": [-1, channels, size, size],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
        },
        "description": (
            ("Class probabilities" if onnx else f"Class logits ({activation} gives probabilities)")
            + f"; {decision}"
            + (
                f"; the last channel scores object cores (footprints shrunk by {meta.core_m:g} m)"
                if meta.core_m > 0 and not onnx
                else ""
            )
            + "."
        ),
        "classification:classes": classes,
    }
    hyper: dict[str, Any] = {
        "tile_size": meta.tile_size,
        "overlap": meta.overlap,
        "threshold": 0.5,
        "min_area_m2": meta.min_area_m2,
        "regularize": meta.regularize,
        "split_m": meta.split_m,
        "split_seeds": meta.split_seeds,
        "core_m": meta.core_m,
        "width": int(meta.arch_args.get("width", 0)),
        "depth": meta.depth,
    }
    if meta.gsd:
        hyper["gsd_m"] = meta.gsd
    data_names = [p["description"].removeprefix("Training data: ") for p in providers]
    properties: dict[str, Any] = {
        "title": f"geounet model {path.stem}",
        "description": (
            f"A {meta.architecture} ({'binary' if meta.binary else 'multi-class'}) segmenting "
            f"{', '.join(meta.classes)} from {meta.bands}-band {meta.dtype} imagery"
            + (f" at {meta.gsd:g} m" if meta.gsd else "")
            + f", for geounet {meta.provenance.get('geounet', __version__)}. SHA-256 {sha256}."
            + (f" Trained on: {'; '.join(data_names)}." if data_names else "")
        ),
        "datetime": _created(meta, path),
        "license": licence,
        "mlm:name": name,
        "mlm:architecture": "U-Net",
        "mlm:tasks": [task],
        "mlm:framework": "ONNX" if onnx else "PyTorch",
        "mlm:total_parameters": _total_parameters(meta),
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "runs on a CPU, or a CUDA GPU when present",
        "mlm:input": [model_input],
        "mlm:output": [output],
        "mlm:hyperparameters": hyper,
        "bands": [{"name": band, "data_type": meta.dtype} for band in meta.band_names],
    }
    if not onnx:
        import torch

        version = torch.__version__.split("+")[0]
        if re.fullmatch(r"\d+\.\d+\.\d+", version):
            properties["mlm:framework_version"] = version
    if meta.gsd:
        properties["gsd"] = meta.gsd
    if providers:
        properties["providers"] = providers
    weights = {
        "href": href or str(path),
        "type": ONNX_MEDIA_TYPE if onnx else SAFETENSORS_MEDIA_TYPE,
        "title": f"{'ONNX graph' if onnx else 'Weights (safetensors) with the input contract'} {path.name}",
        "description": f"SHA-256 {sha256}; {path.stat().st_size} bytes",
        "roles": ["mlm:model", "mlm:weights", "data"],
        "mlm:artifact_type": "torch.onnx.export" if onnx else "safetensors.torch.save_file",
        # STAC 1.1 allows bands in an item's properties only when an asset has them too.
        "bands": properties["bands"],
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_EXTENSION],
        "id": name,
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": {"model": weights},
    }


def write_model_item(
    model: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a model's STAC Item (see :func:`model_item`) to a JSON file, atomically.

    The weights' href is relative to the JSON when the model file lies in its folder or below
    (the two move together), absolute otherwise (a bundled model, a model elsewhere).

    Returns:
        ``dest``.

    Raises:
        CheckpointError: The model file cannot be read.
        OutputExistsError: ``dest`` exists and ``overwrite`` is False.
        OutputError: ``dest`` cannot be written.
    """
    from geounet.geodata.raster import AtomicOutputs
    from geounet.network.checkpoint import resolve_model

    out = Path(dest)
    path = resolve_model(model).resolve()
    folder = out.expanduser().resolve().parent
    href = os.path.relpath(path, folder) if folder in path.parents else str(path)
    item = model_item(path, href=href)
    # No self link: the weights' relative href then resolves against wherever the JSON is read.
    with AtomicOutputs() as outputs:
        tmp = outputs.reserve(out, overwrite=overwrite)
        try:
            tmp.write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out


__all__ = [
    "MLM_EXTENSION",
    "ONNX_MEDIA_TYPE",
    "SAFETENSORS_MEDIA_TYPE",
    "STAC_VERSION",
    "data_license",
    "mask_classes",
    "mlm_name",
    "model_item",
    "spdx_license",
    "write_model_item",
]
