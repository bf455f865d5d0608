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

Labels may also be mask rasters (:class:`MaskLabels`): one band of class ids, 0 background,
1..N classes, the nodata value (and :data:`IGNORE_VALUE`, 255) meaning "ignore". An image's mask
is the one named like it (``masks/x.tif`` for ``images/x.tif``), else the first that overlaps it;
:class:`RasterMaskLabels` reads it window by window in the image's grid (reprojected with nearest
resampling when the grids differ), with the same interface as :class:`RasterLabels`. Pixels that
no mask reaches are ignored, not background.

:func:`read_label_sources` takes any mix of vector files, masks, globs and folders and gives a
:class:`LabelSet`, whose :meth:`LabelSet.for_scene` unites the vector files' features and burns
them over the image's mask, if any.

geopandas/shapely/pyproj/rasterio/scipy.ndimage only; no torch.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyogrio
import pyproj
import rasterio
import rasterio.windows
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize as _burn
from rasterio.transform import Affine, array_bounds
from rasterio.warp import reproject
from rasterio.windows import Window
from scipy import ndimage

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import (
    RASTER_SUFFIXES,
    Scene,
    gdal_path,
    ground_scale,
    is_remote,
    short_error,
)

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

#: Mask value of pixels excluded from training (mask nodata, outside every mask); equals
#: ``geounet.training.dataset.IGNORE_INDEX``.
IGNORE_VALUE = 255

#: Suffixes taken as vector label files by :func:`expand_label_sources`.
VECTOR_SUFFIXES = (
    ".gpkg",
    ".geojson",
    ".json",
    ".shp",
    ".fgb",
    *PARQUET_SUFFIXES,
    ".kml",
    ".gml",
    ".sqlite",
)

#: Suffixes taken as mask rasters by :func:`expand_label_sources`.
MASK_SUFFIXES = (*RASTER_SUFFIXES, ".png")

_KNOWN_SUFFIXES = (*VECTOR_SUFFIXES, *MASK_SUFFIXES)
_FOLDER_SUFFIXES = tuple(s for s in _KNOWN_SUFFIXES if s != ".json")  # .json: often not labels
_LABEL_GLOB_CHARS = re.compile(r"[*?[]")

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

    def line_parts(self, crs: CRSInput) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        """The line parts of the features (not buffered) in ``crs``, and the class id of each."""
        proj = self._project(_as_crs(crs))
        src = proj.index
        is_line = self._part_dim[src] == 1
        cls = self._feature_class[self._part_feature[src]]
        keep = is_line & (cls > 0)
        return np.asarray(proj.parts)[keep], cls[keep].astype(np.int64)

    def class_geometry(self) -> dict[str, str]:
        """``line`` for each class whose features are all lines, else ``polygon``, by name
        (points and mixed classes are polygons: they are buffered to areas)."""
        out = {}
        for cid, name in enumerate(self.class_names, start=1):
            dims = self._part_dim[self._feature_class[self._part_feature] == cid]
            out[name] = "line" if len(dims) and bool((dims == 1).all()) else "polygon"
        return out

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
        """:meth:`for_raster` for a :class:`geounet.geodata.raster.Scene`."""
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


# --- mask rasters ---------------------------------------------------------------------------


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
        return _grid_bounds(self.transform, self.width, self.height)


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


