"""Class masks of line classes (roads, rivers) to centerlines, strip by strip.

The stage has four steps, each with a bounded reach, so that feeding a mask in strips gives the
same lines as the whole mask at once:

1. **Smooth**: hairs and lone pixels cleared, notches filled (``smooth`` passes of a 3x3 rule,
   see :func:`smooth_mask`; reach one pixel a pass), so that the ragged edge of a predicted road
   sprouts fewer hairs when thinned.
2. **Thin**: Guo-Hall thinning (two sub-iterations a pass, each reading a 3x3 neighbourhood;
   the lookup tables of scikit-image's ``thin``), at most ``max_width_px`` sub-iterations: a band
   up to that many pixels wide thins to a one-pixel line; a wider blob (a car park) stops there.
   A pixel of the result depends only on mask pixels within ``smooth + max_width_px`` rows, so
   each strip is thinned with that many rows of halo and its last rows wait for the next strip.
3. **Graph**: skeleton pixels are nodes of an 8-connected graph (a diagonal step counts only
   where no 4-connected path through a common neighbour exists, so a staircase is no junction);
   pixels with other than two neighbours are the graph's nodes (ends and junctions), the runs of
   pixels between them its edges. Runs are traced band by band on integer pixel coordinates and
   joined exactly where they cross a seam.
4. **Network**: the edges that share nodes, or whose free ends lie within ``bridge_px`` of each
   other, form a cluster; a cluster is finished when nothing below can touch it any more, and is
   then turned into lines on its own (so the result does not depend on where the seams were):
   junction pixels closer than ``merge_px`` along the skeleton become one junction (at their mean
   position), spurs (a free end to a junction) shorter than ``prune_px`` are dropped (once, not
   repeatedly), free ends within ``bridge_px`` whose directions agree with the gap (within
   ``bridge_angle`` degrees) are joined, shortest gap first, and edges are merged through
   junctions left with two edges. Lines run between junctions and free ends, so lines meeting
   at a junction share its exact end point (noded, as routing tools and QGIS's network analysis
   want them); a closed loop is one closed LineString.

Lines get ``class``, ``class_id``, ``score`` (mean probability of their pixels), ``length_m``
(geodesic for a geographic CRS) and are simplified (Douglas-Peucker, ``simplify`` pixels, ends
kept). Only the clusters still open are held, never the whole mask. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from geounet.geodata.raster import ground_scale, projection_scale
from geounet.vectors.features import by_position, class_labels, metric_of, pixel_to_map

if TYPE_CHECKING:
    import geopandas as gpd

#: Neighbour directions (row, col) by bit: E, NE, N, NW, W, SW, S, SE.
DIRS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
_POPCOUNT = np.array([(i).bit_count() for i in range(256)], dtype=np.uint8)
_BITS = [[d for d in range(8) if n >> d & 1] for n in range(256)]
_KERNEL = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.uint8)


def _thin_luts() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Guo-Hall deletion tables of the two sub-iterations, by neighbour code (bits as DIRS)."""

    def bits(n: int) -> list[bool]:
        return [bool(n >> i & 1) for i in range(8)]

    def g1(b: list[bool]) -> bool:
        return sum(1 for i in (0, 2, 4, 6) if not b[i] and (b[i + 1] or b[(i + 2) % 8])) == 1

    def g2(b: list[bool]) -> bool:
        n1 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if b[k] or b[(k + 1) % 8])
        return min(n1, n2) in (2, 3)

    def g3(b: list[bool]) -> bool:
        return not ((b[1] or b[2] or not b[7]) and b[0])

    def g3p(b: list[bool]) -> bool:
        return not ((b[5] or b[6] or not b[3]) and b[4])

    first = np.array([g1(b) and g2(b) and g3(b) for b in map(bits, range(256))])
    second = np.array([g1(b) and g2(b) and g3p(b) for b in map(bits, range(256))])
    return first, second


_LUTS = _thin_luts()


_EIGHT = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.uint8)


def smooth_mask(mask: npt.NDArray[np.bool_], passes: int = 1) -> npt.NDArray[np.bool_]:
    """``passes`` of edge smoothing: a set pixel with at most two set neighbours (a hair, a lone
    pixel) is cleared, an unset one with at least six (a hole, a deep notch) is set; outside is unset.

    Unlike a majority filter, it keeps square corners (three neighbours), so an L-shaped road
    thins to its corner. Lines one pixel wide vanish (``passes=0`` keeps them).
    """
    out = mask
    for _ in range(passes):
        count = ndimage.correlate(out.astype(np.uint8), _EIGHT, mode="constant", cval=0)
        out = np.where(out, count >= 3, count >= 6)
    return out


