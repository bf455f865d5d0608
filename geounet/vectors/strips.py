"""Class masks to polygons, strip by strip, joined exactly across strip seams.

Each strip of the class mask is cut into bands of a few million pixels (fewer rows where a band
holds more than :data:`MAX_BAND_PIECES` pieces, as speckle does) and split into 4-connected
components per class (``scipy.ndimage.label``); each component becomes one polygon in *pixel*
coordinates: solid rectangles inside the band directly, in bulk, the others through
``rasterio.features.shapes`` on the component labels. Pixel coordinates are integers, so pieces
of one object cut by a seam share exactly the same seam vertices. Components that touch across a
seam (same class, vertically adjacent pixels) are grouped with a union-find, and their outlines
are linked at the seam (:mod:`geounet.vectors.seams`, no polygon overlay); a group becomes a
polygon as soon as no member touches the bottom of the latest band. This is the same
4-connectivity that a whole-mask ``shapes()`` run uses, so the polygons are the same; only the
open groups are held in memory, never the whole mask.

Finished polygons are simplified (in pixels), moved to map coordinates with the scene transform,
given ``class``, ``class_id``, ``score`` (mean probability) and ``area_m2`` (geodesic when the
CRS is geographic), and filtered by area (:func:`geounet.vectors.features.polygons_frame`).
No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage

from geounet.vectors.features import polygons_frame
from geounet.vectors.seams import (
    BoundaryPath,
    OpenGroup,
    cut_pieces,
    link,
    piece_holes,
    polygons_from_groups,
    seam_runs,
)

if TYPE_CHECKING:
    import geopandas as gpd


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
    at each seam by linking their boundaries (see ``link``): bounded work per strip and no
    overlay, whatever the polygon's size.

    Args:
        transform: The scene's pixel-to-map transform.
        crs: The scene's CRS.
        class_names: Names by class id; id 0 is background and never vectorized.
        simplify: Douglas-Peucker tolerance in pixels (0 = none).
        min_area_m2: Drop polygons smaller than this (0 = keep all).
        regularize: Square building outlines (see
            :func:`~geounet.vectors.polygons.regularize_polygon`).
        split_px: Split polygons where parts meet through a neck narrower than this many
            pixels (touching buildings; see :func:`~geounet.vectors.separate.split_necks`);
            0 = off.
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
        self._open: dict[int, OpenGroup] = {}
        self._next_id = 1
        self._row = 0
        self._width = 0
        self._bottom: npt.NDArray[np.int64] | None = None  # open group id under each column
        self._done: list[_Done] = []  # finished polygons, in chunks
        self._ready = 0
        self._closed: list[OpenGroup] = []  # groups closed by the strip being added

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
        cut: dict[int, list[BoundaryPath]] = {}
        if count:
            at = np.flatnonzero(seam[values])  # positions in `ragged`
            gids = values[at] + offset
            on_top = np.isin(gids, np.fromiter(joined, dtype=np.int64, count=len(joined)))
            on_bottom = np.isin(gids, np.fromiter(touching, dtype=np.int64, count=len(touching)))
            cut = dict(
                zip(gids.tolist(), cut_pieces(ragged, at, on_top, on_bottom, s, e), strict=True)
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
        opened: dict[int, OpenGroup] = {}
        for root, members_ in members.items():
            group = OpenGroup(0)
            paths: list[BoundaryPath] = []
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
                    holes = piece_holes(ragged, index[gid])
                    if holes is not None:
                        group.holes.append(holes)
                    group.class_id = label_class[i - 1]
                    group.score_sum += float(sums[i])
                    group.pixels += int(pixels[i])
            if has_old:
                paths += seam_runs(old_edges.get(root, ()), False, s)
                paths += seam_runs(new_edges.get(root, ()), True, s)
            rings, group.paths = link(paths, s)
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
                    polygons_from_groups(closed),
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
            paths = group.paths + seam_runs(edges.get(root, ()), False, self._row)
            rings, rest = link(paths, self._row)
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
