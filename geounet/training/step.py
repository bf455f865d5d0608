"""One training step: the loss, the learning-rate schedule, the optimizer and the weight average.

:class:`TrainStep` holds what changes from step to step (the optimizer, the global step, the
running average of the weights) and takes one batch through forward, loss, backward and
update. :func:`segmentation_loss`, :func:`lr_at` and :class:`WeightAverage` are its parts.
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from geounet.network.unet import autocast_dtype
from geounet.training.config import Schedule, TrainConfig
from geounet.training.dataset import BORDER_INDEX, CONTACT_INDEX, IGNORE_INDEX
from geounet.training.distributed import Dist


class WeightAverage:
    """Exponential moving average of a network's weights (Polyak averaging), kept beside it.

    The average is what a run validates and saves. On a small dataset the raw weights of one
    step follow the last few batches: on the Atlanta scene the validation IoU of the raw weights
    moved by +-0.05 from one epoch to the next, so the epoch kept as "best" was partly luck. The
    average over the last ``1 / (1 - decay)`` steps (100 at 0.99) moves smoothly and is usually
    better on held-out data. The decay ramps up as ``(1 + step) / (10 + step)`` so that the early
    average does not drag the random start along. BatchNorm's running statistics are averaged
    like the weights; integer buffers (batch counts) are copied.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"weight average decay {decay}: use a value in (0, 1)")
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @staticmethod
    def decay_at(step: int, decay: float) -> float:
        """Decay used after global step ``step`` (0-based): ramps up to ``decay``."""
        return min(decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """Move the average towards ``net``'s current weights (call after each optimizer step)."""
        d = self.decay_at(step, self.decay)
        source = net.state_dict()
        for key, avg in self.net.state_dict().items():
            value = source[key].detach()
            if avg.is_floating_point():
                avg.lerp_(value.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)


def lr_at(step: int, total: int, base: float, schedule: Schedule) -> float:
    """Learning rate at a global step (a pure function, so resuming needs no scheduler state).

    ``onecycle``: linear warm-up from ``base/10`` over the first 10 % of steps, then cosine
    down to ``base/1e4``. ``cosine``: linear warm-up over 5 %, then cosine down to ``base/100``.

    The warm-up is short: with 30 % (PyTorch's OneCycleLR default) a 480-step run of one scene
    spent its first 140 steps at a learning rate too low to learn (loss 1.68 -> 1.30).
    """
    total = max(total, 1)
    warm_frac, start, end = (
        (0.1, base / 10, base / 1e4) if schedule == "onecycle" else (0.05, base / 10, base / 100)
    )
    warm = max(1, int(total * warm_frac))
    if step < warm:
        return start + (base - start) * step / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * t))


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, binary: bool, contact_weight: float = 1.0
) -> torch.Tensor:
    """BCE+Dice (binary, one channel) or CE+Dice (multi-class), ignoring :data:`geounet.training.dataset.IGNORE_INDEX`.

    :data:`~geounet.training.dataset.CONTACT_INDEX` pixels are background whose cross-entropy counts ``contact_weight``
    times (the U-Net paper's separation weight, as a band rather than a decaying map).
    :data:`~geounet.training.dataset.BORDER_INDEX` pixels are foreground; a binary network's second channel, when it
    has one, is scored (BCE+Dice again) against the core, the foreground without them.
    """
    valid = target != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    logits = logits.float()
    contact = target == CONTACT_INDEX
    weight = valid.float()
    if contact.any():
        target = target.masked_fill(contact, 0)
        weight = weight + contact.float() * (contact_weight - 1.0)
    if binary:
        v = valid.float()

        def bce_dice(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            bce = (
                F.binary_cross_entropy_with_logits(x, t, reduction="none") * weight
            ).sum() / v.sum()
            p = torch.sigmoid(x) * v
            inter = (p * t).sum()
            return bce + 1 - (2 * inter + 1) / (p.sum() + (t * v).sum() + 1)

        core = target == 1
        loss = bce_dice(logits[:, 0], (core | (target == BORDER_INDEX)).float())
        if logits.shape[1] == 2:  # the core channel: the foreground without its border
            loss = loss + bce_dice(logits[:, 1], core.float())
        return loss
    ce_px = F.cross_entropy(
        logits,
        target.clamp_max(logits.shape[1] - 1).masked_fill(~valid, IGNORE_INDEX),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    ce = (ce_px * weight).sum() / valid.sum()
    prob = logits.softmax(dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(target.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).float()
    onehot = onehot * valid.unsqueeze(1)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = 1 - ((2 * inter + 1) / (denom + 1))[1:].mean()
    return ce + dice


def _freeze_all_but_core(net: nn.Module) -> None:
    """Only the head's core row learns: every other weight is frozen, and the gradient of the
    head's foreground row is zeroed (with no weight decay, Adam then leaves it exactly as is)."""
    for p in net.parameters():
        p.requires_grad_(False)
    head = cast(nn.Conv2d, net.head)
    keep = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)
    keep[-1] = 1.0
    for w in (head.weight, cast(torch.Tensor, head.bias)):
        w.requires_grad_(True)
        # torch's Tensor.register_hook carries no annotations
        w.register_hook(lambda g, k=keep: g * k.view(-1, *([1] * (g.dim() - 1))))  # type: ignore[no-untyped-call]


def _adamw(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with its fused kernel (torch >= 2.4 on CPU and CUDA), else the multi-tensor one.

    The per-parameter loop of the default CPU AdamW took 8 % of a width-16 training step.
    """
    try:
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)


class TrainStep:
    """The optimizer, the schedule and the weight average of a run: one call, one step.

    Built on the plan's network: with ``core_only`` every weight but the head's core row is
    frozen first. AdamW's weight decay is 0 then, so that the frozen rows stay exactly as
    they are. :meth:`launch` wraps the network for DistributedDataParallel and picks the
    precision; call it once, after a resume has put the saved state back.
    """

    def __init__(
        self,
        net: nn.Module,
        cfg: TrainConfig,
        *,
        device: torch.device,
        binary: bool,
        total_steps: int,
    ) -> None:
        self.net = net
        self.device = device
        self.binary = binary
        self.lr = cfg.lr
        self.schedule: Schedule = cfg.schedule
        self.total_steps = total_steps
        self.contact_weight = cfg.contact_weight
        if cfg.core_only:
            _freeze_all_but_core(net)
        self.optimizer = _adamw(net, cfg.lr, 0.0 if cfg.core_only else cfg.weight_decay)
        self.average = WeightAverage(net, cfg.ema) if cfg.ema > 0 else None
        #: The network the steps run through (DistributedDataParallel's wrapper, once launched).
        self.model: nn.Module = net
        #: Global step: steps taken over all epochs so far.
        self.step = 0
        self.use_amp = False

    def launch(self, dist: Dist, precision: str) -> None:
        """Wrap the network for the ranks of ``dist`` and choose bf16 autocast or fp32.

        Raises:
            ValueError: An unknown precision.
        """
        if dist.active:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dist.local_rank] if self.device.type == "cuda" else None
            )
        self.use_amp = autocast_dtype(self.device, precision) is not None

    @property
    def judged(self) -> nn.Module:
        """The network that validation scores: the weight average, else the trained one."""
        return self.average.net if self.average is not None else self.model

    @property
    def kept(self) -> nn.Module:
        """The weights the model file holds: the weight average, else the raw weights."""
        return self.average.net if self.average is not None else self.net

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on the batch ``x`` (images) and ``y`` (labels); returns its loss (detached)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(self.step, self.total_steps, self.lr, self.schedule)
        device = self.device
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            logits = self.model(x)
        loss = segmentation_loss(logits, y, self.binary, self.contact_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward: no annotations
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.net, self.step)
        self.step += 1
        return loss.detach()
