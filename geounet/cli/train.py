"""``geounet train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geounet.cli.options import BandList, ManyValues, device_opt, overwrite_opt, tile_progress


@click.command(short_help="Train or fine-tune a model from imagery and labels.")
@click.option(
    "--images",
    cls=ManyValues,
    required=True,
    help="Training images (GeoTIFFs): paths, globs, @list files or folders; several may follow "
    "one flag, and the flag repeats.",
)
@click.option(
    "--labels",
    cls=ManyValues,
    required=True,
    help="Labels: vector files GDAL reads (polygons, lines, points; any CRS) or mask rasters of "
    "class ids (0 background, 255 or nodata ignored); paths, globs or folders, several per flag, "
    "repeatable.",
)
@click.option(
    "--val-images",
    cls=ManyValues,
    help="Images used only for validation, instead of a spatial split of --images; use them "
    "when you have a held-out area.",
)
@click.option(
    "--class-field",
    help="Attribute that holds each label feature's class [default: every feature is one "
    "foreground class].",
)
@click.option(
    "--classes",
    help="Comma-separated class names to train, in this order; features of other classes are "
    "left out [default: every value of --class-field].",
)
@click.option(
    "--line-width",
    "line_width_m",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Label lines (e.g. road centerlines) are buffered to this full width in metres; the "
    "model records it for tracing centerlines.",
)
@click.option(
    "--class-geometry",
    "class_geometry",
    multiple=True,
    metavar="CLASS=polygon|line",
    help="What predict writes for CLASS: polygon outlines or line centerlines [default: line for "
    "a class labelled with lines only, else polygon]. Repeatable.",
)
@click.option(
    "--point-radius",
    "point_radius_m",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Label points are buffered to discs of this radius in metres.",
)
@click.option(
    "--bands", type=BandList(), help="1-based image bands to train on [default: all but alpha]."
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=256,
    show_default=True,
    help="Training window size in pixels, a multiple of 2**depth. The model's tile size for "
    "predict is this, at least 256.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Training windows per step; lower it when memory runs short.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Epochs to train; each draws a fresh set of windows (--samples-per-epoch).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=2e-3,
    show_default=True,
    help="Peak learning rate of AdamW; the schedule warms up to it and decays from it.",
)
@click.option(
    "--schedule",
    type=click.Choice(["onecycle", "cosine"]),
    default="onecycle",
    show_default=True,
    help="Learning-rate schedule: onecycle warms up from lr/10 over the first 10 % of the steps, "
    "then decays to lr/10000; cosine warms up over 5 % and decays to lr/100.",
)
@click.option(
    "--width",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Channels of the U-Net's first level (each level down doubles them); compute grows "
    "with its square. Ignored with --init.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1, max=8),
    default=4,
    show_default=True,
    help="Down and up steps of the U-Net; tile sizes must be multiples of 2**depth. Ignored "
    "with --init.",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path),
    help="Fine-tune this model (a file or a bundled name, e.g. buildings) instead of starting "
    "from random weights; its architecture carries over.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of the training area held out for validation when --val-images is not given "
    "(whole images, blocks of tiles or an edge band, whichever the data allows).",
)
@click.option(
    "--samples-per-epoch",
    type=click.IntRange(min=1),
    help="Training windows per epoch [default: four times the training area in tiles, between "
    "512 and 2,000].",
)
@click.option(
    "--positive-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of training windows centred on a labelled feature; the others are drawn anywhere.",
)
@click.option(
    "--augment",
    default="flip,scale,colour,noise",
    show_default=True,
    help="Augmentations, comma-separated: flip (the 8 rotations and mirrors), scale (pixel-size "
    "jitter), colour, noise (blur or noise); none turns them off.",
)
@click.option(
    "--scale-jitter",
    type=click.FloatRange(min=1),
    default=1.25,
    show_default=True,
    help="Scale augmentation: each window's pixel size is drawn within [gsd/a, gsd*a].",
)
@click.option(
    "--gsd",
    type=click.FloatRange(min=0, min_open=True),
    help="The model's ground pixel size in metres: training images at other sizes are "
    "resampled to it, and so are scenes in predict [default: the images' median].",
)
@click.option(
    "--normalization",
    type=click.Choice(["scene", "dataset"]),
    default="scene",
    show_default=True,
    help="scene: stretch each image by its own 2nd-98th percentiles, which carries over to other "
    "sensors and exposures; dataset: one fixed stretch from the training set, for values with an "
    "absolute meaning (indices, reflectance, elevation).",
)
@click.option(
    "--separation",
    "separation_m",
    type=click.FloatRange(min=0),
    help="Weigh background pixels within this many metres of two label objects (the gap "
    "between neighbouring buildings) by --contact-weight, so that neighbours come out apart; 0 "
    "turns it off [default: 1 for one foreground class, 0 for several].",
)
@click.option(
    "--contact-weight",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Loss weight of the background pixels that --separation marks.",
)
@click.option(
    "--core",
    "core_m",
    type=click.FloatRange(min=0),
    help="One foreground class: also learn each object's core (its footprint shrunk by this many "
    "metres); predict then parts touching objects between their cores. 0: no core channel "
    "[default: the --init model's, else 0].",
)
@click.option(
    "--core-only",
    is_flag=True,
    help="With --init: train the core channel alone; the rest of the network, and so its mask, "
    "stays as it is.",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.99,
    show_default=True,
    help="Validate and save a running average of the weights with this decay (about the last "
    "1/(1-decay) steps), steadier than one step's weights; 0 saves the raw weights.",
)
@click.option(
    "--keep",
    type=click.Choice(["auto", "best", "last"]),
    default="auto",
    show_default=True,
    help="Which epoch the model file holds. auto: the latest whose validation IoU is within one "
    "standard error of the best; best: the highest validation IoU; last: the end of the "
    "schedule.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="Arithmetic of the forward and backward passes: fp32, or bf16 autocast. auto uses bf16 "
    "on CUDA and on CPUs with native bf16, float32 elsewhere; loss and optimizer stay float32.",
)
@click.option(
    "--plot/--no-plot",
    default=True,
    show_default=True,
    help="Redraw MODEL.metrics.png, the training curves, after each epoch.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the initial weights, the validation split, the windows and the augmentation.",
)
@device_opt
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Processes that read training windows (PyTorch DataLoader workers); 0 reads them in "
    "the main process.",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to write (.safetensors); MODEL.metrics.jsonl, MODEL.metrics.png and "
    "MODEL.resume.safetensors go beside it.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue an interrupted run from its MODEL.resume.safetensors, with the same options.",
)
@overwrite_opt
@click.pass_context
def train(ctx: click.Context, /, out: Path, **opts: Any) -> None:
    """\b
        geounet train --images tiles/*.tif --labels houses.gpkg -o m.safetensors
        geounet train --images tiles/*.tif --labels roads.shp -o roads.safetensors

    Train a U-Net, or fine-tune one (--init), from GeoTIFFs and vector or mask labels, with a
    spatially separated validation set. Each epoch prints loss and validation IoU and F1.

    Docs: docs/tutorials/fine-tune.md, docs/tutorials/roads.md and docs/reference/cli.md
    (build the site from the source tree with mkdocs serve).
    """
    from geounet.training.config import TrainConfig
    from geounet.training.dataset import Augment
    from geounet.training.train import train_model

    classes = opts.pop("classes")
    geometry: dict[str, str] = {}
    for item in opts.pop("class_geometry") or ():
        name, sep, kind = str(item).partition("=")
        if not sep or not name.strip() or kind.strip() not in ("polygon", "line"):
            raise click.BadParameter(
                f"{item!r}: give CLASS=polygon or CLASS=line", param_hint="--class-geometry"
            )
        geometry[name.strip()] = kind.strip()
    augment = Augment.parse(str(opts.pop("augment")), scale=float(opts.pop("scale_jitter")))
    init, resume = opts.pop("init"), opts.pop("resume")
    cfg = TrainConfig(
        out=str(out),
        classes=[c.strip() for c in str(classes).split(",") if c.strip()] if classes else None,
        images=list(opts.pop("images")),
        val_images=list(opts.pop("val_images")),
        labels=list(opts.pop("labels")),
        augment=augment,
        class_geometry=geometry or None,
        init=str(init) if init else None,
        resume=str(resume) if resume else None,
        **opts,
    )
    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    state = {"epoch": 0}
    update, close = tile_progress(ctx, "epoch", unit="batch")

    def on_epoch(record: dict[str, object]) -> None:
        nonlocal update, close
        close()
        state["epoch"] = int(record["epoch"])  # type: ignore[call-overload]
        if not quiet:
            click.echo(
                f"epoch {record['epoch']}/{cfg.epochs}: loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
                f"val IoU {_f(record['val_iou'])}{_pm(record.get('val_iou_se'))}, F1 {_f(record['val_f1'])} ({record['seconds']:.0f} s)",
                err=True,
            )
        update, close = tile_progress(ctx, f"epoch {state['epoch'] + 1}", unit="batch")

    def on_info(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    try:
        result = train_model(
            cfg, progress=lambda d, t: update(d, t), on_epoch=on_epoch, on_info=on_info
        )
    finally:
        close()
    click.echo(str(result.model))
    best = (
        result.history[result.best_epoch - 1]
        if 0 < result.best_epoch <= len(result.history)
        else {}
    )
    why = {
        "auto": ": within one standard error of the best",
        "last": ": the end of the schedule",
    }.get(cfg.keep, "")
    kept = (
        f"kept epoch {result.kept_epoch} (--keep {cfg.keep}{why}); "
        if result.kept_epoch != result.best_epoch
        else ""
    )
    click.echo(
        f"{kept}best epoch {result.best_epoch}: val IoU {_f(result.best_iou)}{_pm(best.get('val_iou_se'))}; metrics in {result.metrics_file}",
        err=True,
    )


def _pm(se: object) -> str:
    return "" if se is None else f" ± {float(se):.3f}"  # type: ignore[arg-type]


def _f(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"  # type: ignore[arg-type]
