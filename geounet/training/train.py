"""Train a U-Net from imagery plus vector labels.

``train_model(TrainConfig(...))`` reads the labels once, reprojects them to each image's CRS,
splits the images spatially (see :mod:`geounet.training.dataset`), computes per-band normalization from
the training images, and trains with AdamW, a one-cycle or cosine schedule, BCE+Dice (binary) or
CE+Dice (multi-class), flips and 90-degree rotations, and bf16 autocast on CUDA. After each epoch
it validates (IoU, F1, precision, recall), appends a line to ``MODEL.metrics.jsonl``, keeps the
best model by validation IoU (or the last, ``keep``) in ``MODEL.safetensors`` and writes ``MODEL.resume.safetensors``
(weights, optimizer state, epoch; safetensors + JSON, never a pickle) so ``resume`` continues
exactly where an interrupted run stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel (NCCL on CUDA,
gloo on CPU); each rank takes its share of every epoch's windows and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from geounet import __version__
from geounet.errors import BandMismatchError, CheckpointError, GeounetError, OutputExistsError
from geounet.geodata.normalize import any_dtype, image_stretch, with_typical
from geounet.geodata.raster import (
    AtomicOutputs,
    band_names,
    expand_rasters,
    open_scene,
    pixel_size_m,
    resolve_bands,
)
from geounet.geodata.tiling import check_tile_size
from geounet.labels.sets import read_label_sources
from geounet.labels.spec import LabelSpec
from geounet.network.checkpoint import build_model, load_model, save_model
from geounet.network.contract import CLASS_GEOMETRIES, DEFAULT_COLOURS, ModelMeta
from geounet.network.unet import add_core_channel, autocast_dtype, drop_core_channel
from geounet.network.unet import resolve_device
from geounet.training.dataset import (
    BORDER_INDEX,
    CONTACT_INDEX,
    IGNORE_INDEX,
    Augment,
    ImageEntry,
    SpatialSplit,
    WindowDataset,
    check_labels_hit,
    fit_normalization,
    plan_epoch,
    set_stretch,
)

logger = logging.getLogger(__name__)

Schedule = Literal["onecycle", "cosine"]
RESUME_KEY = "geounet_resume"


@dataclass
class TrainConfig:
    """Options of a training run (the CLI flags mirror these).

    Attributes:
        images: Raster paths, globs or folders (folders contribute their GeoTIFFs).
        labels: Label sources: vector files, mask rasters, globs or folders (one string is one
            source); see :func:`geounet.labels.labels.read_label_sources`.
        out: Model file to write (the best epoch by validation IoU, or the last: ``keep``).
        val_images: Images used wholly for validation (disables block splitting).
        class_field: Attribute naming each feature's class (None: binary task).
        classes: Class names to use, in order (None: every value found).
        line_width_m: Lines are buffered to this full width in metres.
        class_geometry: Overrides of each class's geometry (``{"road": "line"}``); a class
            labelled with lines only is a line class without it (see :class:`ModelMeta`).
        point_radius_m: Points are buffered to this radius in metres.
        bands: 1-based bands to use (None: all but alpha).
        tile_size: Training window size in pixels.
        batch_size: Windows per step.
        epochs: Epochs to train.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        width: U-Net first-level channels (ignored with ``init``).
        depth: U-Net depth (ignored with ``init``).
        init: Fine-tune from this model file.
        val_fraction: Share of blocks used for validation.
        seed: Seed of weights, split, sampling and augmentation.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: DataLoader worker processes.
        samples_per_epoch: Training windows per epoch (None: four times the training area in
            tiles, between 512 and 2000; see :func:`default_samples`).
        positive_fraction: Share of windows centred on labelled features.
        schedule: Learning-rate schedule.
        resume: Resume checkpoint (``MODEL.resume.safetensors``) of an interrupted run.
        overwrite: Replace an existing model file.
        max_val_windows: Cap on validation windows.
        normalization: ``scene`` (each image's own 2-98 percentile stretch) or ``dataset``
            (the training set's); see :mod:`geounet.geodata.normalize`.
        augment: Training augmentations (:class:`geounet.training.dataset.Augment`).
        gsd: Ground pixel size (metres) the model works at; windows of other images are
            resampled to it (None: the median of the training images').
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32),
            ``fp32`` or ``bf16``. The loss and the optimizer are float32 either way.
        plot: Write ``MODEL.metrics.png`` (loss, IoU and F1 per epoch) after each epoch.
        separation_m: Background pixels within this distance (metres) of two different label
            objects are weighed ``contact_weight`` times in the loss, so that the model keeps
            the gaps between close buildings and they vectorize as separate polygons; 0 = off.
            Objects are polygon features (or the separate parts of a mask). None: 1 m for one
            foreground class (buildings), 0 for several (land cover tiles the ground: no
            background seam belongs between its polygons).
        contact_weight: Loss weight of those pixels.
        core_m: Binary labels only: give the network a second output, each object's core (its
            footprint shrunk by this many metres, every object on its own; see
            :func:`geounet.training.dataset.mark_borders`), learnt beside the mask. ``predict`` grows the
            objects from the cores, which parts buildings that touch. None: the ``init``
            model's (0 without one: no core channel).
        core_only: Train the core channel alone (the head's core weights): the rest of the
            ``init`` network, BatchNorm statistics included, stays as it is, so its mask and
            pixel figures do not change, and a step costs little more than a forward pass.
        ema: Decay of the running average of the weights (Polyak averaging) that is validated
            and saved; 0 = the raw weights. See :class:`WeightAverage`.
        keep: Which epoch's weights ``out`` holds: ``auto`` (the default: the latest epoch
            whose validation IoU is within one standard error of the best so far, see
            :class:`EpochChooser`), ``best`` (the highest validation IoU) or ``last`` (the end
            of the schedule). With a validation area of a few objects the highest IoU is a
            noisy pick, often an early epoch that fits the data less well.
    """

    images: Sequence[str]
    labels: Sequence[str] | str
    out: str
    val_images: Sequence[str] = ()
    class_field: str | None = None
    classes: Sequence[str] | None = None
    line_width_m: float = 4.0
    class_geometry: dict[str, str] | None = None
    point_radius_m: float = 2.0
    bands: Sequence[int] | None = None
    tile_size: int = 256
    batch_size: int = 8
    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 32
    depth: int = 4
    init: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    samples_per_epoch: int | None = None
    positive_fraction: float = 0.5
    schedule: Schedule = "onecycle"
    resume: str | None = None
    overwrite: bool = False
    max_val_windows: int = 256
    normalization: str = "scene"
    augment: Augment = field(default_factory=Augment)
    gsd: float | None = None
    precision: str = "auto"
    plot: bool = True
    separation_m: float | None = None
    contact_weight: float = 10.0
    core_m: float | None = None
    core_only: bool = False
    ema: float = 0.99
    keep: str = "auto"


KEEP_CHOICES = ("auto", "best", "last")
#: Validation IoU's standard error is estimated over cells of about this many pixels a side.
SE_CELL = 128


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
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
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


@dataclass
class TrainResult:
    """What a run produced."""

    model: Path
    metrics_file: Path
    resume_file: Path
    best_epoch: int
    best_iou: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    kept_epoch: int = 0


#: progress(done, total) within an epoch; on_epoch(record) after each epoch; on_info(line) for
#: what the run decided (split, pixel size, precision).
Progress = Callable[[int, int], None]
EpochCallback = Callable[[dict[str, Any]], None]
InfoCallback = Callable[[str], None]


def resolve_class_geometry(
    found: dict[str, str], overrides: dict[str, str] | None
) -> dict[str, str]:
    """Each class's geometry: from its labels (``found``), with ``overrides`` (``--class-geometry``)
    winning; only line classes are listed (a class not listed is a polygon class).

    Raises:
        GeounetError: An override naming no class, or a geometry other than polygon/line.
    """
    out = dict(found)
    for name, kind in (overrides or {}).items():
        if name not in out:
            raise GeounetError(
                f"--class-geometry names {name!r}, which is not a class of the labels ({', '.join(out)})"
            )
        if kind not in CLASS_GEOMETRIES:
            raise GeounetError(f"--class-geometry {name}={kind}: use polygon or line")
        out[name] = kind
    return {k: v for k, v in out.items() if v == "line"}


def _band_names(entries: list[ImageEntry]) -> list[str]:
    """A new model's band names: the training images' colour interpretations where they all
    agree (``red``, ``green``, ``blue``: prediction then finds those bands by colour), else by
    the first image's band indexes."""
    names = [band_names(e.scene, e.bands) for e in entries]
    return names[0] if all(n == names[0] for n in names) else [f"band{b}" for b in entries[0].bands]


def default_samples(train_area_tiles: float, world: int = 1) -> int:
    """Training windows per epoch: four times the training area in tiles, 512 to 2000.

    The floor of 512 windows (64 steps of 8) makes an epoch of a small scene long enough to
    learn from. With the area rule alone, one 900 x 900 scene had 8 steps an epoch, 120 in 15
    epochs, too few for a U-Net to fit it; with a floor of 256 its 15 epochs fitted the scene to
    IoU 0.59, with 512 to 0.70-0.73 (benchmarks/atlanta.py). Windows are drawn anew each epoch
    (random positions, transforms and jitter), so repeated windows are not repeated samples.
    """
    samples = int(min(2000, max(512, 4 * train_area_tiles)))
    return math.ceil(samples / world) * world


#: Share of foreground pixels a fresh network's output starts at (:func:`prior_bias`).
FOREGROUND_PRIOR = 0.1


def prior_bias(net: nn.Module, prior: float) -> nn.Module:
    """Start a fresh network's output at a foreground probability of ``prior`` (in place).

    The head's bias is set so that sigmoid (binary) or softmax (classes) gives ``prior`` to the
    foreground before any training, instead of 0.5: the first steps then learn where objects
    are rather than unlearning a half-foreground guess (the focal-loss paper's prior init).
    """
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Conv2d) or head.bias is None:
        return net
    with torch.no_grad():
        k = head.out_channels
        if k == 1:
            head.bias.fill_(math.log(prior / (1 - prior)))
        else:
            head.bias.zero_()
            head.bias[0] = math.log((1 - prior) * (k - 1) / prior)
    return net


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
    """BCE+Dice (binary, one channel) or CE+Dice (multi-class), ignoring :data:`IGNORE_INDEX`.

    :data:`CONTACT_INDEX` pixels are background whose cross-entropy counts ``contact_weight``
    times (the U-Net paper's separation weight, as a band rather than a decaying map).
    :data:`BORDER_INDEX` pixels are foreground; a binary network's second channel, when it
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


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: Whether this run started the process group (and so ends it).
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return _Dist(rank, world, local, owned)


def _save_resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    average: nn.Module | None = None,
) -> None:
    module = getattr(model, "module", model)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if average is not None:
        tensors.update(
            {f"ema/{k}": v.detach().cpu().contiguous() for k, v in average.state_dict().items()}
        )
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim/{pid}/{key}"] = t.detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in opt["param_groups"]
    ]
    meta = {**state, "param_groups": groups}
    with AtomicOutputs() as outputs:
        save_file(
            tensors,
            str(outputs.reserve(path, overwrite=True)),
            metadata={RESUME_KEY: json.dumps(meta)},
        )


def _load_resume(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Raw weights, optimizer state and run state; the weight average is in ``state["ema_weights"]``
    (None when the run kept none)."""
    if not path.exists():
        raise CheckpointError(
            f"{path}: resume checkpoint not found; it is written as MODEL.resume.safetensors after each epoch"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(RESUME_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(
            f"{path.name} is not a geounet resume checkpoint ({str(exc).splitlines()[0][:120]})"
        ) from exc
    if raw is None:
        raise CheckpointError(
            f"{path.name} is not a geounet resume checkpoint (no {RESUME_KEY} metadata)"
        )
    state = json.loads(raw)
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    state["ema_weights"] = {
        k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")
    } or None
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, pid, key = k.split("/", 2)
            optim.setdefault(pid, {})[key] = v
    return model_state, optim, state


def _freeze_all_but_core(net: nn.Module) -> None:
    """Only the head's core row learns: every other weight is frozen, and the gradient of the
    head's foreground row is zeroed (with no weight decay, Adam then leaves it exactly as is)."""
    for p in net.parameters():
        p.requires_grad_(False)
    head = net.head  # type: ignore[union-attr]
    keep = torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)
    keep[-1] = 1.0
    for p in (head.weight, head.bias):
        p.requires_grad_(True)
        p.register_hook(lambda g, k=keep: g * k.view(-1, *([1] * (g.dim() - 1))))


def _adamw(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with its fused kernel (torch >= 2.4 on CPU and CUDA), else the multi-tensor one.

    The per-parameter loop of the default CPU AdamW took 8 % of a width-16 training step.
    """
    try:
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)


def _resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.safetensors")


def _metrics_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.jsonl")


def _plot_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.png")


def plot_history(history: Sequence[dict[str, Any]], path: Path, kept: int = 0) -> bool:
    """Draw the training curves (loss; validation IoU with its standard error, F1, precision,
    recall; a line at the ``kept`` epoch) to a PNG.

    Written atomically. Needs matplotlib (a dependency of geounet); returns False and writes
    nothing when it cannot be imported.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib not installed: no %s", path.name)
        return False
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in history], dtype=float)

    for key, style in (
        ("val_iou", "o-"),
        ("val_f1", "s-"),
        ("val_precision", ":"),
        ("val_recall", "--"),
    ):
        (line,) = ax2.plot(epochs, series(key), style, label=key[4:])
        se = series("val_iou_se")
        if key == "val_iou" and np.isfinite(se).any():
            iou = series(key)
            ax2.fill_between(
                epochs,
                iou - se,
                iou + se,
                color=line.get_color(),
                alpha=0.2,
                lw=0,
                label="iou ± 1 s.e.",
            )
    if kept:
        ax2.axvline(kept, color="0.35", ls="-.", lw=1, label=f"kept: epoch {kept}")
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation (foreground)")
    ax2.legend(loc="best", fontsize="small", framealpha=0.6)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    with AtomicOutputs() as outputs:
        fig.savefig(outputs.reserve(path, overwrite=True), format="png")
    return True


