"""Pictures of three tutorials, each rendered from a real run of the tutorial's own commands.

- ``roads``: ``docs/img/tutorials/roads-vegas.png``, for ``docs/tutorials/roads.md``: the SpaceNet
  Las Vegas sample cut in two with ``rio clip``, a road model trained on the north half with
  ``geounet train --line-width``, the south half's centerlines from ``geounet predict``, scored with
  ``geounet evaluate --line-buffer``; the label lines and the centerlines over the image.
- ``stac``: ``docs/img/tutorials/stac-results.png``, for ``docs/tutorials/stac-dask.md``: items
  written by ``rio stac``, a catalog by pystac, ``geounet batch CATALOG --workers 2 --mask
  --stac-out``; each result's polygons over its scene.
- ``deepness``: ``docs/img/tutorials/deepness-chicago.png``, for
  ``docs/tutorials/qgis-deepness.md``: the default ONNX export run by the Deepness stand-in of
  ``benchmarks/deepness.py`` (it reproduces Deepness 0.6.5 pixel for pixel) against
  ``geounet predict``'s class mask, on the 1024 x 1024 mosaic of the held-out Chicago crops.

The sample data is read from ``../shared/data`` (SpaceNet: CC BY-SA 4.0, "SpaceNet"; Inria Aerial
Image Labeling, Maggiori et al., IGARSS 2017); nothing of it is copied into the repository, only
the pictures. Run from the repository root (a few minutes on 2 CPU cores, most of it the road
model's training)::

    python scripts/docs_figures/tutorials_other.py [roads] [stac] [deepness] [--work-dir DIR]

Prints the commands it runs and the figures it measures (the pages quote them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
VEGAS = DATA / "spacenet-vegas-samples"
BUILDINGS = DATA / "buildings-rgb"
IMG = ROOT / "docs" / "img" / "tutorials"
BIN = Path(sys.executable).parent
#: ``--reuse``: the road model of an earlier run is kept (only the pictures are redone).
REUSE = False

#: The road tutorial's training options (docs/tutorials/roads.md, without its test speed-ups).
ROAD_TRAIN = [
    "--classes", "road", "--line-width", "6",
    "--tile-size", "128", "--width", "16", "--depth", "3",
    "--samples-per-epoch", "128", "--epochs", "12", "--lr", "5e-3", "--keep", "last",
]  # fmt: skip
#: The STAC tutorial's scenes: the first three make the catalog, the last joins it later.
STAC_SCENES = [
    ROOT / "examples" / "rio_55.tif",
    BUILDINGS / "inria" / "chicago1_4.tif",
    BUILDINGS / "inria" / "austin1_17.tif",
    BUILDINGS / "inria" / "chicago1_5.tif",
]

SOURCES = {
    "rio_55": "satellite, 0.5 m",
    "chicago1_4": "aerial, 0.3 m",
    "austin1_17": "aerial, 0.3 m",
}


def run(*args: str | Path, cwd: Path) -> str:
    """Run a command of the tutorial (``geounet``, ``rio`` from this environment) and return its
    stderr and stdout; print it and its time."""
    cmd = [str(a) for a in args]
    if (BIN / cmd[0]).exists():
        cmd[0] = str(BIN / cmd[0])
    print("$", shlex.join([Path(cmd[0]).name, *cmd[1:]]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    out = proc.stderr + proc.stdout
    print(out.rstrip(), f"\n  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if proc.returncode:
        raise SystemExit(f"exit {proc.returncode}: {shlex.join(cmd)}")
    return out


def stretch(
    bands: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32]:
    """Bands (b, rows, cols) to 0..1 display values by their 2nd and 98th percentiles."""
    out = np.empty(bands.shape, np.float32)
    for i, b in enumerate(bands.astype(np.float32)):
        vals = b[valid] if valid is not None else b
        lo, hi = np.percentile(vals, [2, 98])
        out[i] = np.clip((b - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def save(fig: Any, path: Path, colors: int = 256) -> None:
    """Save a figure as a small PNG (``colors`` colours at most)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    img = Image.open(path).convert("RGB")
    img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB)", flush=True)


def extent(src: Any) -> tuple[float, float, float, float]:
    """``imshow`` extent (left, right, bottom, top) of a raster."""
    b = src.bounds
    return (b.left, b.right, b.bottom, b.top)


def ground_aspect(src: Any) -> float:
    """The axes aspect that shows a raster's ground undistorted: 1 in a projected CRS, one over
    the cosine of the latitude in longitude/latitude."""
    if not src.crs.is_geographic:
        return 1.0
    b = src.bounds
    return float(1 / np.cos(np.radians((b.bottom + b.top) / 2)))


# --------------------------------------------------------------------------------------------
# Roads


