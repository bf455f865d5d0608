"""``geounet evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geounet.cli.options import backend_opt, device_opt, tile_progress, tta_opt

if TYPE_CHECKING:
    from geounet.prediction.config import Backend, Device


@click.command()
@click.argument("scene", type=str)
@click.option(
    "--labels", required=True, type=click.Path(path_type=Path), help="Vector labels (any CRS)."
)
@click.option(
    "-m", "--model", "model_path", help="Model file or bundled model name to run over SCENE."
)
@click.option(
    "--prediction",
    type=click.Path(path_type=Path),
    help="Existing prediction: mask GeoTIFF or vector file.",
)
@click.option("--class-field", help="Attribute holding each label's class.")
@click.option("--classes", help="Comma-separated class names, in the model's order.")
@click.option(
    "--line-width",
    "line_width_m",
    type=float,
    default=4.0,
    show_default=True,
    help="Buffer label lines to this width (metres).",
)
@click.option(
    "--point-radius",
    "point_radius_m",
    type=float,
    default=2.0,
    show_default=True,
    help="Buffer label points (metres).",
)
@click.option(
    "--iou-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Object match IoU.",
)
@click.option(
    "--line-buffer",
    "line_buffer_m",
    type=click.FloatRange(min=0, min_open=True),
    help="Line classes: completeness/correctness/quality of centerlines within this many metres [default: half the model's line width].",
)
@click.option("--tile-size", type=click.IntRange(min=1), help="Tile size when running a model.")
@click.option("--overlap", type=click.IntRange(min=0), help="Overlap when running a model.")
@device_opt
@backend_opt
@tta_opt
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    scene: str,
    labels: Path,
    model_path: str | None,
    prediction: Path | None,
    class_field: str | None,
    classes: str | None,
    line_width_m: float,
    point_radius_m: float,
    iou_threshold: float,
    line_buffer_m: float | None,
    tile_size: int | None,
    overlap: int | None,
    device: Device,
    backend: Backend,
    tta: bool,
    json_path: Path | None,
) -> None:
    """Pixel and object metrics of a model (or a prediction) against vector labels.

    \b
    geounet evaluate scene.tif --labels buildings.gpkg -m buildings.safetensors --json report.json
    """
    from geounet.geodata.raster import AtomicOutputs
    from geounet.labels.spec import LabelSpec
    from geounet.prediction.config import PredictConfig
    from geounet.training.evaluate import evaluate as run_evaluate

    if (model_path is None) == (prediction is None):
        raise click.UsageError("give exactly one of -m/--model and --prediction")
    spec = LabelSpec(
        class_field=class_field,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        line_width_m=line_width_m,
        point_radius_m=point_radius_m,
    )
    update, close = tile_progress(ctx, Path(scene).name)
    with AtomicOutputs() as outputs:
        tmp_json = outputs.reserve(json_path, overwrite=True) if json_path else None
        try:
            report = run_evaluate(
                scene,
                labels,
                model=model_path,
                prediction=prediction,
                spec=spec,
                config=PredictConfig(
                    tile_size=tile_size, overlap=overlap, device=device, backend=backend, tta=tta
                ),
                iou_threshold=iou_threshold,
                line_buffer_m=line_buffer_m,
                progress=update,
            )
        finally:
            close()
        if tmp_json is not None:
            tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(format_report(report))


def format_report(report: dict) -> str:  # type: ignore[type-arg]
    """The report as a plain-text table."""
    lines = [
        f"{'class':<16}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}   {'obj F1':>7}{'obj P':>7}{'obj R':>7}  objects (tp/fp/fn)"
    ]
    for name, px in report["pixel"].items():
        if name == "background":
            continue
        obj = report["object"].get(name)
        o = (
            f"{_f(obj['f1']):>7}{_f(obj['precision']):>7}{_f(obj['recall']):>7}  {obj['tp']}/{obj['fp']}/{obj['fn']}"
            if obj
            else f"{'-':>7}{'-':>7}{'-':>7}  -"
        )
        lines.append(
            f"{name:<16}{_f(px['iou']):>8}{_f(px['f1']):>8}{_f(px['precision']):>8}{_f(px['recall']):>8}   {o}"
        )
    if report.get("line"):
        lines.append(f"{'centerlines':<16}{'complete':>9}{'correct':>9}{'quality':>9}  within")
        for name, ln in report["line"].items():
            lines.append(
                f"{name:<16}{_f(ln['completeness']):>9}{_f(ln['correctness']):>9}{_f(ln['quality']):>9}  {ln['buffer']:g} m"
            )
    return "\n".join(lines)


def _f(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"  # type: ignore[arg-type]
