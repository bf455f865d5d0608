"""Class masks to polygons, strip by strip, joined exactly across strip seams.

Each strip of the class mask is split into 4-connected components per class
(``scipy.ndimage.label``), and each component becomes one polygon in *pixel* coordinates
(``rasterio.features.shapes`` on the component labels). Pixel coordinates are integers, so pieces
of one object cut by a strip seam share exactly the same seam vertices. Components that touch
across a seam (same class, vertically adjacent pixels) are joined with a union-find, and a group
is unioned and emitted as soon as no member touches the bottom of the latest strip. This is the
same 4-connectivity that a whole-mask ``shapes()`` run uses, so the polygons are the same; only
the open groups are held in memory, never the whole mask.

Finished polygons are simplified (in pixels), moved to map coordinates with the scene transform,
given ``class``, ``class_id``, ``score`` (mean probability) and ``area_m2`` (geodesic when the
CRS is geographic), and filtered by area. No torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyproj
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage

from geounet.errors import OutputError
from geounet.style import write_gpkg_style, write_sidecar_qml

if TYPE_CHECKING:
    import geopandas as gpd

logger = logging.getLogger(__name__)

#: Output formats by suffix: (GDAL driver, whether the format holds mixed Polygon/MultiPolygon).
VECTOR_FORMATS: dict[str, str] = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
    ".parquet": "Parquet",
}

#: Mask value for nodata in class masks.
MASK_NODATA = 255

_FOUR = ndimage.generate_binary_structure(2, 1)


def vector_driver(path: str | os.PathLike[str]) -> str:
    """The GDAL driver (or ``Parquet``) for an output path, from its suffix.

    Raises:
        OutputError: For an unknown suffix, listing the known ones.
    """
    suffix = Path(path).suffix.lower()
    try:
        return VECTOR_FORMATS[suffix]
    except KeyError:
        known = ", ".join(VECTOR_FORMATS)
        raise OutputError(
            f"{Path(path).name}: unknown vector format {suffix or '(no suffix)'!r}; use one of {known}"
        ) from None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent[x] = x

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra

    def drop(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.parent.pop(i, None)


@dataclass
class _Group:
    class_id: int
    geoms: list[shapely.Geometry] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    score_sum: float = 0.0
    pixels: int = 0


def area_m2(geoms: npt.NDArray[Any], crs: CRS) -> npt.NDArray[np.float64]:
    """Areas in square metres: geodesic on the CRS's ellipsoid if it is geographic.

    Args:
        geoms: Polygons in ``crs`` coordinates.
        crs: Their CRS.
    """
    pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
    if pcrs.is_geographic:
        geod = pcrs.get_geod() or pyproj.Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=np.float64)
    factor = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
    return np.asarray(shapely.area(geoms), dtype=np.float64) * factor**2


def _components(mask: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.int32], list[int]]:
    """4-connected components of each foreground class: int32 labels (0 = none) and the class
    of each label (label ``i`` is ``classes[i - 1]``)."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)) if mask.dtype == np.uint8 \
        else np.unique(mask)
    classes = [int(c) for c in present if c != 0 and c != MASK_NODATA]
    labels = np.zeros(mask.shape, dtype=np.int32)
    label_class: list[int] = []
    if len(classes) == 1:
        n = ndimage.label(mask == classes[0], structure=_FOUR, output=labels)
        return labels, [classes[0]] * int(n)
    lab = np.empty(mask.shape, dtype=np.int32)
    for cls in classes:
        n = int(ndimage.label(mask == cls, structure=_FOUR, output=lab))
        if n:
            lab[lab > 0] += len(label_class)
            labels += lab  # classes are disjoint: the other classes' pixels are 0 here
            label_class.extend([cls] * n)
    return labels, label_class


