"""Vector labels: read once, reproject per raster CRS, buffer lines and points, rasterize windows.

The pipeline, for training a segmentation model:

1. :func:`read_labels` reads any vector format GDAL reads (``.gpkg``, ``.geojson``, ``.shp``,
   ``.fgb``, ...) through pyogrio, or GeoParquet (``.parquet``) through geopandas. Attribute values
   that are not UTF-8 are retried as Latin-1 instead of failing.
2. Each feature gets a class id, 1-based (0 is background): 1 for every feature of a binary task,
   else the position of its ``class_field`` value in ``classes`` (values are compared as strings).
3. Null and empty geometries are dropped, multi-geometries and GeometryCollections are split into
   their single parts, and invalid parts are repaired with ``shapely.make_valid``, keeping only the
   parts of the original dimension (a repaired polygon keeps its polygons, never the stray lines a
   repair can leave). A file may mix polygons, lines and points.
4. :meth:`Labels.for_raster` reprojects all parts to the raster's CRS (once per CRS, cached, with
   an STRtree), picks the parts near the raster, buffers LineStrings to ``line_width_m`` full
   width and Points to ``point_radius_m`` radius (in metres: in the raster CRS's units when it is
   projected, or in a local UTM zone when it is geographic), merges the parts of each feature and
   clips them to the raster plus a one-pixel margin.
5. :meth:`RasterLabels.rasterize` burns the features near one window (found with an STRtree) into
   a uint8 class-id array.

geopandas/shapely/pyproj/rasterio.features only; no torch.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyogrio
import pyproj
import rasterio.windows
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize as _burn
from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.raster import Scene, gdal_path, is_remote, short_error

logger = logging.getLogger(__name__)

#: Anything pyproj understands as a CRS: a rasterio or pyproj CRS, ``"EPSG:32633"``, 4326, WKT.
CRSInput: TypeAlias = CRS | pyproj.CRS | str | int

#: Geometries as a numpy object array of shapely geometries.
GeometryArray: TypeAlias = npt.NDArray[np.object_]

#: Class ids burn into uint8 masks, and 255 is the masks' nodata value.
MAX_CLASSES = 254

#: Name of the single class of a binary task when ``LabelSpec.classes`` does not name it.
BINARY_CLASS_NAME = "foreground"

#: Suffixes read with ``geopandas.read_parquet`` instead of GDAL.
PARQUET_SUFFIXES = (".parquet", ".geoparquet")

_MULTI_TYPE_IDS = (4, 5, 6, 7)  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection
_QUAD_SEGS = 8  # segments per quarter circle of the buffers: 0.5 % area error, 4x fewer vertices
_MAX_LISTED = 20  # fields or values listed in one error message


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """How to turn vector features into class ids and areas.

    Attributes:
        class_field: The attribute that names each feature's class; None for a binary task in
            which every feature is foreground.
        classes: Foreground class names in order (class id = position + 1; 0 is background).
            Features whose value is not listed are dropped. None: every value found, sorted
            (numerically when all values are integers, else as strings). Values are compared as
            strings, so an integer field takes ``classes=("1", "2")``. Without ``class_field``
            it may hold one name, the name of the binary class.
        line_width_m: Full width, in metres, that LineStrings are buffered to (> 0).
        point_radius_m: Radius, in metres, that Points are buffered to (> 0).

    Raises:
        LabelsError: Empty or duplicate ``classes``, several classes without ``class_field``, or a
            width or radius that is not a positive number.
    """

    class_field: str | None = None
    classes: tuple[str, ...] | None = None
    line_width_m: float = 4.0
    point_radius_m: float = 2.0

    def __post_init__(self) -> None:
        if self.classes is not None:
            names = tuple(str(c).strip() for c in self.classes)
            object.__setattr__(self, "classes", names)
            if not names:
                raise LabelsError("classes is empty; list at least one class name or pass None")
            dupes = sorted({c for c in names if names.count(c) > 1})
            if dupes:
                raise LabelsError(f"classes lists {dupes[0]!r} twice; give each class once")
            if len(names) > MAX_CLASSES:
                raise LabelsError(
                    f"classes has {len(names)} names; at most {MAX_CLASSES} fit a uint8 mask"
                )
            if self.class_field is None and len(names) > 1:
                raise LabelsError(
                    f"classes has {len(names)} names but class_field is not set; "
                    "name the attribute that holds each feature's class"
                )
        for attr in ("line_width_m", "point_radius_m"):
            value = getattr(self, attr)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise LabelsError(f"{attr} must be a positive number of metres, got {value!r}")


def read_labels(path: str | os.PathLike[str], spec: LabelSpec | None = None) -> Labels:
    """Read vector labels for training.

    Args:
        path: A vector file GDAL reads (``.gpkg``, ``.geojson``, ``.shp``, ``.fgb``, a
            ``/vsi...`` path or URL) or a GeoParquet file (``.parquet``). Of a multi-layer file
            the first layer is read.
        spec: Class field, class names and buffer sizes; default a binary task.

    Returns:
        The labels in their own CRS, ready for :meth:`Labels.for_raster`.

    Raises:
        LabelsError: Missing, empty or unreadable file; no features; no CRS; a ``class_field``
            that does not exist (the message lists the fields); no usable geometry or class.
    """
    spec = spec if spec is not None else LabelSpec()
    text = os.fspath(path)
    name = Path(text).name or text
    if not is_remote(text):
        p = Path(text)
        if not p.exists():
            raise LabelsError(f"{text}: no such file; check the labels path")
        if p.is_file() and p.stat().st_size == 0:
            raise LabelsError(f"{text} is empty (0 bytes); re-export the labels")
    if Path(text).suffix.lower() in PARQUET_SUFFIXES:
        frame = _read_parquet(text, name)
    else:
        try:
            frame = _read_ogr(gdal_path(text), name, spec.class_field, encoding=None)
        except UnicodeDecodeError:
            logger.info("%s: attributes are not UTF-8; reading them as Latin-1", name)
            frame = _read_ogr(gdal_path(text), name, spec.class_field, encoding="latin1")
    return Labels.from_frame(frame, spec, path=text)


def _unreadable(name: str, exc: BaseException) -> LabelsError:
    return LabelsError(
        f"{name} is not a readable vector file ({short_error(exc)}); check that it is complete and in "
        "a format GDAL reads (.gpkg, .geojson, .shp, .fgb) or GeoParquet (.parquet)"
    )


def _read_ogr(path: str, name: str, field: str | None, *, encoding: str | None) -> gpd.GeoDataFrame:
    """Read the first layer, only the class field and the geometry."""
    try:
        layers = pyogrio.list_layers(path)
        if len(layers) == 0:
            raise LabelsError(f"{name} holds no vector layer; export the labels to .gpkg")
        if len(layers) > 1:
            logger.warning(
                "%s has %d layers; reading the first, %r", name, len(layers), str(layers[0][0])
            )
        info = pyogrio.read_info(path, layer=0, encoding=encoding)
        fields = [str(f) for f in info["fields"]]
        if field is not None and field not in fields:
            raise _missing_field(name, field, fields)
        frame = gpd.read_file(
            path, engine="pyogrio", layer=0, columns=[field] if field else [], encoding=encoding
        )
    except (LabelsError, UnicodeDecodeError):
        raise
    except (RuntimeError, OSError, ValueError) as exc:  # pyogrio's errors are RuntimeErrors
        raise _unreadable(name, exc) from exc
    if not isinstance(frame, gpd.GeoDataFrame):
        raise LabelsError(f"{name} has no geometry column; labels need polygons, lines or points")
    return frame


def _read_parquet(path: str, name: str) -> gpd.GeoDataFrame:
    try:
        return gpd.read_parquet(path)
    except ImportError as exc:
        raise LabelsError(
            f"reading {name} needs pyarrow; pip install 'geounet[parquet]' or convert it to .gpkg"
        ) from exc
    except (RuntimeError, OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise _unreadable(name, exc) from exc


def _missing_field(name: str, field: str, fields: Sequence[str]) -> LabelsError:
    if not fields:
        return LabelsError(
            f"{name} has no attribute fields, so no class field {field!r}; "
            "drop class_field for a binary task"
        )
    close = [f for f in fields if f.lower() == field.lower()]
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(fields[:_MAX_LISTED])
    more = f" (+{len(fields) - _MAX_LISTED} more)" if len(fields) > _MAX_LISTED else ""
    return LabelsError(f"{name} has no field {field!r}; {hint}available fields: {listed}{more}")


class Labels:
    """Labels read once, reprojected per raster CRS on demand (cached), with a spatial index.

    Build with :func:`read_labels` or :meth:`from_frame`. Thread-safe.

    Attributes:
        path: The path as given (``"<memory>"`` for a frame).
        name: The file name, for messages.
        spec: The spec the labels were read with.
        crs: The labels' own CRS.
        class_names: Foreground class names in class-id order (id 1 first); a binary task has one
            (``spec.classes[0]`` or ``"foreground"``).
    """

    def __init__(
        self,
        *,
        path: str,
        spec: LabelSpec,
        crs: pyproj.CRS,
        class_names: list[str],
        feature_class: npt.NDArray[np.int64],
        parts: GeometryArray,
        part_feature: npt.NDArray[np.intp],
        part_dim: npt.NDArray[np.int8],
    ) -> None:
        self.path = path
        self.name = Path(path).name or path
        self.spec = spec
        self.crs = crs
        self.class_names = class_names
        self._feature_class = feature_class  # per row of the source, 0 where dropped
        self._parts = parts  # single-part geometries in self.crs
        self._part_feature = part_feature  # source row of each part
        self._part_dim = part_dim  # 0 point, 1 line, 2 polygon
        self._n_features = int(np.unique(part_feature).size)
        # A feature is an object (for object metrics) when every part of it is a polygon.
        not_poly = np.zeros(len(feature_class), dtype=bool)
        not_poly[part_feature[part_dim != 2]] = True
        self._feature_polygonal = ~not_poly
        self._projected: dict[str, _Projected] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_frame(
        cls, frame: gpd.GeoDataFrame, spec: LabelSpec | None = None, *, path: str = "<memory>"
    ) -> Labels:
        """Labels from a GeoDataFrame already in memory (what :func:`read_labels` does next).

        Args:
            frame: Features with a CRS and, for a multi-class task, the ``class_field`` column.
            spec: Class field, class names and buffer sizes; default a binary task.
            path: Where the features came from, for messages.

        Raises:
            LabelsError: No features, no CRS, a missing class field, no usable geometry or class.
        """
        spec = spec if spec is not None else LabelSpec()
        name = Path(path).name or path
        if len(frame) == 0:
            raise LabelsError(
                f"{name} has no features (empty layer); add labels or pick another file"
            )
        if frame.crs is None:
            raise LabelsError(
                f"{name} has no CRS; set one, e.g. ogr2ogr -a_srs EPSG:4326 fixed.gpkg {name}"
            )
        if spec.class_field is not None and spec.class_field not in frame.columns:
            fields = [str(c) for c in frame.columns if c != frame.geometry.name]
            raise _missing_field(name, spec.class_field, fields)
        feature_class, class_names = _class_ids(frame, spec, name)
        geoms = np.asarray(frame.geometry.array, dtype=object)
        parts, part_feature, part_dim = _clean_parts(geoms, feature_class > 0)
        if len(parts) == 0:
            raise LabelsError(
                f"{name} has no usable geometry: all {len(frame)} features are null, empty or "
                "degenerate; check the file in a GIS"
            )
        kept = np.unique(part_feature).size
        if kept < len(frame):
            logger.info("%s: %d of %d features used", name, kept, len(frame))
        return cls(
            path=path,
            spec=spec,
            crs=pyproj.CRS.from_user_input(frame.crs),
            class_names=class_names,
            feature_class=feature_class,
            parts=parts,
            part_feature=part_feature,
            part_dim=part_dim,
        )

    @property
    def binary(self) -> bool:
        """Whether there is one foreground class (a one-channel, sigmoid model)."""
        return len(self.class_names) == 1

    def __len__(self) -> int:
        """Features in use (with a usable geometry and a class)."""
        return self._n_features

    def __repr__(self) -> str:
        return f"Labels({self.name!r}, {len(self)} features, classes={self.class_names})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_projected"]  # a lock does not pickle; the cache is rebuilt
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._projected = {}
        self._lock = threading.Lock()

    def bounds(self, crs: CRSInput | None = None) -> tuple[float, float, float, float] | None:
        """(left, bottom, right, top) of the labels, before buffering.

        Args:
            crs: Reproject to this CRS first; default the labels' own CRS.

        Returns:
            The bounds, or None when no part can be reprojected to ``crs``.
        """
        if crs is None:
            b = shapely.total_bounds(self._parts)
            return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        return self._project(_as_crs(crs)).bounds

    def _project(self, crs: pyproj.CRS) -> _Projected:
        key = crs.to_wkt()
        with self._lock:
            hit = self._projected.get(key)
            if hit is None:
                hit = _Projected.build(self._parts, self.crs, crs)
                self._projected[key] = hit
            return hit

    def _reach_m(self) -> float:
        """How far buffering grows a part, in metres."""
        reach = 0.0
        if (self._part_dim == 1).any():
            reach = self.spec.line_width_m / 2
        if (self._part_dim == 0).any():
            reach = max(reach, self.spec.point_radius_m)
        return reach

    def for_raster(
        self, crs: CRSInput, transform: Affine, width: int, height: int, *, name: str
    ) -> RasterLabels:
        """The labels of one raster: reprojected, buffered, repaired and clipped to its bounds.

        Lines are buffered to ``spec.line_width_m`` full width and points to
        ``spec.point_radius_m`` radius, in metres: converted to CRS units with the CRS's axis
        unit factor when the raster CRS is projected, or in the UTM zone of the features (an
        azimuthal equidistant projection near the poles) and reprojected back when it is
        geographic. All parts of a feature are merged into one (Multi)Polygon, which is clipped
        to the raster bounds plus one pixel.

        Args:
            crs: The raster's CRS.
            transform: The raster's pixel-to-map transform (north-up).
            width: Raster columns.
            height: Raster rows.
            name: The raster's name, for messages.

        Returns:
            The features that touch the raster, in the raster's CRS; empty (``.empty``) when none
            does (callers decide whether that is an error; see :func:`check_overlap`).
        """
        dst = _as_crs(crs)
        proj = self._project(dst)
        left, bottom, right, top = _grid_bounds(transform, width, height)
        px = max(abs(transform.a), abs(transform.e))
        reach = _metres_to_units(dst, self._reach_m(), lat=(bottom + top) / 2)
        near = shapely.box(
            left - reach - px, bottom - reach - px, right + reach + px, top + reach + px
        )
        hits = np.sort(proj.tree.query(near, predicate="intersects"))
        empty = RasterLabels(
            gpd.GeoSeries([], crs=dst),
            np.zeros(0, dtype=np.int64),
            transform=transform,
            width=width,
            height=height,
            name=name,
            class_names=self.class_names,
        )
        if hits.size == 0:
            return empty
        src = proj.index[hits]
        parts = _buffer_parts(proj.parts[hits], self._part_dim[src], dst, self.spec)
        geoms, features = _merge_features(parts, self._part_feature[src])
        clipped = shapely.clip_by_rect(geoms, left - px, bottom - px, right + px, top + px)
        b = shapely.bounds(clipped)
        inside = (
            ~shapely.is_empty(clipped)
            & (b[:, 0] < right)
            & (b[:, 2] > left)
            & (b[:, 1] < top)
            & (b[:, 3] > bottom)
        )
        if not inside.any():
            return empty
        return RasterLabels(
            gpd.GeoSeries(clipped[inside], crs=dst),
            self._feature_class[features[inside]],
            transform=transform,
            width=width,
            height=height,
            name=name,
            class_names=self.class_names,
            source_ids=features[inside],
            polygonal=self._feature_polygonal[features[inside]],
        )

    def for_scene(self, scene: Scene) -> RasterLabels:
        """:meth:`for_raster` for a :class:`geounet.raster.Scene`."""
        return self.for_raster(
            scene.crs, scene.transform, scene.width, scene.height, name=scene.name
        )


@dataclass(frozen=True, slots=True)
class _Projected:
    """The parts of some labels in one CRS, with an STRtree."""

    parts: GeometryArray  # the parts that reprojected to finite coordinates
    index: npt.NDArray[np.intp]  # position of each in Labels._parts
    tree: shapely.STRtree
    bounds: tuple[float, float, float, float] | None

    @classmethod
    def build(cls, parts: GeometryArray, src: pyproj.CRS, dst: pyproj.CRS) -> _Projected:
        moved = _reproject(parts, src, dst)
        b = shapely.bounds(moved)
        ok = np.isfinite(b).all(axis=1)  # pyproj gives inf outside a projection's domain
        if not ok.all():
            logger.warning(
                "%d label parts cannot be reprojected to %s and are ignored there",
                int((~ok).sum()),
                _crs_label(dst),
            )
        moved = moved[ok]
        bounds = None
        if len(moved):
            t = shapely.total_bounds(moved)
            bounds = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
        return cls(moved, np.flatnonzero(ok), shapely.STRtree(moved), bounds)


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
                like :class:`geounet.raster.WindowReader`; it does not resample).

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
        win_transform = rasterio.windows.transform(window, self.transform)
        west, south, east, north = array_bounds(rows, cols, win_transform)
        hits = self._tree.query(shapely.box(west, south, east, north))
        if hits.size:
            hits = hits[np.argsort(self.class_ids[hits], kind="stable")]
            dx, dy = abs(win_transform.a), abs(win_transform.e)
            # Clip big features to the window so that only its vertices cross into GDAL.
            geoms = shapely.clip_by_rect(
                self._geoms[hits], west - dx, south - dy, east + dx, north + dy
            )
            keep = ~shapely.is_empty(geoms)
            if keep.any():
                pairs = zip(geoms[keep], self.class_ids[hits][keep].tolist(), strict=True)
                _burn(pairs, out=out, transform=win_transform, all_touched=False)
        # Pixels whose centre lies outside the raster are padding.
        r = window.row_off + np.arange(rows) + 0.5
        c = window.col_off + np.arange(cols) + 0.5
        out[(r < 0) | (r > self.height), :] = 0
        out[:, (c < 0) | (c > self.width)] = 0
        return out

    def centroids_px(self) -> npt.NDArray[np.float64]:
        """Pixel coordinates of a point inside each feature, for sampling windows on labels.

        The point is ``shapely.point_on_surface`` of the feature's part inside the raster, so it
        lies inside the feature and inside the raster.

        Returns:
            float64 (n, 2): row, col (fractional pixel coordinates, row 0.5 = centre of row 0).
        """
        if self._centroids is None:
            left, bottom, right, top = _grid_bounds(self.transform, self.width, self.height)
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


def check_overlap(
    labels: Labels,
    rasters: Sequence[tuple[str, CRSInput, tuple[float, float, float, float]]],
) -> list[str]:
    """Check that labels overlap at least one raster.

    Args:
        labels: The labels.
        rasters: (name, crs, (left, bottom, right, top)) of each raster.

    Returns:
        The names of the rasters the labels overlap (after buffering), in the given order.

    Raises:
        LabelsOutsideRasterError: The labels miss every raster; the message gives the labels'
            bounds reprojected to the first raster's CRS and that raster's bounds.
        LabelsError: ``rasters`` is empty.
    """
    if not rasters:
        raise LabelsError(f"no images to check {labels.name} against; give at least one image")
    reach_m = labels._reach_m()
    found = []
    for raster_name, crs, bounds in rasters:
        dst = _as_crs(crs)
        left, bottom, right, top = bounds
        reach = _metres_to_units(dst, reach_m, lat=(bottom + top) / 2)
        box = shapely.box(left - reach, bottom - reach, right + reach, top + reach)
        if labels._project(dst).tree.query(box, predicate="intersects").size:
            found.append(raster_name)
    if found:
        return found
    first_name, first_crs, first_bounds = rasters[0]
    dst = _as_crs(first_crs)
    src_label = _crs_label(labels.crs)
    dst_label = _crs_label(dst)
    more = f" ({len(rasters) - 1} more images not shown)" if len(rasters) > 1 else ""
    lb = labels._project(dst).bounds
    if lb is None:
        where = f"labels ({src_label}) cannot be reprojected to {dst_label}"
    else:
        how = f"{src_label}, reprojected" if not labels.crs.equals(dst) else src_label
        where = f"labels ({how}) cover {_fmt_bounds(lb)} in {dst_label}"
    raise LabelsOutsideRasterError(
        f"{labels.name} does not overlap any image: {where}; {first_name} covers "
        f"{_fmt_bounds(first_bounds)}{more}; check that the labels belong to these images"
    )


# --- helpers -------------------------------------------------------------------------------


def _as_crs(crs: CRSInput) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise LabelsError(f"unknown CRS {crs!r} ({short_error(exc)}); give e.g. EPSG:32633") from exc


def _crs_label(crs: pyproj.CRS) -> str:
    authority = crs.to_authority(min_confidence=90)
    return ":".join(authority) if authority else crs.name


def _fmt_bounds(bounds: Sequence[float]) -> str:
    """Bounds rounded to about a thousandth of their extent."""
    span = max(abs(bounds[2] - bounds[0]), abs(bounds[3] - bounds[1]), 1e-9)
    digits = min(8, max(0, 3 - math.floor(math.log10(span))))
    return ",".join(f"{v:.{digits}f}" for v in bounds)


def _grid_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    xs, ys = zip(
        *(transform * (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))),
        strict=True,
    )
    return (min(xs), min(ys), max(xs), max(ys))


def _metres_to_units(crs: pyproj.CRS, metres: float, *, lat: float) -> float:
    """A distance in metres in CRS units (for a geographic CRS, a generous bound in degrees)."""
    if metres == 0:
        return 0.0
    if crs.is_geographic:
        # Degrees of longitude shrink with cos(latitude); overestimate, this only widens a query.
        return 1.5 * metres / (111_320.0 * max(math.cos(math.radians(lat)), 0.01))
    axes = crs.axis_info
    factor = axes[0].unit_conversion_factor if axes and axes[0].unit_conversion_factor else 1.0
    return metres / factor


def _reproject(parts: GeometryArray, src: pyproj.CRS, dst: pyproj.CRS) -> GeometryArray:
    if src.equals(dst, ignore_axis_order=True):
        return parts
    transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)

    def move(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    moved: GeometryArray = shapely.transform(parts, move)
    return moved


def _local_metric_crs(parts: GeometryArray, crs: pyproj.CRS) -> pyproj.CRS:
    """A metric CRS for buffering parts given in a geographic CRS: the UTM zone of their centre.

    The zone comes from the centre's longitude (no pyproj database search, which takes ~0.15 s);
    beyond UTM's latitudes (80 S, 84 N) an azimuthal equidistant projection on the centre is used.
    """
    x0, y0, x1, y1 = shapely.total_bounds(parts)
    lon, lat = (x0 + x1) / 2, (y0 + y1) / 2
    axes = crs.axis_info
    in_degrees = bool(axes) and all(a.unit_name == "degree" for a in axes[:2])
    if not in_degrees or (crs.prime_meridian and crs.prime_meridian.longitude != 0):
        to_wgs84 = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon, lat = to_wgs84.transform(lon, lat)
    lon = (lon + 180) % 360 - 180
    if -80 <= lat <= 84:
        zone = int((lon + 180) // 6) % 60 + 1
        return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
    return pyproj.CRS.from_proj4(
        f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs"
    )


def _buffer_parts(
    parts: GeometryArray, dims: npt.NDArray[np.int8], crs: pyproj.CRS, spec: LabelSpec
) -> GeometryArray:
    """Buffer lines to ``line_width_m`` full width and points to ``point_radius_m`` radius."""
    grow = dims < 2
    if not grow.any():
        return parts
    metres = np.where(dims[grow] == 1, spec.line_width_m / 2, spec.point_radius_m)
    out = parts.copy()
    if crs.is_geographic:
        local = _local_metric_crs(parts[grow], crs)
        buffered = shapely.buffer(_reproject(parts[grow], crs, local), metres, quad_segs=_QUAD_SEGS)
        out[grow] = _reproject(buffered, local, crs)
    else:
        units = metres * _metres_to_units(crs, 1.0, lat=0.0)
        out[grow] = shapely.buffer(parts[grow], units, quad_segs=_QUAD_SEGS)
    return out


def _polygonal(geom: Any) -> Any:
    """The polygonal parts of a geometry, as one geometry (empty when there are none)."""
    polys = [p for p in shapely.get_parts(geom) if shapely.get_dimensions(p) == 2]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _merge_features(
    parts: GeometryArray, owner: npt.NDArray[np.intp]
) -> tuple[GeometryArray, npt.NDArray[np.intp]]:
    """One (Multi)Polygon per feature: the union of its parts, in ascending feature order."""
    order = np.argsort(owner, kind="stable")
    parts, owner = parts[order], owner[order]
    features, starts, counts = np.unique(owner, return_index=True, return_counts=True)
    geoms = parts[starts].copy()
    for i in np.flatnonzero(counts > 1):
        group = parts[starts[i] : starts[i] + counts[i]]
        try:
            geoms[i] = shapely.union_all(group)
        except shapely.errors.GEOSException:  # parts made invalid by reprojection
            geoms[i] = _polygonal(shapely.union_all(shapely.make_valid(group)))
    return geoms, features


def _flatten(
    geoms: GeometryArray, owner: npt.NDArray[np.intp]
) -> tuple[GeometryArray, npt.NDArray[np.intp]]:
    """Split multi-geometries and (nested) GeometryCollections into single parts."""
    while len(geoms) and np.isin(shapely.get_type_id(geoms), _MULTI_TYPE_IDS).any():
        geoms, idx = shapely.get_parts(geoms, return_index=True)
        owner = owner[idx]
    keep = ~shapely.is_empty(geoms)
    return geoms[keep], owner[keep]


def _clean_parts(
    geoms: GeometryArray, use: npt.NDArray[np.bool_]
) -> tuple[GeometryArray, npt.NDArray[np.intp], npt.NDArray[np.int8]]:
    """Valid, finite, 2D single parts of the used features, with their feature and dimension."""
    owner = np.flatnonzero(use & ~shapely.is_missing(geoms))
    geoms = shapely.force_2d(geoms[owner])
    parts, owner = _flatten(geoms, owner)
    dims = shapely.get_dimensions(parts).astype(np.int8)
    bad = ~shapely.is_valid(parts)
    if bad.any():
        fixed, idx = _flatten(shapely.make_valid(parts[bad]), np.arange(int(bad.sum())))
        # Keep the parts of the original dimension: a repaired polygon can shed lines and points.
        same = shapely.get_dimensions(fixed) == dims[bad][idx]
        logger.info("repaired %d invalid label geometries", int(bad.sum()))
        parts = np.concatenate([parts[~bad], fixed[same]])
        owner = np.concatenate([owner[~bad], owner[bad][idx[same]]])
        dims = np.concatenate([dims[~bad], dims[bad][idx[same]]])
    finite = np.isfinite(shapely.bounds(parts)).all(axis=1) if len(parts) else np.zeros(0, bool)
    parts, owner, dims = parts[finite], owner[finite], dims[finite]
    order = np.argsort(owner, kind="stable")
    return parts[order], owner[order].astype(np.intp), dims[order]


def _value_text(value: Any) -> str | None:
    """A class value as a string; None for a missing value."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return None
        if float(value).is_integer():  # integer fields with nulls read as float: 2.0 -> "2"
            return str(int(value))
    text = str(value).strip()
    return text or None


