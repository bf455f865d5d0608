"""The plan of a training run: labels, images, split, pixel size, normalization and the network.

:func:`plan_training` does everything a run decides before its first step, in this order: load
the ``init`` model, read the labels, open the images, split them spatially, choose the model's
pixel size, fit the normalization, describe the model (:class:`geounet.network.contract.ModelMeta`)
and build its network (seeded, its output bias at :data:`FOREGROUND_PRIOR`). The result, a
:class:`TrainPlan`, is all that the step, the epoch and the finish read.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geounet.errors import BandMismatchError, CheckpointError, GeounetError
from geounet.geodata.normalize import any_dtype, image_stretch, with_typical
from geounet.geodata.raster import (
    band_names,
    expand_rasters,
    open_scene,
    pixel_size_m,
    resolve_bands,
)
from geounet.geodata.tiling import check_tile_size
from geounet.labels.sets import LabelSet, read_label_sources
from geounet.labels.spec import LabelSpec
from geounet.network.checkpoint import build_model, load_model
from geounet.network.contract import CLASS_GEOMETRIES, DEFAULT_COLOURS, ModelMeta
from geounet.network.unet import UNet, add_core_channel, drop_core_channel, resolve_device
from geounet.training.config import TrainConfig
from geounet.training.dataset import (
    Augment,
    ImageEntry,
    Sample,
    SpatialSplit,
    check_labels_hit,
    fit_normalization,
    set_stretch,
)
from geounet.training.distributed import Dist

logger = logging.getLogger(__name__)


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


@dataclass
class TrainPlan:
    """What a run decided before its first step (see :func:`plan_training`)."""

    #: Where the network runs (this rank's GPU under ``torchrun``).
    device: torch.device
    #: Processes of the run (1 without ``torchrun``).
    world: int
    labels: LabelSet
    #: Foreground class names, in label order.
    class_names: list[str]
    binary: bool
    #: Inset of the core channel in metres (0: no core channel).
    core_m: float
    #: Output channels of the network (classes, plus the core channel).
    n_out: int
    train_paths: list[str]
    val_paths: list[str]
    #: One entry per image (training images first, then validation-only ones).
    entries: list[ImageEntry]
    split: SpatialSplit
    #: The validation windows (all ranks' share).
    val_plan: list[Sample]
    #: The model's pixel size in metres (None: images without one).
    gsd: float | None
    separation_m: float
    augment: Augment
    meta: ModelMeta
    #: The network, on ``device``, seeded and initialized.
    net: nn.Module
    #: Training windows per epoch (all ranks together).
    samples: int
    steps_per_epoch: int
    total_steps: int

    @property
    def mask_names(self) -> list[str]:
        """Names of the label values: background, then the classes."""
        return ["background", *self.class_names]

    @property
    def foreground(self) -> list[str]:
        """The classes whose figures make an epoch's score."""
        return self.mask_names[1:] if not self.binary else self.class_names


@dataclass
class _Images:
    train_paths: list[str]
    val_paths: list[str]
    #: Training paths, then validation-only ones: the order of ``entries``.
    paths: list[str]
    entries: list[ImageEntry]
    #: Each image's data type.
    dtypes: list[str]
    #: Bands the network takes (None: no image opened).
    bands: int | None


