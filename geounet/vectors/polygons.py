"""Reshaping polygon outlines: validity clean-up and squared building outlines.

:func:`polygonal` turns whatever simplification or reshaping left into a valid Polygon or
MultiPolygon; :func:`regularize_polygon` squares a building outline along its dominant
orientation. Both work in any units (pixel units in the vectorizer). No torch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely


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
    centre: npt.NDArray[np.float64] = np.asarray(simple.exterior.coords)[:-1].mean(axis=0)

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


def polygonal(geom: shapely.Geometry) -> shapely.Geometry:
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