def roads(work: Path) -> dict[str, Any]:
    import geopandas as gpd
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.lines import Line2D

    work.mkdir(parents=True, exist_ok=True)
    scene, labels = VEGAS / "roads_pan.tif", VEGAS / "roads.geojson"
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
        mid = (bottom + top) / 2
    north, south = work / "north.tif", work / "south.tif"
    run(
        "rio",
        "clip",
        scene,
        north,
        "--bounds",
        f"{left} {mid} {right} {top}",
        "--overwrite",
        cwd=work,
    )
    run(
        "rio",
        "clip",
        scene,
        south,
        "--bounds",
        f"{left} {bottom} {right} {mid}",
        "--overwrite",
        cwd=work,
    )
    model = work / "roads.safetensors"
    t0 = time.perf_counter()
    if REUSE and model.exists():
        print(f"reusing {model}", flush=True)
    else:
        run(
            "geounet", "train", "--images", north, "--labels", labels, *ROAD_TRAIN,
            "-o", model, "--overwrite", cwd=work,
        )  # fmt: skip
    train_s = time.perf_counter() - t0
    lines = work / "south_roads.gpkg"
    run("geounet", "predict", south, "-m", model, "-o", lines, "--overwrite", cwd=work)
    report = work / "south_eval.json"
    run(
        "geounet", "evaluate", south, "--labels", labels, "-m", model, "--classes", "road",
        "--line-width", "6", "--line-buffer", "3", "--json", report, cwd=work,
    )  # fmt: skip
    evaluation = json.loads(report.read_text())
    scores, pixel = evaluation["line"]["road"], evaluation["pixel"]["road"]
    pred = gpd.read_file(lines, layer=lines.stem)
    truth = gpd.read_file(labels)
    with rasterio.open(scene) as src:
        img = stretch(src.read(1)[None])[0]
        ext = extent(src)
        aspect = ground_aspect(src)
    fig, ax = plt.subplots(figsize=(6.0, 7.0))
    ax.imshow(img, cmap="gray", extent=ext, interpolation="lanczos")
    ax.axhline(mid, color="white", lw=1, ls=":")
    truth.plot(ax=ax, color="#ffd23f", lw=1.2, linestyle="--")
    if len(pred):
        pred.plot(ax=ax, color="#ff2d55", lw=2.2)
    pad = 0.02 * (ext[1] - ext[0])
    for y, text in ((top - pad, "north half: training"), (mid - pad, "south half: predicted")):
        ax.text(
            left + pad, y, text, color="white", va="top", fontsize=10,
            bbox={"facecolor": "black", "alpha": 0.55, "lw": 0},
        )  # fmt: skip
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_aspect(aspect)
    ax.set_axis_off()
    ax.legend(
        handles=[
            Line2D([], [], color="#ffd23f", lw=1.2, ls="--", label="label lines (SpaceNet)"),
            Line2D([], [], color="#ff2d55", lw=2.2, label="predicted centerlines"),
        ],
        loc="lower right", fontsize=9, framealpha=0.85,
    )  # fmt: skip
    ax.set_title(
        f"South half, within 3 m: completeness {scores['completeness']:.2f}, "
        f"correctness {scores['correctness']:.2f}, quality {scores['quality']:.2f}",
        fontsize=10,
    )
    fig.tight_layout(pad=0.3)
    save(fig, IMG / "roads-vegas.png", colors=128)
    plt.close(fig)
    out = {
        "train_seconds": round(train_s, 1),
        "lines": len(pred),
        "length_m": round(float(pred["length_m"].sum()), 1) if len(pred) else 0.0,
        **{k: round(float(v), 3) for k, v in scores.items()},
        "pixel_iou": round(float(pixel["iou"]), 3),
    }
    print("roads:", json.dumps(out), flush=True)
    return out


# --------------------------------------------------------------------------------------------
# STAC archive