class MaskLabels:
    """Labels given as mask rasters whose pixel values are class ids.

    A mask holds 0 for background, 1..N for the classes, and an ignore value (its nodata value,
    and :data:`IGNORE_VALUE` or the ``ignore_value`` given) for pixels excluded from training.
    Masks are matched to images by :meth:`match`; :meth:`for_scene` gives an image's labels,
    read window by window in the image's grid (reprojected with nearest resampling when the
    grids differ). Thread-safe.

    Args:
        paths: Mask rasters (see :func:`open_mask`), in priority order.
        spec: Only ``spec.classes`` is used: the names of values 1..N.
        ignore_value: Mask value meaning "ignore" besides the nodata value.
        class_names: Names to use when ``spec.classes`` is not given (e.g. those of vector
            labels trained together with the masks); values above their count are an error.
        names_from: Where ``class_names`` come from, for messages.

    Attributes:
        files: The masks.
        class_names: Names of values 1..N: ``spec.classes``, else ``class_names``, else the
            binary default for a 0/1 mask, else ``class1..classN`` for the largest value N found
            in a decimated read of every mask.
        ignore_value: As given.

    Raises:
        LabelsError: No masks, an unreadable mask, a negative, fractional or too large class id,
            or an ignore value that is also a class id.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        spec: LabelSpec | None = None,
        *,
        ignore_value: int = IGNORE_VALUE,
        class_names: Sequence[str] | None = None,
        names_from: str = "",
    ) -> None:
        spec = spec if spec is not None else LabelSpec()
        if not paths:
            raise LabelsError("no mask rasters given; give mask files, a folder or a glob")
        if isinstance(ignore_value, bool) or not isinstance(ignore_value, int | np.integer):
            raise LabelsError(f"ignore_value must be an integer, got {ignore_value!r}")
        self.spec = spec
        self.ignore_value = int(ignore_value)
        self.files = [open_mask(p) for p in dict.fromkeys(os.fspath(p) for p in paths)]
        self._by_stem: dict[str, list[int]] = {}
        for i, f in enumerate(self.files):
            self._by_stem.setdefault(f.stem, []).append(i)
        if spec.classes is not None:
            names, source = list(spec.classes), "LabelSpec.classes"
        elif class_names:
            names, source = list(class_names), names_from or "the other labels"
        else:
            names, source = [], ""
        top, top_file = 0, self.files[0]
        for f in self.files:
            values = _scan_mask_values(f, self.ignore_value)
            if values.size and int(values[-1]) > top:
                top, top_file = int(values[-1]), f
        if top > MAX_CLASSES:
            raise LabelsError(
                f"{top_file.name} holds class id {top}; at most {MAX_CLASSES} classes fit a uint8 "
                "mask (0 is background, 255 is ignore)"
            )
        if not names:
            names = [BINARY_CLASS_NAME] if top <= 1 else [f"class{i}" for i in range(1, top + 1)]
        elif top > len(names):
            raise LabelsError(
                f"{top_file.name} holds class id {top}, but {source} names {len(names)} "
                f"class(es) ({', '.join(names[:_MAX_LISTED])}); a mask holds 0 (background), "
                f"1..{len(names)} and {self.ignore_value} (ignore): list every class "
                "(LabelSpec.classes, --classes) or fix the mask"
            )
        if 0 <= self.ignore_value <= len(names):
            raise LabelsError(
                f"ignore value {self.ignore_value} is also a class id (0 background, "
                f"1..{len(names)} classes); pick another, e.g. {IGNORE_VALUE}"
            )
        self.class_names = names
        self._boxes: dict[str, npt.NDArray[np.float64]] = {}
        self._lock = threading.Lock()

    @property
    def binary(self) -> bool:
        """Whether there is one foreground class."""
        return len(self.class_names) == 1

    @property
    def paths(self) -> list[str]:
        """The masks' paths, in priority order."""
        return [f.path for f in self.files]

    def __len__(self) -> int:
        """Number of masks."""
        return len(self.files)

    def __repr__(self) -> str:
        return f"MaskLabels({len(self)} masks, classes={self.class_names})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def boxes(self, crs: CRSInput) -> npt.NDArray[np.float64]:
        """Bounds of every mask in another CRS (cached per CRS).

        Args:
            crs: The target CRS.

        Returns:
            float64 (n, 4) left, bottom, right, top; NaN for a mask that is not georeferenced or
            cannot be reprojected to ``crs``.
        """
        dst = _as_crs(crs)
        key = dst.to_wkt()
        with self._lock:
            hit = self._boxes.get(key)
            if hit is None:
                hit = np.full((len(self.files), 4), np.nan)
                for i, f in enumerate(self.files):
                    if f.crs is not None:
                        hit[i] = _reproject_bounds(f.bounds, _as_crs(f.crs), dst)
                self._boxes[key] = hit
            return hit

    def match(self, scene: Scene) -> MaskFile | None:
        """The mask of one image.

        The first mask whose file stem equals the image's (``masks/x.tif`` for ``images/x.tif``)
        and that overlaps it, or, when it is not georeferenced, has the image's size (it then
        takes the image's grid); else the first georeferenced mask that overlaps the image by
        at least half a pixel each way.

        Args:
            scene: The image.

        Returns:
            The mask, or None when no mask belongs to the image.

        Raises:
            LabelsError: A mask matched by name that is not georeferenced and has another size.
        """
        boxes = self.boxes(scene.crs)
        left, bottom, right, top = scene.bounds
        px, py = scene.res
        w = np.minimum(boxes[:, 2], right) - np.maximum(boxes[:, 0], left)
        h = np.minimum(boxes[:, 3], top) - np.maximum(boxes[:, 1], bottom)
        overlaps = (w > px / 2) & (h > py / 2)  # NaN compares False
        itself = _same_file(scene.path)
        for i in self._by_stem.get(Path(scene.name).stem, []):
            f = self.files[i]
            if _same_file(f.path) == itself:
                continue
            if f.crs is None:
                if (f.width, f.height) != (scene.width, scene.height):
                    raise LabelsError(
                        f"{f.name} is not georeferenced and is {f.width}x{f.height} px but "
                        f"{scene.name} is {scene.width}x{scene.height}; a mask without a CRS "
                        "must have its image's size (or georeference it)"
                    )
                return f
            if overlaps[i]:
                return f
            logger.warning(
                "%s has the name of %s but does not overlap it; looking for a mask that does",
                f.name,
                scene.name,
            )
        hits = np.flatnonzero(overlaps)
        return self.files[int(hits[0])] if hits.size else None

    def for_scene(self, scene: Scene, *, overlay: RasterLabels | None = None) -> RasterMaskLabels:
        """The labels of one image: its mask (see :meth:`match`), in the image's grid.

        Args:
            scene: The image.
            overlay: Vector features of the image, burnt over the mask.

        Returns:
            The image's labels; ``.empty`` when no mask belongs to it (and ``overlay`` is empty).
        """
        return RasterMaskLabels(
            self.match(scene),
            crs=scene.crs,
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            name=scene.name,
            class_names=self.class_names,
            ignore_value=self.ignore_value,
            overlay=overlay,
        )


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
                gpd.GeoSeries([], crs=_as_crs(crs)),
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
        self._raster_crs = _as_crs(crs)
        # A mask without a CRS was matched by name and size: it is in the raster's grid.
        self._mask_crs = _as_crs(mask.crs) if mask is not None and mask.crs is not None else None
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
        ids, _ = ndimage.label((cls > 0) & (cls != IGNORE_VALUE), structure=np.ones((3, 3), bool))
        return ids.astype(np.int32, copy=False)

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
        return _mask_classes(dst, mask, self.ignore_value, self.class_names)

    def _read_aligned(
        self, src: Any, mask: MaskFile, offset: tuple[int, int], rows: int, cols: int
    ) -> npt.NDArray[np.uint8]:
        out = np.full((rows, cols), IGNORE_VALUE, dtype=np.uint8)
        r_off, c_off = offset
        r0, r1 = max(r_off, 0), min(r_off + rows, mask.height)
        c0, c1 = max(c_off, 0), min(c_off + cols, mask.width)
        if r1 > r0 and c1 > c0:
            raw = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            out[r0 - r_off : r1 - r_off, c0 - c_off : c1 - c_off] = _mask_classes(
                raw, mask, self.ignore_value, self.class_names
            )
        return out