def thin(mask: npt.NDArray[np.bool_], max_steps: int) -> npt.NDArray[np.bool_]:
    """Guo-Hall thinning of a boolean mask, at most ``max_steps`` sub-iterations (outside the
    array is unset). Stops early when nothing changes (more steps would change nothing)."""
    skel = mask.astype(np.uint8)
    steps = 0
    while steps < max_steps:
        changed = False
        for lut in _LUTS:
            if steps >= max_steps:
                break
            code = ndimage.correlate(skel, _KERNEL, mode="constant", cval=0)
            drop = lut[code] & (skel > 0)
            steps += 1
            if drop.any():
                skel[drop] = 0
                changed = True
        if not changed:
            break
    return skel.astype(bool)


def skeletonize(
    mask: npt.NDArray[np.bool_], *, smooth: int = 1, max_width_px: int = 32
) -> npt.NDArray[np.bool_]:
    """Smoothed, thinned mask (steps 1 and 2 of the module docstring) of a whole array."""
    return thin(smooth_mask(mask, smooth), max_width_px + 2)


def neighbour_bits(rows: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """The neighbour code (bits as :data:`DIRS`) of every pixel of ``rows[1:-1]``, a diagonal
    neighbour counting only where neither pixel between them on the 4-connected path is set."""
    s = np.pad(rows, ((0, 0), (1, 1)))
    c = s[1:-1, 1:-1]
    n, so = s[:-2, 1:-1], s[2:, 1:-1]
    e, w = s[1:-1, 2:], s[1:-1, :-2]
    ne = s[:-2, 2:] & ~n & ~e
    nw = s[:-2, :-2] & ~n & ~w
    se = s[2:, 2:] & ~so & ~e
    sw = s[2:, :-2] & ~so & ~w
    out = np.zeros(c.shape, dtype=np.uint8)
    for bit, arr in enumerate((e, ne, n, nw, w, sw, so, se)):
        out |= arr.astype(np.uint8) << bit
    out[~c] = 0
    return out


def metres_per_pixel(transform: Affine, crs: CRS) -> float:
    """The mean ground size of a pixel in metres (at the grid's origin for a geographic CRS)."""
    sx = math.hypot(transform.a, transform.d)
    sy = math.hypot(transform.b, transform.e)
    geod, factor = metric_of(crs)
    if geod is not None:
        lon, lat = transform.c, transform.f
        dx = geod.inv(lon, lat, lon + sx, lat)[2]
        dy = geod.inv(lon, lat, lon, lat - sy)[2]
        return float((dx + dy) / 2)
    return float((sx + sy) / 2 * factor / projection_scale(crs, transform.c, transform.f)[0])


def length_m(geoms: npt.NDArray[Any], crs: CRS) -> npt.NDArray[np.float64]:
    """Lengths in metres: geodesic on the CRS's ellipsoid if it is geographic."""
    geod, factor = metric_of(crs)
    if geod is not None:
        return np.array([geod.geometry_length(g) for g in geoms], dtype=np.float64)
    lengths: npt.NDArray[np.float64] = (
        np.asarray(shapely.length(geoms), dtype=np.float64) * factor / ground_scale(geoms, crs)
    )
    return lengths


@dataclass(frozen=True)
class CenterlineOptions:
    """How a line class's mask becomes centerlines (lengths in metres; see the module docstring).

    Attributes:
        prune_m: Drop spurs (a free end to a junction) shorter than this.
        bridge_m: Join free ends closer than this whose directions agree (0 = off).
        bridge_angle: Largest angle in degrees between an end's direction and the gap.
        merge_m: Junctions closer than this along the skeleton become one (None: the
            ``line_width_m``).
        simplify: Douglas-Peucker tolerance in pixels (ends kept).
        smooth: Passes of :func:`smooth_mask` before thinning.
        max_width_m: Widest band thinned to a line (None: 4 x ``line_width_m``, at least 16 px).
        line_width_m: The width the model was trained on (defaults of the others).
    """

    prune_m: float | None = None
    bridge_m: float | None = None
    bridge_angle: float = 35.0
    merge_m: float | None = None
    simplify: float = 1.0
    smooth: int = 1
    max_width_m: float | None = None
    line_width_m: float = 4.0

    def pixels(self, mpp: float) -> dict[str, float]:
        """The options in pixels of ``mpp`` metres."""
        w = self.line_width_m
        return {
            "prune_px": (self.prune_m if self.prune_m is not None else 2 * w) / mpp,
            "bridge_px": (self.bridge_m if self.bridge_m is not None else 2 * w) / mpp,
            "merge_px": (self.merge_m if self.merge_m is not None else w) / mpp,
            "max_width_px": max(
                16.0, (self.max_width_m if self.max_width_m is not None else 4 * w) / mpp
            ),
        }


class StripCenterliner:
    """Centerlines of the line classes of a class mask fed in consecutive row strips.

    The protocol is :class:`geounet.vectors.strips.StripVectorizer`'s: :meth:`add` each strip in
    order, :attr:`ready` lines can be :meth:`take`-n at any time, :meth:`finish` (or
    ``take(final=True)``) after the last strip.

    Args:
        transform: The scene's pixel-to-map transform.
        crs: The scene's CRS.
        class_names: Names by class id (id 0 is background).
        line_classes: The class ids to trace (the others are ignored).
        options: Lengths in metres and the rest (see :class:`CenterlineOptions`).
    """

    def __init__(
        self,
        transform: Affine,
        crs: CRS,
        class_names: Sequence[str],
        line_classes: Iterable[int],
        options: CenterlineOptions | None = None,
    ) -> None:
        self.transform = transform
        self.crs = crs
        self.class_names = list(class_names)
        self.options = options or CenterlineOptions()
        px = self.options.pixels(metres_per_pixel(transform, crs))
        self.max_width_px = math.ceil(px["max_width_px"])
        self.halo = self.options.smooth + self.max_width_px + 2
        self._classes = sorted({int(c) for c in line_classes})
        self._graphs = {
            c: _LineGraph(
                px["prune_px"], px["bridge_px"], px["merge_px"], self.options.bridge_angle
            )
            for c in self._classes
        }
        self._row = 0  # rows received
        self._done = 0  # rows thinned
        self._buf0 = 0  # first row held in the buffers
        self._mask: npt.NDArray[np.uint8] | None = None
        self._score: npt.NDArray[np.float32] | None = None
        self._out: list[tuple[int, npt.NDArray[np.float64], float]] = []  # (class, pixel xy, score)
        self._finished = False

    @property
    def ready(self) -> int:
        """Finished lines not yet taken."""
        return len(self._out)

    def add(
        self, row_off: int, mask: npt.NDArray[np.integer], score: npt.NDArray[np.floating] | None
    ) -> None:
        """Trace the next strip (rows ``row_off`` onward; must follow the previous one).

        Args:
            row_off: First scene row of the strip.
            mask: (rows, width) class ids; 0 background, 255 nodata (background here).
            score: Optional (rows, width) probability of each pixel's class.
        """
        if row_off != self._row:
            raise ValueError(f"strip at row {row_off}, expected {self._row}")
        m = np.asarray(mask, dtype=np.uint8)
        s = (
            np.ones(m.shape, dtype=np.float32)
            if score is None
            else np.asarray(score, dtype=np.float32)
        )
        self._mask = m if self._mask is None else np.concatenate([self._mask, m])
        self._score = s if self._score is None else np.concatenate([self._score, s])
        self._row += m.shape[0]
        self._thin_through(self._row - self.halo)

    def _thin_through(self, end: int) -> None:
        """Thin rows ``[done, end)`` (they need mask rows up to ``end + halo``) and trace them."""
        if end <= self._done or self._mask is None or self._score is None:
            return
        a = max(0, self._done - self.halo) - self._buf0  # window in buffer rows
        mask = self._mask[a:]
        keep0, keep1 = self._done - self._buf0 - a, end - self._buf0 - a
        for cls, graph in self._graphs.items():
            window = mask == cls
            if window.any():
                skel = skeletonize(
                    window, smooth=self.options.smooth, max_width_px=self.max_width_px
                )[keep0:keep1]
            else:
                skel = np.zeros((keep1 - keep0, mask.shape[1]), dtype=bool)
            score = self._score[a + keep0 : a + keep1]
            for chain in graph.add(self._done, skel, score):
                self._out.append((cls, *chain))
        self._done = end
        drop = max(0, self._done - self.halo - self._buf0)
        if drop:
            self._mask = self._mask[drop:]
            self._score = self._score[drop:]
            self._buf0 += drop

    def _finish(self) -> None:
        if self._finished:
            return
        self._thin_through(self._row)
        for cls, graph in self._graphs.items():
            for chain in graph.finish():
                self._out.append((cls, *chain))
        self._mask = self._score = None
        self._finished = True

    def take(self, limit: int | None = None, *, final: bool = False) -> gpd.GeoDataFrame | None:
        """Finished lines in the scene's CRS, at most ``limit`` (None: all), or None when none are
        ready. ``final``: the last strip was added: every line is finished."""
        if final:
            self._finish()
        if not self._out:
            return None
        n = len(self._out) if limit is None else min(limit, len(self._out))
        batch, self._out = self._out[:n], self._out[n:]
        return lines_frame(
            [xy for _, xy, _ in batch],
            class_ids=[c for c, _, _ in batch],
            scores=[s for _, _, s in batch],
            transform=self.transform,
            crs=self.crs,
            class_names=self.class_names,
            simplify=self.options.simplify,
        )

    def finish(self) -> gpd.GeoDataFrame:
        """Every line not taken yet (columns ``class``, ``class_id``, ``score``, ``length_m``,
        ``geometry``: LineStrings), sorted by position."""
        frame = self.take(final=True)
        return (
            frame
            if frame is not None
            else lines_frame(
                [],
                class_ids=[],
                scores=[],
                transform=self.transform,
                crs=self.crs,
                class_names=self.class_names,
            )
        )


def lines_frame(
    pixel_lines: Sequence[npt.NDArray[np.float64]],
    *,
    class_ids: Sequence[int],
    scores: Sequence[float],
    transform: Affine,
    crs: CRS,
    class_names: Sequence[str],
    simplify: float = 0.0,
) -> gpd.GeoDataFrame:
    """Lines in pixel coordinates (x = column, y = row, pixel centres at .5) to a GeoDataFrame
    of LineStrings in map coordinates, sorted top to bottom, then left to right."""
    import geopandas as gpd

    if len(pixel_lines):
        offsets = np.concatenate([[0], np.cumsum([len(xy) for xy in pixel_lines])]).astype(np.int64)
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.LINESTRING, np.concatenate(pixel_lines), (offsets,)
        )
    else:
        geoms = np.empty(0, dtype=object)
    if simplify > 0 and len(geoms):
        geoms = shapely.simplify(geoms, simplify, preserve_topology=False)
    geoms = pixel_to_map(geoms, transform)
    frame = gpd.GeoDataFrame(
        {
            "class": class_labels(class_ids, class_names),
            "class_id": np.asarray(class_ids, dtype=np.int32),
            "score": np.round(np.asarray(scores, dtype=np.float64), 4),
            "length_m": np.round(length_m(geoms, crs), 2) if len(geoms) else np.zeros(0),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
        crs=crs,
    )
    return by_position(frame, transform, "length_m").reset_index(drop=True)


def centerline_mask(
    mask: npt.NDArray[np.integer],
    transform: Affine,
    crs: CRS,
    class_names: Sequence[str],
    line_classes: Iterable[int],
    *,
    score: npt.NDArray[np.floating] | None = None,
    strip_height: int | None = None,
    options: CenterlineOptions | None = None,
) -> gpd.GeoDataFrame:
    """Centerlines of an in-memory class mask (in strips of ``strip_height`` rows, or at once)."""
    cl = StripCenterliner(transform, crs, class_names, line_classes, options)
    step = strip_height or max(mask.shape[0], 1)
    for r0 in range(0, mask.shape[0], step):
        cl.add(r0, mask[r0 : r0 + step], None if score is None else score[r0 : r0 + step])
    return cl.finish()


# ----------------------------------------------------------------------------------------------
# The skeleton graph, band by band.
#
# A pixel is its key r * W + c (scene row, column). An edge run ("chain") is the list of keys from
# a node to a node. Where a run leaves the band, it ends "open" at the seam edge (above, below),
# the pair of pixel keys across the seam; the run's piece from the next band starts at that same
# edge, so pieces are joined by key, exactly.


#: Pixel scores are summed in units of 2**-24 (integers): pieces of a line are added in an
#: order that depends on the strips, and integer sums are exact in any order, so a line's mean
#: score does not depend on where the strip seams fall.
SCORE_UNITS = float(2**24)


@dataclass
class _Piece:
    pix: list[int]
    ends: list[Any]  # per end: ("n", node key) or ("o", (above, below)); closed: both ("c",)
    ssum: float  # in SCORE_UNITS
    attached: list[int] = field(default_factory=list)  # node keys counted as open in clusters


@dataclass
class _Cluster:
    chains: list[tuple[list[int], int | None, int | None, float]] = field(default_factory=list)
    nodes: dict[int, int] = field(default_factory=dict)  # node key -> degree
    open: int = 0
    max_row: int = -1
    max_end_row: int = -(10**12)


class _LineGraph:
    def __init__(
        self, prune_px: float, bridge_px: float, merge_px: float, bridge_angle: float
    ) -> None:
        self.prune_px, self.bridge_px, self.merge_px = prune_px, bridge_px, merge_px
        self.cos_angle = math.cos(math.radians(bridge_angle))
        self.width = 0
        self._rows: npt.NDArray[np.bool_] | None = None  # skeleton rows [p - 1, f)
        self._scores: npt.NDArray[np.float32] | None = None
        self._p = 0
        self._f = 0
        self._prev_deg: npt.NDArray[np.uint8] | None = None  # degree of row p - 1
        self._pending: dict[tuple[int, int], int] = {}  # open bottom seam edge -> piece id
        self._pieces: dict[int, _Piece] = {}
        self._next = 0
        self._parent: dict[int, int] = {}
        self._clusters: dict[int, _Cluster] = {}
        self._ends_by_row: dict[int, list[int]] = {}  # held free-end node keys by row
        self._score_of: dict[int, float] = {}  # score of pixels in the current band and row p - 1

    # -- union-find over node keys, with cluster data at the roots
    def _find(self, a: int) -> int:
        parent = self._parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def _node(self, key: int, deg: int) -> None:
        if key in self._parent:
            return
        self._parent[key] = key
        r = key // self.width
        cl = _Cluster(nodes={key: deg}, max_row=r)
        self._clusters[key] = cl
        if deg == 1:
            cl.max_end_row = r
            c = key % self.width
            reach = math.floor(self.bridge_px)
            for rr in range(r - reach, r + 1):
                for other in self._ends_by_row.get(rr, ()):
                    oc = other % self.width
                    if (rr - r) ** 2 + (oc - c) ** 2 <= self.bridge_px**2:
                        self._union(key, other)
            self._ends_by_row.setdefault(r, []).append(key)

    def _union(self, a: int, b: int) -> int:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return ra
        ca, cb = self._clusters[ra], self._clusters.pop(rb)
        self._parent[rb] = ra
        ca.chains.extend(cb.chains)
        ca.nodes.update(cb.nodes)
        ca.open += cb.open
        ca.max_row = max(ca.max_row, cb.max_row)
        ca.max_end_row = max(ca.max_end_row, cb.max_end_row)
        return ra

    # -- bands
    def add(
        self, row0: int, skel: npt.NDArray[np.bool_], score: npt.NDArray[np.float32]
    ) -> list[tuple[npt.NDArray[np.float64], float]]:
        if row0 != self._f:
            raise ValueError(f"skeleton rows at {row0}, expected {self._f}")
        if self._rows is None:
            self.width = skel.shape[1]
            self._rows = np.zeros((1, self.width), dtype=bool)  # the virtual row -1
            self._scores = np.zeros((1, self.width), dtype=np.float32)
        assert self._scores is not None
        self._rows = np.concatenate([self._rows, skel])
        self._scores = np.concatenate([self._scores, score])
        self._f += skel.shape[0]
        if self._f - 1 > self._p:
            return self._band(self._f - 1)
        return []

    def finish(self) -> list[tuple[npt.NDArray[np.float64], float]]:
        if self._rows is None:
            return []
        assert self._scores is not None
        self._rows = np.concatenate([self._rows, np.zeros((1, self.width), dtype=bool)])
        self._scores = np.concatenate([self._scores, np.zeros((1, self.width), dtype=np.float32)])
        out = self._band(self._f, final=True) if self._f > self._p else []
        # Pieces still open cannot be (every seam edge is matched); clusters all close.
        for root in list(self._clusters):
            out.extend(self._release(root))
        return out

    def _band(self, q: int, *, final: bool = False) -> list[tuple[npt.NDArray[np.float64], float]]:
        """Trace rows [p, q) (the buffer holds rows p - 1 .. q)."""
        assert self._rows is not None and self._scores is not None
        p, w = self._p, self.width
        rows = self._rows[: q - p + 2]
        bits = neighbour_bits(rows)  # rows p .. q - 1
        deg = _POPCOUNT[bits]
        prev_deg = self._prev_deg if self._prev_deg is not None else np.zeros(w, dtype=np.uint8)
        scores = self._scores[: q - p + 1]  # rows p - 1 .. q - 1

        def degree(key: int) -> int:
            r, c = divmod(key, w)
            return int(prev_deg[c]) if r == p - 1 else int(deg[r - p, c])

        # Nodes of the band: free ends and junctions.
        node_r, node_c = np.nonzero((deg != 2) & (deg > 0))
        for r, c in zip(node_r.tolist(), node_c.tolist(), strict=True):
            self._node((r + p) * w + c, int(deg[r, c]))

        visited: set[tuple[int, int]] = set()
        chains: list[tuple[list[int], Any, Any]] = []

        def walk(prev: int, cur: int, pix: list[int]) -> tuple[list[int], Any]:
            while True:
                visited.add((prev, cur) if prev < cur else (cur, prev))
                r, c = divmod(cur, w)
                if r >= q:
                    return pix, ("o", (prev, cur))
                if r < p:
                    if degree(cur) != 2:
                        pix.append(cur)
                        return pix, ("n", cur)
                    return pix, ("o", (cur, prev))
                pix.append(cur)
                b = int(bits[r - p, c])
                if _POPCOUNT[b] != 2:
                    return pix, ("n", cur)
                nxt = -1
                for d in _BITS[b]:
                    dr, dc = DIRS[d]
                    k = (r + dr) * w + c + dc
                    if k != prev:
                        nxt = k
                        break
                e = (cur, nxt) if cur < nxt else (nxt, cur)
                if e in visited:
                    return pix, ("c",)
                prev, cur = cur, nxt

        for r, c in zip(node_r.tolist(), node_c.tolist(), strict=True):
            key = (r + p) * w + c
            for d in _BITS[int(bits[r, c])]:
                dr, dc = DIRS[d]
                if r + dr + p >= q:
                    continue  # traced from the next band
                nxt = key + dr * w + dc
                if ((key, nxt) if key < nxt else (nxt, key)) in visited:
                    continue
                pix, end = walk(key, nxt, [key])
                chains.append((pix, ("n", key), end))
        # Runs entering the band from the row above.
        top = np.flatnonzero(bits[0] & 0b1110) if q > p else np.zeros(0, dtype=np.intp)
        for c in top.tolist():
            key = p * w + c
            for d in _BITS[int(bits[0, c]) & 0b1110]:
                dr, dc = DIRS[d]
                above = key + dr * w + dc
                if ((above, key) if above < key else (key, above)) in visited:
                    continue
                if degree(above) != 2:
                    pix, end = walk(above, key, [above])
                    chains.append((pix, ("n", above), end))
                else:
                    pix, end = walk(above, key, [])
                    chains.append((pix, ("o", (above, key)), end))
        # Loops inside the band.
        loop_r, loop_c = np.nonzero(deg == 2)
        for r, c in zip(loop_r.tolist(), loop_c.tolist(), strict=True):
            key = (r + p) * w + c
            d = _BITS[int(bits[r, c])][0]
            dr, dc = DIRS[d]
            nxt = key + dr * w + dc
            if ((key, nxt) if key < nxt else (nxt, key)) in visited:
                continue
            pix, end = walk(key, nxt, [key])
            if end[0] == "c":
                chains.append((pix, ("c",), ("c",)))
                continue
            # A run with both ends below the band (an arch): the other way from here too.
            d2 = _BITS[int(bits[r, c])][1]
            back, end2 = walk(key, key + DIRS[d2][0] * w + DIRS[d2][1], [])
            chains.append((back[::-1] + pix, end2, end))

        out: list[tuple[npt.NDArray[np.float64], float]] = []
        for pix, e0, e1 in chains:
            idx = np.asarray(pix, dtype=np.int64)
            ssum = float(
                np.rint(scores[idx // w - p + 1, idx % w].astype(np.float64) * SCORE_UNITS).sum()
            )
            out.extend(self._piece(_Piece(pix, [e0, e1], ssum), p))

        self._prev_deg = deg[-1].copy() if q > p else prev_deg
        self._p = q
        self._rows = self._rows[q - p :]
        self._scores = self._scores[q - p :]
        if not final:
            out.extend(self._release_ready(q))
        return out

    def _piece(self, piece: _Piece, p: int) -> list[tuple[npt.NDArray[np.float64], float]]:
        """A traced run: joined to the pieces it meets at the band's top seam, then either a
        finished chain of a cluster or an open piece waiting at the bottom seam."""
        for i in (0, 1):
            while piece.ends[i][0] == "o" and piece.ends[i][1][1] // self.width == p:
                key = piece.ends[i][1]
                pid = self._pending.pop(key, None)
                if pid is None:
                    break
                other = self._pieces.pop(pid)
                for node in other.attached:
                    self._clusters[self._find(node)].open -= 1
                for e in other.ends:  # re-registered for the joined piece below
                    if e[0] == "o" and e[1] != key and self._pending.get(e[1]) == pid:
                        del self._pending[e[1]]
                piece = _join(other, piece, key)
                if piece.ends[0][0] == "c":
                    break
        if piece.ends[0][0] == "c":
            return self._closed_loop(piece)
        nodes = [e[1] for e in piece.ends if e[0] == "n"]
        if len(nodes) == 2:
            root = self._union(nodes[0], nodes[1])
            self._clusters[root].chains.append((piece.pix, nodes[0], nodes[1], piece.ssum))
            return []
        pid = self._next
        self._next += 1
        self._pieces[pid] = piece
        for e in piece.ends:
            if e[0] == "o":
                self._pending[e[1]] = pid
        for node in nodes:
            self._clusters[self._find(node)].open += 1
        piece.attached = nodes
        return []

    def _closed_loop(self, piece: _Piece) -> list[tuple[npt.NDArray[np.float64], float]]:
        """A ring with no node: a line of its own (canonical start: its smallest pixel)."""
        pix = piece.pix
        if len(pix) > 1 and pix[0] == pix[-1]:
            pix = pix[:-1]
        if len(pix) < 3:
            return []
        cl = _Cluster(chains=[(pix, None, None, piece.ssum)])
        return _cluster_lines(
            cl, self.width, self.prune_px, self.bridge_px, self.merge_px, self.cos_angle
        )

    def _release_ready(self, q: int) -> list[tuple[npt.NDArray[np.float64], float]]:
        out: list[tuple[npt.NDArray[np.float64], float]] = []
        reach = self.bridge_px
        for root in [
            r
            for r, cl in self._clusters.items()
            if cl.open == 0 and cl.max_row < q - 1 and cl.max_end_row + reach < q - 1
        ]:
            out.extend(self._release(root))
        return out

    def _release(self, root: int) -> list[tuple[npt.NDArray[np.float64], float]]:
        cl = self._clusters.pop(root)
        for key, d in cl.nodes.items():
            if d == 1:
                lst = self._ends_by_row.get(key // self.width)
                if lst is not None:
                    lst.remove(key)
                    if not lst:
                        del self._ends_by_row[key // self.width]
        return _cluster_lines(
            cl, self.width, self.prune_px, self.bridge_px, self.merge_px, self.cos_angle
        )


def _join(a: _Piece, b: _Piece, key: tuple[int, int]) -> _Piece:
    """Pieces ``a`` and ``b`` that both end at the seam edge ``key``, joined there."""
    if a.ends[1] != ("o", key):
        a = _Piece(a.pix[::-1], a.ends[::-1], a.ssum)
    if b.ends[0] != ("o", key):
        b = _Piece(b.pix[::-1], b.ends[::-1], b.ssum)
    out = _Piece(a.pix + b.pix, [a.ends[0], b.ends[1]], a.ssum + b.ssum)
    if out.ends[0] == out.ends[1] and out.ends[0][0] == "o":  # both halves of a ring
        out.ends = [("c",), ("c",)]
    return out


def _cluster_lines(
    cl: _Cluster, width: int, prune_px: float, bridge_px: float, merge_px: float, cos_angle: float
) -> list[tuple[npt.NDArray[np.float64], float]]:
    """The lines of a finished cluster (see the module docstring, step 4): each as pixel
    coordinates (x, y of pixel centres) and its mean score. Depends on the cluster's content
    only, never on the order it arrived in."""
    oriented = []
    for pix, a, b, ssum in cl.chains:  # each run in one direction, whichever way it was traced
        rev = pix[::-1]
        if rev < pix:
            pix, a, b = rev, b, a
        oriented.append((pix, a, b, ssum))
    chains = sorted(oriented, key=lambda ch: (ch[0][0], ch[0][-1], len(ch[0]), ch[0]))
    deg = cl.nodes

    def xy(k: int) -> tuple[float, float]:
        return (k % width + 0.5, k // width + 0.5)

    def plen(pix: Sequence[int]) -> float:
        if len(pix) < 2:
            return 0.0
        a = np.asarray(pix, dtype=np.int64)
        dr = np.diff(a // width)
        dc = np.diff(a % width)
        return float(np.hypot(dr, dc).sum())

    # Junction groups: junction pixels joined by short runs.
    parent = {k: k for k in deg}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    kept: list[list[Any]] = []  # [pix, a, b, ssum, n]
    for pix, a, b, ssum in chains:
        if (
            a is not None
            and b is not None
            and deg[a] >= 3
            and deg[b] >= 3
            and plen(pix) <= merge_px
        ):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
            continue
        kept.append([pix, a, b, ssum, len(pix)])
    members: dict[int, list[int]] = {}
    for k in deg:
        members.setdefault(find(k), []).append(k)
    rep = {
        g: (
            float(np.mean([m % width for m in ms])) + 0.5,
            float(np.mean([m // width for m in ms])) + 0.5,
        )
        for g, ms in members.items()
    }
    for ch in kept:
        if ch[1] is not None:
            ch[1], ch[2] = find(ch[1]), find(ch[2])
    gdeg: dict[int, int] = {}
    for ch in kept:
        if ch[1] is not None:
            gdeg[ch[1]] = gdeg.get(ch[1], 0) + 1
            gdeg[ch[2]] = gdeg.get(ch[2], 0) + 1

    # Spurs: a free end (a raw end pixel) to a junction, or a short piece on its own.
    def free(g: int | None) -> bool:
        return g is not None and deg.get(g, 0) == 1 and len(members[g]) == 1

    pruned = []
    for ch in kept:
        a, b = ch[1], ch[2]
        if a is not None and (free(a) or free(b)) and plen(ch[0]) < prune_px:
            other = b if free(a) else a
            if free(other) or gdeg.get(other, 0) >= 3:
                continue
        pruned.append(ch)
    kept = pruned
    gdeg = {}
    for ch in kept:
        if ch[1] is not None:
            gdeg[ch[1]] = gdeg.get(ch[1], 0) + 1
            gdeg[ch[2]] = gdeg.get(ch[2], 0) + 1

    # Bridges between free ends whose directions agree with the gap.
    ends: list[tuple[int, float, float, float, float]] = []  # (group, x, y, dx, dy)
    for ch in kept:
        pix = ch[0]
        for g, seq in ((ch[1], pix), (ch[2], pix[::-1])):
            if g is None or not free(g) or gdeg.get(g, 0) != 1 or len(seq) < 2:
                continue
            far = seq[min(len(seq) - 1, 6)]
            x0, y0 = xy(seq[0])
            x1, y1 = xy(far)
            n = math.hypot(x0 - x1, y0 - y1)
            ends.append((g, x0, y0, (x0 - x1) / n, (y0 - y1) / n))
    pairs = []
    for i in range(len(ends)):
        for j in range(i + 1, len(ends)):
            gi, xi, yi, dxi, dyi = ends[i]
            gj, xj, yj, dxj, dyj = ends[j]
            d = math.hypot(xj - xi, yj - yi)
            if gi == gj or d == 0 or d > bridge_px:
                continue
            ux, uy = (xj - xi) / d, (yj - yi) / d
            if dxi * ux + dyi * uy >= cos_angle and -(dxj * ux + dyj * uy) >= cos_angle:
                pairs.append((d, min(gi, gj), max(gi, gj)))
    used: set[int] = set()
    for _, gi, gj in sorted(pairs):
        if gi in used or gj in used:
            continue
        used.update((gi, gj))
        kept.append([[gi, gj], gi, gj, 0.0, 0])
        gdeg[gi] += 1
        gdeg[gj] += 1

    # Lines: runs merged through groups with two runs.
    def coords(ch: list[Any], forward: bool) -> list[tuple[float, float]]:
        pix = ch[0] if forward else ch[0][::-1]
        a, b = (ch[1], ch[2]) if forward else (ch[2], ch[1])
        pts = [xy(k) for k in pix]
        if a is not None:
            pts[0] = rep[a]
            pts[-1] = rep[b]
        return pts

    at: dict[int, list[int]] = {}
    for i, ch in enumerate(kept):
        if ch[1] is not None:
            at.setdefault(ch[1], []).append(i)
            at.setdefault(ch[2], []).append(i)
    done = [False] * len(kept)
    out: list[tuple[npt.NDArray[np.float64], float] | None] = []

    def follow(i: int, g: int | None) -> tuple[list[tuple[float, float]], float, int, bool]:
        """From chain i leaving group g (None: a ring chain), through degree-2 groups."""
        pts: list[tuple[float, float]] = []
        ssum, n = 0.0, 0
        start = g
        while True:
            done[i] = True
            ch = kept[i]
            forward = g is None or ch[1] == g
            seg = coords(ch, forward)
            pts.extend(seg if not pts else seg[1:])
            ssum += ch[3]
            n += ch[4]
            g = ch[2] if forward else ch[1]
            if g is None or gdeg.get(g, 0) != 2:
                return pts, ssum, n, False
            pair = at[g]
            if pair[0] == pair[1]:  # a loop from g back to g
                return pts, ssum, n, True
            j = pair[1] if pair[0] == i else pair[0]
            if done[j]:
                return pts, ssum, n, g == start
            i = j

    for g in sorted(at):
        if gdeg.get(g, 0) == 2:
            continue
        for i in at[g]:
            if not done[i]:
                pts, ssum, n, _ = follow(i, g)
                out.append(_canonical(pts, ssum, n, closed=False))
    for i, ch in enumerate(kept):  # rings: through degree-2 groups only, or no group at all
        if done[i]:
            continue
        if ch[1] is None:
            done[i] = True
            pts = [xy(k) for k in ch[0]]
            out.append(_canonical([*pts, pts[0]], ch[3], ch[4], closed=True))
            continue
        pts, ssum, n, _ = follow(i, ch[1])
        out.append(_canonical(pts, ssum, n, closed=True))
    return [o for o in out if o is not None]


def _canonical(
    pts: list[tuple[float, float]], ssum: float, n: int, *, closed: bool
) -> tuple[npt.NDArray[np.float64], float] | None:
    """A line's vertices in a canonical order (start at the smaller end, or a ring at its
    smallest vertex, turning towards the smaller neighbour), and its mean score."""
    xy = np.asarray(pts, dtype=np.float64)
    if len(xy) < 2:
        return None
    if closed and len(xy) >= 4 and tuple(xy[0]) == tuple(xy[-1]):
        ring = xy[:-1]
        k = int(np.lexsort((ring[:, 0], ring[:, 1]))[0])
        ring = np.roll(ring, -k, axis=0)
        if tuple(ring[-1][::-1]) < tuple(ring[1][::-1]):
            ring = np.concatenate([ring[:1], ring[1:][::-1]])
        xy = np.concatenate([ring, ring[:1]])
    elif tuple(xy[-1][::-1]) < tuple(xy[0][::-1]):
        xy = xy[::-1]
    return np.ascontiguousarray(xy), (ssum / SCORE_UNITS / n if n else 1.0)
