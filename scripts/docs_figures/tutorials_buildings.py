"""Pictures of the building tutorials, docs/tutorials/own-imagery.md and fine-tune.md.

    python scripts/docs_figures/tutorials_buildings.py                      # both pages
    python scripts/docs_figures/tutorials_buildings.py --page fine-tune
    python scripts/docs_figures/tutorials_buildings.py --no-run --work /tmp/tutorials

Runs each page's ``bash`` blocks as written, in order, as one script (the full commands: none of
the test's speed-ups, and the blocks the test skips for time run too), in a working folder laid
out as ``tests/test_docs.py`` lays it out (``examples/``, ``scripts/`` and ``benchmarks/`` linked
from this checkout, the sample data at ``../shared/data``), with this interpreter's ``bin`` first
on PATH. Each page runs in ``WORK/PAGE/geounet``, its output goes to ``WORK/PAGE/PAGE.log`` (the figures quoted on the page come
from there). Then it draws the pictures from the page's outputs into ``docs/img/tutorials/``:

- own-imagery-rio55.png: the bundled model's polygons over rio_55, with the SpaceNet labels;
- own-imagery-variants.png: the Chicago crop as 8-bit RGB, 16-bit, BGR + NIR and untagged BGR;
- own-imagery-outputs.png: probabilities, class mask, plain and squared polygons;
- fine-tune-metrics.png: the training curves ``geounet train`` drew (``MODEL.metrics.png``);
- fine-tune-before-after.png: a held-out Austin crop, the bundled and the fine-tuned model.

``--no-run`` redraws from an earlier run's folder. The fine-tune page trains for a few minutes on
2 CPU cores; the other page takes under a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SHARED = ROOT.parent / "shared" / "data"
OUT = DOCS / "img" / "tutorials"
PAGES = ("own-imagery", "fine-tune")
#: Predicted outlines: solid; label outlines: dashed (as on the model card).
PRED_COLOUR = "#ff3b30"
LABEL_COLOUR = "#ffe600"
DPI = 100

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)


def page_blocks(text: str) -> str:
    """Every ``bash`` block of a page, in order, joined into one script."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("lang") in ("bash", "sh", "shell"):
            blocks.append(re.sub(r"^" + m.group("indent"), "", m.group("body"), flags=re.MULTILINE))
    return "\n".join(blocks)


def prepare(work: Path) -> Path:
    """The working folder: ``work/geounet`` like a checkout, ``work/shared/data`` beside it."""
    checkout = work / "geounet"
    checkout.mkdir(parents=True, exist_ok=True)
    for name in ("examples", "scripts", "benchmarks"):
        link = checkout / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    (work / "shared").mkdir(exist_ok=True)
    data = work / "shared" / "data"
    if not data.exists():
        data.symlink_to(SHARED)
    return checkout


def run_page(page: str, checkout: Path) -> None:
    """Run the page's script in ``checkout``; its output goes to ``../PAGE.log``."""
    script = page_blocks((DOCS / "tutorials" / f"{page}.md").read_text())
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    log = checkout.parent / f"{page}.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", script],
            cwd=checkout,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    print(f"{page}: exit {proc.returncode} in {time.perf_counter() - start:.0f} s; log {log}")
    if proc.returncode:
        sys.exit(f"{page}: the page's commands failed; see {log}")


def read_rgb(path: Path, bands: tuple[int, ...] = (1, 2, 3)) -> tuple[np.ndarray, Any, Any]:
    """Bands of a scene as an RGB float image in 0..1 (2-98 % stretch per band), with its
    plotting extent and CRS."""
    import rasterio
    from rasterio.plot import plotting_extent

    with rasterio.open(path) as src:
        data = src.read(list(bands)).astype(np.float64)
        extent = plotting_extent(src)
        crs = src.crs
    lo, hi = np.percentile(data, [2, 98], axis=(1, 2))
    rgb = (data - lo[:, None, None]) / np.maximum(hi - lo, 1e-9)[:, None, None]
    return np.clip(rgb, 0, 1).transpose(1, 2, 0), extent, crs


def outlines(ax: Any, path: Path, crs: Any, colour: str, **kw: Any) -> int:
    """Draw the outlines of a vector file (its first layer) in ``crs``; the feature count."""
    import geopandas as gpd
    import pyogrio

    layer = pyogrio.list_layers(path)[0][0]
    frame = gpd.read_file(path, layer=layer).to_crs(crs)
    if len(frame):
        frame.boundary.plot(ax=ax, color=colour, **kw)
    return len(frame)


def labels_in(ax: Any, path: Path, extent: Any, crs: Any) -> None:
    """Label outlines (dashed) of the features of ``path`` inside ``extent``."""
    import geopandas as gpd
    from shapely.geometry import box

    left, right, bottom, top = extent
    frame = gpd.read_file(path).to_crs(crs)
    frame = frame[frame.intersects(box(left, bottom, right, top))]
    if len(frame):
        frame.boundary.plot(ax=ax, color=LABEL_COLOUR, linewidth=1.1, linestyle=(0, (3, 2)))


def panel(ax: Any, image: np.ndarray, extent: Any, title: str) -> None:
    ax.imshow(image, extent=extent, interpolation="nearest")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def save(fig: Any, name: str) -> None:
    """Write the figure as a 256-colour PNG (imagery compresses poorly as true colour)."""
    import io

    from PIL import Image

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    buf.seek(0)
    image = Image.open(buf).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")


