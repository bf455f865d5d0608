"""Running a model with onnxruntime: exported ``.onnx`` files, and ``.safetensors`` models
exported in memory and cached on disk (``predict --backend onnxruntime``)."""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from geounet.errors import CheckpointError, GeounetError, TilingError
from geounet.network.checkpoint import file_hash, load_model, resolve_model
from geounet.network.contract import ModelMeta
from geounet.network.export import DEFAULT_OPSET, compare_logits, compare_stored, trace_graph
from geounet.network.onnx_file import (
    INPUT,
    LOGITS,
    logits_graph,
    make_session,
    read_proto,
    read_records,
    require_onnx,
    require_onnxruntime,
)
from geounet.network.unet import UNet, fuse_batchnorm

logger = logging.getLogger(__name__)


class OnnxNet(torch.nn.Module):
    """An exported model's network run by onnxruntime, called like the U-Net.

    ``net(x)`` takes normalized tiles (N, bands, H, W) on any device and returns their float32
    logits on the same device, so :class:`~geounet.prediction.predictor.Predictor` (plain and TTA forward
    passes) uses it in place of the PyTorch module.

    Attributes:
        device: Where the session runs (``cuda`` with onnxruntime's CUDA provider, else ``cpu``).
        fixed_size: The only tile size the graph takes (None: any multiple of ``2**depth``).
        batch_size: Tiles per forward pass when none is given (1 on the CPU, as for PyTorch).
    """

    def __init__(self, session: Any, *, fixed_size: int | None, name: str) -> None:
        super().__init__()
        self.session = session
        self.fixed_size = fixed_size
        self.name = name
        cuda = session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = torch.device("cuda" if cuda else "cpu")
        self.batch_size = 8 if cuda else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of standardized tiles (N, bands, H, W), on ``x``'s device.

        Raises:
            TilingError: A graph exported with a fixed size given tiles of another.
        """
        size = self.fixed_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise TilingError(
                f"{self.name} was exported for {size} px tiles, got {x.shape[-2]} x {x.shape[-1]}; "
                f"predict tiles a scene at that size, or export again with --dynamic-size"
            )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (y,) = self.session.run([LOGITS], {INPUT: arr})
        return torch.from_numpy(y).to(x.device)


def load_onnx(path: str | os.PathLike[str], *, device: str = "cpu") -> tuple[OnnxNet, ModelMeta]:
    """An exported ONNX model ready for :class:`~geounet.prediction.predictor.Predictor`, and its contract.

    Args:
        path: The ``.onnx`` file.
        device: ``cuda`` (needs onnxruntime's CUDA provider: ``onnxruntime-gpu``), ``auto``
            (CUDA when PyTorch and onnxruntime both have it, else CPU) or ``cpu``.

    Raises:
        CheckpointError: Not an exported geounet model.
        GeounetError: onnx/onnxruntime missing, or ``cuda`` asked for without the CUDA provider.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: model file not found")
    onnx, ort = require_onnx("running an ONNX model")
    proto = read_proto(p, onnx)
    meta, extra = read_records(proto, p.name)
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device.startswith("cuda") and not has_cuda:
        raise GeounetError(
            "--device cuda with an ONNX model needs onnxruntime's CUDA provider "
            "(pip install onnxruntime-gpu); or use --device cpu"
        )
    try:
        session = make_session(
            ort, logits_graph(proto.SerializeToString()), cuda=want_cuda and has_cuda
        )
    except GeounetError:
        raise
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise CheckpointError(
            f"onnxruntime cannot load {p.name}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    fixed = extra.get("fixed_size")
    return OnnxNet(session, fixed_size=int(fixed) if fixed else None, name=p.name), meta


#: Environment variable that overrides the cache directory of :func:`cache_dir`.
CACHE_ENV = "GEOUNET_CACHE"


def cache_dir() -> Path:
    """geounet's cache directory: ``$GEOUNET_CACHE``, else ``$XDG_CACHE_HOME/geounet``, else
    ``~/.cache/geounet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "geounet"


def onnxruntime_available() -> bool:
    """Whether the onnxruntime backend can run here (``onnx`` and ``onnxruntime`` installed)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def backend_cache_entry(model_path: str | os.PathLike[str], ort_version: str) -> Path:
    """Where :func:`load_backend` keeps a model file's exported graph: keyed by the file's SHA-256,
    geounet's version and onnxruntime's version (any of them changed: a new export)."""
    from geounet import __version__

    return (
        cache_dir() / "onnx" / f"{file_hash(model_path)}-geounet{__version__}-ort{ort_version}.onnx"
    )


def _backend_graph(
    onnx: Any, ort: Any, net: UNet, meta: ModelMeta
) -> tuple[bytes, npt.NDArray[np.float32]]:
    """The logits graph of ``net`` (BatchNorm folded, every output channel kept, core included),
    any multiple of ``2**depth`` in size, checked against PyTorch's logits (returned with it)."""
    proto = trace_graph(onnx, net, meta, opset=DEFAULT_OPSET, fixed_size=None)
    data = logits_graph(bytes(proto.SerializeToString()))
    return data, compare_logits(make_session(ort, data, cuda=False), net, meta, None)


def load_backend(
    model: str | os.PathLike[str] | tuple[UNet, ModelMeta],
    *,
    device: str = "cpu",
    cache: bool = True,
) -> tuple[OnnxNet, ModelMeta]:
    """A PyTorch model run by onnxruntime: exported in memory, cached on disk by the file's hash.

    The graph is the network's logits (every channel, a core channel included, so masks and
    polygons follow as with PyTorch), BatchNorm folded, with a dynamic batch and size
    (:func:`geounet.geodata.tiling.fit_tile` keeps working). A model file's graph is kept in
    ``cache_dir() / "onnx"`` (:func:`backend_cache_entry`; written atomically), so later runs skip
    the export; next to it (``.npy``) PyTorch's logits of the check's two tiles, so a later run
    checks the entry without a PyTorch forward pass (about a second of a small prediction; the
    first run on a CPU pays for PyTorch's kernels). An entry that onnxruntime cannot load or whose
    logits differ from PyTorch's is rebuilt, and a cache directory that cannot be written leaves the graph in memory (one log line).

    Args:
        model: A model file (``.safetensors``), a bundled model's name, or a loaded
            ``(UNet, ModelMeta)`` pair (exported in memory, not cached).
        device: ``cpu``, or ``cuda`` (onnxruntime's CUDA provider, ``onnxruntime-gpu``).
        cache: Read and write the on-disk cache.

    Returns:
        The network (called like the U-Net, see :class:`OnnxNet`) and the model's contract.

    Raises:
        GeounetError: onnx/onnxruntime missing, no CUDA provider for ``cuda``, or an export that
            fails or disagrees with PyTorch.
    """
    ort = require_onnxruntime("--backend onnxruntime")
    cuda = device.startswith("cuda")
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise GeounetError(
            "--backend onnxruntime on CUDA needs onnxruntime's CUDA provider (pip install onnxruntime-gpu); "
            "or use --backend torch"
        )
    if isinstance(model, tuple):
        net, meta, path = copy.deepcopy(model[0]), model[1], None
    else:
        path = resolve_model(model)
        net, meta = load_model(path)
    net = fuse_batchnorm(net.float()).eval()
    name = path.name if path is not None else "in-memory model"
    entry = backend_cache_entry(path, ort.__version__) if path is not None and cache else None
    data: bytes | None = None
    session: Any = None
    if entry is not None and entry.is_file():
        try:
            data = entry.read_bytes()
            session = make_session(ort, data, cuda=False)
            _check_entry(session, net, meta, entry)
        except Exception as exc:  # noqa: BLE001 (unreadable, not ONNX, or wrong logits: export again)
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            logger.info(
                "rebuilding the onnxruntime graph of %s (cache entry %s: %s)", name, entry, reason
            )
            data = session = None
    if data is None:
        onnx, _ = require_onnx("--backend onnxruntime")
        data, expected = _backend_graph(onnx, ort, net, meta)
        if entry is not None and _write_cache(entry, data):
            _write_cache(_logits_entry(entry), _npy_bytes(expected))
    try:
        if session is None or cuda:
            session = make_session(ort, data, cuda=cuda)
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise GeounetError(
            f"onnxruntime cannot run {name}: {str(exc).splitlines()[0][:160]}; use --backend torch"
        ) from exc
    return OnnxNet(session, fixed_size=None, name=name), meta


def _logits_entry(entry: Path) -> Path:
    """Where PyTorch's logits of :func:`probe_tiles`'s tiles sit next to a cached graph."""
    return entry.with_suffix(".npy")


def _npy_bytes(array: npt.NDArray[np.float32]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_entry(session: Any, net: UNet, meta: ModelMeta, entry: Path) -> None:
    """Check a cached graph against the logits stored with it, or (none stored, or unreadable)
    against a PyTorch forward pass, then storing those logits for the next run."""
    try:
        expected = np.load(_logits_entry(entry), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        expected = None
    if isinstance(expected, np.ndarray) and expected.dtype == np.float32:
        compare_stored(session, meta, None, expected)
    else:
        _write_cache(_logits_entry(entry), _npy_bytes(compare_logits(session, net, meta, None)))


def _write_cache(entry: Path, data: bytes) -> bool:
    """Write a cache entry atomically; an unwritable cache leaves it out (one log line).

    Returns:
        Whether it was written.
    """
    tmp: str | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=entry.suffix, dir=entry.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, entry)
        tmp = None
        return True
    except OSError as exc:
        logger.warning(
            "cannot cache the onnxruntime graph in %s (%s); exported in memory for this run",
            entry.parent,
            exc.strerror or exc,
        )
        return False
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