def _set_contact_px(
    entries: Sequence[ImageEntry], separation_m: float, core_m: float = 0.0
) -> None:
    """Each entry's separation distance and core inset in its own pixels (at least 1 when on)."""
    for e in entries:
        g = pixel_size_m(e.scene)
        e.contact_px = max(1, round(separation_m / g)) if separation_m > 0 and g else 0
        e.core_px = max(1, round(core_m / g)) if core_m > 0 and g else 0


def _target_gsd(
    entries: Sequence[ImageEntry], wanted: float | None, exclude: Sequence[int] = ()
) -> float | None:
    """The model's pixel size: ``wanted``, or the median of the training images' (those not in
    ``exclude``); sets each entry's ``scale`` (source pixels per model pixel)."""
    sizes = [pixel_size_m(e.scene) for e in entries]
    known = [g for i, g in enumerate(sizes) if g and i not in exclude]
    target = wanted if wanted else (float(np.median(known)) if known else None)
    for e, g in zip(entries, sizes, strict=True):
        e.scale = target / g if target and g else 1.0
        # Within 2 % of the model's pixel size: read as is (no needless resampling).
        if abs(e.scale - 1) < 0.02:
            e.scale = 1.0
    return round(target, 4) if target else None


def train_model(
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    on_epoch: EpochCallback | None = None,
    on_info: InfoCallback | None = None,
) -> TrainResult:
    """Train (or fine-tune, or resume) a model. See :class:`TrainConfig`.

    Raises:
        GeounetError: Bad images, labels, model files or options; nothing half-written is left.
    """
    t_start = time.perf_counter()
    dist = _init_distributed(cfg.device)
    out = Path(cfg.out)
    resume_file = _resume_path(out)
    metrics_file = _metrics_path(out)
    if cfg.keep not in KEEP_CHOICES:
        raise GeounetError(f"keep={cfg.keep!r}: use auto, best or last")
    if out.exists() and not (cfg.overwrite or cfg.resume):
        raise OutputExistsError(
            f"{out} exists; pass --overwrite to replace it (or --resume to continue)"
        )
    if dist.main:  # fail early on an unwritable directory (only the writing rank checks)
        probe = AtomicOutputs()
        probe.reserve(out, overwrite=True)
        probe.cleanup()

    device = resolve_device(cfg.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)

    init_net = init_meta = None
    if cfg.init:
        init_net, init_meta = load_model(cfg.init)

    spec = LabelSpec(
        class_field=cfg.class_field,
        classes=tuple(cfg.classes) if cfg.classes else None,
        line_width_m=cfg.line_width_m,
        point_radius_m=cfg.point_radius_m,
    )
    labels = read_label_sources(
        [cfg.labels] if isinstance(cfg.labels, str) else list(cfg.labels), spec
    )
    logger.info("labels: %s", labels.describe())
    class_names = list(labels.class_names)
    binary = labels.binary
    core_m = cfg.core_m if cfg.core_m is not None else (init_meta.core_m if init_meta else 0.0)
    if core_m < 0:
        raise GeounetError(f"core {core_m} m: use 0 (no core channel) or a positive width")
    if core_m > 0 and not binary:
        source = "" if cfg.core_m is not None else f", from {Path(cfg.init or '').name}"
        raise GeounetError(
            f"a core channel (--core {core_m:g}{source}) needs one foreground class; the labels have "
            f"{len(class_names)} (--core 0 for none)"
        )
    n_classes_out = 1 if binary else len(class_names) + 1
    n_out = n_classes_out + (1 if core_m > 0 else 0)
    if cfg.core_only and (core_m <= 0 or not cfg.init):
        raise GeounetError(
            "--core-only trains the core channel of an --init model: give --init and --core (or an --init model with a core)"
        )
    mask_names = ["background", *class_names]

    train_paths = expand_rasters(cfg.images, folders=True)
    val_paths = expand_rasters(cfg.val_images, folders=True) if cfg.val_images else []
    paths = train_paths + [p for p in val_paths if p not in train_paths]
    expected_bands = init_meta.bands if init_meta else None
    # As predict takes them (check_dtype): with each scene stretched by its own percentiles, 8-
    # and 16-bit images train together, and a uint8 model fine-tunes on uint16 imagery.
    per_scene = any_dtype(init_meta.normalization if init_meta else {"mode": cfg.normalization})
    entries: list[ImageEntry] = []
    dtypes: list[str] = []
    for p in paths:
        scene = open_scene(p)
        if expected_bands is None:
            chosen = tuple(cfg.bands) if cfg.bands else scene.data_bands
            expected_bands = len(chosen)
        bands = resolve_bands(
            scene, cfg.bands, expected_bands, init_meta.band_names if init_meta else ()
        )
        first = init_meta.dtype if init_meta else dtypes[0] if dtypes else scene.dtype
        if not per_scene and np.dtype(scene.dtype) != np.dtype(first):
            raise BandMismatchError(
                f"{scene.name} is {scene.dtype} but the other images (or --init model) are {first}; "
                f"train on images of one data type (or a model that stretches each scene, --normalization scene)"
            )
        dtypes.append(str(np.dtype(scene.dtype)))
        rl = labels.for_scene(scene)
        entries.append(ImageEntry(scene=scene, bands=bands, labels=rl, val_blocks=[]))
    # The model records the data type it was trained on most (the first image's on a tie).
    dtype = Counter(dtypes).most_common(1)[0][0]
    labels.check([e.scene for e in entries])
    check_labels_hit(entries, labels)

    depth = init_meta.depth if init_meta else cfg.depth
    check_tile_size(cfg.tile_size, 0, multiple=2**depth)
    val_idx = [paths.index(p) for p in val_paths]
    gsd = init_meta.gsd if init_meta and init_meta.gsd else cfg.gsd
    gsd = _target_gsd(entries, gsd, exclude=val_idx)
    split = SpatialSplit(
        entries,
        tile_size=cfg.tile_size,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        val_images=val_idx,
    )
    val_plan = split.val_windows(cfg.max_val_windows, cfg.seed)
    info = on_info if on_info is not None and dist.main else (lambda line: logger.info("%s", line))
    info(split.description)
    kinds = sorted(set(dtypes) | ({str(np.dtype(init_meta.dtype))} if init_meta else set()))
    if len(kinds) > 1:
        info(
            f"data types {' and '.join(kinds)}: each image is stretched by its own percentiles, so they train together"
        )
    resampled = sorted({round(e.scale, 2) for e in entries if e.scale != 1.0})
    separation_m = cfg.separation_m if cfg.separation_m is not None else (1.0 if binary else 0.0)
    _set_contact_px(entries, separation_m, core_m)
    if gsd:
        info(
            f"model pixel size {gsd:g} m"
            + (
                f"; images at other sizes are resampled (x{', x'.join(f'{1 / r:.2f}' for r in resampled)})"
                if resampled
                else ""
            )
        )

    if init_meta is not None:
        if init_meta.class_channels != n_classes_out:
            raise CheckpointError(
                f"{Path(cfg.init or '').name} predicts {init_meta.class_channels} class outputs but the labels "
                f"have {len(class_names)} class(es); fine-tune with labels of the same classes"
            )
        if init_net is not None and init_meta.outputs != n_out:
            if core_m > 0:  # a core channel joins a binary model
                init_net = add_core_channel(init_net)
            else:  # the core channel is dropped
                init_net = drop_core_channel(init_net)
        mean, std, norm = list(init_meta.mean), list(init_meta.std), dict(init_meta.normalization)
        set_stretch(entries, norm)
    else:
        train_entries = [e for e in entries if not e.all_val] or entries
        norm, mean, std = fit_normalization(train_entries, cfg.normalization, 2.0, 98.0)
        set_stretch([e for e in entries if e.all_val], norm)
    if norm.get("mode") == "scene":
        # The stretch of a typical training image (each image's percentiles as predict takes
        # them), for runtimes that cannot stretch each scene (the ONNX export for Deepness).
        fit_on = [e for e in entries if not e.all_val] or entries
        norm = with_typical(
            norm, [image_stretch(e.scene, e.bands, norm["low"], norm["high"]) for e in fit_on]
        )
    augment = cfg.augment
    if not norm and augment.photometric:  # raw-unit models (older files): no stretch to jitter in
        augment = Augment(flips=augment.flips, scale=augment.scale, colour=False, noise=False)

    meta = ModelMeta(
        architecture="unet",
        arch_args={**init_meta.arch_args, "classes": n_out}
        if init_meta
        else {
            "in_channels": expected_bands or 1,
            "classes": n_out,
            "width": cfg.width,
            "depth": cfg.depth,
        },
        band_names=list(init_meta.band_names) if init_meta else _band_names(entries),
        dtype=str(dtype),
        mean=mean,
        std=std,
        classes=class_names if binary else mask_names,
        colours=[
            DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
            for i in range(len(class_names) if binary else len(mask_names))
        ],
        tile_size=max(cfg.tile_size, 256),  # fully convolutional: larger tiles mean fewer seams
        overlap=max(32, cfg.tile_size // 8),
        gsd=gsd,
        normalization=norm,
        class_geometry=resolve_class_geometry(labels.class_geometry(), cfg.class_geometry),
        line_width_m=cfg.line_width_m,
        core_m=core_m,
    )
    if not any(k == "line" for k in meta.class_geometry.values()):
        meta.class_geometry = {}
        meta.line_width_m = None
    meta.validate()

    torch.manual_seed(cfg.seed)
    net = init_net if init_net is not None else prior_bias(build_model(meta), FOREGROUND_PRIOR)
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if cfg.core_only:
        _freeze_all_but_core(net)
    optimizer = _adamw(net, cfg.lr, 0.0 if cfg.core_only else cfg.weight_decay)

    train_area_tiles = (
        sum((e.scene.width * e.scene.height) / e.scale**2 for e in entries if not e.all_val)
        / cfg.tile_size**2
    )
    samples = (
        math.ceil((cfg.samples_per_epoch or default_samples(train_area_tiles)) / dist.world)
        * dist.world
    )
    steps_per_epoch = math.ceil(samples / dist.world / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    config_record = {
        "tile_size": cfg.tile_size,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "samples": samples,
        "world_size": dist.world,
        "augment": augment.names,
        "scale_jitter": augment.scale,
        "gsd": gsd,
        "separation_m": separation_m,
        "contact_weight": cfg.contact_weight,
        "ema": cfg.ema,
        "core_m": core_m,
        "core_only": cfg.core_only,
    }
    start_epoch, step = 0, 0
    chooser = EpochChooser(cfg.keep)
    history: list[dict[str, Any]] = []
    average = WeightAverage(net, cfg.ema) if cfg.ema > 0 else None
    if cfg.resume:
        model_state, optim_state, state = _load_resume(Path(cfg.resume))
        for key, value in config_record.items():
            saved = state.get("config", {}).get(
                key, {"ema": 0.0, "core_m": 0.0, "core_only": False}.get(key)
            )  # files from before these
            if saved != value:
                raise CheckpointError(
                    f"{Path(cfg.resume).name} was trained with {key}={saved}, this run has {value}; "
                    f"resume with the same options"
                )
        try:
            net.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{Path(cfg.resume).name}: weights do not fit this model ({str(exc).splitlines()[0][:120]})"
            ) from exc
        opt_sd = optimizer.state_dict()
        opt_sd["state"] = {int(pid): v for pid, v in optim_state.items()}
        for g, saved in zip(opt_sd["param_groups"], state["param_groups"], strict=True):
            g.update(
                {k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"}
            )
        optimizer.load_state_dict(opt_sd)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        chooser.best_iou, chooser.best_epoch = float(state["best_iou"]), int(state["best_epoch"])
        chooser.best_se = float(state.get("best_se", float("nan")))
        chooser.kept_epoch = int(state.get("kept_epoch", chooser.best_epoch))
        history = list(state["history"])
        meta.mean, meta.std = state["mean"], state["std"]
        meta.normalization = state.get("normalization", meta.normalization)
        if average is not None:  # the config check above guarantees the file has the average
            average.net.load_state_dict(state["ema_weights"], strict=True)

    model: nn.Module = net
    if dist.active:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )

    amp_dtype = autocast_dtype(device, cfg.precision)
    use_amp = amp_dtype is not None
    info(f"precision: {'bf16 autocast' if use_amp else 'fp32'} on {device.type}")
    fg = mask_names[1:] if not binary else class_names
    provenance_base = {
        "images": [str(p) for p in train_paths],
        "val_images": [str(p) for p in val_paths],
        "labels": list(labels.sources),
        "class_field": cfg.class_field,
        "crs": entries[0].scene.crs.to_string(),
        "tile_size": cfg.tile_size,
        "batch_size": cfg.batch_size,
        "samples_per_epoch": samples,
        "lr": cfg.lr,
        "schedule": cfg.schedule,
        "augment": augment.names,
        "scale_jitter": augment.scale,
        "separation_m": separation_m,
        "contact_weight": cfg.contact_weight,
        "core_m": core_m,
        **({"core_only": True} if cfg.core_only else {}),
        "ema": cfg.ema,
        "normalization": cfg.normalization if not cfg.init else "from --init",
        "precision": "bf16" if use_amp else "fp32",
        "split": split.summary(),
        "seed": cfg.seed,
        "init": cfg.init,
        "world_size": dist.world,
        "geounet": __version__,
        "trained": True,
    }

    if dist.main and not cfg.resume and metrics_file.exists():
        metrics_file.unlink()
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        plan = plan_epoch(
            split,
            samples=samples,
            epoch=epoch,
            seed=cfg.seed,
            positive_fraction=cfg.positive_fraction,
            augment=augment,
        )
        shard = plan[dist.rank :: dist.world]
        loader = DataLoader(
            WindowDataset(
                entries,
                shard,
                tile_size=cfg.tile_size,
                mean=meta.mean,
                std=meta.std,
                augment=augment,
            ),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        model.train(not cfg.core_only)  # core only: BatchNorm keeps the init model's statistics
        loss_sum, loss_n = 0.0, 0
        for i, (x, y) in enumerate(loader):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, cfg.lr, cfg.schedule)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = segmentation_loss(logits, y, binary, cfg.contact_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(net, step)
            step += 1
            loss_sum += float(loss.detach()) * len(x)
            loss_n += len(x)
            if progress is not None and dist.main:
                progress(i + 1, len(loader))

        judged = average.net if average is not None else model
        cm, cells, val_loss_sum, val_n = _validate(
            judged,
            entries,
            val_plan[dist.rank :: dist.world],
            cfg,
            meta,
            device,
            n_out,
            binary,
            use_amp,
        )
        train_loss = torch.tensor([loss_sum, loss_n], dtype=torch.float64)
        if dist.active:
            import torch.distributed as tdist

            stats = torch.tensor([val_loss_sum, val_n], dtype=torch.float64)
            for t in (cm, cells, stats, train_loss):
                tdist.all_reduce(t)
            val_loss_sum, val_n = float(stats[0]), float(stats[1])
        per_class = scores_from_confusion(cm.numpy(), mask_names)
        fg_scores = [per_class[n] for n in fg]
        iou = _nanmean([s["iou"] for s in fg_scores])
        iou_se = _mean_se(iou_standard_error(cells)[[mask_names.index(n) for n in fg]])
        record = {
            "epoch": epoch + 1,
            "train_loss": round(float(train_loss[0] / max(train_loss[1], 1)), 6),
            "val_loss": round(val_loss_sum / max(val_n, 1), 6),
            "val_iou": round(iou, 6) if not math.isnan(iou) else None,
            "val_iou_se": _round(iou_se),
            "val_f1": _round(_nanmean([s["f1"] for s in fg_scores])),
            "val_precision": _round(_nanmean([s["precision"] for s in fg_scores])),
            "val_recall": _round(_nanmean([s["recall"] for s in fg_scores])),
            "per_class": {k: {m: _round(v) for m, v in s.items()} for k, s in per_class.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t_epoch, 2),
            "split": split.description,
        }
        history.append(record)
        save = chooser.offer(epoch + 1, iou, iou_se)
        if dist.main:
            if save:
                meta.provenance = {
                    **provenance_base,
                    "epochs": epoch + 1,
                    "epochs_planned": cfg.epochs,
                    "kept": cfg.keep,
                    "best_epoch": chooser.best_epoch,
                    "metrics": {
                        k: v for k, v in record.items() if k.startswith("val_") or k == "train_loss"
                    },
                    "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                with AtomicOutputs() as outputs:
                    save_model(
                        average.net if average is not None else net,
                        meta,
                        outputs.reserve(out, overwrite=True),
                    )
            with metrics_file.open("w") as f:
                for r in history:
                    f.write(json.dumps(r) + "\n")
            if cfg.plot:
                plot_history(history, _plot_path(out), kept=chooser.kept_epoch)
            _save_resume(
                resume_file,
                net,
                optimizer,
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "best_iou": chooser.best_iou,
                    "best_epoch": chooser.best_epoch,
                    "best_se": chooser.best_se,
                    "kept_epoch": chooser.kept_epoch,
                    "history": history,
                    "mean": meta.mean,
                    "normalization": meta.normalization,
                    "std": meta.std,
                    "config": config_record,
                },
                average=average.net if average is not None else None,
            )
        if on_epoch is not None and dist.main:
            on_epoch(record)
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()
        if dist.owned:
            # Ended here, not at interpreter exit: gloo's threads, left running, abort a rank
            # on its way out ("terminate called without an active exception").
            tdist.destroy_process_group()
    return TrainResult(
        model=out,
        metrics_file=metrics_file,
        resume_file=resume_file,
        best_epoch=chooser.best_epoch,
        best_iou=chooser.best_iou,
        history=history,
        seconds=time.perf_counter() - t_start,
        kept_epoch=chooser.kept_epoch,
    )


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values (NaN when none is): classes absent from validation are skipped."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _mean_se(se: np.ndarray) -> float:
    """Standard error of the mean of independent per-class IoUs (the defined ones)."""
    defined = se[~np.isnan(se)]
    return float(np.sqrt((defined**2).sum()) / len(defined)) if len(defined) else float("nan")


def _round(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


@torch.inference_mode()
def _validate(
    model: nn.Module,
    entries: Sequence[ImageEntry],
    plan: Sequence[Any],
    cfg: TrainConfig,
    meta: ModelMeta,
    device: torch.device,
    n_out: int,
    binary: bool,
    use_amp: bool,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Confusion matrix, per-cell IoU sums (:func:`cell_iou_sums`), loss sum and window count."""
    n_classes = 2 if binary else n_out
    cm = torch.zeros((n_classes, n_classes), dtype=torch.int64)
    cells = torch.zeros((n_classes, 6), dtype=torch.float64)
    loss_sum, n = 0.0, 0.0
    if not plan:
        return cm, cells, loss_sum, n
    model.eval()
    loader = DataLoader(
        WindowDataset(entries, plan, tile_size=cfg.tile_size, mean=meta.mean, std=meta.std),
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
