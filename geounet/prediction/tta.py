"""Test-time augmentation's symmetries: the 8 rotations and mirrors of the square (the dihedral
group D4) that :meth:`~geounet.prediction.predictor.Predictor.forward` runs each tile under, and
their inverses that turn the logits back.
"""

from __future__ import annotations

import torch

#: Forward passes per tile with test-time augmentation: the 8 symmetries of the square (the
#: dihedral group D4), 4 quarter turns each with and without a mirror.
TTA_VARIANTS = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th symmetry of the square (0..7) applied to the last two axes (rows, cols).

    ``k % 4`` quarter turns counter-clockwise (:func:`torch.rot90` from rows towards columns),
    after a left-right mirror when ``k >= 4``; ``k = 0`` is the identity.
    """
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def undo_dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k)`` equals ``x``."""
    y = torch.rot90(y, -(k % 4), dims=(-2, -1))
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return y
