"""ONNX export: a geounet model as one ``.onnx`` file for QGIS (Deepness) and onnxruntime.

The graph
    One input ``input``, float32 ``(batch, bands, size, size)``, and one output
    ``probabilities``, float32 ``(batch, outputs, size, size)``: the sigmoid (one output
    channel, binary models) or the softmax over the channels (multi-class) of the U-Net's
    logits, which the graph keeps as the named tensor ``logits`` (the activation's input). The
    batch is dynamic. The size is fixed by default, to the model's tile size (``fixed_size``
    chooses another multiple of ``2**depth``): Deepness reads its tile size off the input shape
    (``input_shape[-1]``, into an integer field) and refuses a symbolic one. ``dynamic_size``
    makes both spatial axes the one symbol ``size`` instead (any multiple of ``2**depth``, for
    onnxruntime users). ``geounet predict -m model.onnx`` runs either: a fixed-size graph is
    tiled at its size (:meth:`geounet.prediction.predictor.Predictor.plan`). BatchNorm is folded into the
    convolutions, as :class:`~geounet.prediction.predictor.Predictor` runs the network.

The input convention (normalization as metadata, not in the graph)
    The input is the standardized tile, exactly what the PyTorch U-Net takes: geounet computes
    ``(x - offset) / scale`` per band from raw pixel values ``x``
    (:func:`geounet.geodata.normalize.scene_scaling`). Deepness always divides pixel values by 255 and
    then standardizes with the ``standardization_mean``/``standardization_std`` of the
    metadata, ``(x / 255 - mean) / std``; so those keys hold ``offset / 255`` and
    ``scale / 255``, and Deepness feeds the graph what geounet feeds it (for any data type: the
    division by 255 cancels). Raw mean/std and ``dataset`` stretches are fixed maps and fold in
    exactly. A model that stretches each scene by its own percentiles
    (``normalization.mode = scene``, the bundled ``buildings``) needs the scene, which Deepness
    never sees whole; the stretch is affine, so a chosen ``lo``/``hi`` per band folds in
    exactly: ``mean' = (lo + mean * (hi - lo)) / 255``, ``std' = std * (hi - lo) / 255``. The
    export takes, in this order: the percentiles of one scene (``stretch_from``, for a user who
    runs the model over one mosaic: Deepness then sees exactly what ``geounet predict`` feeds
    the network on that scene); else the model's recorded typical stretch
    (``typical_lo``/``typical_hi``, the median over its training images of each image's
    percentiles, :mod:`geounet.geodata.normalize`); else, for older files, ``0..255``. The
    ``geounet_onnx`` record says which (``stretch``).

The metadata (``metadata_props``, every value JSON, as Deepness parses them)
    ``model_type`` ``"Segmentor"``; ``class_names`` ``{"0": "background", "1": "building"}``
    (mask values; a binary model's one channel is thresholded to 0/1 by Deepness);
    ``resolution`` in cm per pixel (only when the model knows its pixel size); ``tiles_size`` (the
    documented name) and ``tile_size`` (the name Deepness' code reads) in pixels;
    ``tiles_overlap`` in percent of the tile, twice the model's overlap because Deepness keeps
    tile centres with hard seams (:func:`deepness_overlap`); ``seg_thresh`` (the binary threshold, 0 = plain
    argmax for multi-class models, as geounet); ``seg_small_segment`` 0 (geounet does not
    filter small segments); ``standardization_mean``/``standardization_std`` as above. Plus
    geounet's own: ``geounet`` (the whole :class:`~geounet.network.checkpoint.ModelMeta`: bands, dtype,
    normalization, classes, colours, tile size, pixel size, provenance) and ``geounet_onnx``
    (tensor names, activation, fixed size, the folded stretch, source file and its SHA-256), so
    that ``geounet predict -m model.onnx`` runs it through onnxruntime with the same contract
    (and each scene's own stretch, as for the safetensors file).

What Deepness still does its own way (see the README and ``benchmarks/deepness.py``): it pads
the layer past its right and top edges with zeros to whole tiles (geounet masks padding, which
the network sees as the band mean) and keeps each tile's centre with hard seams (geounet blends
overlapping tiles), and it cannot cut touching objects apart (``split_seeds``).

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it needs only ``onnx``, and
traces this fixed-shape network exactly; the newer exporter would add ``onnxscript``. The file is
checked with ``onnx.checker`` and its logits with onnxruntime against PyTorch's before it is
written, atomically.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from geounet.errors import GeounetError
from geounet.geodata import normalize
from geounet.geodata.raster import AtomicOutputs, open_scene, resolve_bands
from geounet.geodata.tiling import check_tile_size
from geounet.network.checkpoint import file_hash, load_model, resolve_model
from geounet.network.contract import ModelMeta
from geounet.network.onnx_file import (
    INPUT,
    LOGITS,
    ONNX_FORMAT_VERSION,
    OUTPUT,
    logits_graph,
    make_session,
    require_onnx,
)
from geounet.network.unet import UNet, drop_core_channel, fuse_batchnorm

logger = logging.getLogger(__name__)

#: Opset written by default (ONNX IR 8: onnxruntime >= 1.13 reads it, QGIS installs included).
DEFAULT_OPSET = 17


def deepness_standardization(
    meta: ModelMeta, stretch: tuple[npt.ArrayLike, npt.ArrayLike] | None = None
) -> tuple[list[float], list[float]]:
    """Per-band ``(mean, std)`` for Deepness' ``(x / 255 - mean) / std``.

    Raw mean/std and ``dataset`` stretches are fixed maps ``(x - offset) / scale``, given exactly
    as ``offset / 255`` and ``scale / 255``. A ``scene`` stretch is folded in with ``stretch``
    (one scene's ``(lo, hi)``), else the model's typical stretch, else ``0..255`` (see the
    module docstring and :func:`folded_stretch`).
    """
    norm = meta.normalization
    if norm.get("mode") == "scene":
        lo, hi = stretch if stretch is not None else folded_stretch(meta)[:2]
        offset, scale = normalize.affine(lo, hi, meta.mean, meta.std)
    else:
        offset, scale = normalize.fixed_scaling(norm, meta.mean, meta.std)
    return [float(v) / 255 for v in np.asarray(offset, np.float64)], [
        float(v) / 255 for v in np.asarray(scale, np.float64)
    ]


def folded_stretch(meta: ModelMeta) -> tuple[list[float], list[float], str]:
    """The ``(lo, hi, source)`` a ``scene`` model's export folds in without ``stretch_from``:
    the recorded typical stretch (``typical``), else ``0..255`` (``full range``)."""
    typical = normalize.typical_bounds(meta.normalization)
    if typical is not None:
        return [float(v) for v in typical[0]], [float(v) for v in typical[1]], "typical"
    return [0.0] * meta.bands, [255.0] * meta.bands, "full range"


def scene_stretch(
    meta: ModelMeta, scene_path: str | os.PathLike[str]
) -> tuple[list[float], list[float]]:
    """One scene's own ``(lo, hi)`` per band, as ``geounet predict`` stretches it for this model.

    Raises:
        GeounetError: The model does not stretch each scene, or the scene does not fit it
            (bands; see :func:`geounet.geodata.raster.resolve_bands`).
    """
    if meta.normalization.get("mode") != "scene":
        raise GeounetError(
            "--stretch-from applies to models that stretch each scene; this model's scaling is fixed and exports exactly"
        )
    scene = open_scene(scene_path)
    bands = resolve_bands(scene, None, meta.bands, meta.band_names)
    norm = meta.normalization
    lo, hi = normalize.image_stretch(scene, bands, float(norm["low"]), float(norm["high"]))
    return [float(v) for v in lo], [float(v) for v in hi]


def deepness_overlap(meta: ModelMeta) -> int:
    """Deepness' ``tiles_overlap`` in percent of the tile: twice the model's overlap, at most 50.

    Deepness does not blend: each tile writes its centre, cutting half the overlap off every side
    that has a neighbour. With twice the model's overlap every pixel it keeps lies at least the
    model's overlap inside its tile, where geounet's blending gives a tile its full weight
    (:mod:`geounet.prediction.blend`). For the bundled model (25 % instead of its own 13 %) that raised
    Deepness' agreement with ``geounet predict`` by 0.4 points on average (0.1 to 1.1) over eight
    held-out 0.3 m aerial scenes (``benchmarks/deepness.py``), for 1.35 times the tiles.
    """
    return max(0, min(50, int(np.floor(100 * 2 * meta.overlap / meta.tile_size + 0.5))))


def onnx_metadata(
    meta: ModelMeta,
    *,
    threshold: float = 0.5,
    extra: dict[str, Any] | None = None,
    stretch: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: Deepness' keys and geounet's own, as JSON.

    Args:
        meta: The model's contract.
        threshold: Deepness' ``seg_thresh`` for a binary model (multi-class models get 0: argmax).
        extra: The ``geounet_onnx`` record (tensor names, source, fixed size, stretch).
        stretch: A ``scene`` model's ``(lo, hi)`` to fold into the standardization (None: the
            model's typical stretch, see :func:`deepness_standardization`).
    """
    mean, std = deepness_standardization(meta, stretch)
    props: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(meta.mask_classes)},
        "tiles_size": meta.tile_size,
        "tile_size": meta.tile_size,
        "tiles_overlap": deepness_overlap(meta),
        "seg_thresh": float(threshold) if meta.binary else 0.0,
        "seg_small_segment": 0,
        "standardization_mean": mean,
        "standardization_std": std,
    }
    if meta.gsd:
        props["resolution"] = round(float(meta.gsd) * 100, 6)
    out = {k: json.dumps(v) for k, v in props.items()}
    out["geounet"] = meta.to_json()
    out["geounet_onnx"] = json.dumps(extra or {}, sort_keys=True)
    return out