def own_imagery(checkout: Path) -> None:
    import matplotlib.pyplot as plt
    import rasterio

    out = checkout / "out"
    data = SHARED / "buildings-rgb"

    # rio_55: polygons over the chip, SpaceNet labels dashed.
    rgb, extent, crs = read_rgb(ROOT / "examples" / "rio_55.tif")
    fig, ax = plt.subplots(figsize=(5.6, 5.6 * rgb.shape[0] / rgb.shape[1]))
    panel(ax, rgb, extent, "")
    labels_in(ax, data / "rio" / "buildings.geojson", extent, crs)
    n = outlines(ax, out / "rio_55.gpkg", crs, PRED_COLOUR, linewidth=1.3)
    ax.set_title(f"rio_55: {n} polygons (red), SpaceNet labels (yellow, dashed)", fontsize=9)
    save(fig, "own-imagery-rio55.png")
    plt.close(fig)

    # The Chicago crop read four ways; each file shown as a viewer shows bands 1, 2, 3.
    variants = [
        ("chicago1_4.tif (8-bit RGB)", data / "inria" / "chicago1_4.tif", out / "chicago.geojson"),
        ("16-bit copy (values 0-2040)", out / "chicago_16bit.tif", out / "chicago_16bit.gpkg"),
        ("B, G, R, NIR (tagged)", out / "chicago_bgrn.tif", out / "chicago_bgrn.gpkg"),
        ("B, G, R untagged, --bands 3,2,1", out / "chicago_bgr.tif", out / "chicago_bgr.gpkg"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    for ax, (title, scene, polygons) in zip(axes, variants, strict=True):
        rgb, extent, crs = read_rgb(scene)
        panel(ax, rgb, extent, "")
        n = outlines(ax, polygons, crs, PRED_COLOUR, linewidth=1.1)
        ax.set_title(f"{title}\n{n} polygons", fontsize=9, linespacing=1.3)
    save(fig, "own-imagery-variants.png")
    plt.close(fig)

    # Outputs: probabilities, mask, plain and squared polygons.
    rgb, extent, crs = read_rgb(data / "inria" / "chicago1_4.tif")
    with rasterio.open(out / "chicago_prob.tif") as src:
        prob = src.read(1)
    with rasterio.open(out / "chicago_mask.tif") as src:
        mask = src.read(1)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    panel(axes[0], prob, extent, "--probabilities\n0 (dark) to 1 (bright)")
    axes[0].images[0].set_cmap("magma")
    axes[0].images[0].set_clim(0, 1)
    panel(axes[1], np.where(mask == 1, 1.0, 0.0), extent, "--mask\nbuilding (white), background")
    axes[1].images[0].set_cmap("gray")
    panel(axes[2], rgb, extent, "")
    n = outlines(axes[2], out / "chicago.geojson", crs, PRED_COLOUR, linewidth=1.1)
    axes[2].set_title(f"polygons, defaults\n{n} polygons", fontsize=9)
    panel(axes[3], rgb, extent, "")
    n = outlines(axes[3], out / "chicago_squared.fgb", crs, PRED_COLOUR, linewidth=1.1)
    axes[3].set_title(f"--min-area 20 --regularize\n{n} polygons", fontsize=9)
    save(fig, "own-imagery-outputs.png")
    plt.close(fig)


def fine_tune(checkout: Path) -> None:
    import matplotlib.pyplot as plt

    out = checkout / "out"
    inria = SHARED / "buildings-rgb" / "inria"

    # The training curves exactly as geounet train drew them.
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "my-buildings.metrics.png", OUT / "fine-tune-metrics.png")
    size = (OUT / "fine-tune-metrics.png").stat().st_size / 1024
    print(f"docs/img/tutorials/fine-tune-metrics.png: {size:.0f} KB")

    # Held-out crops: the bundled model and the fine-tuned one, labels dashed.
    stems = ("austin1_8", "austin1_17")
    fig, axes = plt.subplots(len(stems), 2, figsize=(7.2, 3.7 * len(stems)))
    for row, stem in zip(axes, stems, strict=True):
        rgb, extent, crs = read_rgb(inria / f"{stem}.tif")
        for ax, (name, suffix) in zip(
            row, (("bundled buildings", "before"), ("my-buildings", "after")), strict=True
        ):
            panel(ax, rgb, extent, "")
            labels_in(ax, inria / "buildings_austin.geojson", extent, crs)
            n = outlines(ax, out / f"{stem}_{suffix}.fgb", crs, PRED_COLOUR, linewidth=1.3)
            ax.set_title(f"{stem}, {name}: {n} polygons", fontsize=9)
    save(fig, "fine-tune-before-after.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", choices=(*PAGES, "all"), default="all")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/geounet-tutorials"), help="working folder"
    )
    parser.add_argument("--no-run", action="store_true", help="draw from an earlier run")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        parser.error(f"{SHARED} not found (the tutorials' sample data)")
    import matplotlib

    matplotlib.use("Agg")
    pages = PAGES if args.page == "all" else (args.page,)
    for page in pages:
        checkout = prepare(args.work.resolve() / page)
        if not args.no_run:
            shutil.rmtree(checkout / "out", ignore_errors=True)
            run_page(page, checkout)
        {"own-imagery": own_imagery, "fine-tune": fine_tune}[page](checkout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
