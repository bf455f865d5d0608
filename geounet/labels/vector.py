"""Vector labels: read once, reprojected per raster CRS, buffered and clipped to each raster.

For training a segmentation model:

1. :func:`read_labels` reads any vector format GDAL reads (``.gpkg``, ``.geojson``, ``.shp``,
   ``.fgb``, ...) through pyogrio, or GeoParquet (``.parquet``) through geopandas. Attribute values
   that are not UTF-8 are retried as Latin-1 instead of failing.
2. Each feature gets a class id, 1-based (0 is background): 1 for every feature of a binary task,
   else the position of its ``class_field`` value in ``classes`` (values are compared as strings;
   see :mod:`geounet.labels.spec`).
3. Null and empty geometries are dropped, multi-geometries and GeometryCollections are split into
   their single parts, and invalid parts are repaired with ``shapely.make_valid``, keeping only the
   parts of the original dimension (a repaired polygon keeps its polygons, never the stray lines a
   repair can leave). A file may mix polygons, lines and points.
4. :meth:`Labels.for_raster` reprojects all parts to the raster's CRS (once per CRS, cached, with
   an STRtree), picks the parts near the raster, buffers LineStrings to ``line_width_m`` full
   width and Points to ``point_radius_m`` radius (in metres: in the raster CRS's units when it is
   projected, or in a local UTM zone when it is geographic), merges the parts of each feature and
   clips them to the raster plus a one-pixel margin (geometry work in
   :mod:`geounet.labels.geometry`).
5. :meth:`geounet.labels.rasterize.RasterLabels.rasterize` burns the features near one window
   into a uint8 class-id array.

:func:`check_overlap` tells which rasters some labels overlap.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyogrio
import pyproj
import shapely
from rasterio.transform import Affine

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import Scene, gdal_path, is_remote, short_error
from geounet.labels.crs import CRSInput, as_crs, crs_label, fmt_bounds, grid_bounds, metres_to_units
from geounet.labels.geometry import (
    GeometryArray,
    buffer_parts,
    clean_parts,
    merge_features,
    reproject,
)
from geounet.labels.rasterize import RasterLabels
from geounet.labels.spec import MAX_LISTED, LabelSpec, class_ids

logger = logging.getLogger(__name__)

#: Suffixes read with ``geopandas.read_parquet`` instead of GDAL.
PARQUET_SUFFIXES = (".parquet", ".geoparquet")


def read_labels(path: str | os.PathLike[str], spec: LabelSpec | None = None) -> Labels:
    """Read vector labels for training.

    Args:
        path: A vector file GDAL reads (``.gpkg``, ``.geojson``, ``.shp``, ``.fgb``, a
            ``/vsi...`` path or URL) or a GeoParquet file (``.parquet``). Of a multi-layer file
            the first layer is read.
        spec: Class field, class names and buffer sizes; default a binary task.

    Returns:
        The labels in their own CRS, ready for `Labels.for_raster`.

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
        # tables without geometry (a GeoPackage's QGIS layer_styles) are not label layers
        spatial = [str(n) for n, geom in layers if geom] or [str(layers[0][0])]
        if len(spatial) > 1:
            logger.warning(
                "%s has %d vector layers; reading the first, %r", name, len(spatial), spatial[0]
            )
        layer = spatial[0]
        info = pyogrio.read_info(path, layer=layer, encoding=encoding)
        fields = [str(f) for f in info["fields"]]
        if field is not None and field not in fields:
            raise _missing_field(name, field, fields)
        frame = gpd.read_file(
            path, engine="pyogrio", layer=layer, columns=[field] if field else [], encoding=encoding
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
    listed = ", ".join(fields[:MAX_LISTED])
    more = f" (+{len(fields) - MAX_LISTED} more)" if len(fields) > MAX_LISTED else ""
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
        feature_class, class_names = class_ids(frame, spec, name)
        geoms = np.asarray(frame.geometry.array, dtype=object)
        parts, part_feature, part_dim = clean_parts(geoms, feature_class > 0)
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
        proj = self._project(as_crs(crs))
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
        return self._project(as_crs(crs)).bounds

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
        dst = as_crs(crs)
        proj = self._project(dst)
        left, bottom, right, top = grid_bounds(transform, width, height)
        px = max(abs(transform.a), abs(transform.e))
        reach = metres_to_units(dst, self._reach_m(), lat=(bottom + top) / 2)
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
        parts = buffer_parts(proj.parts[hits], self._part_dim[src], dst, self.spec)
        geoms, features = merge_features(parts, self._part_feature[src])
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
        moved = reproject(parts, src, dst)
        b = shapely.bounds(moved)
        ok = np.isfinite(b).all(axis=1)  # pyproj gives inf outside a projection's domain
        if not ok.all():
            logger.warning(
                "%d label parts cannot be reprojected to %s and are ignored there",
                int((~ok).sum()),
                crs_label(dst),
            )
        moved = moved[ok]
        bounds = None
        if len(moved):
            t = shapely.total_bounds(moved)
            bounds = (float(t[0]), float(t[1]), float(t[2]), float(t[3]))
        return cls(moved, np.flatnonzero(ok), shapely.STRtree(moved), bounds)


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
        dst = as_crs(crs)
        left, bottom, right, top = bounds
        reach = metres_to_units(dst, reach_m, lat=(bottom + top) / 2)
        box = shapely.box(left - reach, bottom - reach, right + reach, top + reach)
        if labels._project(dst).tree.query(box, predicate="intersects").size:
            found.append(raster_name)
    if found:
        return found
    first_name, first_crs, first_bounds = rasters[0]
    dst = as_crs(first_crs)
    src_label = crs_label(labels.crs)
    dst_label = crs_label(dst)
    more = f" ({len(rasters) - 1} more images not shown)" if len(rasters) > 1 else ""
    lb = labels._project(dst).bounds
    if lb is None:
        where = f"labels ({src_label}) cannot be reprojected to {dst_label}"
    else:
        how = f"{src_label}, reprojected" if not labels.crs.equals(dst) else src_label
        where = f"labels ({how}) cover {fmt_bounds(lb)} in {dst_label}"
    raise LabelsOutsideRasterError(
        f"{labels.name} does not overlap any image: {where}; {first_name} covers "
        f"{fmt_bounds(first_bounds)}{more}; check that the labels belong to these images"
    )


__all__ = ["Labels", "check_overlap", "read_labels"]