class _ExportedNet(torch.nn.Module):
    """The U-Net followed by its activation: ``(probabilities, logits)``."""

    def __init__(self, net: UNet, binary: bool) -> None:
        super().__init__()
        self.net = net
        self.binary = binary

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and logits of standardized tiles."""
        logits = self.net(x)
        probs = torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)
        return probs, logits


def export_onnx(
    model: str | os.PathLike[str] | tuple[UNet, ModelMeta] | None,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fixed_size: int | None = None,
    dynamic_size: bool = False,
    threshold: float = 0.5,
    stretch_from: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model as an ONNX file with Deepness and geounet metadata (see the module docstring).

    Args:
        model: A model file, a bundled model's name, None (the default bundled model), or a
            loaded ``(UNet, ModelMeta)`` pair (left unchanged).
        out: The ``.onnx`` file to write (atomically: a temporary file beside it, then renamed).
        opset: ONNX opset (13..20 with the TorchScript exporter; 17 by default).
        fixed_size: The input's height and width in pixels (a multiple of ``2**depth``; the
            model's tile size becomes it). None: the model's tile size, unless ``dynamic_size``.
            The batch stays dynamic.
        dynamic_size: Leave height and width symbolic (any multiple of ``2**depth``); Deepness
            cannot load such a file.
        threshold: Deepness' default probability threshold for a binary model.
        stretch_from: A scene whose own percentile stretch is folded into Deepness'
            standardization (models that stretch each scene only; default: the model's typical
            stretch).
        overwrite: Replace an existing ``out``.

    Returns:
        The path written.

    Raises:
        GeounetError: onnx/onnxruntime missing, a bad model, opset or size, an unwritable output
            (`OutputError`), or an export that disagrees with PyTorch.
    """
    onnx, ort = require_onnx("exporting to ONNX")
    if dynamic_size and fixed_size is not None:
        raise GeounetError(
            f"a dynamic size and a fixed size of {fixed_size} px exclude each other; give one"
        )
    if not 13 <= opset <= 20:
        raise GeounetError(f"opset {opset} is not supported; use 13..20 (default {DEFAULT_OPSET})")
    if not 0.0 <= threshold <= 1.0:
        raise GeounetError(f"threshold {threshold:g} is not a probability; use 0..1")
    out = Path(out)
    with AtomicOutputs() as outputs:
        target = outputs.reserve(out, overwrite=overwrite)  # an unwritable output fails first
        target.write_bytes(
            _build(
                onnx,
                ort,
                model,
                opset=opset,
                fixed_size=fixed_size,
                dynamic_size=dynamic_size,
                threshold=threshold,
                stretch_from=stretch_from,
            )
        )
    return out


