"""The options of a training run (:class:`TrainConfig`) and what it returns (:class:`TrainResult`).

The CLI's ``train`` flags mirror :class:`TrainConfig`; :func:`geounet.training.train.train_model`
takes one and returns a :class:`TrainResult`. The callbacks' types are here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geounet.training.dataset import Augment

Schedule = Literal["onecycle", "cosine"]


@dataclass
class TrainConfig:
    """Options of a training run (the CLI flags mirror these).

    Attributes:
        images: Raster paths, globs or folders (folders contribute their GeoTIFFs).
        labels: Label sources: vector files, mask rasters, globs or folders (one string is one
            source); see `geounet.labels.sets.read_label_sources`.
        out: Model file to write (the best epoch by validation IoU, or the last: ``keep``).
        val_images: Images used wholly for validation (disables block splitting).
        class_field: Attribute naming each feature's class (None: binary task).
        classes: Class names to use, in order (None: every value found).
        line_width_m: Lines are buffered to this full width in metres.
        class_geometry: Overrides of each class's geometry (``{"road": "line"}``); a class
            labelled with lines only is a line class without it (see `geounet.network.contract.ModelMeta`).
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
            tiles, between 512 and 2000; see `geounet.training.plan.default_samples`).
        positive_fraction: Share of windows centred on labelled features.
        schedule: Learning-rate schedule.
        resume: Resume checkpoint (``MODEL.resume.safetensors``) of an interrupted run.
        overwrite: Replace an existing model file.
        max_val_windows: Cap on validation windows.
        normalization: ``scene`` (each image's own 2-98 percentile stretch) or ``dataset``
            (the training set's); see `geounet.geodata.normalize`.
        augment: Training augmentations (`geounet.training.dataset.Augment`).
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
            `geounet.training.dataset.mark_borders`), learnt beside the mask. ``predict`` grows the
            objects from the cores, which parts buildings that touch. None: the ``init``
            model's (0 without one: no core channel).
        core_only: Train the core channel alone (the head's core weights): the rest of the
            ``init`` network, BatchNorm statistics included, stays as it is, so its mask and
            pixel figures do not change, and a step costs little more than a forward pass.
        ema: Decay of the running average of the weights (Polyak averaging) that is validated
            and saved; 0 = the raw weights. See `geounet.training.step.WeightAverage`.
        keep: Which epoch's weights ``out`` holds: ``auto`` (the default: the latest epoch
            whose validation IoU is within one standard error of the best so far, see
            `geounet.training.epoch.EpochChooser`), ``best`` (the highest validation IoU) or ``last`` (the end
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


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: The model file (``.safetensors``), holding the kept epoch's weights.
        metrics_file: ``MODEL.metrics.jsonl``: one JSON record per epoch.
        resume_file: ``MODEL.resume.safetensors``: what ``resume`` needs to continue the run.
        best_epoch: The epoch (from 1) with the highest validation IoU.
        best_iou: That epoch's validation IoU.
        history: Every epoch's record, as ``on_epoch`` receives them (see `train_model`).
        seconds: Wall time of the run.
        kept_epoch: The epoch (from 1) whose weights ``model`` holds, as ``keep`` chose it.
    """

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
