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
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geounet.errors import CheckpointError
from geounet.network.contract import DEFAULT_COLOURS, META_KEY, ModelMeta, default_normalization
from geounet.network.unet import ARCHITECTURES, UNet


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
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
#: The model ``geounet predict`` uses when none is named.
DEFAULT_MODEL = "buildings"


def bundled_models() -> dict[str, Path]:
    """Models shipped with geounet, by name (the file name without ``.safetensors``).

    Returns:
        ``{name: path}``, sorted by name; empty when none is installed. ``-m NAME`` and every
        function that takes a model accept these names.
    """
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
    """Whether a model path names an ONNX file (``.onnx``, see :mod:`geounet.network.export`)."""
    return Path(path).suffix.lower() == ".onnx"


def read_meta(path: str | os.PathLike[str] | None) -> ModelMeta:
    """Read only the metadata of a model file (or bundled model), without loading its weights.

    An ``.onnx`` file written by `geounet.network.export.export_onnx` gives the contract it carries.

    Args:
        path: A model file (``.safetensors`` or ``.onnx``), a bundled model's name, or None for
            the default bundled model (``buildings``). An existing path wins over a bundled
            name.

    Returns:
        The model's contract, validated.

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
        from geounet.network.onnx_file import read_onnx_meta

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

    Nothing is unpickled: the weights are read from the safetensors file into a network built
    from the metadata.

    Args:
        path: A ``.safetensors`` model file, a bundled model's name, or None for the default
            bundled model (``buildings``). ONNX files are for prediction only (use `Predictor`).
        device: Where to put the network (``cpu``, ``cuda``, a ``torch.device``).

    Returns:
        The network and its contract.

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

    Returns:
        The network (seeded random weights, eval mode) and its contract, which scales raw
        values of ``dtype`` with a fixed mean and standard deviation; write both with
        `save_model`.
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
