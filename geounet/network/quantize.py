"""int8 copies of a model for the CPU: static quantization calibrated on the model's own imagery.

:func:`quantize_model` exports a ``.safetensors`` model's logits graph (as the onnxruntime
backend runs it: BatchNorm folded, every output channel, dynamic batch and size), calibrates
the activations on windows of images the user names (normally the model's training images),
and writes an ONNX file in QDQ form: per-channel int8 weights, uint8 activations. The file
carries the model's contract like any exported model, so ``geounet predict -m FILE`` runs it,
and ``--precision int8`` finds it beside the model as ``NAME-int8.onnx``
(:func:`int8_sibling`; the bundled ``buildings`` ships one).

Weights are quantized to 7 bits (``reduce_range``): onnxruntime's uint8 x int8 kernels on AVX2
CPUs (and AVX-512 CPUs without VNNI) multiply with VPMADDUBSW, whose 16-bit sums of two
products saturate with full-range weights (255 x 127 x 2 > 32767), which wrecks a U-Net's
masks; with 7-bit weights the sums stay in range on every x86 CPU. On the bundled model's 12
held-out images the int8 masks equal float32's on 99.73 % of pixels, pixel F1 0.7441 against
0.7456 and object F1 0.492 against 0.501 (``python benchmarks/backends.py --quantize OUT
--reduce-range``; benchmarks/README.md, "int8").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geounet.errors import GeounetError, OutputError
from geounet.network.checkpoint import is_onnx, load_model, resolve_model
from geounet.network.contract import ModelMeta
from geounet.network.onnx_file import ONNX_FORMAT_VERSION, onnx_properties, require_onnx
from geounet.network.unet import fuse_batchnorm

logger = logging.getLogger(__name__)

#: Suffix of the int8 file beside a model: ``buildings.safetensors`` -> ``buildings-int8.onnx``.
INT8_SUFFIX = "-int8.onnx"


def int8_path(model_file: str | os.PathLike[str]) -> Path:
    """Where a model file's int8 copy goes: ``NAME-int8.onnx`` beside ``NAME.safetensors``."""
    path = Path(model_file)
    return path.with_name(path.stem + INT8_SUFFIX)


def int8_sibling(model: str | os.PathLike[str] | None) -> Path | None:
    """The int8 graph that ``--precision int8`` runs for ``model``: ``NAME-int8.onnx`` beside
    the model file (a bundled name resolves to the package's file), or None when there is none.
    An ONNX file that is itself an int8 graph is its own."""
    path = resolve_model(model)
    if is_onnx(path):
        return path if is_int8_file(path) else None
    sibling = int8_path(path)
    return sibling if sibling.is_file() else None


def is_int8_file(path: str | os.PathLike[str]) -> bool:
    """Whether an ONNX file is a geounet int8 graph (its ``geounet_onnx`` record says so)."""
    return bool(onnx_properties(path)["geounet_onnx"].get("int8"))


def calibration_windows(
    meta: ModelMeta, images: Sequence[str | os.PathLike[str]], *, windows: int = 2, size: int = 256
) -> Iterator[npt.NDArray[np.float32]]:
    """Normalized ``(1, bands, size, size)`` windows of ``images`` as the network sees them: each
    image scaled the way prediction scales it (its own percentile stretch for a model that
    stretches each scene), then ``windows`` windows per image (the corners, then the centre)."""
    import rasterio
    from rasterio.windows import Window

    from geounet.geodata import normalize
    from geounet.geodata.raster import open_scene

    bands = list(range(1, meta.bands + 1))
    for image in images:
        scene = open_scene(image)
        if scene.count < meta.bands:
            raise GeounetError(
                f"{scene.name} has {scene.count} bands; the model takes {meta.bands}"
            )
        with rasterio.open(image) as src:
            offset, scale = normalize.scene_scaling(
                meta.normalization or {}, meta.mean, meta.std, src, scene, bands
            )
            h, w = src.height, src.width
            s = min(size, h, w) // 16 * 16
            if s < 16:
                continue
            corners = [(0, 0), (h - s, w - s), (0, w - s), (h - s, 0), ((h - s) // 2, (w - s) // 2)]
            for r, c in corners[:windows]:
                arr = src.read(bands, window=Window(c, r, s, s)).astype(np.float32)
                x = (arr - offset.reshape(-1, 1, 1)) / scale.reshape(-1, 1, 1)
                yield np.ascontiguousarray(x[None], dtype=np.float32)


def quantize_model(
    model: str | os.PathLike[str] | None,
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    windows: int = 2,
    size: int = 256,
    overwrite: bool = False,
    reduce_range: bool = True,
    calibration: str = "minmax",
) -> Path:
    """Write an int8 copy of a model, calibrated on windows of ``images``.

    Args:
        model: A ``.safetensors`` model file or a bundled model's name (None: the default).
        images: Calibration images: GeoTIFFs like those the model will see (its training images
            are best; a few dozen windows are enough).
        out: The ``.onnx`` file to write (``NAME-int8.onnx`` beside the model lets
            ``--precision int8`` find it).
        windows: Windows per image (corners, then the centre; at most 5).
        size: Window size in pixels (a multiple of 16 is used).
        overwrite: Replace an existing ``out``.
        reduce_range: 7-bit weights (keep it: full-range weights saturate the int16 sums of
            AVX2's VPMADDUBSW; see the module docstring).
        calibration: ``minmax``, or ``percentile`` (the 99.999th percentile of each activation's
            magnitude).

    Returns:
        The written file.

    Raises:
        GeounetError: onnx/onnxruntime missing, an ONNX model given, no usable image, or an
            output that exists or cannot be written.
    """
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from geounet.geodata.raster import AtomicOutputs
    from geounet.network.backends import _backend_graph

    onnx, _ = require_onnx("int8 quantization")
    dest = Path(out)
    if dest.suffix.lower() != ".onnx":
        raise OutputError(f"{dest}: an int8 model is an ONNX file; name it *.onnx")
    path = resolve_model(model)
    if is_onnx(path):
        raise GeounetError(f"{path.name} is an ONNX file; quantize the .safetensors model")
    if not images:
        raise GeounetError("int8 quantization needs calibration images (--images)")
    with AtomicOutputs() as outputs:
        target = outputs.reserve(dest, overwrite=overwrite)  # an unwritable output fails first
        net, meta = load_model(path)
        net = fuse_batchnorm(net.float()).eval()
        samples = list(calibration_windows(meta, images, windows=windows, size=size))
        if not samples:
            raise GeounetError("no calibration window: every image is smaller than 16 pixels")
        data, _ = _backend_graph(onnx, onnxruntime, net, meta)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.it = iter(samples)

            def get_next(self) -> dict[str, Any] | None:
                x = next(self.it, None)
                return None if x is None else {"input": x}

        with tempfile.TemporaryDirectory(prefix="geounet-int8-") as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            fp32.write_bytes(data)
            quantize_static(
                str(fp32),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile
                if calibration == "percentile"
                else CalibrationMethod.MinMax,
            )
        proto = onnx.load(str(target))
        extra = {
            "format_version": ONNX_FORMAT_VERSION,
            "input": "input",
            "logits": "logits",
            "fixed_size": None,
            "source": path.name,
            "int8": True,
            "calibration": {"windows": len(samples), "size": size, "images": len(images)},
        }
        for key, value in {"geounet": meta.to_json(), "geounet_onnx": json.dumps(extra)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(target))
    logger.info("wrote %s (int8, %d calibration windows)", dest, len(samples))
    return dest