def _same_file(path: str) -> str:
    return path if is_remote(path) else os.path.realpath(path)


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


def _mask_classes(
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


def _scan_mask_values(mask: MaskFile, ignore_value: int) -> npt.NDArray[np.int64]:
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


def _reproject_bounds(
    bounds: tuple[float, float, float, float], src: pyproj.CRS, dst: pyproj.CRS
) -> tuple[float, float, float, float]:
    """Bounds in another CRS (densified edges); NaNs when they cannot be reprojected."""
    if src.equals(dst, ignore_axis_order=True):
        return bounds
    try:
        transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)
        out = transformer.transform_bounds(*bounds, densify_pts=21)
    except pyproj.exceptions.ProjError:
        return (math.nan, math.nan, math.nan, math.nan)
    if not np.isfinite(out).all():
        return (math.nan, math.nan, math.nan, math.nan)
    return (float(out[0]), float(out[1]), float(out[2]), float(out[3]))


# --- several label sources ------------------------------------------------------------------


def _label_kind(path: str) -> Literal["vector", "mask"]:
    """Whether a file holds vector labels or a mask raster: by suffix, else by opening it."""
    suffix = Path(path).suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return "vector"
    if suffix in MASK_SUFFIXES:
        return "mask"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if len(pyogrio.list_layers(gdal_path(path))):
                return "vector"
        except (RuntimeError, OSError, ValueError):  # pyogrio's errors are RuntimeErrors
            pass
        try:
            with rasterio.open(gdal_path(path)):
                return "mask"
        except RasterioError:
            pass
    name = Path(path).name or path
    raise LabelsError(
        f"{name} is neither a vector file nor a raster GDAL reads; give vector labels "
        "(.gpkg, .geojson, .shp, .fgb, .parquet) or mask rasters (.tif)"
    )


