"""Input scaling: raw band values to what the network sees, the same in training and prediction.

A model stores a ``normalization`` record beside its per-band ``mean`` and ``std``:

- ``{"mode": "scene", "low": 2, "high": 98}`` (the default for new models): each scene (each
  training image, each scene predicted) is stretched band by band so that its ``low`` and
  ``high`` percentiles map to 0 and 1, then standardized with ``mean``/``std`` (in stretched
  units, pooled over the training images). The percentiles come from up to 64 windows spread
  evenly over the scene, so they cost a few reads whatever its size, and they are one pair per
  scene, so tiles never see different scalings (no seams). The same building seen by two
  sensors, or under another exposure, reaches the network at about the same values.
- ``{"mode": "dataset", "low": 2, "high": 98, "lo": [...], "hi": [...]}``: the same stretch,
  but with the percentiles of the training set, fixed: absolute values keep their meaning
  (indices, calibrated reflectance, elevation).
- ``{}`` (models of format 1 without the record): ``(x - mean) / std`` in raw units.

Each is an affine map per band, ``(x - offset) / scale``, which :func:`scene_scaling` returns
for a given scene.

A ``scene`` record may also carry ``typical_lo`` and ``typical_hi``: per band, the median over
the model's training images of each image's ``low`` and ``high`` percentile (the stretch of a
typical training image; :func:`typical_stretch`). geounet itself never uses them to predict:
they are the fixed stretch that stands in for the per-scene one where a runtime cannot compute
percentiles (an ONNX export for QGIS Deepness folds them into its standardization; see
:mod:`geounet.network.export`). The median, not the mean, so that one odd image (an all-dark chip, a
saturated one) does not move them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.windows import Window

from geounet.errors import GeounetError
from geounet.geodata.raster import Scene, gdal_path, open_scene, read_window

#: Normalization modes a model may record.
MODES = ("scene", "dataset")
DEFAULT_LOW, DEFAULT_HIGH = 2.0, 98.0


def any_dtype(normalization: Mapping[str, Any]) -> bool:
    """Whether a model with this ``normalization`` record takes scenes of any data type: mode
    ``scene`` stretches each scene by its own percentiles, so a 16-bit or float scene reaches
    the network scaled as an 8-bit one would (fixed scalings keep their training data type)."""
    return normalization.get("mode") == "scene"


def sample_pixels(
    src: Any, scene: Scene, bands: Sequence[int], *, windows: int = 64, size: int = 256
) -> npt.NDArray[np.float32]:
    """Valid pixel values from up to ``windows`` windows spread evenly over a scene.

    A scene no larger than the windows together is read whole.

    Returns:
        float32 (bands, N) values of valid pixels (N may be 0 for an all-nodata scene).
    """
    h, w = scene.height, scene.width
    if h * w <= windows * size * size:
        grid = [Window(0, 0, w, h)]
    else:
        n = max(1, math.isqrt(windows))
        rows = np.linspace(0, max(0, h - size), n).round().astype(int)
        cols = np.linspace(0, max(0, w - size), n).round().astype(int)
        grid = [Window(int(c), int(r), min(size, w), min(size, h)) for r in rows for c in cols]
    parts = []
    for win in grid:
        raw, valid = read_window(src, scene, bands, win)
        parts.append(raw[:, valid])
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(bands), 0), np.float32)


def stretch_bounds(
    values: npt.NDArray[np.floating[Any]], low: float, high: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-band ``low`` and ``high`` percentiles of (bands, N) values, ``hi > lo`` guaranteed.

    A constant band (or no values) gets a span of 1 around its value, so it maps to about 0.
    """
    if values.shape[1] == 0:
        lo = np.zeros(values.shape[0])
        return lo, lo + 1
    lo, hi = np.percentile(values, [low, high], axis=1).astype(np.float64)
    flat = hi - lo <= 1e-6 * np.maximum(1.0, np.abs(hi))
    hi = np.where(flat, lo + 1.0, hi)
    return lo, hi


