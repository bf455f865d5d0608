"""Label geometry: split features into clean single parts, reproject them, buffer lines and
points to areas sized in metres, and merge each feature's parts again."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyproj
import shapely

from geounet.geodata.raster import ground_scale
from geounet.labels.crs import metres_to_units
from geounet.labels.spec import LabelSpec

logger = logging.getLogger(__name__)


#: Geometries as a numpy object array of shapely geometries.
GeometryArray: TypeAlias = npt.NDArray[np.object_]


_MULTI_TYPE_IDS = (4, 5, 6, 7)  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection

_QUAD_SEGS = 8  # segments per quarter circle of the buffers: 0.5 % area error, 4x fewer vertices


def reproject(parts: GeometryArray, src: pyproj.CRS, dst: pyproj.CRS) -> GeometryArray:
    """Geometries from one CRS to another (x, y axis order); the same array when they are equal."""
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


def buffer_parts(
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
        buffered = shapely.buffer(reproject(parts[grow], crs, local), metres, quad_segs=_QUAD_SEGS)
        out[grow] = reproject(buffered, local, crs)
    else:
        units = metres * metres_to_units(crs, 1.0, lat=0.0) * ground_scale(parts[grow], crs)
        out[grow] = shapely.buffer(parts[grow], units, quad_segs=_QUAD_SEGS)
    return out


def _polygonal(geom: Any) -> Any:
    """The polygonal parts of a geometry, as one geometry (empty when there are none)."""
    polys = [p for p in shapely.get_parts(geom) if shapely.get_dimensions(p) == 2]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def merge_features(
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


def clean_parts(
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
