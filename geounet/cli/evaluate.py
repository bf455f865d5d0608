"""``geounet evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geounet.cli.options import backend_opt, device_opt, precision_opt, tile_progress, tta_opt

if TYPE_CHECKING:
    from geounet.prediction.config import Backend, Device, Precision


@click.command(short_help="Score a model or a prediction against labels.")
@click.argument("scene", type=str)
@click.option(
    "--labels",
    required=True,
    type=click.Path(path_type=Path),
    help="Reference labels: a vector file GDAL reads, in any CRS (polygons, lines, points).",
)
@click.option(
    "-m",
    "--model",
    "model_path",
    help="Model to run over SCENE and score: a bundled name, a .safetensors or an .onnx file. "
    "Give this or --prediction.",
)
@click.option(
    "--prediction",
    type=click.Path(path_type=Path),
    help="Score an existing prediction instead of running a model: a class mask GeoTIFF or a "
    "vector file from geounet predict.",
)
@click.option(
    "--class-field",
    help="Attribute that holds each label's class [default: every label is the one foreground "
    "class].",
)
@click.option(
    "--classes",
    help="Comma-separated class names in the model's order, when the labels name them "
    "differently or hold more.",
)
@click.option(
    "--line-width",
    "line_width_m",
    type=float,
    default=4.0,
    show_default=True,
    help="Label lines are buffered to this full width in metres to score pixels.",
)
@click.option(
    "--point-radius",
    "point_radius_m",
    type=float,
    default=2.0,
    show_default=True,
    help="Label points are buffered to discs of this radius in metres.",
)
@click.option(
    "--iou-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="IoU at or above which a predicted polygon matches a label polygon (one to one) for "
    "object precision, recall and F1.",
)
@click.option(
    "--line-buffer",
    "line_buffer_m",
    type=click.FloatRange(min=0, min_open=True),
    help="Line classes: a centerline within this many metres of a label line counts for "
    "completeness, correctness and quality [default: half the model's line width].",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=1),
    help="Tile size in pixels when running a model, as in predict [default: the model's].",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    help="Tile overlap in pixels when running a model, as in predict [default: the model's].",
)
@precision_opt
@device_opt
@backend_opt
@tta_opt
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report to this JSON file (pixel, object and line keys per class).",
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
    precision: Precision,
    device: Device,
    backend: Backend,
    tta: bool,
    json_path: Path | None,
) -> None:
    """\b
        geounet evaluate scene.tif --labels houses.gpkg -m buildings
        geounet evaluate scene.tif --labels houses.gpkg --prediction found.gpkg

    Score a model run over SCENE, or an existing prediction, against labels: pixel IoU, F1,
    precision and recall per class, object F1 (matches at IoU >= 0.5) for polygon classes, and
    completeness, correctness and quality for line classes.

    Docs: docs/tutorials/fine-tune.md, docs/model-card.md and docs/reference/cli.md (build the
    site from the source tree with mkdocs serve).
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
                    tile_size=tile_size,
                    overlap=overlap,
                    precision=precision,
                    device=device,
                    backend=backend,
                    tta=tta,
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
