"""Where a building model goes wrong on buildings-rgb: each label polygon matched, merged, partly found or missed.

    python benchmarks/errors.py --out /tmp/err                        # the bundled model, the 4 held-out Rio images
    python benchmarks/errors.py --out /tmp/err --source rio --training   # the 11 Rio training images
    python benchmarks/errors.py --out /tmp/err --model M --source chicago

Predicts each image with the model's defaults (``geounet.prediction.predictor.predict_raster``), then sorts every
label polygon of the image by the prediction that overlaps it most:

- matched: IoU >= 0.5 with it (what object F1 counts);
- merged: that prediction also covers more than 30 % of another label polygon (neighbours joined);
- partly found: more than 30 % of the label is covered, but neither of the above;
- missed: the rest.

It also scores the prediction's mask against the image's label mask shifted by up to 4 pixels
either way: a best shift far from (0, 0) would mean labels offset from the roofs. Prints one
JSON object and writes it to ``OUT/errors.json``. Needs ../shared/data/buildings-rgb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import buildings  # benchmarks/buildings.py: the data folder, the held-out split, the label files

SHIFT = 4


def sort_labels(labels: Any, predicted: Any) -> dict[str, list[float]]:
    """Areas (m²) of the label polygons in each category; both frames in one metric CRS."""
    out: dict[str, list[float]] = {"matched": [], "merged": [], "partly found": [], "missed": []}
    index = predicted.sindex
    geoms = list(labels.geometry)
    for g in geoms:
        cand = predicted.geometry.iloc[index.query(g, predicate="intersects")]
        kind = "missed"
        if len(cand):
            ious = [g.intersection(p).area / g.union(p).area for p in cand]
            best = cand.iloc[int(np.argmax(ious))]
            if max(ious) >= 0.5:
                kind = "matched"
            elif sum(q.intersection(best).area > 0.3 * q.area for q in geoms) >= 2:
                kind = "merged"
            elif g.intersection(best).area > 0.3 * g.area:
                kind = "partly found"
        out[kind].append(g.area)
    return out


def best_shift(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pixel IoU of the prediction against the label mask shifted by (dy, dx), |d| <= SHIFT: the best and (0, 0)."""
    inner = (slice(SHIFT, -SHIFT), slice(SHIFT, -SHIFT))
    scores = {}
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            t = np.roll(truth, (dy, dx), axis=(0, 1))[inner]
            p = pred[inner]
            union = (t | p).sum()
            scores[dy, dx] = float((t & p).sum() / union) if union else float("nan")
    if np.isnan(scores[0, 0]):  # neither labels nor predictions: nothing to align
        return {"best_shift_px": None, "iou_at_best": None, "iou_unshifted": None}
    (dy, dx), iou = max(scores.items(), key=lambda kv: kv[1])
    if iou == 0:  # no overlap at any shift: no offset to speak of
        return {"best_shift_px": None, "iou_at_best": 0.0, "iou_unshifted": 0.0}
    return {
        "best_shift_px": [dy, dx],
        "iou_at_best": round(iou, 4),
        "iou_unshifted": round(scores[0, 0], 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=buildings.DATA)
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for the predictions and errors.json"
    )
    ap.add_argument("--model", default="buildings", help="model file or bundled name")
    ap.add_argument("--source", choices=["rio", "austin", "chicago"], default="rio")
    ap.add_argument(
        "--training",
        action="store_true",
        help="the source's training images instead of its held-out ones",
    )
    args = ap.parse_args(argv)

    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    if not args.data.is_dir():
        print(
            f"{args.data} not found: this benchmark needs ../shared/data/buildings-rgb",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = buildings.held_out(args.data)
    images = [p for p in (train if args.training else val) if p.stem.startswith(args.source)]
    totals: dict[str, list[float]] = {}
    per_image = {}
    for image in images:
        vec, mask = args.out / f"{image.stem}.gpkg", args.out / f"{image.stem}_mask.tif"
        predict_raster(
            image, vec, model=args.model, mask=mask, config=PredictConfig(overwrite=True)
        )
        labels = gpd.read_file(buildings.labels_for(args.data, image))
        predicted = gpd.read_file(vec, layer=image.stem)
        with rasterio.open(image) as src:
            footprint = gpd.GeoSeries([box(*src.bounds)], crs=src.crs)
        metric = footprint.estimate_utm_crs() if footprint.crs.is_geographic else footprint.crs
        # Every label polygon on the image, clipped to it (as geounet evaluate counts them).
        own = gpd.clip(labels.to_crs(src.crs), footprint).to_crs(metric)
        sorted_ = sort_labels(own[own.geometry.area > 0], predicted.to_crs(metric))
        for k, v in sorted_.items():
            totals.setdefault(k, []).extend(v)
        with rasterio.open(mask) as src:
            pred = src.read(1) == 1
        with rasterio.open(image.parent / "masks" / image.name) as src:
            truth = src.read(1) > 0
        per_image[image.stem] = {
            **{k: len(v) for k, v in sorted_.items()},
            **best_shift(pred, truth),
        }
    report = {
        "model": args.model,
        "images": [p.stem for p in images],
        "label_polygons": sum(len(v) for v in totals.values()),
        "counts": {k: len(v) for k, v in totals.items()},
        "median_area_m2": {
            k: round(float(np.median(v)), 1) if v else None for k, v in totals.items()
        },
        "per_image": per_image,
    }
    text = json.dumps(report, indent=2)
    (args.out / "errors.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
