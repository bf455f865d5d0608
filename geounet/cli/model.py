"""``geounet model create``, ``list``, ``info``, ``export`` and ``quantize``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geounet.cli.options import ManyValues, overwrite_opt


@click.group(short_help="List, inspect, create, export and quantize models.")
def model() -> None:
    """\b
        geounet model list
        geounet model info buildings

    List the bundled models, print a model's contract, create an untrained model, export one
    to ONNX for QGIS (Deepness) and onnxruntime, or write its int8 copy for fast CPU prediction.

    Docs: docs/concepts/model-contract.md, docs/tutorials/qgis-deepness.md and
    docs/reference/cli.md (build the site from the source tree with mkdocs serve).
    """


@model.command(short_help="Write an untrained, seeded model file.")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Model file to write (.safetensors).",
)
@click.option("--bands", type=click.IntRange(min=1), required=True, help="Number of input bands.")
@click.option(
    "--classes",
    default="1",
    show_default=True,
    help="1 for a binary model (one foreground class), a class count, or comma-separated class "
    "names (background first when there are several).",
)
@click.option(
    "--width",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Channels of the U-Net's first level; each level down doubles them.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1, max=8),
    default=4,
    show_default=True,
    help="Down and up steps of the U-Net; tile sizes must be multiples of 2**depth.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial weights.")
@click.option(
    "--dtype",
    default="uint8",
    show_default=True,
    type=click.Choice(["uint8", "uint16", "int16", "float32"]),
    help="Pixel type the model expects of its scenes (part of its contract).",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=512,
    show_default=True,
    help="The model's tile size in pixels, predict's default (a multiple of 2**depth).",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="The model's tile overlap in pixels, predict's default.",
)
@overwrite_opt
def create(
    out: Path,
    bands: int,
    classes: str,
    width: int,
    depth: int,
    seed: int,
    dtype: str,
    tile_size: int,
    overlap: int,
    overwrite: bool,
) -> None:
    """\b
        geounet model create -o m.safetensors --bands 3 --classes 1 --width 16

    Write an untrained model with seeded weights and a contract (bands, dtype, classes, tile
    size), for tests, benchmarks or as a starting point.

    Docs: docs/concepts/model-contract.md and docs/reference/cli.md (build the site from the
    source tree with mkdocs serve).
    """
    from geounet.geodata.raster import AtomicOutputs
    from geounet.geodata.tiling import check_tile_size
    from geounet.network.checkpoint import create_model, save_model

    names: int | list[str]
    names = (
        int(classes)
        if classes.strip().isdigit()
        else [c.strip() for c in classes.split(",") if c.strip()]
    )
    if names == 0 or names == []:
        raise click.BadParameter("need at least one class", param_hint="--classes")
    check_tile_size(tile_size, overlap, multiple=2**depth)
    net, meta = create_model(
        bands=bands,
        classes=names,
        width=width,
        depth=depth,
        seed=seed,
        dtype=dtype,
        tile_size=tile_size,
        overlap=overlap,
    )
    with AtomicOutputs() as outputs:
        save_model(net, meta, outputs.reserve(out, overwrite=overwrite))
    click.echo(str(out))


@model.command("list", short_help="List the bundled models and their held-out figures.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_(as_json: bool) -> None:
    """\b
        geounet model list

    List the models bundled with geounet, with their bands, pixel size, size and held-out
    figures; use one with -m NAME.

    Docs: docs/model-card.md and docs/reference/cli.md (build the site from the source tree with
    mkdocs serve).
    """
    from geounet.network.checkpoint import DEFAULT_MODEL, bundled_models, read_meta
    from geounet.network.quantize import int8_path

    rows = []
    for name, path in bundled_models().items():
        meta = read_meta(path)
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "bands": meta.bands,
                "dtype": meta.dtype,
                "gsd_m": meta.gsd,
                "classes": meta.classes,
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "int8": int8_path(path).is_file(),
                "validation": meta.provenance.get("validation", {}),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bundled models installed")
        return
    for r in rows:
        gsd = f"{r['gsd_m']:g} m" if r["gsd_m"] else "any"
        click.echo(
            f"{r['name']}{' (default)' if r['default'] else ''}: {', '.join(r['classes'])}; "
            f"{r['bands']} bands {r['dtype']}, {gsd} pixels, {r['size_mb']} MB"
            + ("; int8 copy (--precision int8)" if r["int8"] else "")
        )
        for source, v in r["validation"].items():
            if isinstance(v, dict) and "pixel_f1" in v:
                click.echo(
                    f"  held-out {source:8} pixel IoU {v['pixel_iou']:.3f}  F1 {v['pixel_f1']:.3f}  "
                    f"object F1 {v['object_f1']:.3f}  ({v.get('images', '?')} images)"
                )


@model.command(short_help="Export a model to ONNX for QGIS Deepness and onnxruntime.")
@click.argument("path", metavar="MODEL")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="ONNX file to write (.onnx).",
)
@click.option(
    "--opset",
    type=click.IntRange(13, 20),
    default=17,
    show_default=True,
    help="ONNX opset; lower it only for an older runtime that needs it.",
)
@click.option(
    "--fixed-size",
    type=click.IntRange(min=16),
    help="Fix the input's height and width to this many pixels, a multiple of 2**depth; the "
    "batch stays dynamic [default: the model's tile size].",
)
@click.option(
    "--dynamic-size",
    is_flag=True,
    help="Leave the input's height and width symbolic (any multiple of 2**depth), for "
    "onnxruntime users; QGIS Deepness cannot load such a file.",
)
@click.option(
    "--stretch-from",
    "stretch_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="For a model that stretches each scene by its percentiles: fold this scene's stretch "
    "into the file's standardization, so that Deepness feeds the network what geounet would on "
    "it [default: the model's typical training stretch].",
)
@overwrite_opt
def export(
    path: str,
    out: Path,
    opset: int,
    fixed_size: int | None,
    dynamic_size: bool,
    stretch_from: Path | None,
    overwrite: bool,
) -> None:
    """\b
        geounet model export buildings -o buildings.onnx

    Export a model (a file or a bundled name) to ONNX, for QGIS (Deepness) and onnxruntime.

    The file carries Deepness' metadata (Segmentor, class names, resolution, tile size and
    overlap, threshold, standardization) and geounet's whole contract, so
    `geounet predict -m OUT.onnx` runs it too. Its input is fixed to the model's tile size, as
    Deepness needs. Needs `pip install 'geounet[onnx]'`.

    Docs: docs/tutorials/qgis-deepness.md, docs/concepts/model-contract.md and
    docs/reference/cli.md (build the site from the source tree with mkdocs serve).
    """
    from geounet.network.export import export_onnx

    if dynamic_size and fixed_size is not None:
        raise click.UsageError("--fixed-size and --dynamic-size exclude each other; give one")
    written = export_onnx(
        path,
        out,
        opset=opset,
        fixed_size=fixed_size,
        dynamic_size=dynamic_size,
        stretch_from=stretch_from,
        overwrite=overwrite,
    )
    click.echo(str(written))


@model.command(short_help="Write an int8 copy of a model for fast CPU prediction.")
@click.argument("path", metavar="MODEL")
@click.option(
    "--images",
    cls=ManyValues,
    required=True,
    help="Calibration images (GeoTIFFs like those the model will see, best its training "
    "images): paths, globs, @list files or folders; several may follow one flag.",
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX file to write [default: MODEL-int8.onnx beside the model, where "
    "--precision int8 finds it].",
)
@click.option(
    "--windows",
    type=click.IntRange(1, 5),
    default=2,
    show_default=True,
    help="Calibration windows per image (corners, then the centre).",
)
@overwrite_opt
def quantize(
    path: str, images: tuple[str, ...], out: Path | None, windows: int, overwrite: bool
) -> None:
    """\b
        geounet model quantize my.safetensors --images train/*.tif

    Write an int8 copy of a model (onnxruntime, CPU), calibrated on windows of --images.

    `geounet predict -m my.safetensors --precision int8` then runs it, about twice as fast as
    float32 on a CPU with nearly the same masks (docs/performance.md has the bundled model's
    figures); score yours against your labels with `geounet evaluate -m MODEL-int8.onnx`. Needs
    `pip install 'geounet[onnx]'`.

    Docs: docs/performance.md and docs/reference/cli.md (build the site from the source tree
    with mkdocs serve).
    """
    from geounet.geodata.raster import expand_rasters
    from geounet.network.checkpoint import resolve_model
    from geounet.network.quantize import int8_path, quantize_model

    if out is None:
        out = int8_path(resolve_model(path))
    files = expand_rasters(images, folders=True)
    written = quantize_model(path, files, out, windows=windows, overwrite=overwrite)
    click.echo(str(written))


@model.command(short_help="Print a model's input contract and provenance.")
@click.argument("path", metavar="MODEL")
@click.option("--json", "as_json", is_flag=True, help="Print the whole contract as JSON.")
@click.option(
    "--stac",
    "stac_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead, write the model as a STAC Item (MLM extension) to this JSON file and print "
    "its path.",
)
@overwrite_opt
def info(path: str, as_json: bool, stac_out: Path | None, overwrite: bool) -> None:
    """\b
        geounet model info buildings
        geounet model info m.onnx --json

    Print a model's input contract and provenance: bands, dtype, normalization, classes, tile
    size, pixel size, polygon defaults and how it was trained. MODEL is a bundled name, a
    .safetensors or an .onnx file.

    Docs: docs/concepts/model-contract.md and docs/reference/cli.md (build the site from the
    source tree with mkdocs serve).
    """
    from geounet.geodata.normalize import describe
    from geounet.network.checkpoint import is_onnx, read_meta, resolve_model

    if stac_out is not None:
        from geounet.archive.stac_model import write_model_item

        click.echo(str(write_model_item(path, stac_out, overwrite=overwrite)))
        return
    resolved = resolve_model(path)
    meta = read_meta(resolved)
    onnx_line = _onnx_line(resolved) if is_onnx(resolved) else None
    if as_json:
        click.echo(json.dumps(json.loads(meta.to_json()), indent=2))
        return
    a = meta.arch_args
    kind = "binary (sigmoid)" if meta.binary else "multi-class (softmax)"
    if meta.core_m > 0:
        kind += f", plus a core channel (footprints shrunk by {meta.core_m:g} m)"
    lines = [
        f"model:      {resolved.name} (format {meta.format_version})",
        f"network:    {meta.architecture} width={a.get('width')} depth={a.get('depth')} outputs={a.get('classes')} {kind}",
        f"bands:      {meta.bands} ({', '.join(meta.band_names)}), {meta.dtype}",
        f"normalize:  {describe(meta.normalization)}: mean={_fmt(meta.mean)} std={_fmt(meta.std)}",
        f"classes:    {', '.join(meta.classes)}",
        "geometry:   "
        + ", ".join(f"{n} {meta.geometry_of(n)}" for n in meta.mask_classes[1:])
        + (
            f" (lines trained {meta.line_width_m:g} m wide)"
            if meta.line_class_ids and meta.line_width_m
            else ""
        ),
        f"tiles:      {meta.tile_size} px, overlap {meta.overlap} px (multiple of {2**meta.depth})",
        f"pixel size: {f'{meta.gsd:g} m' if meta.gsd is not None else 'unknown'}",
        f"polygons:   min area {meta.min_area_m2:g} m², regularize {'on' if meta.regularize else 'off'}, "
        + (f"split at necks under {meta.split_m:g} m" if meta.split_m else "no neck split")
        + (
            (
                f", grown from predicted cores >= {meta.split_seeds:g}"
                if meta.core_m > 0
                else f", cut along probability valleys between cores >= {meta.split_seeds:g}"
            )
            if meta.split_seeds
            else ""
        ),
        f"provenance: {json.dumps(meta.provenance, sort_keys=True, indent=2)}",
    ]
    if onnx_line:
        lines.insert(1, onnx_line)
    click.echo("\n".join(lines))


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _onnx_line(path: Path) -> str:
    """One line on an exported ONNX file: opset, input size, Deepness defaults."""
    from geounet.network.onnx_file import onnx_properties

    p = onnx_properties(path)
    size = p["geounet_onnx"].get("fixed_size")
    resolution = f"{p['resolution']:g} cm/px" if "resolution" in p else "no resolution"
    stretch = p["geounet_onnx"].get("stretch")
    return (
        f"onnx:       opset {p['opset']}, input (batch, bands, {size or 'size'}, {size or 'size'}); "
        f"Deepness {p.get('model_type')}: {resolution}, tiles {p.get('tiles_size')} px, "
        f"overlap {p.get('tiles_overlap')} %, threshold {p.get('seg_thresh')}"
        + (f", stretch {stretch['source']} folded into its standardization" if stretch else "")
    )
