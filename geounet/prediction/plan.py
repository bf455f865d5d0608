"""What a run settles before its first tile, from the machine, the model and the scene.

The network's arithmetic (:func:`inference_dtype`) and backend (:func:`choose_backend`), whether
the scene's pixels suit the model (:func:`check_dtype`), the resampling between their pixel sizes
(:func:`resample_factor`), and the :class:`RunPlan` that
:meth:`~geounet.prediction.predictor.Predictor.plan` lays out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from geounet.errors import BandMismatchError, GeounetError
from geounet.geodata import normalize
from geounet.geodata.raster import Scene, pixel_size_m
from geounet.geodata.tiling import Tile
from geounet.network.backends import onnxruntime_available
from geounet.network.contract import ModelMeta
from geounet.network.unet import autocast_dtype
from geounet.prediction.config import Precision

logger = logging.getLogger(__name__)


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


@dataclass
class RunPlan:
    """A scene checked against the model, and how it is cut up (:meth:`~geounet.prediction.predictor.Predictor.plan`).

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