def _build(
    onnx: Any,
    ort: Any,
    model: str | os.PathLike[str] | tuple[UNet, ModelMeta] | None,
    *,
    opset: int,
    fixed_size: int | None,
    dynamic_size: bool,
    threshold: float,
    stretch_from: str | os.PathLike[str] | None,
) -> bytes:
    """The serialized, checked and verified ONNX model (see :func:`export_onnx`)."""
    if isinstance(model, tuple):
        net, meta = copy.deepcopy(model[0]), copy.deepcopy(model[1])
        source: dict[str, Any] = {"source": "in-memory model"}
    else:
        path = resolve_model(model)
        net, meta = load_model(path)
        source = {"source": path.name, "source_sha256": file_hash(path)}
    if not dynamic_size and fixed_size is None:
        fixed_size = meta.tile_size
    if fixed_size is not None:
        check_tile_size(fixed_size, min(meta.overlap, fixed_size // 2), multiple=2**meta.depth)
        meta.tile_size = fixed_size
        meta.overlap = min(meta.overlap, fixed_size // 2)
    if meta.core_m > 0:
        # The core channel stays out of the file: Deepness reads one output channel per class.
        # geounet runs the file with split_seeds as a cut along the foreground's valleys.
        net = drop_core_channel(net)
        meta.arch_args = {**meta.arch_args, "classes": meta.class_channels}
        meta.core_m = 0.0
    net = fuse_batchnorm(net.float()).eval()
    stretch: dict[str, Any] | None = None
    if stretch_from is not None:
        lo, hi = scene_stretch(meta, stretch_from)
        stretch = {"source": f"scene {Path(stretch_from).name}", "lo": lo, "hi": hi}
    elif meta.normalization.get("mode") == "scene":
        lo, hi, what = folded_stretch(meta)
        stretch = {"source": what, "lo": lo, "hi": hi}
    extra = {
        "format_version": ONNX_FORMAT_VERSION,
        "input": INPUT,
        "output": OUTPUT,
        "logits": LOGITS,
        "activation": "sigmoid" if meta.binary else "softmax",
        "fixed_size": fixed_size,
        "opset": opset,
        **({"stretch": stretch} if stretch else {}),
        **source,
    }
    folded = (stretch["lo"], stretch["hi"]) if stretch else None
    proto = trace_graph(onnx, net, meta, opset=opset, fixed_size=fixed_size)
    for key, value in onnx_metadata(meta, threshold=threshold, extra=extra, stretch=folded).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    from geounet import __version__

    proto.producer_name, proto.producer_version = "geounet", __version__
    proto.doc_string = (
        f"geounet {meta.architecture} segmentation model: {', '.join(meta.classes)}; "
        f"{meta.bands}-band {meta.dtype} input, standardized (see metadata 'geounet', "
        f"'standardization_mean', 'standardization_std'); output '{OUTPUT}' "
        f"({extra['activation']} of the logits)."
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise GeounetError(
            f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}"
        ) from exc
    data = bytes(proto.SerializeToString())
    _verify(ort, data, net, meta, fixed_size)
    return data


def trace_graph(
    onnx: Any, net: UNet, meta: ModelMeta, *, opset: int, fixed_size: int | None
) -> Any:
    """Trace ``net`` + activation to an ONNX ``ModelProto`` with one output, ``probabilities``."""
    size = fixed_size or 2**meta.depth * 2
    sample = torch.zeros((1, meta.bands, size, size))
    axes = {0: "batch"} if fixed_size else {0: "batch", 2: "size", 3: "size"}
    kwargs: dict[str, Any] = {
        "input_names": [INPUT],
        "output_names": [OUTPUT, LOGITS],
        "dynamic_axes": {INPUT: axes, OUTPUT: axes, LOGITS: axes},
        "opset_version": opset,
        "do_constant_folding": True,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with tempfile.TemporaryDirectory(prefix="geounet-onnx-") as tmp:
        traced = Path(tmp) / "traced.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # The TorchScript exporter's deprecation notice, and the tracer's note that Up's
                # odd-size padding test is fixed at trace time (sizes are multiples of 2**depth).
                warnings.simplefilter("ignore")
                torch.onnx.export(_ExportedNet(net, meta.binary), (sample,), traced, **kwargs)
        except Exception as exc:  # torch.onnx errors are of many types
            raise GeounetError(
                f"ONNX export failed (opset {opset}): {str(exc).splitlines()[0][:200]}"
            ) from exc
        proto = onnx.load(str(traced))
    # The logits stay in the graph as the named input of the activation; Deepness takes one output.
    keep = [o for o in proto.graph.output if o.name == OUTPUT]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    return proto


def _verify(ort: Any, data: bytes, net: UNet, meta: ModelMeta, fixed_size: int | None) -> None:
    """Run the exported logits on two random tiles and compare them with PyTorch's.

    Raises:
        GeounetError: They differ by more than float32 rounding of this network can explain.
    """
    compare_logits(make_session(ort, logits_graph(data), cuda=False), net, meta, fixed_size)


def compare_logits(
    session: Any, net: torch.nn.Module, meta: ModelMeta, fixed_size: int | None
) -> npt.NDArray[np.float32]:
    """Compare a logits session with ``net`` on two random tiles (see :func:`_verify`).

    Returns:
        PyTorch's logits of the two tiles (what :func:`compare_stored` takes later).
    """
    x = probe_tiles(meta, fixed_size)
    with torch.no_grad():
        expected: npt.NDArray[np.float32] = net(torch.from_numpy(x)).numpy()
    compare_stored(session, meta, fixed_size, expected)
    return expected


def probe_tiles(meta: ModelMeta, fixed_size: int | None) -> npt.NDArray[np.float32]:
    """The two seeded random tiles that :func:`compare_logits` runs."""
    size = fixed_size or 2**meta.depth * 2
    return np.random.default_rng(0).standard_normal((2, meta.bands, size, size), dtype=np.float32)


def compare_stored(
    session: Any, meta: ModelMeta, fixed_size: int | None, expected: npt.NDArray[np.float32]
) -> None:
    """Compare a logits session with PyTorch's logits of :func:`probe_tiles`'s tiles, computed before."""
    (got,) = session.run([LOGITS], {INPUT: probe_tiles(meta, fixed_size)})
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise GeounetError(
            f"the exported graph's logits differ from PyTorch's by {diff:.3g}; not written"
        )
