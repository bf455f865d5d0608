"""Validation figures: confusion matrices, per-class scores and the IoU's standard error.

:func:`confusion` and :func:`cell_iou_sums` reduce a batch to sums that add across batches and
ranks; :func:`scores_from_confusion` and :func:`iou_standard_error` turn the sums into IoU, F1,
precision, recall and the error of the IoU. :func:`nanmean` and :func:`mean_se` average the
foreground classes' figures for an epoch's record, :func:`rounded` rounds them for it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from geounet.training.dataset import BORDER_INDEX, CONTACT_INDEX, IGNORE_INDEX

#: Validation IoU's standard error is estimated over cells of about this many pixels a side.
SE_CELL = 128


def cell_iou_sums(
    logits: torch.Tensor, target: torch.Tensor, n_classes: int, binary: bool, cell: int = SE_CELL
) -> torch.Tensor:
    """Per-class sums over square cells of a batch, for :func:`iou_standard_error`.

    Each window is cut into cells of about ``cell`` pixels a side; for each cell and class,
    I = intersection and U = union of prediction and label (valid pixels only). Returns float64
    (n_classes, 6): the sums of I, U, I², U², I·U and the number of cells; sums add across
    batches and ranks.
    """
    pred, target, valid = _scored(logits, target, binary)
    h, w = pred.shape[-2:]
    rows = np.linspace(0, h, max(1, round(h / cell)) + 1).astype(int)
    cols = np.linspace(0, w, max(1, round(w / cell)) + 1).astype(int)
    out = torch.zeros((n_classes, 6), dtype=torch.float64)
    for r0, r1 in itertools.pairwise(rows):
        for c0, c1 in itertools.pairwise(cols):
            p, t, v = pred[:, r0:r1, c0:c1], target[:, r0:r1, c0:c1], valid[:, r0:r1, c0:c1]
            for k in range(n_classes):
                pk, tk = (p == k) & v, (t == k) & v
                inter = (pk & tk).flatten(1).sum(1).double().cpu()
                union = (pk | tk).flatten(1).sum(1).double().cpu()
                out[k] += torch.stack(
                    [
                        inter.sum(),
                        union.sum(),
                        (inter**2).sum(),
                        (union**2).sum(),
                        (inter * union).sum(),
                        torch.tensor(float(len(inter)), dtype=torch.float64),
                    ]
                )
    return out


def iou_standard_error(sums: torch.Tensor | np.ndarray) -> np.ndarray:
    """Standard error of each class's IoU (sum I / sum U over cells), per class (NaN where undefined).

    The IoU is a ratio estimator, so its variance is that of the mean of the residuals
    I - IoU * U (the delta method): n / (n - 1) * sum((I - r U)²) / (sum U)². It treats the
    cells as independent draws of the validation ground: neighbouring cells are correlated, so
    it is a lower bound on the true error, and a floor on what the rule calls a difference.
    """
    s = np.asarray(sums, dtype=np.float64)
    si, su, sii, suu, siu, n = (s[:, j] for j in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = si / su
        resid = np.maximum(sii - 2 * r * siu + r**2 * suu, 0.0)
        se = np.sqrt(n / (n - 1) * resid) / su
    return np.where((n >= 2) & (su > 0), se, np.nan)


def _scored(
    logits: torch.Tensor, target: torch.Tensor, binary: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted classes, targets (contact pixels as background) and the valid-pixel mask."""
    pred = (logits[:, 0] >= 0).long() if binary else logits.argmax(dim=1)
    target = target.masked_fill(target == CONTACT_INDEX, 0).masked_fill(target == BORDER_INDEX, 1)
    return pred, target, target != IGNORE_INDEX


def confusion(
    logits: torch.Tensor, target: torch.Tensor, n_classes: int, binary: bool
) -> torch.Tensor:
    """Confusion matrix (true x predicted) over valid pixels, int64 (n_classes, n_classes)."""
    pred, target, valid = _scored(logits, target, binary)
    idx = target[valid] * n_classes + pred[valid]
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes).cpu()


def scores_from_confusion(cm: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """IoU, F1, precision and recall per class (class 0, background, included) from a confusion matrix."""
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        tp = float(cm[k, k])
        fp = float(cm[:, k].sum() - tp)
        fn = float(cm[k, :].sum() - tp)
        out[name] = {
            "iou": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
        }
    return out


def nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values (NaN when none is): classes absent from validation are skipped."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def mean_se(se: np.ndarray) -> float:
    """Standard error of the mean of independent per-class IoUs (the defined ones)."""
    defined = se[~np.isnan(se)]
    return float(np.sqrt((defined**2).sum()) / len(defined)) if len(defined) else float("nan")


def rounded(v: float | None) -> float | None:
    """A figure for a record: six decimals, None where undefined (None or NaN)."""
    return None if v is None or math.isnan(v) else round(float(v), 6)
