"""One raster's labels from a mask (:class:`RasterMaskLabels`): the mask read window by window
in the raster's grid (reprojected with nearest resampling when the grids differ), with vector
features burnt over it."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyproj
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.warp import reproject
from rasterio.windows import Window
from scipy import ndimage

from geounet.errors import LabelsError
from geounet.geodata.raster import gdal_path, short_error
from geounet.labels.crs import CRSInput, as_crs
from geounet.labels.mask_file import MaskFile, mask_classes
from geounet.labels.rasterize import RasterLabels
from geounet.labels.spec import BINARY_CLASS_NAME, IGNORE_VALUE


class RasterMaskLabels(RasterLabels):
    """The labels of one raster from a mask, read window by window in the raster's grid.

    A pixel is the mask's class id (0 background, 1..N), or :data:`IGNORE_VALUE` where the mask
    is nodata, holds the ignore value, or does not reach. Vector features (``overlay``) are
    burnt over the mask: a feature's pixels take its class id wherever the mask says otherwise.

    When the mask's grid is the raster's (same CRS and pixel size, whole-pixel offset) windows
    are read directly; otherwise they are reprojected with nearest resampling, one window at a
    time (the mask is never read whole). The file is opened per read, so the object pickles
    and works in DataLoader worker processes.

    Args:
        mask: The raster's mask; None for no mask (every pixel ignored, but the overlay's).
        crs: The raster's CRS.
        transform: The raster's pixel-to-map transform.
        width: Raster columns.
        height: Raster rows.
        name: The raster's name, for messages.
        class_names: Foreground class names in class-id order.
        ignore_value: Mask value meaning "ignore" besides the mask's nodata value.
        overlay: Vector features of the raster, burnt over the mask.

    Attributes:
        mask: As given.
    """

    #: Largest decimated read (pixels) for finding labelled components.
    max_scan_pixels = 1024 * 1024
    #: Largest number of points :meth:`centroids_px` returns for the mask.
    max_centroids = 10_000

    def __init__(
        self,
        mask: MaskFile | None,
        *,
        crs: CRSInput,
        transform: Affine,
        width: int,
        height: int,
        name: str = "",
        class_names: Sequence[str] = (BINARY_CLASS_NAME,),
        ignore_value: int = IGNORE_VALUE,
        overlay: RasterLabels | None = None,
    ) -> None:
        if overlay is None:
            super().__init__(
                gpd.GeoSeries([], crs=as_crs(crs)),
                np.zeros(0, dtype=np.int64),
                transform=transform,
                width=width,
                height=height,
                name=name,
                class_names=class_names,
            )
        else:
            super().__init__(
                overlay.geometries,
                overlay.class_ids,
                transform=transform,
                width=width,
                height=height,
                name=name,
                class_names=class_names,
                source_ids=overlay.source_ids,
                polygonal=overlay.polygonal,
            )
        self.mask = mask
        self.ignore_value = ignore_value
        self._raster_crs = as_crs(crs)
        # A mask without a CRS was matched by name and size: it is in the raster's grid.
        self._mask_crs = as_crs(mask.crs) if mask is not None and mask.crs is not None else None
        self._mask_centroids: npt.NDArray[np.float64] | None = None

    @property
    def empty(self) -> bool:
        """Whether no mask overlaps the raster and no feature touches it."""
        return self.mask is None and len(self._geoms) == 0

    def __len__(self) -> int:
        """Labelled connected components of the mask (from a decimated read) plus features."""
        return len(self._mask_points()) + len(self._geoms)

    def __repr__(self) -> str:
        mask = self.mask.name if self.mask is not None else None
        return f"RasterMaskLabels({self.name!r}, mask={mask!r}, {len(self._geoms)} features)"

    def rasterize(
        self, window: Window, *, out_shape: tuple[int, int] | None = None
    ) -> npt.NDArray[np.uint8]:
        """The class ids of a window: the mask's, with the overlay's features burnt over them.

        Args:
            window: Pixel window of the raster, at whole-pixel offsets; it may overhang.
            out_shape: (rows, cols) of the result; default the window's size (a larger shape
                continues the window's grid, like :meth:`RasterLabels.rasterize`).

        Returns:
            uint8 (rows, cols): 0 background, 1..N classes, :data:`IGNORE_VALUE` where the mask
            is nodata or the ignore value, where no mask reaches, and outside the raster.

        Raises:
            LabelsError: A mask value that is not 0, a class id or an ignore value.
        """
        rows, cols = (
            out_shape if out_shape is not None else (round(window.height), round(window.width))
        )
        out = np.full((max(rows, 0), max(cols, 0)), IGNORE_VALUE, dtype=np.uint8)
        if rows <= 0 or cols <= 0:
            return out
        row_off, col_off = round(window.row_off), round(window.col_off)
        r0, r1 = max(0, -row_off), min(rows, self.height - row_off)
        c0, c1 = max(0, -col_off), min(cols, self.width - col_off)
        if self.mask is not None and r1 > r0 and c1 > c0:
            part = self.transform * Affine.translation(col_off + c0, row_off + r0)
            out[r0:r1, c0:c1] = self._read_mask(part, r1 - r0, c1 - c0)
        if len(self._geoms):
            self._burn_features(out, Window(col_off, row_off, cols, rows))
            self._fill_outside(out, Window(col_off, row_off, cols, rows), IGNORE_VALUE)
        return out

    def instances(
        self, window: Window, *, out_shape: tuple[int, int] | None = None
    ) -> npt.NDArray[np.int32]:
        """Object ids of a window: the 8-connected parts of its labelled pixels, numbered from 1.

        A mask cannot say where two touching objects meet, so touching neighbours are one
        object here; objects that a mask keeps apart by a gap stay apart.
        """
        cls = self.rasterize(window, out_shape=out_shape)
        labelled, _ = ndimage.label(
            (cls > 0) & (cls != IGNORE_VALUE), structure=np.ones((3, 3), bool)
        )
        ids: npt.NDArray[np.int32] = labelled.astype(np.int32, copy=False)
        return ids

    def centroids_px(self) -> npt.NDArray[np.float64]:
        """Points inside labelled parts, for sampling windows on labels.

        For the mask, one point per connected component of each class (8-connected) in a
        decimated read of at most :attr:`max_scan_pixels`, the component's most interior pixel,
        at most :attr:`max_centroids` of them (evenly thinned); then one per overlay feature.

        Returns:
            float64 (n, 2): row, col (fractional pixel coordinates, row 0.5 = centre of row 0).
        """
        return np.concatenate([self._mask_points(), super().centroids_px()]).reshape(-1, 2)

    def _mask_points(self) -> npt.NDArray[np.float64]:
        if self._mask_centroids is None:
            self._mask_centroids = np.zeros((0, 2))
            if self.mask is not None:
                self._mask_centroids = self._scan_components()
        return self._mask_centroids.copy()

    def _scan_components(self) -> npt.NDArray[np.float64]:
        k = max(1, math.ceil(math.sqrt(self.width * self.height / self.max_scan_pixels)))
        rows, cols = math.ceil(self.height / k), math.ceil(self.width / k)
        sy, sx = self.height / rows, self.width / cols
        small = self._read_mask(self.transform * Affine.scale(sx, sy), rows, cols)
        points = []
        for value in np.unique(small):
            if value == 0 or value == IGNORE_VALUE:
                continue
            inside = small == value
            comps, n = ndimage.label(inside, structure=np.ones((3, 3), dtype=bool))
            depth = ndimage.distance_transform_cdt(np.pad(inside, 1))[1:-1, 1:-1]
            at = ndimage.maximum_position(depth, comps, np.arange(1, n + 1))
            points.append(np.asarray(at, dtype=np.float64).reshape(-1, 2))
        if not points:
            return np.zeros((0, 2))
        rc = np.concatenate(points)
        if len(rc) > self.max_centroids:
            rc = rc[np.linspace(0, len(rc) - 1, self.max_centroids).round().astype(int)]
        return np.column_stack([(rc[:, 0] + 0.5) * sy, (rc[:, 1] + 0.5) * sx])

    def _read_mask(self, transform: Affine, rows: int, cols: int) -> npt.NDArray[np.uint8]:
        """The mask's class ids on a grid of the raster's CRS (ignore where it does not reach)."""
        mask = self.mask
        if mask is None:
            return np.full((rows, cols), IGNORE_VALUE, dtype=np.uint8)
        mask_crs = self._mask_crs or self._raster_crs
        mask_transform = mask.transform if self._mask_crs is not None else self.transform
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(gdal_path(mask.path)) as src:
                    offset = _grid_offset(mask_crs, mask_transform, self._raster_crs, transform)
                    if offset is not None:
                        return self._read_aligned(src, mask, offset, rows, cols)
                    dst = np.full((rows, cols), np.nan)
                    reproject(
                        rasterio.band(src, 1),
                        dst,
                        src_transform=mask_transform,
                        src_crs=CRS.from_wkt(mask_crs.to_wkt()),
                        src_nodata=mask.nodata,
                        dst_transform=transform,
                        dst_crs=CRS.from_wkt(self._raster_crs.to_wkt()),
                        dst_nodata=np.nan,
                        resampling=Resampling.nearest,
                        init_dest_nodata=True,
                    )
        except RasterioError as exc:
            raise LabelsError(
                f"cannot read mask {mask.name} for {self.name} ({short_error(exc)}); "
                "check that the mask is complete"
            ) from exc
        return mask_classes(dst, mask, self.ignore_value, self.class_names)

    def _read_aligned(
        self, src: Any, mask: MaskFile, offset: tuple[int, int], rows: int, cols: int
    ) -> npt.NDArray[np.uint8]:
        out = np.full((rows, cols), IGNORE_VALUE, dtype=np.uint8)
        r_off, c_off = offset
        r0, r1 = max(r_off, 0), min(r_off + rows, mask.height)
        c0, c1 = max(c_off, 0), min(c_off + cols, mask.width)
        if r1 > r0 and c1 > c0:
            raw = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            out[r0 - r_off : r1 - r_off, c0 - c_off : c1 - c_off] = mask_classes(
                raw, mask, self.ignore_value, self.class_names
            )
        return out


def _grid_offset(
    src_crs: pyproj.CRS, src: Affine, dst_crs: pyproj.CRS, dst: Affine
) -> tuple[int, int] | None:
    """(row, col) of the destination grid's pixel (0, 0) in the source grid, when the grids share
    the CRS and pixel size and are offset by whole pixels; else None (reproject)."""
    if src.b or src.d or dst.b or dst.d or not src_crs.equals(dst_crs, ignore_axis_order=True):
        return None
    if not (math.isclose(src.a, dst.a, rel_tol=1e-9) and math.isclose(src.e, dst.e, rel_tol=1e-9)):
        return None
    col = (dst.c - src.c) / src.a
    row = (dst.f - src.f) / src.e
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        return None
    return round(row), round(col)


__all__ = ["RasterMaskLabels"]