def _polygons(
    labels: npt.NDArray[np.int32], transform: Affine
) -> tuple[list[int], npt.NDArray[Any]]:
    """One polygon (with holes) per label: the labels and the shapely polygons, built in bulk."""
    values: list[int] = []
    coords: list[tuple[float, float]] = []
    ring_ends: list[int] = [0]
    geom_ends: list[int] = [0]
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        values.append(int(value))
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        geom_ends.append(len(ring_ends) - 1)
    if not values:
        return values, np.empty(0, dtype=object)
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.asarray(coords, dtype=np.float64),
        (np.asarray(ring_ends, dtype=np.int64), np.asarray(geom_ends, dtype=np.int64)),
    )
    return values, polygons


class StripVectorizer:
    """Vectorizes a class mask fed in consecutive row strips.

    Args:
        transform: The scene's pixel-to-map transform.
        crs: The scene's CRS.
        class_names: Names by class id; id 0 is background and never vectorized.
        simplify: Douglas-Peucker tolerance in pixels (0 = none).
        min_area_m2: Drop polygons smaller than this (0 = keep all).
        regularize: Square building outlines (see :func:`regularize_polygon`).
        split_px: Split polygons where parts meet through a neck narrower than this many
            pixels (touching buildings; see :func:`split_necks`); 0 = off.
    """

    def __init__(
        self,
        transform: Affine,
        crs: CRS,
        class_names: Sequence[str],
        *,
        simplify: float = 0.0,
        min_area_m2: float = 0.0,
        regularize: bool = False,
        split_px: float = 0.0,
    ) -> None:
        self.split_px = split_px
        self.transform = transform
        self.crs = crs
        self.class_names = list(class_names)
        self.simplify = simplify
        self.min_area_m2 = min_area_m2
        self.regularize = regularize
        self._uf = _UnionFind()
        self._pieces: dict[int, tuple[int, shapely.Geometry, float, int]] = {}
        self._next_id = 1
        self._row = 0
        self._width = 0
        self._bottom: npt.NDArray[np.int64] | None = None  # global ids on the last row so far
        self._bottom_class: npt.NDArray[np.int64] | None = None
        self._done: list[tuple[int, shapely.Geometry, float, int]] = []

    def add(
        self, row_off: int, mask: npt.NDArray[np.integer], score: npt.NDArray[np.floating] | None
    ) -> None:
        """Vectorize the next strip.

        Args:
            row_off: First scene row of the strip (must follow the previous strip).
            mask: (rows, width) class ids; 0 background, :data:`MASK_NODATA` nodata.
            score: Optional (rows, width) probability of each pixel's class (for ``score``).
        """
        if row_off != self._row:
            raise ValueError(f"strip at row {row_off}, expected {self._row}")
        rows, width = mask.shape
        self._width = width
        labels, label_class = _components(mask)
        count = len(label_class)
        offset = self._next_id - 1
        if count:
            fg = np.flatnonzero(labels)  # foreground pixels only: smaller and faster
            fg_labels = labels.ravel()[fg]
            pixels = np.bincount(fg_labels, minlength=count + 1)[1:]
            sums = (
                np.bincount(fg_labels, weights=score.ravel()[fg], minlength=count + 1)[1:]
                if score is not None
                else pixels.astype(np.float64)
            )
            # Pixel coordinates of the whole scene: integer, hence exact at the seams.
            values, geoms = _polygons(labels, Affine.translation(0, row_off))
            for i, geom in zip(values, geoms, strict=True):
                gid = i + offset
                self._uf.add(gid)
                self._pieces[gid] = (
                    label_class[i - 1], geom, float(sums[i - 1]), int(pixels[i - 1])
                )
            self._next_id += count
        # Only the first and last rows matter for joining across seams.
        edge = labels[[0, -1]]
        glabels = np.where(edge > 0, edge.astype(np.int64) + offset, 0)
        gclass = np.where(edge > 0, mask[[0, -1]], 0).astype(np.int64)

        if self._bottom is not None and self._bottom_class is not None:
            top = glabels[0]
            join = (top > 0) & (self._bottom > 0) & (gclass[0] == self._bottom_class)
            if join.any():
                pairs = np.unique(np.stack([self._bottom[join], top[join]], axis=1), axis=0)
                for a, b in pairs:
                    self._uf.union(int(a), int(b))
        self._bottom = glabels[-1].copy()
        self._bottom_class = gclass[-1].copy()
        self._row = row_off + rows
        self._close_groups(open_ids=np.unique(self._bottom[self._bottom > 0]))

    def _close_groups(self, open_ids: npt.NDArray[np.int64]) -> None:
        open_roots = {self._uf.find(int(i)) for i in open_ids}
        groups: dict[int, _Group] = {}
        for gid, (cls, geom, ssum, npx) in self._pieces.items():
            root = self._uf.find(gid)
            if root in open_roots:
                continue
            g = groups.setdefault(root, _Group(cls))
            g.geoms.append(geom)
            g.ids.append(gid)
            g.score_sum += ssum
            g.pixels += npx
        for g in groups.values():
            geom = g.geoms[0] if len(g.geoms) == 1 else shapely.union_all(g.geoms)
            self._done.append((g.class_id, geom, g.score_sum, g.pixels))
            for gid in g.ids:
                del self._pieces[gid]
            self._uf.drop(g.ids)

    def finish(self) -> gpd.GeoDataFrame:
        """Close every group and return the polygons in the scene's CRS.

        Returns:
            Columns ``class`` (name), ``class_id``, ``score`` (mean probability, or 1.0 without
            scores), ``area_m2`` and ``geometry`` (valid Polygon/MultiPolygon), sorted by
            position (top to bottom, then left to right).
        """
        self._close_groups(open_ids=np.array([], dtype=np.int64))
        self._bottom = None
        self._bottom_class = None
        done, self._done = self._done, []
        return polygons_frame(
            [d[1] for d in done],
            class_ids=[d[0] for d in done],
            scores=[d[2] / max(d[3], 1) for d in done],
            transform=self.transform,
            crs=self.crs,
            class_names=self.class_names,
            simplify=self.simplify,
            min_area_m2=self.min_area_m2,
            regularize=self.regularize,
            split_px=self.split_px,
            extent_px=(self._width, self._row),
        )