def stac(work: Path) -> dict[str, Any]:
    import geopandas as gpd
    import matplotlib.pyplot as plt
    import pystac
    import rasterio

    if work.exists():
        import shutil

        shutil.rmtree(work)
    (work / "archive" / "items").mkdir(parents=True)
    for scene in STAC_SCENES[:3]:
        run(
            "rio",
            "stac",
            scene.resolve(),
            "--id",
            scene.stem,
            "-o",
            f"archive/items/{scene.stem}.json",
            cwd=work,
        )
    catalog = pystac.Catalog(
        id="archive", description="Aerial and satellite scenes (items by rio stac)"
    )
    for path in sorted((work / "archive" / "items").glob("*.json")):
        catalog.add_item(pystac.Item.from_file(str(path)))
    catalog.normalize_hrefs(str(work / "archive" / "stac"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    args = ["archive/stac/catalog.json", "-o", "results", "--mask", "--stac-out", "results/stac"]
    t0 = time.perf_counter()
    run("geounet", "batch", *args, "--workers", "2", cwd=work)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = run("geounet", "batch", *args, "--workers", "2", cwd=work)
    again_line = next(ln for ln in again.splitlines() if "skipped (already done)" in ln)
    second_s = time.perf_counter() - t0
    records = [
        json.loads(line) for line in (work / "results" / "manifest.jsonl").read_text().splitlines()
    ]
    done = {r["name"]: r for r in records if r["status"] == "done"}
    fig, axes = plt.subplots(1, 3, figsize=(10.2, 3.9), layout="constrained")
    for ax, scene in zip(axes, STAC_SCENES[:3], strict=True):
        rec = done[scene.stem]
        with rasterio.open(scene) as src:
            img = stretch(src.read([1, 2, 3]))
            ext = extent(src)
            crs = src.crs
            aspect = ground_aspect(src)
        ax.imshow(np.moveaxis(img, 0, -1), extent=ext, interpolation="lanczos")
        vectors = work / "results" / rec["outputs"]["vectors"]
        polys = gpd.read_file(vectors, layer=vectors.stem).to_crs(crs)
        if len(polys):
            polys.boundary.plot(ax=ax, color="#ff2d55", lw=1.3)
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        ax.set_aspect(aspect)
        ax.set_axis_off()
        ax.set_title(
            f"item {rec['item_id']} ({SOURCES[scene.stem]}): {rec['features']} buildings",
            fontsize=10,
        )
    save(fig, IMG / "stac-results.png", colors=128)
    plt.close(fig)
    out = {
        "first_run_s": round(first_s, 1),
        "second_run_s": round(second_s, 1),
        "second_run": again_line,
        "scenes": {
            n: {k: r[k] for k in ("features", "tiles", "seconds", "worker")}
            for n, r in done.items()
        },
    }
    print("stac:", json.dumps(out), flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Deepness


def deepness(work: Path) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deepness as stand_in  # benchmarks/deepness.py

    work.mkdir(parents=True, exist_ok=True)
    onnx = work / "buildings.onnx"
    run("geounet", "model", "export", "buildings", "-o", onnx, "--overwrite", cwd=work)
    model = stand_in.load_deepness(onnx)
    scene = stand_in.mosaic(stand_in.city_crops(BUILDINGS, "chicago"), work / "chicago.tif", 4)
    image = stand_in.read_image(scene)
    t0 = time.perf_counter()
    ours = stand_in.predict_mask(scene, work / "chicago_mask.tif")
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = stand_in.deepness_mask(model, image)
    theirs_s = time.perf_counter() - t0
    agree = stand_in.agreement(theirs, ours)
    a, b = ours == 1, theirs == 1
    rgb = stretch(image)
    shown = np.moveaxis(rgb, 0, -1) * 0.55
    shown[a & b] = (1.0, 1.0, 1.0)
    shown[a & ~b] = (1.0, 0.0, 0.85)
    shown[~a & b] = (0.1, 0.95, 0.2)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.15))
    axes[0].imshow(np.moveaxis(rgb, 0, -1))
    axes[0].set_title("The scene (0.3 m, 1024 x 1024 px)", fontsize=10)
    axes[1].imshow(shown)
    # Deepness' seams: tile centres meet half the overlap inside each tile; the layer is padded
    # past its right and top edges, so the grid starts at the padded top-left corner.
    height, width = ours.shape
    half = model.overlap_px // 2
    pad_y = stand_in.extend(height, model.tile_size, model.stride)
    for k in range(
        1,
        1
        + (width + stand_in.extend(width, model.tile_size, model.stride) - model.tile_size)
        // model.stride,
    ):
        axes[1].axvline(k * model.stride + half - 0.5, color="#ffd23f", lw=1, ls=(0, (4, 3)))
    for k in range(1, 1 + (height + pad_y - model.tile_size) // model.stride):
        y = k * model.stride + half - pad_y
        if 0 < y < height:
            axes[1].axhline(y - 0.5, color="#ffd23f", lw=1, ls=(0, (4, 3)))
    axes[1].set_title(
        f"Deepness (stand-in) and geounet: {100 * agree['agree']:.2f} % of pixels agree",
        fontsize=10,
    )
    axes[1].legend(
        handles=[
            Patch(color="white", label="building in both"),
            Patch(color=(1.0, 0.0, 0.85), label="only geounet predict"),
            Patch(color=(0.1, 0.95, 0.2), label="only Deepness"),
            Line2D([], [], color="#ffd23f", lw=1, ls=(0, (4, 3)), label="Deepness' tile seams"),
        ],
        loc="lower left", fontsize=8, framealpha=0.9,
    )  # fmt: skip
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout(pad=0.4)
    save(fig, IMG / "deepness-chicago.png", colors=128)
    plt.close(fig)
    out = {
        "agree": round(agree["agree"], 4),
        "building_iou": round(agree["iou"], 3),
        "near_edge": round(agree["near_edge"], 3),
        "geounet_s": round(ours_s, 1),
        "deepness_s": round(theirs_s, 1),
    }
    print("deepness:", json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figures", nargs="*", choices=["roads", "stac", "deepness"], default=[])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/geounet-tutorial-figures"))
    ap.add_argument(
        "--reuse", action="store_true", help="roads: keep a road model an earlier run trained"
    )
    args = ap.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    report = {}
    for name in args.figures or ["roads", "stac", "deepness"]:
        report[name] = {"roads": roads, "stac": stac, "deepness": deepness}[name](
            args.work_dir / name
        )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