def image_stretch(
    image: Scene | str | os.PathLike[str],
    bands: Sequence[int],
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The per-band ``low``/``high`` percentiles of one image, as ``predict`` computes a scene's
    stretch (:func:`sample_pixels`, :func:`stretch_bounds`).

    Args:
        image: An opened :class:`~geounet.geodata.raster.Scene`, or a file
            :func:`geounet.geodata.raster.open_scene` opens.
        bands: 1-based bands, in the model's order.
        low, high: Percentiles (0..100).
    """
    scene = image if isinstance(image, Scene) else open_scene(image)
    with rasterio.open(gdal_path(scene.path)) as src:
        values = sample_pixels(src, scene, bands)
    return stretch_bounds(values, low, high)


def typical_stretch(
    bounds: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
) -> tuple[list[float], list[float]]:
    """The typical stretch of a set of images: per band, the median of their ``lo`` and of
    their ``hi`` (each image's own percentiles, e.g. from :func:`image_stretch`).

    Raises:
        GeounetError: No images.
    """
    if not bounds:
        raise GeounetError("no images to take a typical stretch from")
    los = np.asarray([np.asarray(lo, np.float64) for lo, _ in bounds])
    his = np.asarray([np.asarray(hi, np.float64) for _, hi in bounds])
    lo, hi = np.median(los, axis=0), np.median(his, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)  # medians of valid stretches can still meet
    return [float(v) for v in lo], [float(v) for v in hi]


def with_typical(
    normalization: Mapping[str, Any], bounds: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]]
) -> dict[str, Any]:
    """A ``scene`` record with the typical stretch of these images (``typical_lo``/``typical_hi``,
    see the module docstring); other records come back unchanged."""
    record = dict(normalization)
    if record.get("mode") != "scene" or not bounds:
        return record
    record["typical_lo"], record["typical_hi"] = typical_stretch(bounds)
    return record


def typical_bounds(
    normalization: Mapping[str, Any],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """The recorded typical ``(lo, hi)`` of a ``scene`` record, or None where it has none."""
    if normalization.get("mode") != "scene" or "typical_lo" not in normalization:
        return None
    return np.asarray(normalization["typical_lo"], np.float64), np.asarray(
        normalization["typical_hi"], np.float64
    )


def check(normalization: Mapping[str, Any], bands: int, source: str = "model") -> None:
    """Validate a model's normalization record.

    Raises:
        GeounetError: Unknown mode or inconsistent values.
    """
    if not normalization:
        return
    mode = normalization.get("mode")
    if mode not in MODES:
        raise GeounetError(
            f"{source}: unknown normalization mode {mode!r} (known: {', '.join(MODES)})"
        )
    low, high = normalization.get("low"), normalization.get("high")
    if not (
        isinstance(low, int | float) and isinstance(high, int | float) and 0 <= low < high <= 100
    ):
        raise GeounetError(
            f"{source}: normalization percentiles must satisfy 0 <= low < high <= 100"
        )
    if mode == "dataset":
        lo, hi = normalization.get("lo"), normalization.get("hi")
        if not (isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == bands):
            raise GeounetError(
                f"{source}: dataset normalization needs lo and hi for each of {bands} bands"
            )
    if "typical_lo" in normalization or "typical_hi" in normalization:
        lo, hi = normalization.get("typical_lo"), normalization.get("typical_hi")
        if not (
            mode == "scene"
            and isinstance(lo, list)
            and isinstance(hi, list)
            and len(lo) == len(hi) == bands
            and all(
                isinstance(a, int | float) and isinstance(b, int | float) and b > a
                for a, b in zip(lo, hi, strict=True)
            )
        ):
            raise GeounetError(
                f"{source}: typical_lo/typical_hi belong to a scene normalization, one value each for {bands} bands, hi above lo"
            )


def stretch_for(
    normalization: Mapping[str, Any], src: Any, scene: Scene, bands: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The (lo, hi) stretch of one scene: its own percentiles, or the model's fixed ones."""
    if normalization.get("mode") == "dataset":
        return np.asarray(normalization["lo"], np.float64), np.asarray(
            normalization["hi"], np.float64
        )
    values = sample_pixels(src, scene, bands)
    return stretch_bounds(values, float(normalization["low"]), float(normalization["high"]))


def affine(
    lo: npt.ArrayLike, hi: npt.ArrayLike, mean: Sequence[float], std: Sequence[float]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(offset, scale)`` of "stretch ``lo``..``hi`` to 0..1, then standardize with mean/std"."""
    lo = np.asarray(lo, np.float64)
    span = np.asarray(hi, np.float64) - lo
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (lo + m * span).astype(np.float32), (s * span).astype(np.float32)


def fixed_scaling(
    normalization: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(offset, scale)`` of a model whose scaling needs no scene: raw mean/std or ``dataset``."""
    if normalization.get("mode") == "dataset":
        return affine(normalization["lo"], normalization["hi"], mean, std)
    if normalization:
        raise GeounetError("this model stretches each scene; its scaling needs the scene")
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def scene_scaling(
    normalization: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    src: Any,
    scene: Scene,
    bands: Sequence[int],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The per-band ``(offset, scale)`` with which the network sees ``(x - offset) / scale``.

    Args:
        normalization: The model's record (``{}`` for raw mean/std).
        mean, std: The model's per-band standardization (stretched units, or raw for ``{}``).
        src: An open rasterio dataset of the scene (read only in ``scene`` mode).
        scene: The scene.
        bands: 1-based bands fed to the model.
    """
    if normalization.get("mode") != "scene":
        return fixed_scaling(normalization, mean, std)
    lo, hi = stretch_for(normalization, src, scene, bands)
    return affine(lo, hi, mean, std)


def describe(normalization: Mapping[str, Any]) -> str:
    """One line for ``model info``."""
    mode = normalization.get("mode")
    if not mode:
        return "mean/std (raw units)"
    where = "each scene's" if mode == "scene" else "the training set's"
    typical = typical_bounds(normalization)
    note = ""
    if typical is not None:
        note = (
            " (typical: lo "
            + "/".join(f"{v:g}" for v in typical[0])
            + ", hi "
            + "/".join(f"{v:g}" for v in typical[1])
            + ")"
        )
    return f"{where} {normalization['low']:g}-{normalization['high']:g} percentile stretch{note}, then mean/std"