def plan_training(cfg: TrainConfig, dist: Dist, info: Callable[[str], None]) -> TrainPlan:
    """Read, check and decide everything that comes before the first step of ``cfg``'s run.

    ``info`` receives the lines a user sees about the run's decisions (split, data types,
    pixel size). The network is built after ``torch.manual_seed(cfg.seed)``.

    Raises:
        GeounetError: Bad images, labels, model files or options.
    """
    device = resolve_device(cfg.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)

    init_net: UNet | None = None
    init_meta: ModelMeta | None = None
    if cfg.init:
        init_net, init_meta = load_model(cfg.init)

    labels = _read_labels(cfg)
    class_names = list(labels.class_names)
    binary = labels.binary
    if (
        init_meta is not None
        and binary
        and cfg.class_field is None
        and not cfg.classes
        and len(init_meta.classes) == 1
        and class_names != list(init_meta.classes)
    ):  # fine-tuning a one-class model on labels without a class field keeps its class's name
        class_names = list(init_meta.classes)
    core_m = _core_width(cfg, init_meta, binary, len(class_names))
    n_classes_out = 1 if binary else len(class_names) + 1
    n_out = n_classes_out + (1 if core_m > 0 else 0)
    if cfg.core_only and (core_m <= 0 or not cfg.init):
        raise GeounetError(
            "--core-only trains the core channel of an --init model: give --init and --core (or an --init model with a core)"
        )
    mask_names = ["background", *class_names]

    images = _open_images(cfg, labels, init_meta)
    entries = images.entries
    depth = init_meta.depth if init_meta else cfg.depth
    check_tile_size(cfg.tile_size, 0, multiple=2**depth)
    val_idx = [images.paths.index(p) for p in images.val_paths]
    gsd = init_meta.gsd if init_meta and init_meta.gsd else cfg.gsd
    if init_meta and init_meta.gsd and cfg.gsd and abs(cfg.gsd - init_meta.gsd) > 1e-9:
        logger.warning(
            "--gsd %g is ignored: fine-tuning keeps the --init model's pixel size, %g m",
            cfg.gsd,
            init_meta.gsd,
        )
    gsd = _target_gsd(entries, gsd, exclude=val_idx)
    split = SpatialSplit(
        entries,
        tile_size=cfg.tile_size,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        val_images=val_idx,
    )
    val_plan = split.val_windows(cfg.max_val_windows, cfg.seed)
    info(split.description)
    kinds = sorted(set(images.dtypes) | ({str(np.dtype(init_meta.dtype))} if init_meta else set()))
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
        init_net = _fit_init(cfg, init_net, init_meta, n_classes_out, n_out, len(class_names))
    norm, mean, std = _normalization(cfg, entries, init_meta)
    augment = cfg.augment
    if not norm and augment.photometric:  # raw-unit models (older files): no stretch to jitter in
        augment = Augment(flips=augment.flips, scale=augment.scale, colour=False, noise=False)

    meta = ModelMeta(
        architecture="unet",
        arch_args={**init_meta.arch_args, "classes": n_out}
        if init_meta
        else {
            "in_channels": images.bands or 1,
            "classes": n_out,
            "width": cfg.width,
            "depth": cfg.depth,
        },
        band_names=list(init_meta.band_names) if init_meta else _band_names(entries),
        dtype=Counter(images.dtypes).most_common(1)[0][0],
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
        # Module.to takes memory_format; torch's stubs omit it
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    train_area_tiles = (
        sum((e.scene.width * e.scene.height) / e.scale**2 for e in entries if not e.all_val)
        / cfg.tile_size**2
    )
    samples = (
        math.ceil((cfg.samples_per_epoch or default_samples(train_area_tiles)) / dist.world)
        * dist.world
    )
    steps_per_epoch = math.ceil(samples / dist.world / cfg.batch_size)
    return TrainPlan(
        device=device,
        world=dist.world,
        labels=labels,
        class_names=class_names,
        binary=binary,
        core_m=core_m,
        n_out=n_out,
        train_paths=images.train_paths,
        val_paths=images.val_paths,
        entries=entries,
        split=split,
        val_plan=val_plan,
        gsd=gsd,
        separation_m=separation_m,
        augment=augment,
        meta=meta,
        net=net,
        samples=samples,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs,
    )


def _read_labels(cfg: TrainConfig) -> LabelSet:
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
    return labels


def _core_width(
    cfg: TrainConfig, init_meta: ModelMeta | None, binary: bool, n_classes: int
) -> float:
    """The core channel's inset in metres: ``cfg.core_m``, else the ``init`` model's, else 0."""
    core_m = cfg.core_m if cfg.core_m is not None else (init_meta.core_m if init_meta else 0.0)
    if core_m < 0:
        raise GeounetError(f"core {core_m} m: use 0 (no core channel) or a positive width")
    if core_m > 0 and not binary:
        source = "" if cfg.core_m is not None else f", from {Path(cfg.init or '').name}"
        raise GeounetError(
            f"a core channel (--core {core_m:g}{source}) needs one foreground class; the labels have "
            f"{n_classes} (--core 0 for none)"
        )
    return core_m


def _open_images(cfg: TrainConfig, labels: LabelSet, init_meta: ModelMeta | None) -> _Images:
    """Open the training and validation images, choose their bands and check their data types
    and labels."""
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
    labels.check([e.scene for e in entries])
    check_labels_hit(entries, labels)
    return _Images(train_paths, val_paths, paths, entries, dtypes, expected_bands)


def _fit_init(
    cfg: TrainConfig,
    init_net: UNet | None,
    init_meta: ModelMeta,
    n_classes_out: int,
    n_out: int,
    n_classes: int,
) -> UNet | None:
    """Check that the ``init`` model predicts the labels' classes; add or drop its core channel
    to match this run's."""
    if init_meta.class_channels != n_classes_out:
        raise CheckpointError(
            f"{Path(cfg.init or '').name} predicts {init_meta.class_channels} class outputs but the labels "
            f"have {n_classes} class(es); fine-tune with labels of the same classes"
        )
    if init_net is not None and init_meta.outputs != n_out:
        if n_out > n_classes_out:  # a core channel joins a binary model
            init_net = add_core_channel(init_net)
        else:  # the core channel is dropped
            init_net = drop_core_channel(init_net)
    return init_net


def _normalization(
    cfg: TrainConfig, entries: list[ImageEntry], init_meta: ModelMeta | None
) -> tuple[dict[str, Any], list[float], list[float]]:
    """The normalization record, mean and std: the ``init`` model's, or fitted on the training
    images; sets each entry's stretch."""
    if init_meta is not None:
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
    return norm, mean, std
