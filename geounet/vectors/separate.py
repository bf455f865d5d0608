"""Touching buildings split apart: in the mask along probability valleys between cores
(:func:`split_at_valleys`), and in polygons at narrow necks (:func:`split_necks`). No torch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely
from scipy import ndimage

from geounet.vectors.polygons import polygonal


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
        mask: (rows, cols) 0 background, 1 foreground,
            :data:`~geounet.vectors.strips.MASK_NODATA` nodata.
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
        geom: Polygon or MultiPolygon (in pixel units in
            :class:`~geounet.vectors.strips.StripVectorizer`).
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
        piece = polygonal(piece)
        if piece.is_empty or piece.area <= 0:
            continue
        out.append(piece)
        taken = piece if taken is None else shapely.union(taken, piece)
    return out or [geom]
