"""Joining the pieces of a polygon across strip seams, boundary by boundary.

In pixel coordinates every vertex is an integer, and a seam is the line y = s between the last
row of one strip and the first row of the next. A piece that reaches a seam has its rings cut
there (:func:`cut_pieces`): the edges lying on the seam line are dropped and what is left are
*paths* whose ends lie on the line. Which seam edges the joined polygon has is known from the
two mask rows alone: a unit edge under column x remains where exactly one of the pixels above
and below belongs to the group (:func:`seam_runs`). Linking the paths and those edges end to end
gives the joined rings (:func:`link`), with no overlay: the work per seam is the paths and edges
that meet there, not the size of the polygon, and a polygon that spans the scene is built once,
when it closes (:func:`polygons_from_groups`). Rings run with the polygon on their left
(exteriors counter-clockwise in the pixel frame's x/y, holes clockwise), so the one ring of
positive area is the exterior. Where two paths arrive at one point (two pixels of the group
touching only at a corner), each takes the left turn: the rings stay simple (OGC-valid, a hole
may touch the exterior at a point), as a whole-mask polygonization gives them.

:class:`geounet.vectors.strips.StripVectorizer` drives it, strip by strip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

logger = logging.getLogger(__name__)


def piece_holes(ragged: Any, k: int) -> Holes | None:
    """The holes of polygon ``k`` of a band's polygons (``ragged``: their coordinates, ring ends
    and polygon ends, as :mod:`geounet.vectors.strips` gets them from ``shapes``), as they are:
    a hole lies inside its band, so it never reaches a seam."""
    coords, ring_ends, geom_ends = ragged
    first, last = int(geom_ends[k]), int(geom_ends[k + 1])
    if last == first + 1:
        return None
    # A copy: a view would keep the whole band's coordinates alive while the group is open.
    return Holes(
        coords[ring_ends[first + 1] : ring_ends[last]].copy(),
        np.diff(ring_ends[first + 1 : last + 1]),
    )


def cut_pieces(
    ragged: Any,
    ks: npt.NDArray[np.intp],
    on_top: npt.NDArray[np.bool_],
    on_bottom: npt.NDArray[np.bool_],
    top: float,
    bottom: float,
) -> list[list[BoundaryPath]]:
    """The exteriors of polygons ``ks`` of a band's polygons (``ragged``, as in
    :func:`piece_holes`), oriented with the polygon on their left, cut at the line ``top`` (where
    ``on_top``) and ``bottom`` (where ``on_bottom``): the paths between their edges on those
    lines (see :func:`_cut_ring`), every piece at once."""
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
    out: list[list[BoundaryPath]] = [[] for _ in range(len(ks))]
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
        out[r].append(
            BoundaryPath([v], (p[0], p[1]), (q[0], q[1]), (di[0], di[1]), (do[0], do[1]), ar)
        )
    return out


class BoundaryPath:
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
    def chain(paths: list[BoundaryPath]) -> BoundaryPath:
        """Paths joined end to start, in order (cost: the number of paths, not their length)."""
        if len(paths) == 1:
            return paths[0]
        return BoundaryPath(
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
            if isinstance(node, BoundaryPath):
                stack.extend(reversed(node.leaves))
            else:
                arrays.append(node if not arrays else node[1:])
        return np.concatenate(arrays)


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _new_path(v: npt.NDArray[np.float64], area2: float) -> BoundaryPath:
    """A path through the vertices ``v`` (at least two)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = v[[0, 1, -2, -1]].tolist()
    return BoundaryPath(
        [v],
        (int(x0), int(y0)),
        (int(x3), int(y3)),
        (_sign(x1 - x0), _sign(y1 - y0)),
        (_sign(x3 - x2), _sign(y3 - y2)),
        area2,
    )


def _cut_ring(xy: npt.NDArray[np.float64], lines: tuple[float, ...]) -> list[BoundaryPath]:
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


def seam_runs(runs: Sequence[tuple[int, int]], below: bool, s: int) -> list[BoundaryPath]:
    """The seam edges of column runs ``(first, end)`` on line ``s``, a run as one edge: running
    +x with the group below the line, -x with it above."""
    out = []
    d = (1, 0) if below else (-1, 0)
    for a, b in runs:
        if not below:
            a, b = b, a
        out.append(
            BoundaryPath(
                [np.array([[a, s], [b, s]], dtype=np.float64)],
                (a, s),
                (b, s),
                d,
                d,
                float(a * s - b * s),
            )
        )
    return out


def link(paths: list[BoundaryPath], s: int) -> tuple[list[BoundaryPath], list[BoundaryPath]]:
    """Paths linked end to start at points of line ``s``: (closed rings, open paths whose both
    ends are off that line). Where two paths leave one point, the left turn is taken. Every
    path has at least one end on a seam line."""
    leaving: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(paths):
        if p.start[1] == s:
            leaving.setdefault(p.start, []).append(i)
    used = [False] * len(paths)

    def follow(i: int) -> tuple[list[BoundaryPath], bool]:
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

    rings: list[BoundaryPath] = []
    open_paths: list[BoundaryPath] = []
    for i, p in enumerate(paths):
        if not used[i] and p.start[1] != s:
            seq, _ = follow(i)
            open_paths.append(BoundaryPath.chain(seq))
    for i in range(len(paths)):
        if not used[i]:
            seq, closed = follow(i)
            if not closed:
                raise ValueError("a boundary path leaves the seam and never comes back")
            rings.append(BoundaryPath.chain(seq))
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


def polygons_from_groups(groups: list[OpenGroup]) -> npt.NDArray[Any]:
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
    shells: list[npt.NDArray[np.float64]], inner: list[npt.NDArray[np.float64]], holes: list[Holes]
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
class Holes:
    """Holes of one piece as shapes gave them: their coordinates, one ring after the other."""

    coords: npt.NDArray[np.float64]
    lengths: npt.NDArray[np.int64]


@dataclass
class OpenGroup:
    """A polygon that reaches the open edge of the strips so far."""

    class_id: int
    paths: list[BoundaryPath] = field(default_factory=list)  # both ends on the open edge
    rings: list[BoundaryPath] = field(default_factory=list)  # linked rings, finished
    holes: list[Holes] = field(default_factory=list)  # holes of its pieces
    score_sum: float = 0.0
    pixels: int = 0
