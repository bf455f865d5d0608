"""Class masks to polygons, strip by strip, joined exactly across strip seams.

Each strip of the class mask is cut into bands of a few million pixels (fewer rows where a band
holds more than :data:`MAX_BAND_PIECES` pieces, as speckle does) and split into 4-connected
components per class (``scipy.ndimage.label``); each component becomes one polygon in *pixel*
coordinates: solid rectangles inside the band directly, in bulk, the others through
``rasterio.features.shapes`` on the component labels. Pixel coordinates are integers, so pieces
of one object cut by a seam share exactly the same seam vertices. Components that touch across a
seam (same class, vertically adjacent pixels) are grouped with a union-find, and their outlines
are linked at the seam (see ``_link``, no polygon overlay); a group becomes a polygon as soon as
no member touches the bottom of the latest band. This is the same 4-connectivity that a
whole-mask ``shapes()`` run uses, so the polygons are the same; only the open groups are held in
memory, never the whole mask.

Finished polygons are simplified (in pixels), moved to map coordinates with the scene transform,
given ``class``, ``class_id``, ``score`` (mean probability) and ``area_m2`` (geodesic when the
CRS is geographic), and filtered by area. No torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
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
from geounet.geodata.raster import ground_scale
from geounet.geodata.style import write_gpkg_style, write_sidecar_qml

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

#: Pieces (4-connected components) vectorized in one band at most: a band with more (speckle)
#: is halved, so that its Python objects (a few hundred bytes a piece) stay bounded.
MAX_BAND_PIECES = 200_000

#: Pixels polygonized in one call at most: strips wider than this over their height are
#: vectorized in bands of fewer rows (about 5 s of GDAL for the worst case, speckle).
CHUNK_PIXELS = 4_000_000


def band_rows(width: int) -> int:
    """Rows of a ``width``-pixel strip that are polygonized in one call (see :data:`CHUNK_PIXELS`)."""
    return max(1, CHUNK_PIXELS // max(width, 1))


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


def area_m2(geoms: npt.NDArray[Any], crs: CRS) -> npt.NDArray[np.float64]:
    """Areas in square metres: geodesic on the CRS's ellipsoid if it is geographic.

    Args:
        geoms: Polygons in ``crs`` coordinates.
        crs: Their CRS.
    """
    geod, factor = metric_of(crs)
    if geod is not None:
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=np.float64)
    return (
        np.asarray(shapely.area(geoms), dtype=np.float64)
        * factor**2
        / ground_scale(geoms, crs) ** 2
    )


def metric_of(crs: CRS) -> tuple[pyproj.Geod | None, float]:
    """How to measure in ``crs``: its ellipsoid when it is geographic (geodesic measures), else
    None and the metres per unit of its first axis."""
    pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
    if pcrs.is_geographic:
        return pcrs.get_geod() or pyproj.Geod(ellps="WGS84"), 1.0
    return None, pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0


def pixel_to_map(geoms: npt.NDArray[Any], transform: Affine) -> npt.NDArray[Any]:
    """Geometries in pixel coordinates moved to map coordinates by ``transform``."""
    if not len(geoms):
        return geoms
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    moved: npt.NDArray[Any] = shapely.transform(
        geoms,
        lambda xy: np.column_stack(
            [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]
        ),
    )
    return moved


def class_labels(class_ids: Sequence[int], class_names: Sequence[str]) -> list[str]:
    """The ``class`` column: each id's name (the id itself past the names)."""
    return [class_names[i] if i < len(class_names) else str(i) for i in class_ids]


def by_position(frame: gpd.GeoDataFrame, transform: Affine, *then: str) -> gpd.GeoDataFrame:
    """Features sorted top to bottom, then left to right (then by ``then``), stably."""
    if not len(frame):
        return frame
    bounds = frame.geometry.bounds
    frame = frame.assign(_y=-bounds["maxy"] * np.sign(transform.e or -1), _x=bounds["minx"])
    return frame.sort_values(["_y", "_x", *then], kind="stable").drop(columns=["_y", "_x"])


def _components(mask: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.int32], list[int]]:
    """4-connected components of each foreground class: int32 labels (0 = none) and the class
    of each label (label ``i`` is ``classes[i - 1]``)."""
    present = (
        np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        if mask.dtype == np.uint8
        else np.unique(mask)
    )
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


