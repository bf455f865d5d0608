"""``geounet train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geounet.cli.options import BandList, ManyValues, device_opt, overwrite_opt, tile_progress


@click.command()
@click.option(
    "--images",
    cls=ManyValues,
    required=True,
    help="Images: paths, globs, @lists or folders; several after one flag, repeatable.",
)
@click.option(
    "--labels",
    cls=ManyValues,
    required=True,
    help="Labels: vector files (.shp, .geojson, .gpkg, .fgb, .parquet) or mask rasters (class ids), globs or folders; several, repeatable.",
)
@click.option(
    "--val-images",
    cls=ManyValues,
    help="Images used only for validation (instead of a split of --images).",
)
@click.option(
    "--class-field", help="Attribute holding each feature's class (default: one foreground class)."
)
@click.option(
    "--classes",
    help="Comma-separated class names to use, in order (default: all values of --class-field).",
)
@click.option(
    "--line-width",
    "line_width_m",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Buffer lines to this width (metres).",
)
@click.option(
    "--class-geometry",
    "class_geometry",
    multiple=True,
    metavar="CLASS=polygon|line",
    help="What predict writes for a class: polygon outlines or line centerlines (default: line for a class labelled with lines only); repeatable.",
)
@click.option(
    "--point-radius",
    "point_radius_m",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Buffer points to this radius (metres).",
)
@click.option("--bands", type=BandList(), help="1-based bands to use (default: all but alpha).")
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=256,
    show_default=True,
    help="Training window size (pixels).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=2e-3,
    show_default=True,
    help="Peak learning rate (AdamW).",
)
@click.option(
    "--schedule", type=click.Choice(["onecycle", "cosine"]), default="onecycle", show_default=True
)
@click.option(
    "--width",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="U-Net first-level channels.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1, max=8),
    default=4,
    show_default=True,
    help="U-Net down/up steps.",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path),
    help="Fine-tune from this model file or bundled model name (e.g. buildings).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of spatial blocks held out for validation.",
)
@click.option(
    "--samples-per-epoch",
    type=click.IntRange(min=1),
    help="Training windows per epoch [default: from the training area].",
)
@click.option(
    "--positive-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of windows centred on labelled features.",
)
@click.option(
    "--augment",
    default="flip,scale,colour,noise",
    show_default=True,
    help="Augmentations: any of flip, scale, colour, noise (or none).",
)
@click.option(
    "--scale-jitter",
    type=click.FloatRange(min=1),
    default=1.25,
    show_default=True,
    help="Scale augmentation: pixel size drawn within [gsd/a, gsd*a].",
)
@click.option(
    "--gsd",
    type=click.FloatRange(min=0, min_open=True),
    help="Ground pixel size (m) of the model; other images are resampled to it [default: the images' median].",
)
@click.option(
    "--normalization",
    type=click.Choice(["scene", "dataset"]),
    default="scene",
    show_default=True,
    help="scene: stretch each image by its own 2-98 percentiles; dataset: by the training set's.",
)
@click.option(
    "--separation",
    "separation_m",
    type=click.FloatRange(min=0),
    help="Weigh the background within this many metres of two label objects (e.g. the gap between touching buildings) more, so that they come out apart; 0 = off [default: 1 for one class, 0 for several].",
)
@click.option(
    "--contact-weight",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Loss weight of those background pixels.",
)
@click.option(
    "--core",
    "core_m",
    type=click.FloatRange(min=0),
    help="One foreground class: also learn each object's core (its footprint shrunk by this many metres), from which predict grows the objects, so that touching buildings come apart; 0 = none [default: the --init model's, else 0].",
)
@click.option(
    "--core-only",
    is_flag=True,
    help="With --init: train the core channel alone; the rest of the network (and so its mask) stays as it is.",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.99,
    show_default=True,
    help="Validate and save a running average of the weights with this decay (about the last 1/(1-decay) steps); 0 = the raw weights.",
)
@click.option(
    "--keep",
    type=click.Choice(["auto", "best", "last"]),
    default="auto",
    show_default=True,
    help="Epoch to save: auto = the latest whose validation IoU is within one standard error of the best; best = the highest validation IoU; last = the end of the schedule.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="bf16 autocast (auto: on CUDA and CPUs with native bf16).",
)
@click.option(
    "--plot/--no-plot",
    default=True,
    show_default=True,
    help="Write MODEL.metrics.png with the training curves.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@device_opt
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader worker processes.",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to write (.safetensors).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue from MODEL.resume.safetensors of an interrupted run.",
)
@overwrite_opt
@click.pass_context
def train(ctx: click.Context, /, out: Path, **opts: Any) -> None:
    """Train a U-Net from imagery plus vector labels.

    \b
    geounet train --images 'tiles/*.tif' --labels roads.shp --line-width 6 -o roads.safetensors
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
