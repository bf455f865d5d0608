"""``geounet batch``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from geounet.cli.options import (
    BandList,
    announce_model,
    backend_opt,
    device_opt,
    min_area_opt,
    model_opt,
    overlap_opt,
    precision_opt,
    prob_dtype_opt,
    regularize_opt,
    seeds_opt,
    simplify_opt,
    split_opt,
    threshold_opt,
    tile_size_opt,
    tta_opt,
)

if TYPE_CHECKING:
    from geounet.archive.batch import BatchProgress, VectorFormat
    from geounet.prediction.config import Backend, Device, Precision, ProbDtype

    # ParamType is generic from click 8.4 on; subscripting it at run time needs click >= 8.4
    _KeysType = click.ParamType[tuple[str, ...]]
else:
    _KeysType = click.ParamType

#: geounet.archive.batch.VectorFormat, spelled out so that ``--help`` does not import torch.
FORMATS = ("gpkg", "geojson", "fgb", "parquet")
#: Failed scenes listed before the summary line (the manifest has them all).
MAX_LISTED_FAILURES = 10


class AssetKeys(_KeysType):
    """A comma-separated list of STAC asset keys in order of preference, e.g. ``visual,image``."""

    name = "KEYS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        """The keys, each once, in the order given."""
        if isinstance(value, tuple):
            return value
        keys = tuple(dict.fromkeys(k.strip() for k in str(value).split(",") if k.strip()))
        if not keys:
            self.fail(
                f"{value!r} names no asset; give asset keys separated by commas (e.g. visual,image)",
                param,
                ctx,
            )
        return keys


@click.command(short_help="Segment many scenes or a STAC catalog; resumable.")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    metavar="DIR",
    help="Output folder, created if missing: NAME.gpkg (the suffix of --format), NAME.mask.tif "
    "and NAME.probabilities.tif per scene, and manifest.jsonl, the record of every scene.",
)
@model_opt
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="gpkg",
    show_default=True,
    help="Vector format of each scene's polygons.",
)
@click.option(
    "--probabilities",
    is_flag=True,
    help="Also write each scene's class probabilities to NAME.probabilities.tif (a COG).",
)
@click.option(
    "--mask", is_flag=True, help="Also write each scene's class mask to NAME.mask.tif (a COG)."
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Run N local Dask worker processes, each loading the model once [default: 0, one scene "
    "after another in this process]. Needs pip install 'geounet[dask]'.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run on an existing Dask cluster: its scheduler address (tcp://host:8786) or scheduler "
    "file. Workers must see the model, the inputs and DIR at the same paths.",
)
@tile_size_opt
@overlap_opt
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Tiles per forward pass [default: 1 on the CPU, the fastest there; on CUDA, as many "
    "as fit in about 60 % of the free GPU memory].",
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
    help="auto: when a scene's ground pixel size differs from the model's by more than 1.5x, "
    "resample its tiles to the model's pixel size and the predictions back; outputs stay on the "
    "scene's grid. off: feed the scenes' pixels as they are.",
)
@split_opt
@seeds_opt
@regularize_opt
@threshold_opt
@prob_dtype_opt
@click.option(
    "--bands",
    type=BandList(),
    help="1-based scene bands to feed the model, in the model's band order, e.g. 3,2,1 for BGR "
    "files [default: found by colour interpretation for an RGB model, else file order; alpha "
    "left out].",
)
@min_area_opt
@simplify_opt
@click.option(
    "--to-crs",
    help="Reproject every vector output to this CRS, e.g. EPSG:4326 [default: each scene's "
    "CRS]. Rasters stay on each scene's grid.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace files that already have an output's name in a DIR without manifest.jsonl. "
    "Outputs of earlier batch runs are replaced when redone, with or without it.",
)
@click.option(
    "--asset",
    type=AssetKeys(),
    metavar="KEY[,KEY...]",
    help="STAC inputs: the asset key to segment in each item, or several in order of preference "
    "(visual,image,B04) [default: a GeoTIFF asset that is not a label, thumbnail, overview or "
    "metadata, with the model's band count where listed, visual before data].",
)
@click.option(
    "--stac-out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also write a static STAC 1.1 catalog of the results into DIR (DIR/catalog.json, one "
    "item per scene and the model's item); DIR must be a folder of its own.",
)
@click.pass_context
def batch(
    ctx: click.Context,
    inputs: tuple[str, ...],
    out_dir: Path,
    model_path: str | None,
    fmt: VectorFormat,
    probabilities: bool,
    mask: bool,
    workers: int,
    scheduler: str | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    precision: Precision,
    device: Device,
    backend: Backend,
    tta: bool,
    resample: Literal["auto", "off"],
    regularize: bool | None,
    split_m: float | None,
    split_seeds: float | None,
    threshold: float,
    prob_dtype: ProbDtype,
    bands: tuple[int, ...] | None,
    min_area_m2: float | None,
    simplify: float,
    to_crs: str | None,
    overwrite: bool,
    asset: tuple[str, ...] | None,
    stac_out: Path | None,
) -> None:
    """\b
        geounet batch 'archive/**/*.tif' -o out/ -m buildings --mask
        geounet batch @scenes.txt -o out/ --workers 4
        geounet batch stac/catalog.json -o out/ --asset visual --stac-out out/stac

    Segment many scenes into one folder; run the same command again to resume.

    INPUTS are GeoTIFF paths, globs (`'archive/**/*.tif'`, quoted), @FILE (a text file with one
    path or URL per line, relative to the file), URLs that GDAL reads window by window
    (https://, s3://, /vsicurl/...) and STAC JSON files or http(s) URLs (`*.json`: a catalog or
    collection, walked recursively, an item collection or an item, such as `rio stac` writes;
    one scene per item, the asset chosen by --asset). Each scene gives DIR/NAME.gpkg (the suffix
    of --format), and NAME.mask.tif and NAME.probabilities.tif when asked, NAME being its file
    name without suffix (a STAC item's id), plus a short hash when two inputs share one. DIR/manifest.jsonl records every scene. Scenes already
    done with the same input, model and options are skipped; a scene that fails (or a STAC item
    without the asset) is recorded there, the others go on, and the exit status is 1.

    Docs: docs/tutorials/stac-dask.md and docs/reference/cli.md (build the site from the source
    tree with mkdocs serve).
    """
    from geounet.archive.batch import run_batch
    from geounet.errors import Terminated
    from geounet.prediction.config import PredictConfig

    config = PredictConfig(
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        precision=precision,
        threshold=threshold,
        bands=bands,
        min_area_m2=min_area_m2,
        simplify=simplify,
        to_crs=to_crs,
        prob_dtype=prob_dtype,
        overwrite=overwrite,
        backend=backend,
        tta=tta,
        resample=resample,
        regularize=regularize,
        split_m=split_m,
        split_seeds=split_seeds,
    )
    if workers or scheduler:
        _quiet_dask()
    model_path = announce_model(ctx, model_path)
    bars = _Bars(quiet=bool((ctx.find_root().obj or {}).get("quiet")))
    try:
        summary = run_batch(
            inputs,
            out_dir,
            model=model_path,
            config=config,
            fmt=fmt,
            probabilities=probabilities,
            mask=mask,
            workers=workers,
            scheduler=scheduler,
            progress=bars.update,
            asset=asset,
            stac_out=stac_out,
        )
    except (KeyboardInterrupt, Terminated) as exc:
        if (ctx.find_root().obj or {}).get("debug"):
            raise
        bars.close()
        word = "Interrupted" if isinstance(exc, KeyboardInterrupt) else "Terminated"
        click.echo(
            f"{word}; scenes finished so far are kept in {out_dir}: run the same command to resume",
            err=True,
        )
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 143)
    finally:
        bars.close()
    click.echo(str(summary.manifest))
    if summary.catalog is not None:
        click.echo(str(summary.catalog))
    for record in summary.failed[:MAX_LISTED_FAILURES]:
        error = record.error or "unknown error"
        # Most errors name the file (or the STAC item) already.
        named = Path(record.input).name in error or (
            record.item_id is not None and f"item {record.item_id}" in error
        )
        click.echo(f"failed: {error}" if named else f"failed: {record.input}: {error}", err=True)
    if len(summary.failed) > MAX_LISTED_FAILURES:
        click.echo(f"... and {len(summary.failed) - MAX_LISTED_FAILURES} more failed", err=True)
    click.echo(summary.describe(), err=True)
    if summary.failed:
        # sys.exit, not ctx.exit: the group runs click without standalone mode, which would turn
        # ctx.exit(1) into a return value and exit 0.
        sys.exit(1)


def _quiet_dask() -> None:
    """Keep Dask's INFO chatter (scheduler and worker start/stop) for -vv.

    ``distributed`` sets its loggers to INFO when imported, so import it first, then lower them.
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        return  # run_batch says how to install it
    root = logging.getLogger().getEffectiveLevel()
    logging.getLogger("distributed").setLevel(
        logging.INFO if root <= logging.DEBUG else max(root, logging.WARNING)
    )


class _Bars:
    """A bar over scenes, and one over the running scene's tiles (single-process runs)."""

    def __init__(self, *, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.scenes: Any = None
        self.tiles: Any = None
        self.tile_scene: str | None = None
        self._redirect: Any = None

    def update(self, report: BatchProgress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.scenes is None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            # Log lines (a failed scene) are printed above the bars instead of through them.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self.scenes = tqdm(
                total=report.scenes_total,
                initial=report.scenes_done,
                desc="scenes",
                unit="scene",
                dynamic_ncols=True,
            )
        if report.tiles_total:
            name = Path(report.scene or "").name
            if self.tiles is None:
                self.tiles = tqdm(
                    total=report.tiles_total,
                    desc=name,
                    unit="tile",
                    leave=False,
                    position=1,
                    dynamic_ncols=True,
                    mininterval=0.5,
                )
            elif report.scene != self.tile_scene:
                self.tiles.set_description(name, refresh=False)
                self.tiles.reset(total=report.tiles_total)
            self.tile_scene = report.scene
            self.tiles.update(report.tiles_done - self.tiles.n)
        if report.record is not None or report.scenes_done > self.scenes.n:
            self.scenes.update(report.scenes_done - self.scenes.n)

    def close(self) -> None:
        for bar in (self.tiles, self.scenes):
            if bar is not None:
                bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
        self.tiles = self.scenes = self._redirect = None
        self.enabled = False