def _sort_classes(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def _class_ids(
    frame: gpd.GeoDataFrame, spec: LabelSpec, name: str
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Class id (1-based, 0 = dropped) of each feature, and the class names."""
    n = len(frame)
    if spec.class_field is None:
        names = list(spec.classes) if spec.classes else [BINARY_CLASS_NAME]
        return np.ones(n, dtype=np.int64), names
    field = spec.class_field
    texts = [_value_text(v) for v in frame[field].tolist()]
    found = {t for t in texts if t is not None}
    missing = texts.count(None)
    if missing:
        logger.warning("%s: %d features have no %r value and are ignored", name, missing, field)
    if not found:
        raise LabelsError(f"{name}: field {field!r} is empty in every feature; fill in the classes")
    if spec.classes is not None:
        names = list(spec.classes)
    else:
        names = _sort_classes(found)
        if len(names) > MAX_CLASSES:
            raise LabelsError(
                f"{name}: field {field!r} has {len(names)} distinct values, more than "
                f"{MAX_CLASSES} classes; pick the classes to use (LabelSpec.classes)"
            )
    lookup = {c: i for i, c in enumerate(names, start=1)}
    ids = np.array([lookup.get(t, 0) if t is not None else 0 for t in texts], dtype=np.int64)
    if not ids.any():
        values = _sort_classes(found)
        listed = ", ".join(values[:_MAX_LISTED]) + (" ..." if len(values) > _MAX_LISTED else "")
        raise LabelsError(
            f"{name}: no feature has a {field!r} value among classes ({', '.join(names)}); "
            f"values found: {listed}"
        )
    unused = sorted(found - set(names))
    if unused:
        logger.info(
            "%s: %d features with %r values not in classes are ignored (%s)",
            name,
            int(((ids == 0) & np.array([t is not None for t in texts])).sum()),
            field,
            ", ".join(unused[:_MAX_LISTED]),
        )
    return ids, names


__all__ = [
    "BINARY_CLASS_NAME",
    "MAX_CLASSES",
    "LabelSpec",
    "Labels",
    "RasterLabels",
    "check_overlap",
    "read_labels",
]
