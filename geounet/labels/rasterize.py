"""One raster's vector labels (:class:`RasterLabels`): features in the raster's CRS, burnt into
class ids and object ids window by window."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyproj
import rasterio.windows
import shapely
from rasterio.features import rasterize as _burn
from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window

from geounet.errors import LabelsError
from geounet.labels.crs import grid_bounds
from geounet.labels.geometry import GeometryArray
from geounet.labels.spec import BINARY_CLASS_NAME, MAX_CLASSES


class RasterLabels:
    """The labels of one raster, in its CRS, ready to rasterize window by window.

    Args:
        geometries: One polygonal geometry per feature, in the raster's CRS.
        class_ids: Class id of each feature, 1-based (0 is background).
        transform: The raster's pixel-to-map transform.
        width: Raster columns.
        height: Raster rows.
        name: The raster's name, for messages.
        class_names: Foreground class names in class-id order.
        source_ids: Row of each feature in the labels file (default 0..n-1).
        polygonal: Whether each feature was a polygon in the file (not a buffered line or
            point); default all True.

    Attributes:
        geometries: GeoSeries of the features (index 0..n-1), buffered and clipped to the raster
            plus one pixel (clipping may leave self-touching rings, which rasterizing ignores).
        class_ids: int64 (n,) class id of each feature.
        source_ids: intp (n,) row of each feature in the labels file.
        polygonal: bool (n,) whether each feature was a polygon in the file (an object).
    """

    def __init__(
        self,
        geometries: gpd.GeoSeries,
        class_ids: npt.ArrayLike,
        *,
        transform: Affine,
        width: int,
        height: int,
        name: str = "",
        class_names: Sequence[str] = (BINARY_CLASS_NAME,),
        source_ids: npt.ArrayLike | None = None,
        polygonal: npt.ArrayLike | None = None,
    ) -> None:
        self.geometries = geometries.reset_index(drop=True)
        self.class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        self.transform = transform
        self.width = width
        self.height = height
        self.name = name
        self.class_names = list(class_names)
        n = len(self.geometries)
        self.source_ids = (
            np.arange(n) if source_ids is None else np.asarray(source_ids, dtype=np.intp)
        )
        self.polygonal = (
            np.ones(n, dtype=bool) if polygonal is None else np.asarray(polygonal, dtype=bool)
        )
        if self.class_ids.size != n or self.source_ids.size != n:
            raise LabelsError(
                f"{name}: {n} geometries but {self.class_ids.size} class ids and "
                f"{self.source_ids.size} source ids; give one of each per geometry"
            )
        if n and not (1 <= self.class_ids.min() and self.class_ids.max() <= MAX_CLASSES):
            raise LabelsError(
                f"{name}: class ids must be 1..{MAX_CLASSES} (0 is background), got "
                f"{self.class_ids.min()}..{self.class_ids.max()}"
            )
        self._geoms: GeometryArray = np.asarray(self.geometries.array, dtype=object)
        self._tree = shapely.STRtree(self._geoms)
        self._centroids: npt.NDArray[np.float64] | None = None

    @property
    def crs(self) -> pyproj.CRS | None:
        """The raster's CRS."""
        crs: pyproj.CRS | None = self.geometries.crs
        return crs

    @property
    def empty(self) -> bool:
        """Whether no feature touches the raster."""
        return len(self._geoms) == 0

    def __len__(self) -> int:
        """Features touching the raster."""
        return len(self._geoms)

    def __repr__(self) -> str:
        return f"RasterLabels({self.name!r}, {len(self)} features)"

    def _window_box(self, window: Window) -> shapely.Polygon:
        left, bottom, right, top = rasterio.windows.bounds(window, self.transform)
        return shapely.box(min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def features_in(self, window: Window) -> list[int]:
        """Indexes (into :attr:`geometries`) of the features that intersect a window, ascending.

        Args:
            window: Pixel window of the raster (it may overhang the raster).
        """
        hits = self._tree.query(self._window_box(window), predicate="intersects")
        return sorted(int(i) for i in hits)

    def rasterize(
        self, window: Window, *, out_shape: tuple[int, int] | None = None
    ) -> npt.NDArray[np.uint8]:
        """Burn the class ids of the features in a window.

        A pixel takes a feature's class id when its centre lies inside the feature
        (``all_touched=False``). Features are burnt in ascending class id, so where features of
        different classes overlap the higher id wins. Only the features near the window (an
        STRtree query) are clipped to it and burnt.

        Args:
            window: Pixel window of the raster; it may overhang the raster.
            out_shape: (rows, cols) of the result; default the window's size. Rows and columns
                continue the window's pixel grid from its top-left corner (a larger shape pads,
                like :class:`geounet.geodata.raster.WindowReader`; it does not resample).

        Returns:
            uint8 (rows, cols) class ids; 0 is background and so is every pixel outside the
            raster.
        """
        rows, cols = (
            out_shape if out_shape is not None else (round(window.height), round(window.width))
        )
        out = np.zeros((rows, cols), dtype=np.uint8)
        if self.empty or rows <= 0 or cols <= 0:
            return out
        self._burn_features(out, window)
        self._fill_outside(out, window, 0)  # pixels whose centre lies outside the raster: padding
        return out

    def instances(
        self, window: Window, *, out_shape: tuple[int, int] | None = None
    ) -> npt.NDArray[np.int32]:
        """Object ids of a window: ``1 +`` the index of the polygon feature holding each pixel
        centre, 0 elsewhere. Buffered lines and points are not objects (a road network is one
        thing, not many); where polygons overlap the later one wins.

        Args:
            window: Pixel window of the raster; it may overhang the raster.
            out_shape: (rows, cols) of the result; default the window's size.
        """
        rows, cols = (
            out_shape if out_shape is not None else (round(window.height), round(window.width))
        )
        out = np.zeros((max(rows, 0), max(cols, 0)), dtype=np.int32)
        if self.empty or rows <= 0 or cols <= 0:
            return out

        def polygons(
            hits: npt.NDArray[np.intp],
        ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
            hits = np.sort(hits[self.polygonal[hits]])
            return hits, hits + 1

        self._burn_into(out, window, polygons)
        self._fill_outside(out, window, 0)
        return out

    def _burn_features(self, out: npt.NDArray[np.uint8], window: Window) -> None:
        """Burn the class ids of the features near ``window`` into ``out`` (its grid starts at
        the window), in ascending class id."""

        def by_class(
            hits: npt.NDArray[np.intp],
        ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
            hits = hits[np.argsort(self.class_ids[hits], kind="stable")]
            return hits, self.class_ids[hits]

        self._burn_into(out, window, by_class)

    def _burn_into(
        self,
        out: npt.NDArray[Any],
        window: Window,
        pick: Callable[[npt.NDArray[np.intp]], tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]],
    ) -> None:
        """Burn features near ``window`` into ``out``: ``pick(hits)`` gives the features to
        burn, in burning order, and the value of each."""
        if len(self._geoms) == 0:
            return
        rows, cols = out.shape
        win_transform = rasterio.windows.transform(window, self.transform)
        west, south, east, north = array_bounds(rows, cols, win_transform)
        hits, values = pick(self._tree.query(shapely.box(west, south, east, north)))
        if hits.size:
            dx, dy = abs(win_transform.a), abs(win_transform.e)
            # Clip big features to the window so that only its vertices cross into GDAL.
            geoms = shapely.clip_by_rect(
                self._geoms[hits], west - dx, south - dy, east + dx, north + dy
            )
            keep = ~shapely.is_empty(geoms)
            if keep.any():
                pairs = zip(geoms[keep], values[keep].tolist(), strict=True)
                _burn(pairs, out=out, transform=win_transform, all_touched=False)

    def _fill_outside(self, out: npt.NDArray[Any], window: Window, value: int) -> None:
        """Set the pixels of ``out`` whose centre lies outside the raster to ``value``."""
        rows, cols = out.shape
        r = window.row_off + np.arange(rows) + 0.5
        c = window.col_off + np.arange(cols) + 0.5
        out[(r < 0) | (r > self.height), :] = value
        out[:, (c < 0) | (c > self.width)] = value

    def centroids_px(self) -> npt.NDArray[np.float64]:
        """Pixel coordinates of a point inside each feature, for sampling windows on labels.

        The point is ``shapely.point_on_surface`` of the feature's part inside the raster, so it
        lies inside the feature and inside the raster.

        Returns:
            float64 (n, 2): row, col (fractional pixel coordinates, row 0.5 = centre of row 0).
        """
        if self._centroids is None:
            left, bottom, right, top = grid_bounds(self.transform, self.width, self.height)
            inner = shapely.clip_by_rect(self._geoms, left, bottom, right, top)
            inner = np.where(shapely.is_empty(inner), self._geoms, inner)
            pts = shapely.point_on_surface(inner)
            x, y = shapely.get_x(pts), shapely.get_y(pts)
            inv = ~self.transform
            col = inv.a * x + inv.b * y + inv.c
            row = inv.d * x + inv.e * y + inv.f
            self._centroids = (
                np.column_stack([np.clip(row, 0, self.height), np.clip(col, 0, self.width)])
                .astype(np.float64)
                .reshape(-1, 2)
            )
        return self._centroids.copy()


__all__ = ["RasterLabels"]