def import_vector_libraries() -> float:
    """Import geopandas and pyogrio (with pandas), which only the vector output needs.

    They are imported when the first vector file is made rather than with this module, so a
    prediction holds ~64 MB less until its end. Returns the seconds it took (0 once loaded).
    """
    import time

    t0 = time.perf_counter()
    import geopandas  # noqa: F401
    import pyogrio  # noqa: F401

    return time.perf_counter() - t0


def polygons_frame(
    pixel_geoms: Sequence[shapely.Geometry],
    *,
    class_ids: Sequence[int],
    scores: Sequence[float],
    transform: Affine,
    crs: CRS,
    class_names: Sequence[str],
    simplify: float = 0.0,
    min_area_m2: float = 0.0,
    regularize: bool = False,
    split_px: float = 0.0,
    extent_px: tuple[int, int] | None = None,
) -> gpd.GeoDataFrame:
    """Polygons in pixel coordinates to a clean GeoDataFrame in map coordinates.

    ``extent_px`` (columns, rows): the raster's size; squared outlines are clipped to it, so a
    building cut by the scene's edge does not reach beyond it.
    """
    import geopandas as gpd  # see import_vector_libraries

    geoms = np.asarray(pixel_geoms, dtype=object)
    if split_px > 0 and len(geoms):
        pieces = [split_necks(g, split_px) for g in geoms]
        owner = np.repeat(np.arange(len(geoms)), [len(p) for p in pieces])
        geoms = np.empty(len(owner), dtype=object)
        geoms[:] = [g for p in pieces for g in p]
        class_ids = np.asarray(class_ids)[owner].tolist()
        scores = np.asarray(scores, dtype=np.float64)[owner].tolist()
    if regularize and len(geoms):
        geoms = np.array([regularize_polygon(g) for g in geoms], dtype=object)
        if extent_px is not None:
            geoms = shapely.clip_by_rect(geoms, 0, 0, extent_px[0], extent_px[1])
    if simplify > 0 and len(geoms):
        geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    if len(geoms):
        geoms = shapely.transform(
            geoms,
            lambda xy: np.column_stack(
                [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]
            ),
        )
        geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    frame = gpd.GeoDataFrame(
        {
            "class": [
                class_names[i] if i < len(class_names) else str(i) for i in class_ids
            ],
            "class_id": np.asarray(class_ids, dtype=np.int32),
            "score": np.round(np.asarray(scores, dtype=np.float64), 4),
            "area_m2": area_m2(geoms, crs) if len(geoms) else np.zeros(0),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
        crs=crs,
    )
    frame = frame[~frame.geometry.is_empty]
    if min_area_m2 > 0:
        frame = frame[frame["area_m2"] >= min_area_m2]
    if len(frame):
        b_ = frame.geometry.bounds
        frame = frame.assign(_y=-b_["maxy"] * np.sign(transform.e or -1), _x=b_["minx"])
        frame = frame.sort_values(["_y", "_x"], kind="stable").drop(columns=["_y", "_x"])
    frame["area_m2"] = frame["area_m2"].round(2)
    return frame.reset_index(drop=True)


def split_necks(geom: shapely.Geometry, width: float) -> list[shapely.Geometry]:
    """The parts of a polygon that meet only through necks narrower than ``width``.

    Two roofs that touch, or that the mask joins across a gap it did not see, make one polygon
    with a narrow waist. The polygon is eroded by ``width / 2`` (mitred, so right angles stay
    right angles): where it falls into two or more cores of at least ``width²`` each, every
    core is grown back by ``width / 2`` inside the polygon and overlaps go to the first core,
    so the pieces tile the polygon except for the neck and slivers thinner than ``width``.
    A polygon without such a neck comes back unchanged.

    Args:
        geom: Polygon or MultiPolygon (in pixel units in :class:`StripVectorizer`).
        width: Neck width, in the geometry's units.

    Returns:
        The pieces (one element, ``geom`` itself, when nothing splits).
    """
    r = width / 2
    if r <= 0 or geom.is_empty:
        return [geom]
    core = shapely.buffer(geom, -r, join_style="mitre")
    cores = [c for c in shapely.get_parts(core) if c.area >= width * width]
    if len(cores) < 2:
        return [geom]
    grown = shapely.intersection(shapely.buffer(np.asarray(cores, dtype=object), r, join_style="mitre"), geom)
    out: list[shapely.Geometry] = []
    taken: shapely.Geometry | None = None
    for g in grown:
        piece = g if taken is None else shapely.difference(g, taken)
        piece = _polygonal(piece)
        if piece.is_empty or piece.area <= 0:
            continue
        out.append(piece)
        taken = piece if taken is None else shapely.union(taken, piece)
    return out or [geom]


def regularize_polygon(geom: shapely.Geometry, tolerance: float = 1.5, min_iou: float = 0.75) -> shapely.Geometry:
    """A building outline squared up: right angles along its dominant orientation, jogs removed.

    Each polygon (pixel coordinates) is simplified (Douglas-Peucker, ``tolerance``), its
    dominant orientation found as the length-weighted circular mean of its edge directions
    modulo 90 degrees, and every ring rebuilt from runs of edges: consecutive edges closer to the
    dominant axis form one run along it (at their length-weighted mean offset), the others one
    run across it, and each corner is where two runs meet. Runs shorter than ``tolerance`` are
    merged into their neighbours (small jogs). A result that is invalid or overlaps the original
    by less than ``min_iou`` (curved or diagonal shapes) falls back to the simplified outline.
    """
    if geom.is_empty:
        return geom
    parts = [_regularize_part(p, tolerance, min_iou) for p in shapely.get_parts(geom)]
    parts = [p for p in parts if not p.is_empty]
    if not parts:
        return geom
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _regularize_part(poly: shapely.Polygon, tolerance: float, min_iou: float) -> shapely.Polygon:
    simple = shapely.simplify(poly, tolerance, preserve_topology=True)
    if simple.is_empty or simple.geom_type != "Polygon":
        return poly
    ext = np.asarray(simple.exterior.coords)
    d = np.diff(ext, axis=0)
    lengths = np.hypot(d[:, 0], d[:, 1])
    angles = np.arctan2(d[:, 1], d[:, 0])
    theta = 0.25 * np.arctan2((lengths * np.sin(4 * angles)).sum(), (lengths * np.cos(4 * angles)).sum())
    # The edge histogram's angle, a few close to it, and the minimum rotated rectangle's:
    # the squared outline that overlaps the mask best wins.
    rect = np.asarray(shapely.minimum_rotated_rectangle(simple).exterior.coords)
    candidates = [theta + np.radians(k) for k in (-2, -1, 0, 1, 2)]
    if len(rect) >= 3:
        candidates.append(float(np.arctan2(rect[1, 1] - rect[0, 1], rect[1, 0] - rect[0, 0])))
    best, best_iou = simple, min_iou
    for angle in candidates:
        out = _squared(simple, angle, tolerance)
        if out is None:
            continue
        inter = out.intersection(poly).area
        union = out.area + poly.area - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= best_iou:
            best, best_iou = out, iou
    return best


def _squared(simple: shapely.Polygon, theta: float, tolerance: float) -> shapely.Polygon | None:
    """The polygon's rings rebuilt axis-parallel in a frame turned by ``theta``, or None."""
    c, s = np.cos(theta), np.sin(theta)
    centre = np.asarray(simple.exterior.coords)[:-1].mean(axis=0)

    def to_local(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        v = xy - centre
        return np.column_stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]])

    def to_map(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.column_stack([c * xy[:, 0] - s * xy[:, 1], s * xy[:, 0] + c * xy[:, 1]]) + centre

    rings = []
    for k, ring in enumerate([simple.exterior, *simple.interiors]):
        square = _orthogonal_ring(to_local(np.asarray(ring.coords)), tolerance)
        if square is None:
            if k == 0:
                return None  # the outline itself cannot be squared
            continue  # a hole too small or too odd to square: dropped
        rings.append(to_map(square))
    out = shapely.Polygon(rings[0], rings[1:])
    return out if out.is_valid and not out.is_empty else None


def _orthogonal_ring(xy: npt.NDArray[np.float64], tolerance: float) -> npt.NDArray[np.float64] | None:
    """An axis-parallel ring from a closed ring (rotated so the dominant axis is x), or None."""
    d = np.diff(xy, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    keep = length > 0
    d, length, starts = d[keep], length[keep], xy[:-1][keep]
    if len(d) < 3:
        return None
    horizontal = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    mid = starts + d / 2
    # Runs: [is_horizontal, weight, weighted offset sum] of consecutive edges of one kind.
    runs: list[list[float]] = []
    for h, w, m in zip(horizontal, length, mid, strict=True):
        value = m[1] if h else m[0]
        if runs and bool(runs[-1][0]) == bool(h):
            runs[-1][1] += w
            runs[-1][2] += w * value
        else:
            runs.append([float(h), w, w * value])
    if len(runs) > 1 and runs[0][0] == runs[-1][0]:
        last = runs.pop()
        runs[0][1] += last[1]
        runs[0][2] += last[2]
    while True:
        if len(runs) < 4:
            return None
        n = len(runs)
        values = [r[2] / r[1] for r in runs]
        # Run k lies between corners k-1|k and k|k+1; its length is the offset change of its
        # neighbours (which are of the other kind).
        spans = [abs(values[(k + 1) % n] - values[k - 1]) for k in range(n)]
        k = int(np.argmin(spans))
        if spans[k] >= tolerance or n <= 4:
            break
        # Drop run k: its two neighbours (same kind) merge into one.
        a, b = (k - 1) % n, (k + 1) % n
        merged = [runs[a][0], runs[a][1] + runs[b][1], runs[a][2] + runs[b][2]]
        runs = [r for i, r in enumerate(runs) if i not in (a, k, b)]
        # Cyclic order is kept: it goes where run a was (at the start when the merge wraps).
        runs.insert(k - 1 if 1 <= k <= n - 2 else 0, merged)
    values = [r[2] / r[1] for r in runs]
    n = len(runs)
    corners = []
    for k in range(n):
        nxt = (k + 1) % n
        if runs[k][0]:  # horizontal run k (y), then vertical run k+1 (x)
            corners.append((values[nxt], values[k]))
        else:
            corners.append((values[k], values[nxt]))
    corners.append(corners[0])
    return np.asarray(corners, dtype=np.float64)


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """A valid Polygon or MultiPolygon (possibly empty), whatever simplification did."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [
        g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")
    ]
    if not parts:
        return shapely.Polygon()
    merged = shapely.union_all(parts)
    return merged if merged.geom_type in ("Polygon", "MultiPolygon") else shapely.Polygon()


def vectorize_mask(
    mask: npt.NDArray[np.integer],
    transform: Affine,
    crs: CRS,
    class_names: Sequence[str],
    *,
    score: npt.NDArray[np.floating] | None = None,
    strip_height: int | None = None,
    simplify: float = 0.0,
    min_area_m2: float = 0.0,
) -> gpd.GeoDataFrame:
    """Vectorize an in-memory class mask (in strips of ``strip_height`` rows, or at once).

    Args:
        mask: (rows, cols) class ids; 0 background, 255 nodata.
        transform: Pixel-to-map transform of the mask.
        crs: CRS of the transform.
        class_names: Names by class id.
        score: Optional per-pixel probability for the ``score`` attribute.
        strip_height: Rows per strip (None: the whole mask at once).
        simplify: Tolerance in pixels.
        min_area_m2: Minimum polygon area.
    """
    vec = StripVectorizer(transform, crs, class_names, simplify=simplify, min_area_m2=min_area_m2)
    step = strip_height or mask.shape[0]
    for r0 in range(0, mask.shape[0], step):
        vec.add(r0, mask[r0 : r0 + step], None if score is None else score[r0 : r0 + step])
    return vec.finish()


def write_vectors(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    style: str | None = None,
) -> None:
    """Write polygons with the driver chosen by suffix, in the frame's CRS.

    GeoJSON keeps the scene's CRS (GDAL writes its ``crs`` member) unless the caller reprojected.
    ``style`` (QGIS QML) becomes the layer's default style: a ``layer_styles`` row in a
    GeoPackage, a ``.qml`` file beside any other format.

    Raises:
        OutputError: Unknown suffix or a failed write (disk full, permissions).
    """
    driver = vector_driver(path)
    path = Path(path)
    try:
        if driver == "Parquet":
            frame.to_parquet(path, index=False)
        else:
            _write_ogr(frame, path, driver, layer)
        if style is not None:
            if driver == "GPKG":
                write_gpkg_style(path, layer or path.stem, style)
            else:
                write_sidecar_qml(path, style)
    except OutputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow/sqlite raise their own types for I/O failures
        raise OutputError(
            f"writing {path.name} failed ({str(exc).splitlines()[0]}); the disk may be full: "
            f"free space or write elsewhere"
        ) from exc


def _write_ogr(frame: gpd.GeoDataFrame, path: Path, driver: str, layer: str | None) -> None:
    import pyogrio

    kwargs: dict[str, Any] = {}
    if driver != "GeoJSON":
        kwargs["promote_to_multi"] = True
    if len(frame) == 0:
        kwargs["geometry_type"] = "MultiPolygon" if driver != "GeoJSON" else "Polygon"
    if driver == "GPKG":
        kwargs["layer"] = layer or path.stem
        # GeoPackage 1.2: what older GDAL/QGIS/ArcGIS builds read without a version warning.
        kwargs["dataset_options"] = {"VERSION": "1.2"}
    pyogrio.write_dataframe(frame, path, driver=driver, **kwargs)
