"""One mask raster file (:class:`MaskFile`, :func:`open_mask`): its grid, and its pixel values
checked and turned into class ids."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine

from geounet.errors import LabelsError
from geounet.geodata.raster import gdal_path, is_remote, short_error
from geounet.labels.crs import grid_bounds
from geounet.labels.spec import IGNORE_VALUE, MAX_CLASSES


@dataclass(frozen=True, slots=True)
class MaskFile:
    """One mask raster: a single band of class ids, and its grid.

    Attributes:
        path: The path as found (absolute for local files).
        name: The file name, for messages.
        crs: The mask's CRS; None when it is not georeferenced (it can then only be matched by
            file name to an image of the same size, whose grid it takes).
        transform: Pixel-to-map transform (identity when not georeferenced).
        width: Columns.
        height: Rows.
        nodata: The nodata value (ignored pixels), if any.
        dtype: Data type of the band.
    """

    path: str
    name: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    nodata: float | None
    dtype: str

    @property
    def stem(self) -> str:
        """The file name without its suffix, matched against image names (``x.tif`` -> ``x``)."""
        return Path(self.name).stem

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the mask's CRS units."""
        return grid_bounds(self.transform, self.width, self.height)


def open_mask(path: str | os.PathLike[str]) -> MaskFile:
    """Describe a mask raster (reads no pixels).

    Args:
        path: A raster GDAL reads with one band of class ids (GeoTIFF, VRT, PNG, ...).

    Returns:
        The mask's facts.

    Raises:
        LabelsError: Missing, unreadable, not one band, complex-valued or rotated.
    """
    text = os.fspath(path)
    name = Path(text).name or text
    if not is_remote(text) and not Path(text).is_file():
        raise LabelsError(f"{text}: no such mask file; check the labels path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(gdal_path(text)) as src:
                count, dtype = src.count, src.dtypes[0]
                crs, transform, nodata = src.crs, src.transform, src.nodata
                width, height = src.width, src.height
    except RasterioError as exc:
        raise LabelsError(
            f"{name} is not a readable raster ({short_error(exc)}); check that the mask is complete"
        ) from exc
    if count != 1:
        raise LabelsError(
            f"{name} has {count} bands but a mask raster has one band of class ids; is it an "
            "image? give the masks' folder or files as labels, not the images'"
        )
    if np.dtype(dtype).kind not in "uif":
        raise LabelsError(f"{name} is {dtype}; a mask holds integer class ids (e.g. uint8)")
    georeferenced = crs is not None and not transform.is_identity
    if georeferenced and (transform.b != 0 or transform.d != 0):
        raise LabelsError(
            f"{name} has a rotated geotransform; make it north-up first: "
            f"gdalwarp -r near {name} north_up.tif"
        )
    return MaskFile(
        path=text,
        name=name,
        crs=crs if georeferenced else None,
        transform=transform if georeferenced else Affine.identity(),
        width=width,
        height=height,
        nodata=nodata,
        dtype=dtype,
    )


def _mask_valid(
    raw: npt.NDArray[Any], nodata: float | None, ignore_value: int
) -> npt.NDArray[np.bool_]:
    """Pixels that hold a class id: not NaN, not nodata, not the ignore value."""
    valid: npt.NDArray[np.bool_] = np.asarray(raw != ignore_value, dtype=bool)
    if raw.dtype.kind == "f":
        valid &= ~np.isnan(raw)
    if nodata is not None and not math.isnan(nodata):
        valid &= raw != nodata
    return valid


def _bad_mask_value(name: str, value: float, n: int, ignore_value: int) -> LabelsError:
    shown = int(value) if float(value).is_integer() else value
    return LabelsError(
        f"{name} holds value {shown}, which is not a class id: a mask holds 0 (background), "
        f"1..{n} (the {n} class(es)) and {ignore_value} or its nodata value (ignore); list every "
        "class (LabelSpec.classes, --classes) or fix the mask"
    )


def mask_classes(
    raw: npt.NDArray[Any], mask: MaskFile, ignore_value: int, class_names: Sequence[str]
) -> npt.NDArray[np.uint8]:
    """Raw mask values -> uint8 class ids, :data:`IGNORE_VALUE` where ignored."""
    valid = _mask_valid(raw, mask.nodata, ignore_value)
    values = raw[valid]
    out = np.full(raw.shape, IGNORE_VALUE, dtype=np.uint8)
    if values.size:
        n = len(class_names)
        bad = (values < 0) | (values > n)
        if raw.dtype.kind == "f":
            bad |= values != np.floor(values)
        if bad.any():
            raise _bad_mask_value(mask.name, float(values[bad][0]), n, ignore_value)
        out[valid] = values.astype(np.uint8)
    return out


def scan_mask_values(mask: MaskFile, ignore_value: int) -> npt.NDArray[np.int64]:
    """The distinct class ids of a decimated read (at most 512 x 512 pixels), ascending."""
    k = max(1, math.ceil(math.sqrt(mask.width * mask.height / (512 * 512))))
    shape = (max(1, mask.height // k), max(1, mask.width // k))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(gdal_path(mask.path)) as src:
                raw = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    except RasterioError as exc:
        raise LabelsError(
            f"cannot read mask {mask.name} ({short_error(exc)}); check that it is complete"
        ) from exc
    values = np.unique(raw[_mask_valid(raw, mask.nodata, ignore_value)])
    bad = (values < 0) | (values != np.floor(values))
    if bad.any():
        raise _bad_mask_value(mask.name, float(values[bad][0]), MAX_CLASSES, ignore_value)
    return values.astype(np.int64)


__all__ = ["MaskFile", "open_mask"]