def expand_label_sources(
    sources: Sequence[str | os.PathLike[str]],
) -> tuple[list[str], list[str]]:
    """Expand label sources into vector files and mask rasters.

    - ``buildings.gpkg``, ``masks/x.tif``: a file (or URL); a suffix in :data:`VECTOR_SUFFIXES`
      makes it vector labels, one in :data:`MASK_SUFFIXES` a mask, any other is opened to tell.
    - ``labels/*.geojson``, ``masks/**/*.tif``: a glob (``**`` recurses); it must match at least
      one file with one of those suffixes.
    - ``masks/``: a folder: every vector file (``.json`` excepted) and raster below it, sorted.

    Local paths come back absolute; duplicates are dropped, the first keeps its place.

    Args:
        sources: What the user gave.

    Returns:
        (vector files, mask rasters), each in the given order.

    Raises:
        LabelsError: A missing path, a glob or folder without label files, or a file that is
            neither vector nor raster.
    """
    vectors: list[str] = []
    masks: list[str] = []
    for item in sources:
        text = os.fspath(item)
        if is_remote(text):
            found = [text]
        else:
            path = os.path.expanduser(text)
            if _LABEL_GLOB_CHARS.search(path) and not os.path.exists(path):
                found = [
                    os.path.abspath(p)
                    for p in sorted(glob.glob(path, recursive=True))
                    if os.path.isfile(p) and Path(p).suffix.lower() in _KNOWN_SUFFIXES
                ]
                if not found:
                    raise LabelsError(
                        f"{text} matches no label files ({', '.join(_KNOWN_SUFFIXES)}); check "
                        "the pattern (quote it, and use ** to search subfolders)"
                    )
            elif os.path.isdir(path):
                found = sorted(
                    os.path.abspath(p)
                    for p in Path(path).rglob("*")
                    if p.suffix.lower() in _FOLDER_SUFFIXES and p.is_file()
                )
                if not found:
                    raise LabelsError(
                        f"{text}: no vector files or rasters ({', '.join(_FOLDER_SUFFIXES)}) "
                        "in this folder"
                    )
            elif os.path.exists(path):
                found = [os.path.abspath(path)]
            else:
                raise LabelsError(f"{text}: no such file or folder; check the labels path")
        for p in found:
            (vectors if _label_kind(p) == "vector" else masks).append(p)
    return list(dict.fromkeys(vectors)), list(dict.fromkeys(masks))


def read_label_sources(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    spec: LabelSpec | None = None,
    *,
    ignore_value: int = IGNORE_VALUE,
) -> LabelSet:
    """Read labels from any mix of vector files, mask rasters, globs and folders.

    Each vector file is read with :func:`read_labels` (in its own CRS); masks are described
    with :class:`MaskLabels`. See :func:`expand_label_sources` for what a source may be.

    Args:
        sources: One source or several.
        spec: Class field, class names and buffer sizes; default a binary task.
        ignore_value: Mask value meaning "ignore" besides each mask's nodata value.

    Returns:
        The labels, ready for :meth:`LabelSet.for_scene`.

    Raises:
        LabelsError: No sources, a bad source (see :func:`read_labels`, :class:`MaskLabels`),
            or sources whose classes differ (the message names the file).
    """
    spec = spec if spec is not None else LabelSpec()
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    if not items:
        raise LabelsError("no labels given; pass vector files, mask rasters, globs or folders")
    vector_paths, mask_paths = expand_label_sources(items)
    vectors = [read_labels(p, spec) for p in vector_paths]
    for v in vectors[1:]:
        if v.class_names != vectors[0].class_names:
            raise LabelsError(
                f"{v.name} has classes {v.class_names} but {vectors[0].name} has "
                f"{vectors[0].class_names}; list the classes (LabelSpec.classes, --classes) so "
                "that every label file uses the same"
            )
    masks = None
    if mask_paths:
        masks = MaskLabels(
            mask_paths,
            spec,
            ignore_value=ignore_value,
            class_names=vectors[0].class_names if vectors else None,
            names_from=vectors[0].name if vectors else "",
        )
    return LabelSet(vectors, masks, sources=[os.fspath(s) for s in items])