def _rectangles(
    labels: npt.NDArray[np.int32],
    count: int,
    pixels: npt.NDArray[np.int64],
    fg: npt.NDArray[np.intp],
    fg_labels: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Which labels are solid rectangles inside the band (not on its first or last row), and
    every label's bounding box ``(top, left, bottom, right)`` in band pixels, end exclusive.

    Such a piece is its bounding box: built in bulk, it never goes through ``shapes``. On speckle
    (an untrained network, a noisy class) most pieces are single pixels or short runs.
    """
    rows, width = labels.shape
    order = np.argsort(fg_labels, kind="stable")
    r = (fg // width)[order]
    c = (fg % width)[order]
    starts = np.concatenate([[0], np.cumsum(pixels[1:])[:-1]]).astype(np.intp)
    box = np.empty((count, 4), dtype=np.int64)
    box[:, 0] = np.minimum.reduceat(r, starts)
    box[:, 1] = np.minimum.reduceat(c, starts)
    box[:, 2] = np.maximum.reduceat(r, starts) + 1
    box[:, 3] = np.maximum.reduceat(c, starts) + 1
    rect = np.zeros(count + 1, dtype=bool)
    rect[1:] = (
        ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) == pixels[1:])
        & (box[:, 0] > 0)
        & (box[:, 2] < rows)
    )
    return rect, box


def _rectangle_polygons(box: npt.NDArray[np.int64], row_off: int) -> npt.NDArray[Any]:
    """Polygons of pixel-aligned boxes ``(top, left, bottom, right)``, vertices as ``shapes``
    lists them: from the top-left corner, down first."""
    y0 = (box[:, 0] + row_off).astype(np.float64)
    y1 = (box[:, 2] + row_off).astype(np.float64)
    x0 = box[:, 1].astype(np.float64)
    x1 = box[:, 3].astype(np.float64)
    xy = np.stack(
        [np.stack([x0, x0, x1, x1, x0], axis=1), np.stack([y0, y1, y1, y0, y0], axis=1)], axis=2
    )
    polygons: npt.NDArray[Any] = shapely.polygons(xy)
    return polygons


def _polygons(
    labels: npt.NDArray[np.int32], transform: Affine
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], Any]:
    """One polygon (with holes) per label, in the order GDAL finished them: the labels, the
    shapely polygons (built in bulk) and their ragged coordinates ``(coords, ring_ends,
    polygon_ends)``."""
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
        return np.zeros(0, dtype=np.int64), np.empty(0, dtype=object), None
    xy = np.asarray(coords, dtype=np.float64)
    del coords
    ragged = (xy, np.asarray(ring_ends, dtype=np.int64), np.asarray(geom_ends, dtype=np.int64))
    polygons = shapely.from_ragged_array(shapely.GeometryType.POLYGON, ragged[0], ragged[1:])
    return np.asarray(values, dtype=np.int64), polygons, ragged


class StripVectorizer:
    """Vectorizes a class mask fed in consecutive row strips.

    Polygons that cannot change any more (not reaching the last strip's bottom row) are ready
    as soon as their strip is added: :meth:`take` hands them out in batches (for streaming to a
    file), :meth:`finish` closes the rest. Pieces of one polygon in consecutive strips are joined
    at each seam by linking their boundaries (see ``_link``): bounded work per strip and no
    overlay, whatever the polygon's size.

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
        self._open: dict[int, _OpenGroup] = {}
        self._next_id = 1
        self._row = 0
        self._width = 0
        self._bottom: npt.NDArray[np.int64] | None = None  # open group id under each column
        self._done: list[_Done] = []  # finished polygons, in chunks
        self._ready = 0
        self._closed: list[_OpenGroup] = []  # groups closed by the strip being added

    @property
    def ready(self) -> int:
        """Finished polygons not yet taken."""
        return self._ready

    @property
    def open_groups(self) -> int:
        """Polygons that reach the open bottom edge."""
        return len(self._open)

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
        # Polygonizing is one native call per piece of strip: kept to a few seconds (so that
        # Ctrl-C and SIGTERM act), whatever the scene's width.
        step = min(rows, band_rows(width))
        for r0 in range(0, rows, step):
            self._add(
                row_off + r0, mask[r0 : r0 + step], None if score is None else score[r0 : r0 + step]
            )

    def _add(
        self, row_off: int, mask: npt.NDArray[np.integer], score: npt.NDArray[np.floating] | None
    ) -> None:
        rows, width = mask.shape
        labels, label_class = _components(mask)
        count = len(label_class)
        if count > MAX_BAND_PIECES and rows > 1:
            # Speckle: fewer rows at a time, so that one band's Python objects stay bounded.
            half = rows // 2
            self._add(row_off, mask[:half], None if score is None else score[:half])
            self._add(row_off + half, mask[half:], None if score is None else score[half:])
            return
        self._width = width
        s, e = row_off, row_off + rows
        offset = self._next_id - 1  # label i is group id i + offset
        self._next_id += count
        pixels: Any = np.zeros(0, dtype=np.int64)
        sums: Any = np.zeros(0)
        values = np.zeros(0, dtype=np.int64)
        geoms: Any = np.empty(0, dtype=object)
        ragged: Any = None
        done_labels = np.zeros(0, dtype=np.int64)
        done_geoms: Any = np.empty(0, dtype=object)
        classes = np.asarray([0, *label_class], dtype=np.int32)
        if count:
            fg = np.flatnonzero(labels)  # foreground pixels only: smaller and faster
            fg_labels = labels.ravel()[fg]
            pixels = np.bincount(fg_labels, minlength=count + 1)
            sums = (
                np.bincount(fg_labels, weights=score.ravel()[fg], minlength=count + 1)
                if score is not None
                else pixels.astype(np.float64)
            )
            rect, box = _rectangles(labels, count, pixels, fg, fg_labels)
            del fg, fg_labels
            done_labels = np.flatnonzero(rect)
            done_geoms = _rectangle_polygons(box[done_labels - 1], row_off)
            if len(done_labels):
                labels = np.where(rect[labels], 0, labels)
            # Pixel coordinates of the whole scene: integer, hence exact at the seams.
            values, geoms, ragged = _polygons(labels, Affine.translation(0, row_off))

        # Seam: open groups above joined with this strip's pieces of the same class below.
        parent: dict[int, int] = {gid: gid for gid in self._open}

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        top = labels[0].astype(np.int64)
        joined_top = np.zeros(width, dtype=np.int64)  # group id of joined pieces on the top row
        if self._bottom is not None and self._open:
            above = self._bottom
            same = (top > 0) & (above > 0)
            same[same] = mask[0][same] == _map_values(above[same], lambda g: self._open[g].class_id)
            if same.any():
                pairs = np.unique(np.stack([above[same], top[same] + offset], axis=1), axis=0)
                for a, b in pairs:
                    parent.setdefault(int(b), int(b))
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[rb] = ra
                joined_labels = np.unique(top[same])
                joined_top = np.where(np.isin(top, joined_labels), top + offset, 0)
        joined = {int(v) for v in np.unique(joined_top[joined_top > 0])}
        bottom_labels = labels[-1].astype(np.int64)
        touching = {int(v) + offset for v in np.unique(bottom_labels[bottom_labels > 0])}
        for gid in touching:
            parent.setdefault(gid, gid)

        # Pieces that reach neither seam are finished polygons as they are (in label order).
        if count:
            seam = np.zeros(count + 1, dtype=bool)
            seam[np.asarray([g - offset for g in joined | touching], dtype=np.int64)] = True
            free = ~seam[values]
            done_labels = np.concatenate([done_labels, values[free]])
            done_geoms = np.concatenate([done_geoms, geoms[free]])
            order = np.argsort(done_labels, kind="stable")
            done_labels, done_geoms = done_labels[order], done_geoms[order]
            self._push(
                _Done(classes[done_labels], done_geoms, sums[done_labels], pixels[done_labels])
            )

        # Every group that an open group or a piece reaching a seam belongs to.
        members: dict[int, list[int]] = {}
        for gid in parent:
            members.setdefault(find(gid), []).append(gid)
        # The seam pieces' outlines cut at the seams, all at once.
        cut: dict[int, list[_Path]] = {}
        if count:
            at = np.flatnonzero(seam[values])  # positions in `ragged`
            gids = values[at] + offset
            on_top = np.isin(gids, np.fromiter(joined, dtype=np.int64, count=len(joined)))
            on_bottom = np.isin(gids, np.fromiter(touching, dtype=np.int64, count=len(touching)))
            cut = dict(
                zip(gids.tolist(), _cut_pieces(ragged, at, on_top, on_bottom, s, e), strict=True)
            )
            index = dict(zip(gids.tolist(), at.tolist(), strict=True))
        old_root = np.zeros(width, dtype=np.int64)
        new_root = np.zeros(width, dtype=np.int64)
        if self._bottom is not None:
            has = self._bottom > 0
            old_root[has] = _map_values(self._bottom[has], find)
        has = joined_top > 0
        new_root[has] = _map_values(joined_top[has], find)
        # The seam's edges of each joined group: under columns where exactly one side is in it.
        old_edges = _runs_by_value(old_root, (old_root > 0) & (old_root != new_root))
        new_edges = _runs_by_value(new_root, (new_root > 0) & (old_root != new_root))
        opened: dict[int, _OpenGroup] = {}
        for root, members_ in members.items():
            group = _OpenGroup(0)
            paths: list[_Path] = []
            has_old = False
            for gid in members_:
                old = self._open.get(gid)
                if old is not None:
                    has_old = True
                    paths.extend(old.paths)
                    group.class_id = old.class_id
                    group.rings.extend(old.rings)
                    group.holes.extend(old.holes)
                    group.score_sum += old.score_sum
                    group.pixels += old.pixels
                else:
                    i = gid - offset
                    paths.extend(cut[gid])
                    holes = _piece_holes(ragged, index[gid])
                    if holes is not None:
                        group.holes.append(holes)
                    group.class_id = label_class[i - 1]
                    group.score_sum += float(sums[i])
                    group.pixels += int(pixels[i])
            if has_old:
                paths += _seam_runs(old_edges.get(root, ()), False, s)
                paths += _seam_runs(new_edges.get(root, ()), True, s)
            rings, group.paths = _link(paths, s)
            group.rings.extend(rings)
            if group.paths:
                opened[root] = group
            else:
                self._closed.append(group)
        self._flush_closed()
        self._open = opened
        self._bottom = np.zeros(width, dtype=np.int64)
        has = bottom_labels > 0
        if has.any():
            self._bottom[has] = _map_values(bottom_labels[has] + offset, find)
        self._row = e

    def _push(self, done: _Done) -> None:
        if len(done.geoms):
            self._done.append(done)
            self._ready += len(done.geoms)

    def _flush_closed(self) -> None:
        """The groups closed since the last call to finished polygons."""
        closed, self._closed = self._closed, []
        if closed:
            self._push(
                _Done(
                    np.asarray([g.class_id for g in closed], dtype=np.int32),
                    _polygons_from_groups(closed),
                    np.asarray([g.score_sum for g in closed], dtype=np.float64),
                    np.asarray([g.pixels for g in closed], dtype=np.int64),
                )
            )

    def _close_all(self) -> None:
        """Close the groups at the bottom edge (the scene's last row)."""
        if self._bottom is None:
            return
        edges = _runs_by_value(self._bottom, self._bottom > 0)
        for root, group in self._open.items():
            paths = group.paths + _seam_runs(edges.get(root, ()), False, self._row)
            rings, rest = _link(paths, self._row)
            assert not rest
            group.rings.extend(rings)
            group.paths = []
            self._closed.append(group)
        self._flush_closed()
        self._open = {}
        self._bottom = None

    def take(self, limit: int | None = None, *, final: bool = False) -> gpd.GeoDataFrame | None:
        """Finished polygons in the scene's CRS, at most ``limit`` (None: all), or None when none
        are ready. ``final``: the last strip was added: every polygon is finished."""
        if final:
            self._close_all()
        if not self._ready:
            return None
        n = self._ready if limit is None else min(limit, self._ready)
        chunks: list[_Done] = []
        got = 0
        while got < n:
            head = self._done[0]
            k = min(n - got, len(head.geoms))
            if k == len(head.geoms):
                chunks.append(self._done.pop(0))
            else:
                chunks.append(head.slice(0, k))
                self._done[0] = head.slice(k, len(head.geoms))
            got += k
        self._ready -= n
        done = _Done.concat(chunks)
        return polygons_frame(
            done.geoms,
            class_ids=done.class_ids.tolist(),
            scores=(done.sums / np.maximum(done.pixels, 1)).tolist(),
            transform=self.transform,
            crs=self.crs,
            class_names=self.class_names,
            simplify=self.simplify,
            min_area_m2=self.min_area_m2,
            regularize=self.regularize,
            split_px=self.split_px,
            extent_px=(self._width, self._row),
        )

    def finish(self) -> gpd.GeoDataFrame:
        """Close every group and return every polygon not taken yet, in the scene's CRS.

        Returns:
            Columns ``class`` (name), ``class_id``, ``score`` (mean probability, or 1.0 without
            scores), ``area_m2`` and ``geometry`` (valid Polygon/MultiPolygon), sorted by
            position (top to bottom, then left to right).
        """
        frame = self.take(final=True)
        return (
            frame
            if frame is not None
            else polygons_frame(
                [],
                class_ids=[],
                scores=[],
                transform=self.transform,
                crs=self.crs,
                class_names=self.class_names,
            )
        )


def _map_values(values: npt.NDArray[np.int64], fn: Callable[[int], int]) -> npt.NDArray[np.int64]:
    """``fn`` of each value, called once per distinct value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.asarray([fn(int(v)) for v in distinct], dtype=np.int64)[inverse]


def _runs_by_value(
    row: npt.NDArray[np.int64], where: npt.NDArray[np.bool_]
) -> dict[int, list[tuple[int, int]]]:
    """Runs of consecutive columns ``(first, end)`` where ``where`` holds, by the value of
    ``row`` there (a run never spans two values)."""
    cols = np.flatnonzero(where)
    if not len(cols):
        return {}
    vals = row[cols]
    order = np.argsort(vals, kind="stable")  # columns stay sorted within a value
    vals, cols = vals[order], cols[order]
    new = np.flatnonzero((np.diff(vals) != 0) | (np.diff(cols) != 1)) + 1
    first = np.concatenate([[0], new])
    last = np.concatenate([new, [len(cols)]]) - 1
    runs: dict[int, list[tuple[int, int]]] = {}
    for v, a, b in zip(
        vals[first].tolist(), cols[first].tolist(), (cols[last] + 1).tolist(), strict=True
    ):
        runs.setdefault(v, []).append((a, b))
    return runs


def _piece_holes(ragged: Any, k: int) -> _Holes | None:
    """The holes of polygon ``k`` of a :func:`_polygons` batch, as they are: a hole lies inside
    its band, so it never reaches a seam."""
    coords, ring_ends, geom_ends = ragged
    first, last = int(geom_ends[k]), int(geom_ends[k + 1])
    if last == first + 1:
        return None
    # A copy: a view would keep the whole band's coordinates alive while the group is open.
    return _Holes(
        coords[ring_ends[first + 1] : ring_ends[last]].copy(),
        np.diff(ring_ends[first + 1 : last + 1]),
    )


def _cut_pieces(
    ragged: Any,
    ks: npt.NDArray[np.intp],
    on_top: npt.NDArray[np.bool_],
    on_bottom: npt.NDArray[np.bool_],
    top: float,
    bottom: float,
) -> list[list[_Path]]:
    """The exteriors of polygons ``ks`` of a :func:`_polygons` batch, oriented with the polygon
    on their left, cut at the line ``top`` (where ``on_top``) and ``bottom`` (where
    ``on_bottom``): the paths between their edges on those lines (see :func:`_cut_ring`), every
    piece at once."""
    if not len(ks):
        return []
    coords, ring_ends, geom_ends = ragged
    first = geom_ends[ks]
    a0 = ring_ends[first]
    size = ring_ends[first + 1] - a0  # vertices, the first repeated last
    ring = np.repeat(np.arange(len(ks)), size)
    off = np.concatenate([[0], np.cumsum(size)])
    local = np.arange(off[-1]) - off[ring]
    # Orientation: twice the signed area of each exterior, from the coordinates as GDAL gave them.
    xy = coords[a0[ring] + local]
    cross = xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]
    within = local[:-1] != size[ring[:-1]] - 1  # edge g joins positions g and g + 1 of one ring
    cross = np.where(within, cross, 0.0)
    csum = np.concatenate([[0.0], np.cumsum(cross)])
    area = csum[off[1:] - 1] - csum[off[:-1]]
    flip = area < 0
    if flip.any():
        src = np.where(flip[ring], size[ring] - 1 - local, local)
        xy = coords[a0[ring] + src]
        cross = xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]
        cross = np.where(within, cross, 0.0)
        csum = np.concatenate([[0.0], np.cumsum(cross)])
    y = xy[:, 1]
    lines = (on_top[ring[:-1]] & (y[:-1] == top)) | (on_bottom[ring[:-1]] & (y[:-1] == bottom))
    cuts = np.flatnonzero(within & (y[:-1] == y[1:]) & lines)
    out: list[list[_Path]] = [[] for _ in range(len(ks))]
    cut_ring = ring[cuts]
    uncut = np.ones(len(ks), dtype=bool)
    uncut[cut_ring] = False
    for r in np.flatnonzero(uncut).tolist():  # not expected: a seam piece reaches its seam
        v = xy[off[r] : off[r + 1]].copy()
        out[r].append(_new_path(v, float(csum[off[r + 1] - 1] - csum[off[r]])))
    if not len(cuts):
        return out
    # A path runs from the end of one seam edge to the start of the next, around the ring.
    o = off[cut_ring]
    n = size[cut_ring] - 1  # edges of the ring
    a = cuts + 1 - o
    last_of_ring = np.concatenate([cut_ring[1:] != cut_ring[:-1], [True]])
    first_idx = np.concatenate([[0], np.flatnonzero(last_of_ring[:-1]) + 1])
    b = np.concatenate([cuts[1:], [0]]) - o
    ring_first = np.repeat(cuts[first_idx], np.diff(np.concatenate([first_idx, [len(cuts)]])))
    b = np.where(last_of_ring, ring_first - o + n, b)
    keep = b > a
    a, b, o, n, r_of = a[keep], b[keep], o[keep], n[keep], cut_ring[keep]
    wrap_start = a >= n
    a = np.where(wrap_start, a - n, a)
    b = np.where(wrap_start, b - n, b)
    wraps = b > n
    end = np.where(wraps, b - n, b)
    # Edges a..b-1, or a..n-1 and 0..end-1 around the ring's closing vertex.
    area2 = (
        csum[o + np.where(wraps, n, b)]
        - csum[o + a]
        + np.where(wraps, csum[o + end] - csum[o], 0.0)
    )
    p0, p1 = xy[o + a], xy[o + a + 1]
    q0, q1 = xy[o + end - 1], xy[o + end]
    din = np.sign(p1 - p0).astype(np.int64)
    dout = np.sign(q1 - q0).astype(np.int64)
    rows = zip(
        r_of.tolist(),
        (o + a).tolist(),
        (o + b).tolist(),
        (o + n).tolist(),
        o.tolist(),
        wraps.tolist(),
        p0.astype(np.int64).tolist(),
        q1.astype(np.int64).tolist(),
        din.tolist(),
        dout.tolist(),
        area2.tolist(),
        strict=True,
    )
    for r, ga, gb, gn, go, wrap, p, q, di, do, ar in rows:
        if wrap:
            v = np.concatenate([xy[ga:gn], xy[go : gb - (gn - go) + 1]])
        else:
            v = xy[ga : gb + 1].copy()
        out[r].append(_Path([v], (p[0], p[1]), (q[0], q[1]), (di[0], di[1]), (do[0], do[1]), ar))
    return out


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
    pixel_geoms: Sequence[shapely.Geometry] | npt.NDArray[Any],
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
    if (split_px > 0 or regularize) and len(geoms):
        # Both start from the outline: without vertices in the middle of an edge, whatever
        # vertex list described it. (Where the ring starts also changes the squared outline;
        # starting each ring at its lowest point, with shapely.normalize, lowered object F1 on
        # the bundled model's validation images: 0.336 -> 0.331.)
        geoms = shapely.simplify(geoms, 0)
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
    geoms = pixel_to_map(geoms, transform)
    # Polygons straight from the mask are valid as built (shapes, and the seam joins): the check,
    # costly for a polygon with many holes, is for outlines that were reshaped, or turned by a
    # rotated grid.
    if len(geoms) and (split_px > 0 or regularize or simplify > 0 or transform.b or transform.d):
        geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    frame = gpd.GeoDataFrame(
        {
            "class": class_labels(class_ids, class_names),
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
    frame = by_position(frame, transform)
    frame["area_m2"] = frame["area_m2"].round(2)
    return frame.reset_index(drop=True)


def split_at_valleys(
    mask: npt.NDArray[np.uint8],
    prob: npt.NDArray[np.floating],
    seed: float,
    min_seed_px: int,
    *,
    core: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.uint8]:
    """Cut a binary mask's objects apart along the valleys of the probability between cores.

    Roofs that touch come out of the network as one blob, but its probability usually dips
    where they meet. Each core, a connected region (4-connected) of at least ``min_seed_px``
    pixels where the probability is at least ``seed``, starts a basin; a marker-controlled
    watershed (``scipy.ndimage.watershed_ift`` on ``1 - prob``) floods the rest from the cores,
    the background from the background. Where two basins of the foreground meet, the pixels on
    one side of the meeting line (the higher basin's) become background, so the objects are
    no longer 4-connected and vectorize as separate polygons. A blob with one core or none is
    left as it was, and no foreground pixel is added.

    With ``core``, the probability of a model's core channel (each object's footprint shrunk
    on its own, :func:`geounet.training.dataset.mark_borders`), the cores are where ``core`` is at least
    ``seed``, and each pixel of a blob with two cores or more goes to its nearest core: the
    core channel parts neighbours even where the foreground probability has no valley.

    Works on one strip at a time (:class:`geounet.prediction.predict.StripSinks`): a core cut by a strip
    seam is two cores, one on each side, and the seam itself is never cut, so an object that
    crosses it stays whole.

    Args:
        mask: (rows, cols) 0 background, 1 foreground, :data:`MASK_NODATA` nodata.
        prob: (rows, cols) foreground probability.
        seed: Core probability (above the mask's threshold; of ``core`` when given).
        min_seed_px: Smaller cores are ignored (noise).
        core: (rows, cols) core probability, or None (cores from ``prob``).

    Returns:
        The mask (a new array when something was cut, else ``mask`` itself).
    """
    fg = mask == 1
    if not fg.any():
        return mask
    cores, n = ndimage.label(((prob if core is None else core) >= seed) & fg)
    if n < 2:
        return mask
    sizes = np.bincount(cores.ravel(), minlength=n + 1)
    keep = sizes >= min_seed_px
    keep[0] = False
    if keep.sum() < 2:
        return mask
    markers = np.where(keep[cores], cores, 0).astype(np.int32)
    if core is None:
        markers[~fg] = -1  # the background is a basin of its own
        cost = np.rint(np.clip(1.0 - prob, 0.0, 1.0) * 254).astype(np.uint8)
        basins = ndimage.watershed_ift(cost, markers)
        basins[~fg] = 0
    else:
        # The core channel falls to the background's level all along every border, so a flood
        # on it has no valley to follow there: each pixel of a blob goes to its nearest core
        # instead. Cores are objects shrunk by the same width, so the blob parts half-way
        # between them, where the labels' seam lies. A pixel whose nearest core lies in
        # another blob, and every blob with fewer than two cores of its own, stays whole.
        _, (ri, ci) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
        blobs, nb = ndimage.label(fg)
        pairs = np.unique(np.stack([blobs[markers > 0], markers[markers > 0]]), axis=1)
        split = np.bincount(pairs[0], minlength=nb + 1) >= 2
        split[0] = False
        basins = np.where(split[blobs] & (blobs[ri, ci] == blobs), markers[ri, ci], 0)
    cut = np.zeros_like(fg)
    for a, b, ca, cb in (
        (basins[:, :-1], basins[:, 1:], cut[:, :-1], cut[:, 1:]),
        (basins[:-1], basins[1:], cut[:-1], cut[1:]),
    ):
        meet = (a != b) & (a > 0) & (b > 0)
        ca |= meet & (a > b)
        cb |= meet & (b > a)
    if not cut.any():
        return mask
    out = mask.copy()
    out[cut] = 0
    return out


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
    grown = shapely.intersection(
        shapely.buffer(np.asarray(cores, dtype=object), r, join_style="mitre"), geom
    )
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


def regularize_polygon(
    geom: shapely.Geometry, tolerance: float = 1.5, min_iou: float = 0.75
) -> shapely.Geometry:
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
    theta = 0.25 * np.arctan2(
        (lengths * np.sin(4 * angles)).sum(), (lengths * np.cos(4 * angles)).sum()
    )
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


def _orthogonal_ring(
    xy: npt.NDArray[np.float64], tolerance: float
) -> npt.NDArray[np.float64] | None:
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
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
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
    lines: bool = False,
) -> None:
    """Write polygons (``lines``: LineStrings) with the driver chosen by suffix, in the frame's CRS.

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
            _write_ogr(frame, path, driver, layer, lines=lines)
        if style is not None:
            if driver == "GPKG":
                write_gpkg_style(path, layer or path.stem, style)
            else:
                write_sidecar_qml(path, style)
    except OutputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow/sqlite raise their own types for I/O failures
        raise _write_error(path, exc) from exc


def _write_ogr(
    frame: gpd.GeoDataFrame,
    path: Path,
    driver: str,
    layer: str | None,
    *,
    append: bool = False,
    promote: bool | None = None,
    scratch: bool = False,
    lines: bool = False,
) -> None:
    import pyogrio

    kwargs: dict[str, Any] = {}
    if scratch:  # read once, in order: no spatial index to build
        kwargs["layer_options"] = {"SPATIAL_INDEX": "NO"}
    if promote is None:
        promote = driver != "GeoJSON"
    if lines:  # centerlines are single LineStrings, as network tools want them
        kwargs["geometry_type"] = "LineString"
    elif promote:
        kwargs["promote_to_multi"] = True
    elif driver != "GeoJSON":
        kwargs["geometry_type"] = "Unknown"  # Polygon and MultiPolygon in one layer
    if len(frame) == 0 and not lines:
        kwargs["geometry_type"] = "MultiPolygon" if promote else "Polygon"
    if driver == "GPKG":
        kwargs["layer"] = layer or path.stem
        if not append:
            # GeoPackage 1.2: what older GDAL/QGIS/ArcGIS builds read without a version warning.
            kwargs["dataset_options"] = {"VERSION": "1.2"}
    pyogrio.write_dataframe(frame, path, driver=driver, append=append, **kwargs)


#: Polygons held before they are written while strips are still coming (a batch of the file).
WRITE_BATCH = 10_000

#: Features up to which a streamed FlatGeobuf gets its spatial index. GDAL's writer holds every
#: feature's extent until the end to build it (about 100 bytes a feature: 330 MB for 3.4 million
#: speckle polygons), memory by the feature count; above this, the file is written without one
#: (QGIS reads it all the same, by scanning) and a warning says so.
FGB_INDEX_MAX_FEATURES = 1_000_000


class VectorWriter:
    """Polygons written to a vector file in batches, as they are finished, and complete only
    after :meth:`close`.

    GeoPackage and Shapefile take each batch by appending to the file. GeoJSON and
    FlatGeobuf, whose GDAL drivers cannot append, are written at :meth:`close` from a
    GeoPackage scratch file beside the output that took the batches, through GDAL's Arrow
    streams (a batch at a time: the features never come back into Python). GeoParquet is
    written a row group per batch with pyarrow, its ``geo`` metadata (GeoParquet 1.0.0:
    WKB, CRS as PROJJSON, geometry types, bounding box) added at the end. Without any
    polygon the file is still made, empty, with its columns and CRS.

    Args:
        path: Output path (its suffix picks the format; under :class:`~geounet.geodata.raster.AtomicOutputs`
            a temporary path, so a failed run leaves nothing).
        style: QGIS QML: the layer's default style (a ``layer_styles`` row in a GeoPackage, a
            ``.qml`` file beside any other format).
        layer: GeoPackage layer name (default: the file's stem).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        style: str | None = None,
        layer: str | None = None,
        lines: bool = False,
    ) -> None:
        self.lines = lines  # LineStrings (centerlines) rather than polygons
        self.path = Path(path)
        self.driver = vector_driver(path)
        self.style = style
        self.layer = layer
        self.features = 0
        self._empty: gpd.GeoDataFrame | None = None  # the schema, while nothing is written
        self._scratch = (
            self.path.with_name(self.path.name + ".batches.gpkg")
            if self.driver in ("GeoJSON", "FlatGeobuf")
            else None
        )
        self._parquet: Any = None
        self._crs: Any = None  # of the GeoParquet batches
        self._types: set[int] = set()  # shapely geometry type ids
        self._bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])

    def write(self, frame: gpd.GeoDataFrame) -> None:
        """Append a batch of polygons (columns and CRS as in the first batch)."""
        if self._empty is None:
            self._empty = frame.iloc[:0]
        if not len(frame):
            return
        try:
            if self.driver == "Parquet":
                self._write_parquet(frame)
            elif self._scratch is not None:
                _write_ogr(
                    frame,
                    self._scratch,
                    "GPKG",
                    "batches",
                    append=self.features > 0,
                    promote=self.driver != "GeoJSON",
                    scratch=True,
                    lines=self.lines,
                )
            else:
                _write_ogr(
                    frame,
                    self.path,
                    self.driver,
                    self.layer,
                    append=self.features > 0,
                    lines=self.lines,
                )
        except Exception as exc:
            raise _write_error(self.path, exc) from exc
        self.features += len(frame)

    def close(self) -> int:
        """Finish the file (and its style); returns the number of features."""
        try:
            if self.features == 0:
                self._parquet = None
                if self._empty is not None:
                    write_vectors(
                        self._empty, self.path, layer=self.layer, style=self.style, lines=self.lines
                    )
                    return 0
                raise ValueError("no batch was written, not even an empty one")
            if self.driver == "Parquet":
                self._close_parquet()
            elif self._scratch is not None:
                self._convert_scratch()
            if self.style is not None:
                if self.driver == "GPKG":
                    write_gpkg_style(self.path, self.layer or self.path.stem, self.style)
                else:
                    write_sidecar_qml(self.path, self.style)
        except OutputError:
            raise
        except Exception as exc:
            raise _write_error(self.path, exc) from exc
        finally:
            self.abort()
        return self.features

    def abort(self) -> None:
        """Drop the scratch file and any open writer (the output itself is the caller's)."""
        if self._parquet is not None:
            with contextlib.suppress(Exception):  # the run failed already; the file goes anyway
                self._parquet.close()
            self._parquet = None
        if self._scratch is not None:
            for part in self._scratch.parent.glob(self._scratch.name + "*"):
                part.unlink(missing_ok=True)

    def _convert_scratch(self) -> None:
        import pyogrio

        assert self._scratch is not None
        import pyarrow as pa

        stopped: list[BaseException] = []
        with pyogrio.raw.open_arrow(self._scratch, use_pyarrow=True, batch_size=WRITE_BATCH) as (
            meta,
            reader,
        ):

            def batches() -> Iterator[Any]:
                # GDAL pulls each batch through Python: a Ctrl-C or SIGTERM that arrives while it
                # writes is acted on at the next batch, not after the whole file.
                try:
                    yield from reader
                except BaseException as exc:
                    stopped.append(exc)
                    raise

            try:
                self._write_arrow(pa.RecordBatchReader.from_batches(reader.schema, batches()), meta)
            except Exception:
                if stopped:
                    raise stopped[0] from None
                raise

    def _write_arrow(self, stream: Any, meta: dict[str, Any]) -> None:
        import pyogrio

        options = {}
        if self.driver == "FlatGeobuf" and self.features > FGB_INDEX_MAX_FEATURES:
            options["SPATIAL_INDEX"] = "NO"
            logger.warning(
                "%s: %d features, written without a FlatGeobuf spatial index (GDAL builds it in "
                "memory, about 100 bytes a feature); write .gpkg for an indexed file this large",
                self.path.name,
                self.features,
            )
        pyogrio.raw.write_arrow(
            stream,
            self.path,
            driver=self.driver,
            geometry_name=meta["geometry_name"] or "wkb_geometry",
            geometry_type="LineString"
            if self.lines
            else "MultiPolygon"
            if self.driver != "GeoJSON"
            else "Unknown",
            crs=meta["crs"],
            encoding="UTF-8" if self.driver != "GeoJSON" else None,
            layer_options=options or None,
        )

    def _write_parquet(self, frame: gpd.GeoDataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        geoms = frame.geometry.values
        table = pa.Table.from_pandas(pd_frame(frame), preserve_index=False)
        table = table.append_column(
            "geometry", pa.array(shapely.to_wkb(np.asarray(geoms)), pa.binary())
        )
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._crs = frame.crs
        self._parquet.write_table(table)
        self._types.update(shapely.get_type_id(np.asarray(geoms)).tolist())
        b = frame.total_bounds
        self._bounds = np.concatenate(
            [np.minimum(self._bounds[:2], b[:2]), np.maximum(self._bounds[2:], b[2:])]
        )

    def _close_parquet(self) -> None:
        import json

        from geounet import __version__

        names = {1: "LineString", 3: "Polygon", 6: "MultiPolygon"}
        column: dict[str, Any] = {
            "encoding": "WKB",
            "geometry_types": sorted(names.get(t, "Unknown") for t in self._types),
            "bbox": [float(v) for v in self._bounds],
        }
        if self._crs is not None:
            column["crs"] = self._crs.to_json_dict()
        geo = {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {"geometry": column},
            "creator": {"library": "geounet", "version": __version__},
        }
        self._parquet.add_key_value_metadata({"geo": json.dumps(geo)})
        self._parquet.close()
        self._parquet = None


def pd_frame(frame: gpd.GeoDataFrame) -> Any:
    """The attribute columns of a GeoDataFrame, as a plain pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(frame.drop(columns=frame.geometry.name))


def _write_error(path: Path, exc: Exception) -> OutputError:
    return OutputError(
        f"writing {path.name} failed ({str(exc).splitlines()[0]}); the disk may be full: free space or write elsewhere"
    )


# ----------------------------------------------------------------------------------------------
# Joining pieces across strip seams, boundary by boundary.
#
# In pixel coordinates every vertex is an integer, and a seam is the line y = s between the last
# row of one strip and the first row of the next. A piece that reaches a seam has its rings cut
# there: the edges lying on the seam line are dropped and what is left are *paths* whose ends lie
# on the line. Which seam edges the joined polygon has is known from the two mask rows alone: a
# unit edge under column x remains where exactly one of the pixels above and below belongs to the
# group. Linking the paths and those edges end to end gives the joined rings, with no overlay:
# the work per seam is the paths and edges that meet there, not the size of the polygon, and a
# polygon that spans the scene is built once, when it closes. Rings run with the polygon on their
# left (exteriors counter-clockwise in the pixel frame's x/y, holes clockwise), so the one ring of
# positive area is the exterior. Where two paths arrive at one point (two pixels of the group
# touching only at a corner), each takes the left turn: the rings stay simple (OGC-valid, a hole
# may touch the exterior at a point), as a whole-mask polygonization gives them.


class _Path:
    """A directed boundary path: leaves (coordinate arrays, or other paths), end points, the
    directions of its first and last edges, and twice its part of the ring's signed area."""

    __slots__ = ("area2", "din", "dout", "end", "leaves", "start")

    def __init__(
        self,
        leaves: list[Any],
        start: tuple[int, int],
        end: tuple[int, int],
        din: tuple[int, int],
        dout: tuple[int, int],
        area2: float,
    ) -> None:
        self.leaves, self.start, self.end, self.din, self.dout, self.area2 = (
            leaves,
            start,
            end,
            din,
            dout,
            area2,
        )

    @staticmethod
    def chain(paths: list[_Path]) -> _Path:
        """Paths joined end to start, in order (cost: the number of paths, not their length)."""
        if len(paths) == 1:
            return paths[0]
        return _Path(
            list(paths),
            paths[0].start,
            paths[-1].end,
            paths[0].din,
            paths[-1].dout,
            sum(p.area2 for p in paths),
        )

    def coords(self) -> npt.NDArray[np.float64]:
        """Every vertex in order (the point shared by consecutive leaves once)."""
        arrays: list[npt.NDArray[np.float64]] = []
        stack: list[Any] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, _Path):
                stack.extend(reversed(node.leaves))
            else:
                arrays.append(node if not arrays else node[1:])
        return np.concatenate(arrays)


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _new_path(v: npt.NDArray[np.float64], area2: float) -> _Path:
    """A path through the vertices ``v`` (at least two)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = v[[0, 1, -2, -1]].tolist()
    return _Path(
        [v],
        (int(x0), int(y0)),
        (int(x3), int(y3)),
        (_sign(x1 - x0), _sign(y1 - y0)),
        (_sign(x3 - x2), _sign(y3 - y2)),
        area2,
    )


def _cut_ring(xy: npt.NDArray[np.float64], lines: tuple[float, ...]) -> list[_Path]:
    """A closed ring (first vertex repeated last) cut at the horizontal ``lines``: the paths
    between its edges on those lines, or the whole ring as one closed path if it has none."""
    n = len(xy) - 1  # edge k runs from vertex k to vertex k + 1
    y = xy[:, 1]
    seam = y[:-1] == y[1:]
    on = y[:-1] == lines[0]
    for line in lines[1:]:
        on |= y[:-1] == line
    cut = np.flatnonzero(seam & on)
    cross = xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]
    if not len(cut):
        return [_new_path(xy, float(cross.sum()))]
    csum = np.concatenate([[0.0], np.cumsum(cross)])
    # A path runs from the end of one seam edge to the start of the next (around the ring).
    starts = cut + 1
    ends = np.concatenate([cut[1:], cut[:1] + n])
    out = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b == a:
            continue  # two seam edges in a row
        if a >= n:
            a, b = a - n, b - n
        if b <= n:
            out.append(_new_path(xy[a : b + 1], float(csum[b] - csum[a])))
        else:
            v = np.concatenate([xy[a:n], xy[: b - n + 1]])
            out.append(_new_path(v, float(csum[n] - csum[a] + csum[b - n])))
    return out


def _seam_runs(runs: Sequence[tuple[int, int]], below: bool, s: int) -> list[_Path]:
    """The seam edges of column runs ``(first, end)`` on line ``s``, a run as one edge: running
    +x with the group below the line, -x with it above."""
    out = []
    d = (1, 0) if below else (-1, 0)
    for a, b in runs:
        if not below:
            a, b = b, a
        out.append(
            _Path(
                [np.array([[a, s], [b, s]], dtype=np.float64)],
                (a, s),
                (b, s),
                d,
                d,
                float(a * s - b * s),
            )
        )
    return out


def _link(paths: list[_Path], s: int) -> tuple[list[_Path], list[_Path]]:
    """Paths linked end to start at points of line ``s``: (closed rings, open paths whose both
    ends are off that line). Where two paths leave one point, the left turn is taken. Every
    path has at least one end on a seam line."""
    leaving: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(paths):
        if p.start[1] == s:
            leaving.setdefault(p.start, []).append(i)
    used = [False] * len(paths)

    def follow(i: int) -> tuple[list[_Path], bool]:
        """From path i, link until a path ends off the line (False) or the ring closes (True)."""
        seq = [paths[i]]
        used[i] = True
        cur = paths[i]
        while cur.end[1] == s:
            options = [j for j in leaving.get(cur.end, ()) if not used[j]]
            if cur.end == paths[i].start:
                options.append(i)  # closing the ring is one way on
            if not options:
                raise ValueError(f"unlinked boundary at {cur.end}")  # a broken invariant
            dx, dy = cur.dout
            j = max(options, key=lambda k: dx * paths[k].din[1] - dy * paths[k].din[0])
            if j == i:
                return seq, True
            used[j] = True
            cur = paths[j]
            seq.append(cur)
        return seq, False

    rings: list[_Path] = []
    open_paths: list[_Path] = []
    for i, p in enumerate(paths):
        if not used[i] and p.start[1] != s:
            seq, _ = follow(i)
            open_paths.append(_Path.chain(seq))
    for i in range(len(paths)):
        if not used[i]:
            seq, closed = follow(i)
            if not closed:
                raise ValueError("a boundary path leaves the seam and never comes back")
            rings.append(_Path.chain(seq))
    return rings, open_paths


def _loops(ring: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
    """A closed ring split where it passes through a vertex twice (where two pieces, joined
    through other strips, touch at a pixel corner): simple closed loops."""
    pts = ring[:-1]
    keys = (pts[:, 0].astype(np.int64) * (1 << 32) + pts[:, 1].astype(np.int64)).tolist()
    if len(set(keys)) == len(keys):
        return [ring]
    loops = []
    stack: list[int] = []
    where: dict[int, int] = {}
    for i, key in enumerate([*keys, keys[0]]):
        k = where.get(key)
        if k is None:
            where[key] = len(stack)
            stack.append(i)
            continue
        idx = [*stack[k:], i]
        loops.append(
            np.concatenate([pts[np.asarray(idx[:-1]) % len(pts)], pts[idx[-1] % len(pts)][None]])
        )
        for j in stack[k + 1 :]:
            del where[keys[j]]
        del stack[k + 1 :]
    return [lp for lp in loops if len(lp) >= 4]


def _area2(ring: npt.NDArray[np.float64]) -> float:
    return float((ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]).sum())


def _polygons_from_groups(groups: list[_OpenGroup]) -> npt.NDArray[Any]:
    """The polygons of closed groups, built in one call: each group's linked rings (one exterior
    of positive area, holes negative) and the holes of its pieces as they were.

    A linked ring that touches itself at a point is split there: into the exterior and a hole
    touching it, or into two holes, as OGC validity wants.
    """
    out = np.empty(len(groups), dtype=object)
    owner = [k for k, g in enumerate(groups) for _ in g.rings]
    loops, areas = _clean_rings([r.coords() for g in groups for r in g.rings])
    shells: list[list[npt.NDArray[np.float64]]] = [[] for _ in groups]
    inner: list[list[npt.NDArray[np.float64]]] = [[] for _ in groups]
    for k, ring_loops, ring_areas in zip(owner, loops, areas, strict=True):
        for lp, area in zip(ring_loops, ring_areas, strict=True):
            (shells[k] if area > 0 else inner[k]).append(lp)
    coords: list[npt.NDArray[np.float64]] = []
    lengths: list[int] = []
    ring_counts: list[int] = []
    simple: list[int] = []
    for k, g in enumerate(groups):
        if len(shells[k]) != 1:
            out[k] = _polygon_from_loops(shells[k], inner[k], g.holes)  # not expected
            continue
        simple.append(k)
        coords.append(shells[k][0])
        coords.extend(inner[k])
        lengths.append(len(shells[k][0]))
        lengths.extend(len(h) for h in inner[k])
        n = 1 + len(inner[k])
        for h in g.holes:
            coords.append(h.coords)
            lengths.extend(h.lengths.tolist())
            n += len(h.lengths)
        ring_counts.append(n)
    if simple:
        ring_ends = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        geom_ends = np.concatenate([[0], np.cumsum(ring_counts)]).astype(np.int64)
        out[np.asarray(simple)] = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, np.concatenate(coords), (ring_ends, geom_ends)
        )
    return out


def _clean_rings(
    rings: list[npt.NDArray[np.float64]],
) -> tuple[list[list[npt.NDArray[np.float64]]], list[list[float]]]:
    """Closed rings without vertices in the middle of a straight edge (where paths joined),
    each split into simple loops where it passes through a vertex twice (see :func:`_loops`):
    the loops of each ring and twice their signed areas. All rings at once."""
    if not rings:
        return [], []
    size = np.asarray([len(r) for r in rings], dtype=np.int64)  # vertices, the first repeated last
    xy = np.concatenate(rings)
    ring = np.repeat(np.arange(len(rings)), size)
    off = np.concatenate([[0], np.cumsum(size)])
    local = np.arange(len(xy)) - off[ring]
    d = xy[1:] - xy[:-1]  # edge g from position g to g + 1 (within a ring unless g is its last)
    v = np.flatnonzero(local < size[ring] - 1)  # every vertex but the repeated one
    prev = d[np.where(local[v] == 0, v + size[ring[v]] - 2, v - 1)]
    nxt = d[v]
    straight = (prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0] == 0) & (
        (prev * nxt).sum(axis=1) > 0
    )
    kept = v[~straight]
    count = np.bincount(ring[kept], minlength=len(rings))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    xy = xy[np.insert(kept, start + count, kept[start])]  # each ring closed again
    size = count + 1
    off = np.concatenate([[0], np.cumsum(size)])
    ring = np.repeat(np.arange(len(rings)), size)
    local = np.arange(len(xy)) - off[ring]
    cross = np.where(
        local[:-1] < size[ring[:-1]] - 1, xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1], 0.0
    )
    csum = np.concatenate([[0.0], np.cumsum(cross)])
    area = (csum[off[1:] - 1] - csum[off[:-1]]).tolist()
    # A vertex twice in one ring: that ring goes through _loops.
    v = np.flatnonzero(local < size[ring] - 1)
    key = xy[v, 0].astype(np.int64) * (1 << 32) + xy[v, 1].astype(np.int64)
    order = np.lexsort((key, ring[v]))
    k_sorted, r_sorted = key[order], ring[v][order]
    twice = set(
        r_sorted[1:][(k_sorted[1:] == k_sorted[:-1]) & (r_sorted[1:] == r_sorted[:-1])].tolist()
    )
    loops: list[list[npt.NDArray[np.float64]]] = []
    areas: list[list[float]] = []
    for r, (a, b) in enumerate(zip(off[:-1].tolist(), off[1:].tolist(), strict=True)):
        if r in twice:
            split = _loops(xy[a:b])
            loops.append(split)
            areas.append([_area2(lp) for lp in split])
        else:
            loops.append([xy[a:b]])
            areas.append([area[r]])
    return loops, areas


def _polygon_from_loops(
    shells: list[npt.NDArray[np.float64]], inner: list[npt.NDArray[np.float64]], holes: list[_Holes]
) -> shapely.Geometry:
    """The polygon of a closed group with other than one exterior loop (not expected for a
    4-connected group): repaired rather than lost."""
    logger.debug("joined group with %d exterior rings", len(shells))
    geom = shapely.union_all([shapely.Polygon(c) for c in shells]) if shells else shapely.Polygon()
    cut = [shapely.Polygon(h) for h in inner] + [
        shapely.Polygon(r) for h in holes for r in np.split(h.coords, np.cumsum(h.lengths)[:-1])
    ]
    return shapely.difference(geom, shapely.union_all(cut)) if cut else geom


@dataclass
class _Holes:
    """Holes of one piece as shapes gave them: their coordinates, one ring after the other."""

    coords: npt.NDArray[np.float64]
    lengths: npt.NDArray[np.int64]


@dataclass
class _Done:
    """Finished polygons in pixel coordinates, with their class, score sum and pixel count."""

    class_ids: npt.NDArray[np.int32]
    geoms: npt.NDArray[Any]
    sums: npt.NDArray[np.float64]
    pixels: npt.NDArray[np.int64]

    def slice(self, a: int, b: int) -> _Done:
        return _Done(self.class_ids[a:b], self.geoms[a:b], self.sums[a:b], self.pixels[a:b])

    @staticmethod
    def concat(parts: list[_Done]) -> _Done:
        if len(parts) == 1:
            return parts[0]
        return _Done(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("class_ids", "geoms", "sums", "pixels")
            )
        )


@dataclass
class _OpenGroup:
    """A polygon that reaches the open edge of the strips so far."""

    class_id: int
    paths: list[_Path] = field(default_factory=list)  # both ends on the open edge
    rings: list[_Path] = field(default_factory=list)  # linked rings, finished
    holes: list[_Holes] = field(default_factory=list)  # holes of its pieces
    score_sum: float = 0.0
    pixels: int = 0
