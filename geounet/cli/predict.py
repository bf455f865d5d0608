"""``geounet predict``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from geounet.cli.options import (
    BandList,
    announce_model,
    backend_opt,
    device_opt,
    min_area_opt,
    model_opt,
    overlap_opt,
    overwrite_opt,
    precision_opt,
    prob_dtype_opt,
    regularize_opt,
    seeds_opt,
    simplify_opt,
    split_opt,
    threshold_opt,
    tile_progress,
    tile_size_opt,
    tta_opt,
)

if TYPE_CHECKING:
    from geounet.prediction.config import Backend, Device, Precision, ProbDtype


@click.command(short_help="Segment one scene: polygons, class mask, probabilities.")
@click.argument("scene", type=str)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Vector file to write; its suffix picks the format: .gpkg, .geojson, .fgb, .shp or "
    ".parquet. Coordinates are in the scene's CRS unless --to-crs says otherwise.",
)
@model_opt
@tile_size_opt
@overlap_opt
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Tiles per forward pass [default: 1 on the CPU, the fastest there; on CUDA, as many "
    "as fit in about 60 % of the free GPU memory].",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Compile the network with torch.compile first (runs on PyTorch): a start-up cost "
    "that pays off on long GPU runs.",
)
@precision_opt
@device_opt
@backend_opt
@tta_opt
@click.option(
    "--resample",
    type=click.Choice(["auto", "off"]),
    default="auto",
    show_default=True,
    help="auto: when the scene's ground pixel size differs from the model's by more than 1.5x, "
    "resample each tile to the model's pixel size and its prediction back; outputs stay on the "
    "scene's grid. off: feed the scene's pixels as they are.",
)
@split_opt
@seeds_opt
@regularize_opt
@threshold_opt
@click.option(
    "--probabilities",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the class probabilities to this Cloud-Optimized GeoTIFF, on the scene's "
    "grid (type: --prob-dtype).",
)
@prob_dtype_opt
@click.option(
    "--mask",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the class mask to this Cloud-Optimized GeoTIFF, on the scene's grid: uint8, "
    "0 background, 1.. the classes, 255 nodata, with a colour table.",
)
@click.option(
    "--bands",
    type=BandList(),
    help="1-based scene bands to feed the model, in the model's band order, e.g. 3,2,1 for a BGR "
    "file [default: found by colour interpretation for an RGB model, else file order; alpha "
    "left out].",
)
@min_area_opt
@simplify_opt
@click.option(
    "--to-crs",
    help="Reproject the vector output to this CRS, e.g. EPSG:4326 [default: the scene's CRS]. "
    "Rasters stay on the scene's grid.",
)
@overwrite_opt
@click.pass_context
def predict(
    ctx: click.Context,
    scene: str,
    out: Path | None,
    model_path: str | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    compile_: bool,
    precision: Precision,
    device: Device,
    backend: Backend,
    tta: bool,
    resample: Literal["auto", "off"],
    regularize: bool | None,
    split_m: float | None,
    split_seeds: float | None,
    threshold: float,
    probabilities: Path | None,
    prob_dtype: ProbDtype,
    mask: Path | None,
    bands: tuple[int, ...] | None,
    min_area_m2: float | None,
    simplify: float,
    to_crs: str | None,
    overwrite: bool,
) -> None:
    """\b
        geounet predict scene.tif -o buildings.gpkg
        geounet predict scene.tif -o roads.gpkg -m roads.safetensors --mask m.tif

    Segment SCENE (a GeoTIFF path or URL) and write polygons, or centerlines for line classes, in
    its CRS. Without -m the bundled building model runs; -o, --mask and --probabilities choose the
    outputs (at least one).

    Docs: docs/tutorials/own-imagery.md, docs/concepts/outputs.md and docs/reference/cli.md
    (build the site from the source tree with mkdocs serve).
    """
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    if out is None and probabilities is None and mask is None:
        raise click.UsageError("give -o/--output, --probabilities or --mask")
    config = PredictConfig(
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        threshold=threshold,
        bands=bands,
        min_area_m2=min_area_m2,
        simplify=simplify,
        to_crs=to_crs,
        prob_dtype=prob_dtype,
        overwrite=overwrite,
        compile=compile_,
        precision=precision,
        backend=backend,
        tta=tta,
        resample=resample,
        regularize=regularize,
        split_m=split_m,
        split_seeds=split_seeds,
    )
    model_path = announce_model(ctx, model_path)
    update, close = tile_progress(ctx, Path(scene).name)
    try:
        result = predict_raster(
            scene,
            out,
            model=model_path,
            probabilities=probabilities,
            mask=mask,
            config=config,
            progress=update,
        )
    finally:
        close()
    for path in (
        result.vectors,
        result.lines if result.lines != result.vectors else None,
        result.probabilities,
        result.mask,
    ):
        if path is not None:
            click.echo(str(path))
    counts = ", ".join(f"{n} {k} px" for k, n in result.class_counts.items()) or "no foreground"
    if result.bands_by_colour:
        click.echo(
            f"Read bands {','.join(map(str, result.bands))} of {Path(scene).name} by their colour "
            f"interpretation ({', '.join(result.bands_by_colour)}); --bands picks others",
            err=True,
        )
    if result.resample_factor != 1.0:
        click.echo(
            f"Resampled windows x{1 / result.resample_factor:.2f} to the model's pixel size "
            f"(outputs on the scene's grid; --resample off to disable)",
            err=True,
        )
    click.echo(
        f"{result.features - result.line_features} polygons"
        + (f", {result.line_features} lines" if result.lines is not None else "")
        + f" from {result.tiles} tiles ({result.tiles_skipped} all-nodata skipped) "
        f"in {result.seconds:.1f} s; {counts}",
        err=True,
    )