class LabelSet:
    """Labels from several sources: vector files and mask rasters, for many images.

    Per image (:meth:`for_scene`): with vector files only, the union of their features (the
    rest is background, as with one file). When a mask belongs to the image (see
    :meth:`MaskLabels.match`), the mask is the base (ignore where it is nodata or does not
    reach) and the vector features are burnt over it, since drawn features are usually the more
    deliberate labels. An image without a mask gets the vector semantics (background around the
    features) when there are vector files, and is all ignored when there are only masks.

    Build with :func:`read_label_sources`.

    Args:
        vectors: Vector labels, each in its own CRS, with the same class names.
        masks: Mask labels with the same class names, or None.
        sources: The sources as given, for provenance and messages.

    Attributes:
        vectors: As given.
        masks: As given.
        sources: As given.
        class_names: Foreground class names in class-id order (id 1 first).

    Raises:
        LabelsError: No vectors and no masks, or class names that differ.
    """

    def __init__(
        self,
        vectors: Sequence[Labels],
        masks: MaskLabels | None = None,
        *,
        sources: Sequence[str] = (),
    ) -> None:
        self.vectors = list(vectors)
        self.masks = masks
        self.sources = list(sources) or self.paths
        if self.vectors:
            self.class_names = list(self.vectors[0].class_names)
        elif masks is not None:
            self.class_names = list(masks.class_names)
        else:
            raise LabelsError("no labels given; pass vector files, mask rasters, globs or folders")
        for v in self.vectors:
            if v.class_names != self.class_names:
                raise LabelsError(
                    f"{v.name} has classes {v.class_names} but the other labels have "
                    f"{self.class_names}; give every source the same classes"
                )
        if masks is not None and masks.class_names != self.class_names:
            raise LabelsError(
                f"the masks ({masks.files[0].name}, ...) have classes {masks.class_names} but the "
                f"vector labels have {self.class_names}; give every source the same classes"
            )

    @property
    def binary(self) -> bool:
        """Whether there is one foreground class (a one-channel, sigmoid model)."""
        return len(self.class_names) == 1

    def class_geometry(self) -> dict[str, str]:
        """``line`` for each class that every vector file labels with lines only, else
        ``polygon`` (mask rasters say nothing: their classes are polygons)."""
        out = dict.fromkeys(self.class_names, "polygon")
        if not self.vectors or self.masks is not None:
            return out
        per_file = [v.class_geometry() for v in self.vectors]
        for name in self.class_names:
            kinds = [g[name] for g in per_file if name in g]
            if kinds and all(k == "line" for k in kinds):
                out[name] = "line"
        return out

    @property
    def paths(self) -> list[str]:
        """Every label file: the vector files, then the masks."""
        return [v.path for v in self.vectors] + (self.masks.paths if self.masks else [])

    @property
    def path(self) -> str:
        """The sources as one string, for messages."""
        shown = ", ".join(self.sources[:3])
        return shown + (f" (+{len(self.sources) - 3} more)" if len(self.sources) > 3 else "")

    def describe(self) -> str:
        """One short line for logs, e.g. ``3 vector files (965 features), 56 masks``."""
        parts = []
        if self.vectors:
            n = sum(len(v) for v in self.vectors)
            files = "file" if len(self.vectors) == 1 else "files"
            parts.append(f"{len(self.vectors)} vector {files} ({n} features)")
        if self.masks is not None:
            parts.append(f"{len(self.masks)} mask{'s' if len(self.masks) != 1 else ''}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"LabelSet({self.describe()}, classes={self.class_names})"

    def for_scene(self, scene: Scene) -> RasterLabels:
        """The labels of one image, with the interface of :class:`RasterLabels`.

        Args:
            scene: The image.

        Returns:
            A :class:`RasterLabels` (vector files only, or no mask for this image) or a
            :class:`RasterMaskLabels`; ``.empty`` when no source touches the image.
        """
        overlay = self._vectors_for(scene)
        if self.masks is None or (overlay is not None and self.masks.match(scene) is None):
            assert overlay is not None  # a LabelSet has vector files, masks or both
            return overlay
        return self.masks.for_scene(scene, overlay=overlay)

    def _vectors_for(self, scene: Scene) -> RasterLabels | None:
        """The union of the vector files' features for one image (None without vector files)."""
        if not self.vectors:
            return None
        per_file = [v.for_scene(scene) for v in self.vectors]
        if len(per_file) == 1:
            return per_file[0]
        offsets = np.cumsum([0] + [len(v._feature_class) for v in self.vectors[:-1]])
        geoms = [np.asarray(r.geometries.array, dtype=object) for r in per_file]
        return RasterLabels(
            gpd.GeoSeries(np.concatenate(geoms), crs=_as_crs(scene.crs)),
            np.concatenate([r.class_ids for r in per_file]),
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            name=scene.name,
            class_names=self.class_names,
            source_ids=np.concatenate(
                [r.source_ids + off for r, off in zip(per_file, offsets, strict=True)]
            ),
            polygonal=np.concatenate([r.polygonal for r in per_file]),
        )

    def check(self, scenes: Sequence[Scene]) -> list[str]:
        """Check that some source overlaps at least one image.

        Args:
            scenes: The images.

        Returns:
            The names of the images that some source overlaps (vector features after
            buffering, or a matched mask), in the given order.

        Raises:
            LabelsOutsideRasterError: No source overlaps any image; the message gives where the
                labels are (in the first image's CRS) and where that image is.
            LabelsError: ``scenes`` is empty.
        """
        if not scenes:
            raise LabelsError(f"no images to check {self.path} against; give at least one image")
        rasters = [(s.name, s.crs, s.bounds) for s in scenes]
        found: set[str] = set()
        errors: list[LabelsOutsideRasterError] = []
        for v in self.vectors:
            try:
                found.update(check_overlap(v, rasters))
            except LabelsOutsideRasterError as exc:
                errors.append(exc)
        if self.masks is not None:
            found.update(s.name for s in scenes if self.masks.match(s) is not None)
        if not found:
            if len(self.vectors) == 1 and self.masks is None:
                raise errors[0]
            raise self._outside_error(scenes)
        names = [s.name for s in scenes if s.name in found]
        if not self.vectors and len(names) < len(scenes):
            missing = [s.name for s in scenes if s.name not in found]
            logger.warning(
                "%d of %d images have no mask, so none of their pixels is trained on: %s%s",
                len(missing),
                len(scenes),
                ", ".join(missing[:5]),
                " ..." if len(missing) > 5 else "",
            )
        return names

    def _outside_error(self, scenes: Sequence[Scene]) -> LabelsOutsideRasterError:
        first = scenes[0]
        dst = _as_crs(first.crs)
        where = []
        for v in self.vectors[:3]:
            b = v._project(dst).bounds
            where.append(
                f"{v.name} covers {_fmt_bounds(b)}" if b else f"{v.name} cannot be reprojected"
            )
        if len(self.vectors) > 3:
            where.append(f"{len(self.vectors) - 3} more vector files")
        if self.masks is not None:
            boxes = self.masks.boxes(dst)
            ok = np.isfinite(boxes).all(axis=1)
            if ok.any():
                b = (
                    boxes[ok, 0].min(),
                    boxes[ok, 1].min(),
                    boxes[ok, 2].max(),
                    boxes[ok, 3].max(),
                )
                where.append(f"the masks cover {_fmt_bounds(b)}")
            else:
                where.append("no mask is georeferenced or named after an image")
        more = f" ({len(scenes) - 1} more images not shown)" if len(scenes) > 1 else ""
        return LabelsOutsideRasterError(
            f"none of the labels ({self.describe()}) overlaps any image: {', '.join(where)} in "
            f"{_crs_label(dst)}; {first.name} covers {_fmt_bounds(first.bounds)}{more}; check "
            "that the labels belong to these images (masks are matched by file name, else by "
            "location)"
        )


# --- helpers -------------------------------------------------------------------------------


def _as_crs(crs: CRSInput) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise LabelsError(
            f"unknown CRS {crs!r} ({short_error(exc)}); give e.g. EPSG:32633"
        ) from exc


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
        units = metres * _metres_to_units(crs, 1.0, lat=0.0) * ground_scale(parts[grow], crs)
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
    "IGNORE_VALUE",
    "MASK_SUFFIXES",
    "MAX_CLASSES",
    "VECTOR_SUFFIXES",
    "LabelSet",
    "LabelSpec",
    "Labels",
    "MaskFile",
    "MaskLabels",
    "RasterLabels",
    "RasterMaskLabels",
    "check_overlap",
    "expand_label_sources",
    "open_mask",
    "read_label_sources",
    "read_labels",
]
