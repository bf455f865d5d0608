"""Georeferenced synthetic scenes that look like aerial imagery.

:func:`make_scene` writes a tiled, DEFLATE-compressed GeoTIFF showing textured ground (grass, dry
grass and bare soil), grey roads, trees and buildings with coloured roofs and shadows, and
optionally the exact building footprints as a vector file. It is used by the example, the tests
and the benchmarks.

The scene is generated in two stages so that memory does not grow with the raster (a
16384 x 16384 RGB scene peaks at a few hundred MB: only the feature geometries and the coarse
noise grids are scene-sized, and both are small):

1. All features (roads, buildings, trees and their shadows) are generated up front as shapely
   geometries in a local *metric frame*: metres east (``x``) and north (``y``) of the scene's
   top-left corner, so the scene covers ``0 <= x <= width_m`` and ``-height_m <= y <= 0``. This
   keeps building sizes in metres even for a geographic CRS. Footprints are mapped to the
   scene's CRS only for the returned :class:`SceneInfo` and the labels file.
2. The raster is rendered and written in horizontal strips of :data:`STRIP_ROWS` rows. Each strip
   rasterizes only the features whose bounds intersect it. Low-frequency noise is bilinearly
   (smoothstep) upsampled from coarse grids drawn once from the seed and indexed by global
   coordinates, so it is seamless across strips; per-pixel grain comes from an RNG seeded by
   ``(seed, strip index)``.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely.geometry import LineString, MultiLineString, Polygon, box, mapping

__all__ = ["LABEL_DRIVERS", "STRIP_ROWS", "SceneInfo", "make_scene"]

FloatArray = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
GeomArray = npt.NDArray[np.object_]

#: Rows rendered and written per strip (a multiple of the 256-pixel block height).
STRIP_ROWS = 256
#: GeoTIFF block (tile) size in pixels.
BLOCK_SIZE = 256
#: Vector drivers picked from a labels file's suffix (``.parquet`` uses ``GeoDataFrame.to_parquet``).
LABEL_DRIVERS: dict[str, str] = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
    ".parquet": "Parquet",
}

_M_PER_DEG = 111_320.0
_UINT16_MAX_VALUE = 2047.0

# Material colours as (red, green, blue, near-infrared) on a 0..255 scale.
_GRASS = np.array([88.0, 118.0, 58.0, 196.0], dtype=np.float32)
_DRY_GRASS = np.array([150.0, 146.0, 98.0, 168.0], dtype=np.float32)
_SOIL = np.array([142.0, 114.0, 86.0, 118.0], dtype=np.float32)
_GROUND = np.ascontiguousarray(np.stack([_GRASS, _DRY_GRASS, _SOIL], axis=1))  # (4, 3)
_ROAD = np.array([122.0, 122.0, 120.0, 84.0], dtype=np.float32)
_ROAD_MARK = np.array([222.0, 222.0, 214.0, 200.0], dtype=np.float32)
_TREE = np.array([40.0, 70.0, 34.0, 172.0], dtype=np.float32)
_ROOFS = np.array(
    [
        [182.0, 84.0, 60.0, 112.0],  # terracotta red
        [200.0, 200.0, 196.0, 156.0],  # light grey
        [84.0, 84.0, 86.0, 64.0],  # dark grey
        [124.0, 88.0, 62.0, 96.0],  # brown
    ],
    dtype=np.float32,
)
_ROOF_WEIGHTS = np.array([0.34, 0.26, 0.2, 0.2])
_SHADOW_FACTOR = np.array([0.42, 0.45, 0.52, 0.55], dtype=np.float32)

# Feature densities per square kilometre (buildings scale with ``building_density``).
_BUILDINGS_PER_KM2 = 320.0
_TREE_CLUSTERS_PER_KM2 = 40.0
_TREES_PER_CLUSTER = 18
_SCATTERED_TREES_PER_KM2 = 220.0
_ROAD_SPACING_M = 330.0
_BUILDING_GAP_M = 3.0
_ROAD_CLEARANCE_M = 3.0


@dataclass(frozen=True)
class SceneInfo:
    """What :func:`make_scene` wrote.

    Attributes:
        path: The GeoTIFF.
        labels_path: The vector labels file, or ``None`` when none was written.
        width: Raster width in pixels.
        height: Raster height in pixels.
        crs: The scene's coordinate reference system.
        transform: The scene's affine geotransform (pixel corner to map coordinates).
        buildings: Building footprints in map coordinates (the scene's CRS).
        roads: Road centrelines in map coordinates, clipped to the valid part of the scene.
        bands: Number of bands in the GeoTIFF.
        dtype: Pixel data type of the GeoTIFF (``"uint8"`` or ``"uint16"``).
        nodata: The nodata value, or ``None`` when the scene has no nodata collar.
    """

    path: Path
    labels_path: Path | None
    width: int
    height: int
    crs: CRS
    transform: Affine
    buildings: list[Polygon] = field(repr=False)
    roads: list[LineString] = field(repr=False)
    bands: int = 3
    dtype: str = "uint8"
    nodata: float | None = None


@dataclass(frozen=True)
class _Frame:
    """The scene's pixel grid and its metric frame."""

    width: int
    height: int
    px_m_x: float  # pixel width in metres
    px_m_y: float  # pixel height in metres
    origin: tuple[float, float]  # map coordinates of the top-left corner
    m_per_unit_x: float  # metres per CRS unit along x
    m_per_unit_y: float  # metres per CRS unit along y

    @property
    def width_m(self) -> float:
        return self.width * self.px_m_x

    @property
    def height_m(self) -> float:
        return self.height * self.px_m_y

    def strip_transform(self, row0: int) -> Affine:
        """Pixel-to-metric-frame transform of the strip starting at ``row0``."""
        return Affine(self.px_m_x, 0.0, 0.0, 0.0, -self.px_m_y, -row0 * self.px_m_y)

    def to_map(self, geoms: GeomArray) -> GeomArray:
        """Map geometries from the metric frame to the scene's CRS."""
        scale = np.array([1.0 / self.m_per_unit_x, 1.0 / self.m_per_unit_y])
        offset = np.asarray(self.origin, dtype=np.float64)
        out: GeomArray = shapely.transform(geoms, lambda c: c * scale + offset)
        return out


@dataclass
class _Layer:
    """A set of polygons to rasterize, with bounds for the per-strip filter."""

    geoms: GeomArray
    bounds: F64Array = field(init=False)

    def __post_init__(self) -> None:
        self.bounds = (
            shapely.bounds(self.geoms) if len(self.geoms) else np.zeros((0, 4), dtype=np.float64)
        )

    def in_band(self, y_top: float, y_bottom: float) -> IntArray:
        """Indices of the polygons whose bounds overlap ``y_bottom <= y <= y_top``."""
        if not len(self.geoms):
            return np.zeros(0, dtype=np.intp)
        b = self.bounds
        hit = (b[:, 1] <= y_top) & (b[:, 3] >= y_bottom)
        return np.flatnonzero(hit)


def _geojson(geoms: GeomArray) -> list[dict[str, Any]]:
    """GeoJSON-like mappings of the geometries, built in bulk (``rasterize`` takes these)."""
    out: list[dict[str, Any]] = [{} for _ in range(len(geoms))]
    if not len(geoms):
        return out
    simple = (shapely.get_type_id(geoms) == 3) & (shapely.get_num_interior_rings(geoms) == 0)
    idx = np.flatnonzero(simple)
    rings = shapely.get_exterior_ring(geoms[idx])
    coords, owner = shapely.get_coordinates(rings, return_index=True)
    bounds = np.searchsorted(owner, np.arange(len(idx) + 1)).tolist()
    points = coords.tolist()
    for j, i in enumerate(idx.tolist()):
        out[i] = {"type": "Polygon", "coordinates": [points[bounds[j] : bounds[j + 1]]]}
    for i in np.flatnonzero(~simple).tolist():
        out[i] = mapping(geoms[i])
    return out


@dataclass
class _Features:
    """Everything drawn in the scene, in the metric frame."""

    roads: list[LineString]  # centrelines, clipped to the valid area
    road_polys: _Layer
    road_marks: _Layer
    buildings: _Layer
    shadows: _Layer
    trees: _Layer
    roof_colour: FloatArray  # (n, 4)
    roof_gabled: BoolArray  # (n,)
    roof_axis: F64Array  # (n, 2) unit vector across the ridge / along the gradient
    roof_centre: F64Array  # (n, 2)
    roof_halfwidth: F64Array  # (n,)
    tree_centre: F64Array  # (m, 2)
    tree_radius: F64Array  # (m,)
    tree_tone: FloatArray  # (m,)
    sun: tuple[float, float]  # unit vector pointing the way shadows fall


@dataclass
class _NoiseGrid:
    """A coarse grid of random values, upsampled smoothly in the metric frame."""

    values: FloatArray
    cell_m: float

    @classmethod
    def draw(
        cls, rng: np.random.Generator, cell_m: float, frame: _Frame, min_px: float = 2.0
    ) -> _NoiseGrid:
        """Draw a grid covering the scene; cells are at least ``min_px`` pixels wide."""
        cell = max(cell_m, min_px * max(frame.px_m_x, frame.px_m_y))
        nx = math.ceil(frame.width_m / cell) + 3
        ny = math.ceil(frame.height_m / cell) + 3
        values = rng.uniform(-1.0, 1.0, size=(ny, nx)).astype(np.float32)
        return cls(values, cell)

    @staticmethod
    def _weights(coord: F64Array, cell: float) -> tuple[IntArray, FloatArray]:
        g = coord / cell
        i = np.floor(g).astype(np.intp)
        f = (g - i).astype(np.float32)
        return i, f * f * (3.0 - 2.0 * f)

    def grid(self, x: F64Array, down: F64Array) -> FloatArray:
        """Noise on the grid ``down`` (rows, metres south of the top) x ``x`` (columns)."""
        iy, fy = self._weights(down, self.cell_m)
        ix, fx = self._weights(x, self.cell_m)
        # Interpolate along x only the few grid rows the band of rows needs, then along y.
        r0 = int(iy.min())
        sub = self.values[r0 : int(iy.max()) + 2]
        left = sub[:, ix]
        xu = sub[:, ix + 1]
        xu -= left
        xu *= fx[None, :]
        xu += left
        out: FloatArray = xu[iy - r0]
        below = xu[iy - r0 + 1]
        below -= out
        below *= fy[:, None]
        out += below
        return out

    def points(self, x: F64Array, down: F64Array) -> FloatArray:
        """Noise at the points ``(x, down)``."""
        iy, fy = self._weights(down, self.cell_m)
        ix, fx = self._weights(x, self.cell_m)
        v = self.values
        top = v[iy, ix] + (v[iy, ix + 1] - v[iy, ix]) * fx
        bottom = v[iy + 1, ix] + (v[iy + 1, ix + 1] - v[iy + 1, ix]) * fx
        out: FloatArray = top + (bottom - top) * fy
        return out


@dataclass
class _Noise:
    """The scene's noise fields."""

    landcover: _NoiseGrid  # grass vs dry grass (large patches)
    soil: _NoiseGrid  # bare-soil fields
    medium: _NoiseGrid  # brightness mottling
    fine: _NoiseGrid  # grass clumps / leaves
    zoning: _NoiseGrid  # where buildings cluster


def make_scene(
    path: str | os.PathLike[str],
    *,
    width: int = 1024,
    height: int = 1024,
    crs: str | CRS = "EPSG:32633",
    pixel_size: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    seed: int = 0,
    bands: int = 3,
    dtype: str = "uint8",
    nodata: float | None = None,
    building_density: float = 1.0,
    labels_path: str | os.PathLike[str] | None = None,
    roads: bool = True,
    road_labels: bool = False,
) -> SceneInfo:
    """Write a synthetic aerial-looking GeoTIFF and, optionally, its building footprints.

    The raster is tiled (256 x 256 blocks), DEFLATE-compressed and written in strips of
    `STRIP_ROWS` rows, so memory stays bounded for very large scenes (16384 x 16384 and
    more). Buildings are axis-aligned or rotated rectangles and L-shapes, 8 to 40 m across, with
    terracotta, light grey, dark grey or brown roofs and a shadow; they never overlap each other
    or a road.

    Args:
        path: Output GeoTIFF path (its parent directory is created if missing; an existing
            file is overwritten).
        width: Raster width in pixels.
        height: Raster height in pixels.
        crs: Coordinate reference system, e.g. ``"EPSG:32633"`` or ``"EPSG:4326"``. For a
            geographic CRS, ``pixel_size`` is in degrees and ``origin`` is (lon, lat); feature
            sizes in metres are converted approximately (111320 m per degree of latitude,
            111320 * cos(lat) per degree of longitude).
        pixel_size: Square pixel size in CRS units.
        origin: Map coordinates of the raster's top-left corner.
        seed: Non-negative random seed; the same arguments and seed give identical pixels.
        bands: 1 (panchromatic grey), 2 (grey + near-infrared), 3 (RGB) or 4 (RGB +
            near-infrared).
        dtype: ``"uint8"`` (0..255) or ``"uint16"`` (values scaled to about 0..2047).
        nodata: If given, the top-left corner of the scene becomes a triangular nodata collar
            filled with this value, the value is recorded in the file, and no valid pixel
            equals it. Buildings are kept out of the collar.
        building_density: Multiplier on the number of buildings (1.0 is about 320 per km2,
            clustered by a low-frequency zoning field; 0 gives none). Very high values saturate
            where there is no room left.
        labels_path: If given, write the building footprints (exact polygons, in the scene's
            CRS, attribute ``class`` = ``"building"``) to this vector file. The format follows
            the suffix: ``.geojson``/``.json``, ``.gpkg``, ``.shp``, ``.fgb`` or ``.parquet``.
        roads: Whether to draw roads.
        road_labels: Also write the road centrelines to the labels file as LineStrings with
            ``class`` = ``"road"`` (not supported for ``.shp``, which cannot mix geometry types).

    Returns:
        A `SceneInfo` describing the files written, with the building footprints and
        road centrelines in map coordinates.

    Raises:
        ValueError: On an invalid argument or an unsupported labels suffix.
    """
    _check_args(width, height, pixel_size, seed, bands, dtype, nodata, building_density)
    out_dtype = np.dtype(dtype)
    crs_obj = CRS.from_user_input(crs)
    label_file = Path(labels_path) if labels_path is not None else None
    if label_file is not None:
        _check_label_suffix(label_file, road_labels)

    frame = _make_frame(width, height, crs_obj, pixel_size, origin)
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    collar_frac = 0.4 if nodata is not None else 0.0

    rng = np.random.default_rng(seed)
    noise = _Noise(
        landcover=_NoiseGrid.draw(rng, 90.0, frame),
        soil=_NoiseGrid.draw(rng, 140.0, frame),
        medium=_NoiseGrid.draw(rng, 14.0, frame),
        fine=_NoiseGrid.draw(rng, 2.5, frame),
        zoning=_NoiseGrid.draw(rng, 160.0, frame),
    )
    features = _make_features(rng, frame, noise, roads, building_density, collar_frac)

    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_raster(
        out_path,
        frame,
        transform,
        crs_obj,
        features,
        noise,
        seed,
        bands,
        out_dtype,
        nodata,
        collar_frac,
    )

    buildings_map = [g for g in frame.to_map(features.buildings.geoms)]
    roads_map = [g for g in frame.to_map(np.array(features.roads, dtype=object))]
    if label_file is not None:
        _write_labels(label_file, crs_obj, buildings_map, roads_map if road_labels else [])

    return SceneInfo(
        path=out_path,
        labels_path=label_file,
        width=width,
        height=height,
        crs=crs_obj,
        transform=transform,
        buildings=buildings_map,
        roads=roads_map,
        bands=bands,
        dtype=out_dtype.name,
        nodata=nodata,
    )


# --------------------------------------------------------------------------------------------
# Arguments and frame


def _check_args(
    width: int,
    height: int,
    pixel_size: float,
    seed: int,
    bands: int,
    dtype: str,
    nodata: float | None,
    building_density: float,
) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise ValueError(f"pixel_size must be a positive number, got {pixel_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if bands not in (1, 2, 3, 4):
        raise ValueError(f"bands must be 1, 2, 3 or 4, got {bands}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
    if building_density < 0:
        raise ValueError(f"building_density must be >= 0, got {building_density}")
    if nodata is not None:
        info = np.iinfo(np.dtype(dtype))
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            raise ValueError(f"nodata must be an integer in the range of {dtype}, got {nodata}")


def _check_label_suffix(path: Path, road_labels: bool) -> None:
    suffix = path.suffix.lower()
    if suffix not in LABEL_DRIVERS:
        raise ValueError(
            f"unsupported labels format {path.suffix!r} for {path}; "
            f"use one of {', '.join(sorted(LABEL_DRIVERS))}"
        )
    if suffix == ".shp" and road_labels:
        raise ValueError(
            f"road_labels needs a format that mixes polygons and lines; {path} is a shapefile"
        )


def _make_frame(
    width: int, height: int, crs: CRS, pixel_size: float, origin: tuple[float, float]
) -> _Frame:
    if crs.is_geographic:
        lat = origin[1] - 0.5 * height * pixel_size
        m_per_unit_y = _M_PER_DEG
        m_per_unit_x = _M_PER_DEG * max(math.cos(math.radians(lat)), 1e-3)
    else:
        try:
            m_per_unit = float(crs.linear_units_factor[1])
        except CRSError:  # no linear units known: assume metres
            m_per_unit = 1.0
        m_per_unit_x = m_per_unit_y = m_per_unit
    return _Frame(
        width=width,
        height=height,
        px_m_x=pixel_size * m_per_unit_x,
        px_m_y=pixel_size * m_per_unit_y,
        origin=(float(origin[0]), float(origin[1])),
        m_per_unit_x=m_per_unit_x,
        m_per_unit_y=m_per_unit_y,
    )


# --------------------------------------------------------------------------------------------
# Features


def _rectangles(
    cx: F64Array, cy: F64Array, half_l: F64Array, half_w: F64Array, angle: F64Array
) -> F64Array:
    """Corner rings (n, 5, 2) of rectangles centred at (cx, cy) rotated by ``angle``."""
    ux, uy = np.cos(angle), np.sin(angle)
    sx = np.array([-1.0, 1.0, 1.0, -1.0, -1.0])
    sy = np.array([-1.0, -1.0, 1.0, 1.0, -1.0])
    lx = sx[None, :] * half_l[:, None]
    ly = sy[None, :] * half_w[:, None]
    x = cx[:, None] + lx * ux[:, None] - ly * uy[:, None]
    y = cy[:, None] + lx * uy[:, None] + ly * ux[:, None]
    return np.stack([x, y], axis=-1)


def _make_roads(rng: np.random.Generator, frame: _Frame) -> tuple[list[LineString], F64Array]:
    """Straight roads, roughly on a grid, as centrelines spanning the scene, and half-widths."""
    wm, hm = frame.width_m, frame.height_m
    diag = math.hypot(wm, hm)
    lines: list[LineString] = []
    halfwidths: list[float] = []

    def add(px: float, py: float, angle: float) -> None:
        dx, dy = math.cos(angle) * diag, math.sin(angle) * diag
        lines.append(LineString([(px - dx, py - dy), (px + dx, py + dy)]))
        main = rng.random() < 0.35
        halfwidths.append(float(rng.uniform(4.5, 6.0) if main else rng.uniform(2.8, 3.8)))

    for extent, vertical in ((wm, True), (hm, False)):
        n = max(1, round(extent / _ROAD_SPACING_M))
        step = extent / n
        for i in range(n):
            pos = (i + rng.uniform(0.25, 0.75)) * step
            tilt = math.radians(rng.uniform(-12.0, 12.0)) if rng.random() < 0.5 else 0.0
            if vertical:
                add(pos, -rng.uniform(0.0, hm), math.pi / 2 + tilt)
            else:
                add(rng.uniform(0.0, wm), -pos, tilt)
    n_diag = rng.binomial(max(1, round(diag / (3 * _ROAD_SPACING_M))), 0.5)
    for _ in range(n_diag):
        add(rng.uniform(0.0, wm), -rng.uniform(0.0, hm), math.radians(rng.uniform(20.0, 70.0)))
    return lines, np.asarray(halfwidths, dtype=np.float64)


def _road_marks(lines: Sequence[LineString], halfwidths: F64Array, scene: Polygon) -> GeomArray:
    """Dashed centre-line markings on the wider roads."""
    marks: list[Any] = []
    for line, hw in zip(lines, halfwidths, strict=True):
        if hw < 4.0:
            continue
        clipped = line.intersection(scene)
        if clipped.is_empty or clipped.length < 1.0:
            continue
        dists = np.arange(0.0, clipped.length - 3.0, 10.0)
        if not len(dists):
            continue
        starts = shapely.line_interpolate_point(clipped, dists)
        ends = shapely.line_interpolate_point(clipped, dists + 3.0)
        segs = shapely.linestrings(
            np.stack([shapely.get_coordinates(starts), shapely.get_coordinates(ends)], axis=1)
        )
        marks.extend(shapely.buffer(segs, 0.25, cap_style="flat"))
    return np.array(marks, dtype=object)


def _circles(cx: F64Array, cy: F64Array, r: F64Array, n: int = 12) -> GeomArray:
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x = cx[:, None] + r[:, None] * np.cos(theta)[None, :]
    y = cy[:, None] + r[:, None] * np.sin(theta)[None, :]
    ring = np.stack([x, y], axis=-1)
    ring = np.concatenate([ring, ring[:, :1]], axis=1)
    out: GeomArray = shapely.polygons(ring)
    return out


def _near_roads(
    geoms: GeomArray,
    candidates: BoolArray,
    road_lines: Sequence[LineString],
    clearance: F64Array,
    extra: F64Array | None = None,
) -> IntArray:
    """Indices of candidate geometries closer to a road centreline than its clearance.

    The clearance of geometry ``i`` from road ``j`` is ``clearance[j] + extra[i]``.
    """
    idx = np.flatnonzero(candidates)
    if not len(road_lines) or not len(idx):
        return np.zeros(0, dtype=np.intp)
    pad = 0.0 if extra is None else float(extra[idx].max())
    zones = shapely.buffer(np.array(road_lines, dtype=object), clearance + pad, cap_style="flat")
    gi, ri = shapely.STRtree(geoms[idx]).query(zones, predicate="intersects")[::-1]
    if extra is not None and len(gi):
        lines = np.array(road_lines, dtype=object)
        dist = shapely.distance(geoms[idx][gi], lines[ri])
        gi = gi[dist < clearance[ri] + extra[idx][gi]]
    return np.unique(idx[gi])


def _greedy_non_overlapping(geoms: GeomArray, gap: float) -> BoolArray:
    """Keep geometries in order, dropping any within ``gap`` of one already kept."""
    keep = np.zeros(len(geoms), dtype=bool)
    if not len(geoms):
        return keep
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="dwithin", distance=gap)
    earlier = b < a
    a, b = a[earlier], b[earlier]
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(len(geoms) + 1))
    for i in range(len(geoms)):
        s, e = starts[i], starts[i + 1]
        if s == e or not keep[b[s:e]].any():
            keep[i] = True
    return keep


def _make_buildings(
    rng: np.random.Generator,
    frame: _Frame,
    noise: _Noise,
    road_lines: Sequence[LineString],
    road_hw: F64Array,
    density: float,
    collar: Polygon | None,
) -> tuple[GeomArray, GeomArray, IntArray, F64Array]:
    """Building footprints, their convex parts (with the owner index) and roof axes.

    Returns:
        (footprints, parts, part_owner, angle) with one angle per footprint (the long axis).
    """
    wm, hm = frame.width_m, frame.height_m
    area_km2 = wm * hm / 1e6
    target = round(density * area_km2 * _BUILDINGS_PER_KM2)
    empty = np.zeros(0, dtype=object)
    if target == 0 or wm < 12 or hm < 12:
        return empty, empty, np.zeros(0, dtype=np.intp), np.zeros(0)
    n = 4 * target + 16

    kind = rng.choice(3, size=n, p=[0.45, 0.38, 0.17])  # 0 axis-aligned, 1 rotated, 2 L-shape
    long_side = rng.uniform(10.0, 40.0, size=n)
    short_side = 8.0 + rng.random(n) * (np.minimum(long_side * 0.8, 22.0) - 8.0)
    angle = np.where(
        kind == 1,
        rng.uniform(0.0, np.pi, size=n),
        rng.integers(0, 2, size=n) * (np.pi / 2),
    )
    cx = rng.uniform(0.0, wm, size=n)
    cy = -rng.uniform(0.0, hm, size=n)
    zoning = noise.zoning.points(cx, -cy)
    accept = rng.random(n) < np.clip(0.6 + 0.8 * zoning, 0.12, 1.0)

    # L-shapes: a wing at one end of the main block, perpendicular to it.
    wing_len = rng.uniform(6.0, 16.0, size=n)
    wing_w = 8.0 + rng.random(n) * (np.maximum(short_side, 8.0) - 8.0)
    wing_w = np.minimum(wing_w, long_side * 0.6)
    wing_len = np.minimum(wing_len, 40.0 - short_side)
    side = rng.choice([-1.0, 1.0], size=n)
    end = rng.choice([-1.0, 1.0], size=n)
    is_l = kind == 2
    # Centre the L's bounding box: offset the main block against the wing.
    shift_w = np.where(is_l, -side * wing_len / 2, 0.0)
    ux, uy = np.cos(angle), np.sin(angle)
    mcx = cx - shift_w * uy
    mcy = cy + shift_w * ux
    main = shapely.polygons(_rectangles(mcx, mcy, long_side / 2, short_side / 2, angle))
    # Wing local centre: along = end*(L/2 - ww/2), across = side*(S/2 + wl)/2 (overlaps main).
    along = end * (long_side / 2 - wing_w / 2)
    across = side * (short_side / 2 + wing_len) / 2
    wcx = mcx + along * ux - across * uy
    wcy = mcy + along * uy + across * ux
    wing = shapely.polygons(
        _rectangles(wcx, wcy, wing_w / 2, (short_side / 2 + wing_len) / 2, angle)
    )
    footprint = main.copy()
    footprint[is_l] = shapely.union(main[is_l], wing[is_l])

    # Inside the scene, clear of roads and of the nodata collar.
    b = shapely.bounds(footprint)
    margin = 2.0
    ok = accept & (b[:, 0] > margin) & (b[:, 2] < wm - margin)
    ok &= (b[:, 1] > -hm + margin) & (b[:, 3] < -margin)
    ok[_near_roads(footprint, ok, road_lines, road_hw + _ROAD_CLEARANCE_M)] = False
    if collar is not None:
        idx = np.flatnonzero(ok)
        ok[idx[shapely.intersects(footprint[idx], collar.buffer(2.0))]] = False

    idx = np.flatnonzero(ok)
    keep = _greedy_non_overlapping(footprint[idx], _BUILDING_GAP_M)
    idx = idx[keep][:target]

    fp = footprint[idx]
    l_mask = is_l[idx]
    parts = np.concatenate([main[idx], wing[idx][l_mask]])
    owner = np.concatenate([np.arange(len(idx)), np.flatnonzero(l_mask)]).astype(np.intp)
    fp = shapely.normalize(shapely.simplify(fp, 0.0))
    return fp, parts, owner, angle[idx]


def _make_trees(
    rng: np.random.Generator,
    frame: _Frame,
    buildings: GeomArray,
    road_lines: Sequence[LineString],
    road_hw: F64Array,
) -> tuple[F64Array, F64Array, FloatArray]:
    """Tree centres (m, 2), radii and tone, clumped, off buildings and roads."""
    wm, hm = frame.width_m, frame.height_m
    area_km2 = wm * hm / 1e6
    n_clusters = rng.poisson(_TREE_CLUSTERS_PER_KM2 * area_km2)
    ccx = rng.uniform(0.0, wm, size=n_clusters)
    ccy = -rng.uniform(0.0, hm, size=n_clusters)
    per = rng.poisson(_TREES_PER_CLUSTER, size=n_clusters)
    spread = rng.uniform(6.0, 18.0, size=n_clusters)
    x = np.repeat(ccx, per) + rng.normal(size=per.sum()) * np.repeat(spread, per)
    y = np.repeat(ccy, per) + rng.normal(size=per.sum()) * np.repeat(spread, per)
    n_scatter = rng.poisson(_SCATTERED_TREES_PER_KM2 * area_km2)
    x = np.concatenate([x, rng.uniform(0.0, wm, size=n_scatter)])
    y = np.concatenate([y, -rng.uniform(0.0, hm, size=n_scatter)])
    r = rng.uniform(2.0, 5.0, size=len(x))
    tone = rng.uniform(0.85, 1.15, size=len(x)).astype(np.float32)

    ok = (x > -r) & (x < wm + r) & (y < r) & (y > -hm - r)
    pts = shapely.points(x, y)
    ok[_near_roads(pts, ok, road_lines, road_hw + 1.0, extra=r)] = False
    if len(buildings):
        idx = np.flatnonzero(ok)
        tree = shapely.STRtree(buildings)
        # Query with the largest radius, then check each tree's own clearance.
        qi, bi = tree.query(pts[idx], predicate="dwithin", distance=float(r.max()) + 1.0)
        if len(qi):
            d = shapely.distance(pts[idx][qi], buildings[bi])
            bad = qi[d < r[idx][qi] + 1.0]
            ok[idx[np.unique(bad)]] = False
    centres = np.stack([x[ok], y[ok]], axis=1)
    return centres, r[ok], tone[ok]


def _make_features(
    rng: np.random.Generator,
    frame: _Frame,
    noise: _Noise,
    roads: bool,
    density: float,
    collar_frac: float,
) -> _Features:
    wm, hm = frame.width_m, frame.height_m
    scene = box(0.0, -hm, wm, 0.0)
    collar: Polygon | None = None
    if collar_frac > 0:
        collar = Polygon([(0.0, 0.0), (collar_frac * wm, 0.0), (0.0, -collar_frac * hm)])

    road_lines, road_hw = _make_roads(rng, frame) if roads else ([], np.zeros(0))
    road_polys = np.array(
        [ln.buffer(hw, cap_style="flat") for ln, hw in zip(road_lines, road_hw, strict=True)],
        dtype=object,
    )
    marks = _road_marks(road_lines, road_hw, scene)

    fp, parts, owner, angle = _make_buildings(
        rng, frame, noise, road_lines, road_hw, density, collar
    )
    n = len(fp)

    # Sun: shadows fall towards the south-east-ish, length from the building height.
    sun_az = rng.uniform(math.radians(-60.0), math.radians(-20.0))
    sdx, sdy = math.cos(sun_az), math.sin(sun_az)
    height_m = rng.uniform(3.5, 11.0, size=n)
    shadow_len = 0.55 * height_m
    if len(parts):
        off = shadow_len[owner]
        counts = shapely.get_num_coordinates(parts)
        shift = np.repeat(np.stack([off * sdx, off * sdy], axis=1), counts, axis=0)
        moved = shapely.transform(parts, lambda c: c + shift)
        building_shadows = shapely.convex_hull(shapely.union(parts, moved))
    else:
        building_shadows = np.zeros(0, dtype=object)

    palette = rng.choice(len(_ROOFS), size=n, p=_ROOF_WEIGHTS)
    jitter = rng.normal(0.0, 3.0, size=(n, 4)) + rng.normal(0.0, 9.0, size=(n, 1))
    roof_colour = (_ROOFS[palette] + jitter).astype(np.float32)
    l_shaped = np.zeros(n, dtype=bool)
    l_shaped[owner[n:]] = True
    gabled = (rng.random(n) < 0.6) & ~l_shaped & (palette != 2)
    # Across-ridge axis for gabled roofs; a random gradient direction for flat ones.
    grad_angle = np.where(gabled, angle + np.pi / 2, rng.uniform(0.0, 2 * np.pi, size=n))
    roof_axis = np.stack([np.cos(grad_angle), np.sin(grad_angle)], axis=1)
    # Roof centre and half extent along the axis (the ridge of a gabled roof is the centre line).
    cen = shapely.get_coordinates(shapely.centroid(fp)) if n else np.zeros((0, 2))
    halfwidth = np.zeros(n)
    if n:
        coords, owner_of = shapely.get_coordinates(fp, return_index=True)
        proj = np.abs(np.sum((coords - cen[owner_of]) * roof_axis[owner_of], axis=1))
        np.maximum.at(halfwidth, owner_of, proj)

    centres, radii, tone = _make_trees(rng, frame, fp, road_lines, road_hw)
    tree_polys = _circles(centres[:, 0], centres[:, 1], radii)
    tree_shadow_len = 0.9 * radii + 1.0
    tree_shadows = _circles(
        centres[:, 0] + tree_shadow_len * sdx, centres[:, 1] + tree_shadow_len * sdy, radii
    )

    clean_roads: list[LineString] = []
    valid = scene if collar is None else scene.difference(collar)
    for ln in road_lines:
        clipped = ln.intersection(valid)
        parts_iter = clipped.geoms if isinstance(clipped, MultiLineString) else [clipped]
        for g in parts_iter:
            if isinstance(g, LineString) and not g.is_empty and g.length > 0:
                clean_roads.append(g)

    return _Features(
        roads=clean_roads,
        road_polys=_Layer(road_polys),
        road_marks=_Layer(marks),
        buildings=_Layer(fp),
        shadows=_Layer(np.concatenate([building_shadows, tree_shadows])),
        trees=_Layer(tree_polys),
        roof_colour=roof_colour,
        roof_gabled=gabled,
        roof_axis=roof_axis,
        roof_centre=cen,
        roof_halfwidth=halfwidth,
        tree_centre=centres,
        tree_radius=radii,
        tree_tone=tone,
        sun=(sdx, sdy),
    )


# --------------------------------------------------------------------------------------------
# Rendering


_CHUNK_ROWS = 32  # rows per pass of the dense per-pixel arithmetic (keeps temporaries small)


class _Workspace:
    """Buffers reused from strip to strip (fresh large arrays cost page faults every time)."""

    def __init__(self, width: int, channels: int, bands: int, dtype: np.dtype[Any]) -> None:
        shape = (STRIP_ROWS, width)
        self.img = np.empty((channels, *shape), dtype=np.float32)
        self.medium = np.empty(shape, dtype=np.float32)
        self.fine = np.empty(shape, dtype=np.float32)
        self.grain = np.empty(shape, dtype=np.float32)
        self.mask = np.empty(shape, dtype=np.uint8)
        self.ids = np.empty(shape, dtype=np.int32)
        self.out = np.empty((bands, *shape), dtype=dtype)


def _burn(
    layer: _Layer,
    y_top: float,
    y_bottom: float,
    transform: Affine,
    out: npt.NDArray[Any],
) -> npt.NDArray[Any] | None:
    """Rasterize the layer's polygons in the strip into ``out``.

    ``out`` is an int32 buffer (burns 1-based polygon ids) or a uint8 one (burns 1; the result
    is returned as a boolean view). Returns ``None`` when no polygon touches the strip.
    """
    idx = layer.in_band(y_top, y_bottom)
    if not len(idx):
        return None
    out.fill(0)
    geojson = _geojson(layer.geoms[idx])
    if out.dtype == np.int32:
        shapes: Any = zip(geojson, (idx + 1).tolist(), strict=True)
    else:
        shapes = ((g, 1) for g in geojson)
    rasterize(shapes, out=out, transform=transform)
    return out.view(bool) if out.dtype == np.uint8 else out


def _render_strip(
    frame: _Frame,
    features: _Features,
    noise: _Noise,
    row0: int,
    rows: int,
    rng: np.random.Generator,
    ws: _Workspace,
) -> FloatArray:
    """Render rows ``row0 .. row0 + rows`` as (channels, rows, width) float32, 0..255 scale.

    Channels are red, green, blue and (when the workspace has 4) near-infrared. The result is a
    view of the workspace, valid until the next strip.
    """
    w = frame.width
    channels = ws.img.shape[0]
    x = (np.arange(w, dtype=np.float64) + 0.5) * frame.px_m_x
    down = (np.arange(row0, row0 + rows, dtype=np.float64) + 0.5) * frame.px_m_y
    y_top, y_bottom = -row0 * frame.px_m_y, -(row0 + rows) * frame.px_m_y
    tf = frame.strip_transform(row0)
    img = ws.img[:, :rows]
    medium = ws.medium[:rows]
    fine = ws.fine[:rows]
    ground = _GROUND[:channels]

    # Ground: grass / dry grass by large patches, bare-soil fields, mottled brightness; a few
    # rows at a time so the temporaries stay small.
    for a in range(0, rows, _CHUNK_ROWS):
        b = min(a + _CHUNK_ROWS, rows)
        d = down[a:b]
        med = medium[a:b]
        med[...] = noise.medium.grid(x, d)
        fin = fine[a:b]
        fin[...] = noise.fine.grid(x, d)
        dry = noise.landcover.grid(x, d)
        dry += 0.25 * med
        dry *= 1.6
        dry += 0.5
        np.clip(dry, 0.0, 1.0, out=dry)
        soil = noise.soil.grid(x, d)
        soil -= 0.3
        soil *= 2.5
        np.clip(soil, 0.0, 1.0, out=soil)
        bright = 0.07 * med
        bright += 0.09 * fin
        bright += 1.0
        # Weights of grass, dry grass and soil, premultiplied by the brightness, then one
        # matrix product with the material colours.
        weights = np.empty((3, b - a, w), dtype=np.float32)
        np.multiply(soil, bright, out=weights[2])
        np.subtract(bright, weights[2], out=weights[0])
        np.multiply(dry, weights[0], out=weights[1])
        weights[0] -= weights[1]
        tmp = weights[1].copy()
        for c in range(channels):
            band = img[c, a:b]
            np.multiply(weights[0], ground[c, 0], out=band)
            np.multiply(weights[1], ground[c, 1], out=tmp)
            band += tmp
            np.multiply(weights[2], ground[c, 2], out=tmp)
            band += tmp

    flat_img = img.reshape(channels, -1)
    medium_flat = medium.reshape(-1)
    fine_flat = fine.reshape(-1)
    mask_buf = ws.mask[:rows]
    ids_buf = ws.ids[:rows]

    # Roads and their markings.
    road = _burn(features.road_polys, y_top, y_bottom, tf, mask_buf)
    if road is not None:
        flat = np.flatnonzero(road)
        rb = 1.0 + 0.025 * medium_flat[flat] + 0.02 * fine_flat[flat]
        flat_img[:, flat] = _ROAD[:channels, None] * rb[None, :]
        marks = _burn(features.road_marks, y_top, y_bottom, tf, mask_buf)
        if marks is not None:
            flat_img[:, np.flatnonzero(marks)] = _ROAD_MARK[:channels, None]

    # Shadows of buildings and trees.
    shadow = _burn(features.shadows, y_top, y_bottom, tf, mask_buf)
    if shadow is not None:
        for c in range(channels):
            np.multiply(img[c], _SHADOW_FACTOR[c], out=img[c], where=shadow)

    # Trees: dark-green domes, brighter towards the crown centre, leafy texture.
    tree_ids = _burn(features.trees, y_top, y_bottom, tf, ids_buf)
    if tree_ids is not None:
        flat = np.flatnonzero(tree_ids)
        rr, cc = np.divmod(flat, w)
        t = tree_ids.reshape(-1)[flat] - 1
        radius = features.tree_radius[t]
        dx = x[cc] - features.tree_centre[t, 0]
        dy = -down[rr] - features.tree_centre[t, 1]
        d2 = (dx * dx + dy * dy) / (radius * radius)
        # Lit from the side opposite the shadows: brighter there.
        lit = (dx * features.sun[0] + dy * features.sun[1]) / radius
        shade = (0.78 + 0.34 * (1.0 - np.clip(d2, 0.0, 1.0)) - 0.12 * lit).astype(np.float32)
        shade *= features.tree_tone[t] * (1.0 + 0.18 * fine_flat[flat])
        flat_img[:, flat] = _TREE[:channels, None] * shade[None, :]

    # Buildings: roof colour, gabled halves or a gentle gradient, slight texture.
    bld = _burn(features.buildings, y_top, y_bottom, tf, ids_buf)
    if bld is not None:
        flat = np.flatnonzero(bld)
        rr, cc = np.divmod(flat, w)
        k = bld.reshape(-1)[flat] - 1
        px = x[cc] - features.roof_centre[k, 0]
        py = -down[rr] - features.roof_centre[k, 1]
        s = (px * features.roof_axis[k, 0] + py * features.roof_axis[k, 1]) / np.maximum(
            features.roof_halfwidth[k], 1.0
        )
        shade = np.where(
            features.roof_gabled[k],
            np.where(s > 0, 1.06, 0.84) - 0.05 * np.abs(s),
            1.0 + 0.07 * s,
        ).astype(np.float32)
        shade *= 1.0 + 0.025 * fine_flat[flat]
        flat_img[:, flat] = features.roof_colour[k, :channels].T * shade[None, :]

    # Sensor grain, shared by the bands (uniform, standard deviation about 2.9).
    grain = ws.grain[:rows]
    rng.random(out=grain, dtype=np.float32)
    grain -= 0.5
    grain *= 10.0
    img += grain[None]
    return img


def _to_output(
    img: FloatArray,
    bands: int,
    nodata: float | None,
    nodata_mask: BoolArray | None,
    out: npt.NDArray[Any],
) -> npt.NDArray[Any]:
    """Mix the bands, scale, round, clip and cast into ``out``; fill the collar with nodata.

    ``img`` is consumed (modified in place). Returns ``out``.
    """
    dtype = out.dtype
    if bands == 1:
        src = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    elif bands == 2:
        src = np.stack([0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2], img[3]])
    else:
        src = img
    if dtype == np.uint16:
        src *= np.float32(_UINT16_MAX_VALUE / 255.0)
    hi = float(np.iinfo(dtype).max)
    lo = 0.0
    if nodata is not None:
        # Keep real pixels off the nodata value.
        if nodata <= lo:
            lo = nodata + 1
        elif nodata >= hi:
            hi = nodata - 1
    src += 0.5  # round half up: the cast truncates, and values are clipped to >= lo first
    np.clip(src, lo, hi + 0.49, out=src)
    np.copyto(out, src, casting="unsafe")
    if nodata is not None:
        if lo < nodata < hi:
            out[out == nodata] = nodata + 1
        if nodata_mask is not None:
            out[:, nodata_mask] = nodata
    return out


