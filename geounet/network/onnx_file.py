"""Reading an exported ``.onnx`` file: its contract, its Deepness keys, and a session on its logits.

The file layout is :mod:`geounet.network.export`'s; this module only reads it, so the model
files (:mod:`geounet.network.checkpoint`) can read an ONNX file's contract without the exporter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from geounet.errors import CheckpointError, GeounetError
from geounet.network.contract import ModelMeta

#: Layout version of the ``geounet_onnx`` record.
ONNX_FORMAT_VERSION = 1


INPUT, OUTPUT, LOGITS = "input", "probabilities", "logits"


EXTRA_HINT = "pip install 'geounet[onnx]'"


#: Keys of ``metadata_props`` that Deepness reads (besides ``class_names``).
DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tiles_size",
    "tile_size",
    "tiles_overlap",
    "seg_thresh",
    "seg_small_segment",
    "standardization_mean",
    "standardization_std",
)


def require_onnx(what: str, *, runtime: bool = True) -> tuple[Any, Any]:
    """The ``onnx`` and (with ``runtime``) ``onnxruntime`` modules.

    Raises:
        GeounetError: One of them is not installed, naming the pip extra that brings both.
    """
    try:
        import onnx
    except ImportError as exc:
        raise GeounetError(f"{what} needs the onnx package: {EXTRA_HINT}") from exc
    if not runtime:
        return onnx, None
    return onnx, require_onnxruntime(what)


def require_onnxruntime(what: str) -> Any:
    """The ``onnxruntime`` module alone (a cached graph needs no ``onnx``, which is slow to import).

    Raises:
        GeounetError: It is not installed, naming the pip extra.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise GeounetError(f"{what} needs onnxruntime: {EXTRA_HINT}") from exc
    return onnxruntime


def logits_graph(data: bytes) -> bytes:
    """An exported model rewired to output its ``logits`` (the activation dropped)."""
    import onnx

    proto = onnx.load_from_string(data)
    producers = {name: node for node in proto.graph.node for name in node.output}
    if LOGITS not in producers:
        raise CheckpointError(
            f"the ONNX graph has no '{LOGITS}' tensor; export it with `geounet model export`"
        )
    value = onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, None)
    del proto.graph.output[:]
    proto.graph.output.append(value)
    needed, nodes = {LOGITS}, []
    for node in reversed(proto.graph.node):
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(node.input)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    return bytes(proto.SerializeToString())


def make_session(ort: Any, data: bytes, *, cuda: bool) -> Any:
    """An onnxruntime session with as many threads as PyTorch uses (the CPU policy stays one)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: no notes about pruned initializers
    providers = ["CPUExecutionProvider"]
    if cuda:
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(data, sess_options=options, providers=providers)


def read_proto(path: Path, onnx: Any) -> Any:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise CheckpointError(
            f"{path.name} is not a readable ONNX file ({str(exc).splitlines()[0][:120]})"
        ) from exc


def read_records(proto: Any, name: str) -> tuple[ModelMeta, dict[str, Any]]:
    props = {p.key: p.value for p in proto.metadata_props}
    if "geounet" not in props:
        raise CheckpointError(
            f"{name} has no geounet metadata; geounet runs ONNX files that `geounet model export` wrote"
        )
    try:
        data, extra = json.loads(props["geounet"]), json.loads(props.get("geounet_onnx", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name}: geounet metadata is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(extra, dict):
        raise CheckpointError(f"{name}: geounet metadata is not a JSON object")
    if int(extra.get("format_version", 1)) > ONNX_FORMAT_VERSION:
        raise CheckpointError(f"{name} was exported by a newer geounet; upgrade geounet")
    return ModelMeta.from_dict(data, source=name), extra


def read_onnx_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """The :class:`~geounet.network.checkpoint.ModelMeta` stored in an exported ONNX file.

    Raises:
        CheckpointError: Not ONNX, or no geounet metadata.
        GeounetError: The onnx package is missing.
    """
    onnx, _ = require_onnx("reading an ONNX model", runtime=False)
    p = Path(path)
    return read_records(read_proto(p, onnx), p.name)[0]


def onnx_properties(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An ONNX file's Deepness keys (JSON-decoded), ``geounet_onnx`` record and opset."""
    onnx, _ = require_onnx("reading an ONNX model", runtime=False)
    p = Path(path)
    proto = read_proto(p, onnx)
    props = {e.key: e.value for e in proto.metadata_props}
    out: dict[str, Any] = {k: json.loads(props[k]) for k in DEEPNESS_KEYS if k in props}
    out["geounet_onnx"] = json.loads(props.get("geounet_onnx", "{}"))
    out["opset"] = max(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None
    )
    return out
