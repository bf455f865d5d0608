"""Road centerlines: train on line labels, predict an unseen scene, score the LineStrings.

Two parts, both through the library (``geounet.training.train.train_model``, ``predict_raster``,
``geounet.training.evaluate.evaluate`` with a line buffer):

* ``synthetic``: scenes of six crossing grey roads (5 to 8 m wide, gently bent, on textured
  ground with trees and buildings, EPSG:32633, 1 m pixels) whose centerlines are known exactly.
  A model is trained on two scenes' centerlines (``line_width_m`` 3, as ``--line-width 3``) and
  predicts a third with another seed and road layout. Prints completeness, correctness and
  quality within ``--buffer`` metres, and the number of predicted edges (LineStrings: they run
  between junctions and free ends) against the true network's edges (the true centerlines
  noded at their crossings).
* ``vegas``: the SpaceNet Las Vegas roads sample (``../shared/data/spacenet-vegas-samples``,
  EPSG:4326, 16-bit pan, CC BY-SA 4.0, "SpaceNet"): the scene's top half trains, its bottom half
  is predicted; the LineStrings must come back in EPSG:4326 and on the roads. The crops are
  written to ``--work-dir`` (never to the repository).

Run from the repository root (one thread: the machine is shared)::

    python benchmarks/centerlines.py --work-dir /tmp/cl                  # both parts
    python benchmarks/centerlines.py --work-dir /tmp/cl --part synthetic --epochs 12

Prints the figures and writes ``WORK/report.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

VEGAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spacenet-vegas-samples"
ORIGIN = (500000.0, 5000000.0)


def road_lines(rng: np.random.Generator, size_m: float, n_each: int = 3) -> list[Any]:
    """``n_each`` roughly vertical and ``n_each`` roughly horizontal roads from edge to edge,
    each with a bend in the middle, parallel roads at least 60 m apart (local metres, y down)."""
    import shapely

    lines = []
    for vertical in (True, False):
        while True:
            pos = np.sort(rng.uniform(0.12, 0.88, n_each) * size_m)
            if np.diff(pos).min() >= 60:
                break
        for p in pos:
            a, b = p + rng.uniform(-25, 25), p + rng.uniform(-25, 25)
            mid = (a + b) / 2 + rng.uniform(-10, 10)
            t = rng.uniform(0.35, 0.65) * size_m
            pts = [(a, -5.0), (mid, t), (b, size_m + 5.0)]
            lines.append(shapely.LineString(pts if vertical else [(y, x) for x, y in pts]))
    return lines


def synthetic_roads(path: Path, labels: Path, *, seed: int, size: int = 512) -> list[Any]:
    """A 1 m-pixel RGB scene of six crossing grey roads; writes their centerlines (class
    ``road``) to ``labels`` and returns them in map coordinates, clipped to the scene."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    lines = road_lines(rng, float(size))
    widths = rng.uniform(5.0, 8.0, len(lines))
    # Local metres, y down, equal pixels: pixel (col, row) = (x, y).
    img = np.empty((3, size, size), np.float32)
    coarse = rng.normal(0, 1, (2, size // 32 + 2, size // 32 + 2))
    yy, xx = np.mgrid[0:size, 0:size] / 32.0
    iy, ix = yy.astype(int), xx.astype(int)
    fy, fx = yy - iy, xx - ix
    low = [
        (1 - fy) * ((1 - fx) * c[iy, ix] + fx * c[iy, ix + 1])
        + fy * ((1 - fx) * c[iy + 1, ix] + fx * c[iy + 1, ix + 1])
        for c in coarse
    ]
    mix = 1 / (1 + np.exp(-2 * low[0]))  # grass (0) to bare soil (1)
    grass, soil = np.array([88, 118, 58.0]), np.array([150, 128, 92.0])
    img[:] = (
        grass[:, None, None] * (1 - mix)
        + soil[:, None, None] * mix
        + 8 * low[1]
        + rng.normal(0, 9, (3, size, size))
    )
    road_polys = [ln.buffer(w / 2, cap_style="flat") for ln, w in zip(lines, widths, strict=True)]
    roads = shapely.union_all(road_polys)
    shade = rng.uniform(-12, 12, len(lines))  # each road its own grey
    for poly, s in zip(road_polys, shade, strict=True):
        m = rasterize([(poly, 1)], out_shape=(size, size)).astype(bool)
        for c, v in enumerate((122, 122, 120)):
            img[c][m] = v + s + rng.normal(0, 7, int(m.sum()))
    # Distractors: grey and red roofs off the roads, dark trees (some over the road edges).
    placed = []
    for _ in range(300):
        if len(placed) >= 18:
            break
        w, h = rng.uniform(8, 22, 2)
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        b = shapely.box(x0, y0, x0 + w, y0 + h)
        if b.buffer(4).intersects(roads) or any(b.buffer(3).intersects(p) for p in placed):
            continue
        placed.append(b)
        colour = (182, 84, 60) if rng.random() < 0.5 else (150, 150, 146)
        m = rasterize([(b, 1)], out_shape=(size, size)).astype(bool)
        for c, v in enumerate(colour):
            img[c][m] = v + rng.normal(0, 6, int(m.sum()))
    trees = shapely.points(rng.uniform(0, size, (120, 2))).tolist()
    tm = rasterize(
        [(t.buffer(r), 1) for t, r in zip(trees, rng.uniform(2, 5, len(trees)), strict=True)],
        out_shape=(size, size),
    ).astype(bool)
    tm &= ~rasterize([(shapely.buffer(roads, -2.0), 1)], out_shape=(size, size)).astype(
        bool
    )  # edges only
    for c, v in enumerate((40, 70, 34)):
        img[c][tm] = v + rng.normal(0, 8, int(tm.sum()))
    transform = from_origin(ORIGIN[0], ORIGIN[1], 1.0, 1.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(np.clip(img, 1, 255).astype(np.uint8))
    to_map = lambda xy: np.column_stack([ORIGIN[0] + xy[:, 0], ORIGIN[1] - xy[:, 1]])
    scene_box = shapely.box(0, 0, size, size)
    mapped = [shapely.transform(shapely.intersection(ln, scene_box), to_map) for ln in lines]
    gpd.GeoDataFrame({"class": ["road"] * len(mapped)}, geometry=mapped, crs="EPSG:32633").to_file(
        labels
    )
    return mapped


def true_edges(lines: list[Any]) -> int:
    """Edges of the true network: the centerlines noded where they cross."""
    import shapely

    noded = shapely.union_all(np.asarray(lines, dtype=object))
    return len(shapely.get_parts(noded))


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "?"
    import torch

    return f"{cpu}, {__import__('os').cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread), load {__import__('os').getloadavg()[0]:.2f}, geounet {commit}"


def train(
    images: list[Path], labels: list[Path], out: Path, args: argparse.Namespace, **kw: Any
) -> dict[str, Any]:
    from geounet.training.config import TrainConfig
    from geounet.training.train import train_model

    cfg = TrainConfig(
        images=[str(p) for p in images],
        labels=[str(p) for p in labels],
        out=str(out),
        class_field="class",
        classes=["road"],
        line_width_m=args.line_width,
        tile_size=args.tile_size,
        batch_size=8,
        epochs=args.epochs,
        samples_per_epoch=args.samples,
        width=args.width,
        depth=3,
        lr=5e-3,
        device="cpu",
        seed=0,
        overwrite=True,
        **kw,
    )
    t0 = time.perf_counter()
    res = train_model(
        cfg,
        on_epoch=lambda r: print(
            f"  epoch {r.get('epoch')}: val IoU {r.get('val_iou', r.get('iou', float('nan'))):.3f}",
            file=sys.stderr,
            flush=True,
        ),
    )
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "best_epoch": res.best_epoch,
        "best_val_iou": round(res.best_iou, 4),
    }


def predict_and_score(
    scene: Path, labels: Path, model: Path, out: Path, buffer: float, **label_kw: Any
) -> dict[str, Any]:
    import geopandas as gpd

    from geounet.labels.spec import LabelSpec
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster
    from geounet.training.evaluate import evaluate

    t0 = time.perf_counter()
    r = predict_raster(scene, out, model=model, config=PredictConfig(device="cpu", overwrite=True))
    seconds = time.perf_counter() - t0
    frame = gpd.read_file(out, layer=out.stem)
    spec = LabelSpec(class_field="class", classes=("road",), **label_kw)
    report = evaluate(scene, labels, prediction=out, spec=spec, line_buffer_m=buffer)
    return {
        "predict_seconds": round(seconds, 1),
        "lines": r.line_features,
        "geom_types": sorted(set(frame.geom_type)),
        "crs": frame.crs.to_string(),
        "line": report["line"]["road"],
        "frame": frame,
    }


def synthetic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    scenes = []
    for seed in (1, 2, 7)[: args.scenes]:
        scenes.append((work / f"syn{seed}.tif", work / f"syn{seed}.gpkg"))
        synthetic_roads(*scenes[-1], seed=seed)
    model = work / "roads.safetensors"
    tr = train([s for s, _ in scenes], [lab for _, lab in scenes], model, args)
    out: dict[str, Any] = {"train": tr, "unseen": {}}
    print(
        f"trained {tr['seconds']:.0f} s (best epoch {tr['best_epoch']}, val IoU {tr['best_val_iou']:.3f})",
        flush=True,
    )
    for seed in args.seed:
        test_lines = synthetic_roads(
            work / f"unseen{seed}.tif", work / f"unseen{seed}.gpkg", seed=seed
        )
        res = predict_and_score(
            work / f"unseen{seed}.tif",
            work / f"unseen{seed}.gpkg",
            model,
            work / f"unseen{seed}_lines.gpkg",
            args.buffer,
        )
        res.pop("frame")
        n_true = true_edges(test_lines)
        res.update(true_edges=n_true, edge_ratio=round(res["lines"] / n_true, 3))
        out["unseen"][seed] = res
        m = res["line"]
        print(
            f"synthetic unseen seed {seed}: completeness {m['completeness']:.3f}, correctness {m['correctness']:.3f}, "
            f"quality {m['quality']:.3f} within {args.buffer:g} m; edges {res['lines']} predicted / {n_true} true = {res['edge_ratio']:.2f}; "
            f"predict {res['predict_seconds']:.1f} s",
            flush=True,
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def vegas(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.windows import Window
    from rasterio.windows import transform as win_transform

    t0 = time.perf_counter()
    roads = gpd.read_file(VEGAS / "roads.geojson")[["geometry"]].assign(**{"class": "road"})
    crops = {}
    with rasterio.open(VEGAS / "roads_pan.tif") as src:
        half = src.height // 2
        for name, win in (
            ("top", Window(0, 0, src.width, half)),
            ("bottom", Window(0, half, src.width, src.height - half)),
        ):
            prof = {
                **src.profile,
                "width": int(win.width),
                "height": int(win.height),
                "transform": win_transform(win, src.transform),
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
            }
            path = work / f"vegas_{name}.tif"
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(src.read(window=win))
                bounds = dst.bounds
            lab = work / f"vegas_{name}.gpkg"
            clipped = roads.clip(shapely.box(*bounds))
            clipped = clipped[~clipped.geometry.is_empty].explode(index_parts=False)
            clipped.to_file(lab)
            crops[name] = (path, lab)
    model = work / "vegas.safetensors"
    tr = train([crops["top"][0]], [crops["top"][1]], model, args)
    res = predict_and_score(
        *crops["bottom"],
        model,
        work / "vegas_lines.gpkg",
        args.buffer,
        line_width_m=args.line_width,
    )
    frame = res.pop("frame")
    truth = gpd.read_file(crops["bottom"][1])
    utm = truth.estimate_utm_crs()
    on_road = (
        float(
            frame.to_crs(utm)
            .geometry.intersection(truth.to_crs(utm).union_all().buffer(args.buffer))
            .length.sum()
            / max(frame.to_crs(utm).length.sum(), 1e-9)
        )
        if len(frame)
        else float("nan")
    )
    out = {
        "train": tr,
        **res,
        "share_on_roads": round(on_road, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    m = out["line"]
    print(
        f"vegas (bottom half, trained on the top half): {res['lines']} {'/'.join(res['geom_types'])} in {res['crs']}; "
        f"completeness {m['completeness']:.3f}, correctness {m['correctness']:.3f}, quality {m['quality']:.3f} within {args.buffer:g} m "
        f"(true {m['length_true']:.0f} m, predicted {m['length_pred']:.0f} m), {out['share_on_roads']:.1%} of the predicted length within "
        f"{args.buffer:g} m of a true road; train {tr['seconds']:.0f} s (val IoU {tr['best_val_iou']:.3f}), total {out['seconds']:.0f} s",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--part", choices=["synthetic", "vegas", "both"], default="both")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--samples", type=int, default=128, help="training windows per epoch")
    p.add_argument("--scenes", type=int, default=2, help="synthetic training scenes (1 to 3)")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16, help="U-Net first-level channels")
    p.add_argument("--line-width", type=float, default=3.0, help="metres (train --line-width)")
    p.add_argument("--buffer", type=float, default=2.0, help="metres (evaluate --line-buffer)")
    p.add_argument(
        "--seed",
        type=int,
        action="append",
        help="seed of an unseen synthetic scene (repeatable; default 11, 12, 13)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.seed = args.seed or [11, 12, 13]
    import torch

    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"$ python {' '.join(sys.argv)}\n{machine()}", flush=True)
    report: dict[str, Any] = {"argv": sys.argv, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.part in ("synthetic", "both"):
        report["synthetic"] = synthetic(args, args.work_dir)
    if args.part in ("vegas", "both"):
        report["vegas"] = vegas(args, args.work_dir)
    (args.work_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