def _write_raster(
    path: Path,
    frame: _Frame,
    transform: Affine,
    crs: CRS,
    features: _Features,
    noise: _Noise,
    seed: int,
    bands: int,
    dtype: np.dtype[Any],
    nodata: float | None,
    collar_frac: float,
) -> None:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": frame.width,
        "height": frame.height,
        "count": bands,
        "dtype": dtype.name,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": BLOCK_SIZE,
        "blockysize": BLOCK_SIZE,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 1,
        "interleave": "pixel",
        "bigtiff": "if_safer",
    }
    if bands >= 3:
        profile["photometric"] = "RGB"
        if bands == 4:
            profile["alpha"] = "unspecified"  # band 4 is near-infrared, not alpha
    else:
        profile["photometric"] = "minisblack"
    if nodata is not None:
        profile["nodata"] = nodata
    descriptions = {1: ("grey",), 2: ("grey", "nir"), 3: ("red", "green", "blue")}.get(
        bands, ("red", "green", "blue", "nir")
    )
    cols = (np.arange(frame.width, dtype=np.float64) + 0.5) / frame.width
    ws = _Workspace(frame.width, 4 if bands in (2, 4) else 3, bands, dtype)
    with rasterio.open(path, "w", **profile) as dst:
        for i, band_name in enumerate(descriptions, start=1):
            dst.set_band_description(i, band_name)
        for strip, row0 in enumerate(range(0, frame.height, STRIP_ROWS)):
            rows = min(STRIP_ROWS, frame.height - row0)
            rng = np.random.default_rng([seed, 0x5EED, strip])
            img = _render_strip(frame, features, noise, row0, rows, rng, ws)
            mask = None
            if collar_frac > 0:
                r = (np.arange(row0, row0 + rows, dtype=np.float64) + 0.5) / frame.height
                mask = (r[:, None] + cols[None, :]) < collar_frac
            arr = _to_output(img, bands, nodata, mask, ws.out[:, :rows])
            dst.write(arr, window=Window(0, row0, frame.width, rows))


# --------------------------------------------------------------------------------------------
# Labels


def _write_labels(path: Path, crs: CRS, buildings: list[Polygon], roads: list[LineString]) -> None:
    import geopandas as gpd

    geoms: list[Any] = [*buildings, *roads]
    classes = ["building"] * len(buildings) + ["road"] * len(roads)
    gdf = gpd.GeoDataFrame(
        {"class": np.array(classes, dtype=object)},
        geometry=gpd.GeoSeries(geoms, crs=crs.to_wkt()),
        crs=crs.to_wkt(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        gdf.to_parquet(path)
        return
    driver = LABEL_DRIVERS[suffix]
    if suffix == ".shp":
        for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
            path.with_suffix(ext).unlink(missing_ok=True)
    else:
        path.unlink(missing_ok=True)
    kwargs: dict[str, Any] = {}
    if not geoms:
        kwargs["geometry_type"] = "Polygon"
    elif roads:
        kwargs["geometry_type"] = "Unknown"
    gdf.to_file(path, driver=driver, engine="pyogrio", **kwargs)
