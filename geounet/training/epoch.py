"""One epoch: sample its windows, step through them, validate, and score the result.

:func:`run_epoch` draws the epoch's windows (:func:`geounet.training.dataset.plan_epoch`), feeds
this rank's share to a :class:`geounet.training.step.TrainStep`, validates the weights that
would be kept, sums the figures over the ranks and returns the epoch's record.
:class:`EpochChooser` then decides from the validation IoU whether the epoch's weights are kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from geounet.network.contract import ModelMeta
from geounet.training.config import Progress, TrainConfig
from geounet.training.dataset import ImageEntry, WindowDataset, plan_epoch
from geounet.training.distributed import Dist, all_reduce
from geounet.training.metrics import (
    cell_iou_sums,
    confusion,
    iou_standard_error,
    mean_se,
    nanmean,
    rounded,
    scores_from_confusion,
)
from geounet.training.plan import TrainPlan
from geounet.training.step import TrainStep, segmentation_loss


@dataclass
class EpochChooser:
    """Which epoch's weights to keep, decided after each epoch from its validation IoU.

    ``best`` keeps the highest IoU. ``auto`` applies the one-standard-error rule: an epoch is
    kept when its IoU is the best so far, or within the best epoch's standard error of it;
    among epochs the validation area cannot tell apart the later one has trained longer
    (further down the learning-rate schedule, and with more steps in the weight average), so it
    is kept. On a large validation set the error is small and ``auto`` is ``best``; with a
    handful of validation objects it stops a lucky early epoch from winning. A standard error
    that cannot be estimated (NaN: fewer than two cells) makes ``auto`` behave as ``best``.
    ``last`` keeps every epoch, so the end of the schedule.
    """

    keep: str = "auto"
    best_iou: float = -1.0
    best_epoch: int = 0
    best_se: float = float("nan")
    kept_epoch: int = 0

    def offer(self, epoch: int, iou: float, se: float = float("nan")) -> bool:
        """Record ``epoch``'s validation IoU (NaN = undefined) and its standard error; True
        when its weights are to be kept."""
        score = -1.0 if math.isnan(iou) else iou
        improved = score > self.best_iou or self.best_epoch == 0
        if improved:
            self.best_iou, self.best_epoch, self.best_se = score, epoch, se
        close = (
            self.keep == "auto"
            and not math.isnan(self.best_se)
            and score >= self.best_iou - self.best_se
        )
        save = improved or self.keep == "last" or close
        if save:
            self.kept_epoch = epoch
        return save


@torch.inference_mode()
def _validate(
    model: nn.Module,
    entries: Sequence[ImageEntry],
    windows: Sequence[Any],
    cfg: TrainConfig,
    meta: ModelMeta,
    device: torch.device,
    n_out: int,
    binary: bool,
    use_amp: bool,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Confusion matrix, per-cell IoU sums (:func:`geounet.training.metrics.cell_iou_sums`), loss sum and window count."""
    n_classes = 2 if binary else n_out
    cm = torch.zeros((n_classes, n_classes), dtype=torch.int64)
    cells = torch.zeros((n_classes, 6), dtype=torch.float64)
    loss_sum, n = 0.0, 0.0
    if not windows:
        return cm, cells, loss_sum, n
    model.eval()
    loader = DataLoader(
        WindowDataset(entries, windows, tile_size=cfg.tile_size, mean=meta.mean, std=meta.std),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
    )
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        loss_sum += float(segmentation_loss(logits, y, binary, cfg.contact_weight)) * len(x)
        n += len(x)
        logits = logits.float()
        cm += confusion(logits, y, n_classes, binary)
        cells += cell_iou_sums(logits, y, n_classes, binary)
    return cm, cells, loss_sum, n


@dataclass
class EpochResult:
    """An epoch's record (a line of ``MODEL.metrics.jsonl``) and its unrounded validation IoU."""

    record: dict[str, Any]
    #: Mean foreground IoU (NaN when undefined) and its standard error, for the chooser.
    iou: float
    iou_se: float


def run_epoch(
    epoch: int,
    cfg: TrainConfig,
    plan: TrainPlan,
    step: TrainStep,
    dist: Dist,
    progress: Progress | None = None,
) -> EpochResult:
    """Train epoch ``epoch`` (0-based) on this rank's share of its windows, then validate.

    The windows are drawn from ``cfg.seed`` and the epoch alone, so a resumed run draws the
    same ones. The figures are summed over the ranks: every rank returns the same record.
    """
    t_epoch = time.perf_counter()
    windows = plan_epoch(
        plan.split,
        samples=plan.samples,
        epoch=epoch,
        seed=cfg.seed,
        positive_fraction=cfg.positive_fraction,
        augment=plan.augment,
    )
    shard = windows[dist.rank :: dist.world]
    meta = plan.meta
    loader = DataLoader(
        WindowDataset(
            plan.entries,
            shard,
            tile_size=cfg.tile_size,
            mean=meta.mean,
            std=meta.std,
            augment=plan.augment,
        ),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=plan.device.type == "cuda",
        persistent_workers=False,
    )
    step.model.train(not cfg.core_only)  # core only: BatchNorm keeps the init model's statistics
    loss_sum, loss_n = 0.0, 0
    for i, (x, y) in enumerate(loader):
        loss = step(x, y)
        loss_sum += float(loss) * len(x)
        loss_n += len(x)
        if progress is not None and dist.main:
            progress(i + 1, len(loader))

    cm, cells, val_loss_sum, val_n = _validate(
        step.judged,
        plan.entries,
        plan.val_plan[dist.rank :: dist.world],
        cfg,
        meta,
        plan.device,
        plan.n_out,
        plan.binary,
        step.use_amp,
    )
    train_loss = torch.tensor([loss_sum, loss_n], dtype=torch.float64)
    if dist.active:
        stats = torch.tensor([val_loss_sum, val_n], dtype=torch.float64)
        all_reduce(dist, cm, cells, stats, train_loss)
        val_loss_sum, val_n = float(stats[0]), float(stats[1])
    mask_names = plan.mask_names
    per_class = scores_from_confusion(cm.numpy(), mask_names)
    fg_scores = [per_class[n] for n in plan.foreground]
    iou = nanmean([s["iou"] for s in fg_scores])
    iou_se = mean_se(iou_standard_error(cells)[[mask_names.index(n) for n in plan.foreground]])
    record = {
        "epoch": epoch + 1,
        "train_loss": round(float(train_loss[0]) / max(float(train_loss[1]), 1), 6),
        "val_loss": round(val_loss_sum / max(val_n, 1), 6),
        "val_iou": round(iou, 6) if not math.isnan(iou) else None,
        "val_iou_se": rounded(iou_se),
        "val_f1": rounded(nanmean([s["f1"] for s in fg_scores])),
        "val_precision": rounded(nanmean([s["precision"] for s in fg_scores])),
        "val_recall": rounded(nanmean([s["recall"] for s in fg_scores])),
        "per_class": {k: {m: rounded(v) for m, v in s.items()} for k, s in per_class.items()},
        "lr": step.optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - t_epoch, 2),
        "split": plan.split.description,
    }
    return EpochResult(record, iou, iou_se)
