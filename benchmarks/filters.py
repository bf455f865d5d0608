"""Would a polygon filter raise object F1? Minimum mean score and minimum area, swept on buildings-rgb.

    python benchmarks/filters.py --out /tmp/f                      # the bundled model, the 44 training images
    python benchmarks/filters.py --out /tmp/f --held-out           # the 12 held-out images
    python benchmarks/filters.py --out /tmp/f --model M --threads 1

Predicts each image once with the model's defaults (``Predictor.run``, polygons with their
``score``, the mean foreground probability, and ``area_m2``), matches the polygons to the
labels one to one at IoU >= 0.5 (``geounet.training.evaluate.match_pairs``, as ``geounet evaluate`` does), and then, for
each cut, drops the polygons below it and recounts: a dropped match becomes a miss, a dropped
false polygon is gone. Pixel figures do not move (the mask is the same). Also tells how the
false polygons overlap the labels (none, IoU under 0.3, 0.3-0.5): overlapping false polygons
are merged or partly found buildings, which no filter mends. Prints a table per source and
writes ``OUT/filters.json``. Needs ../shared/data/buildings-rgb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import buildings

SCORES = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8)
AREAS = (0.0, 10.0, 15.0, 20.0, 30.0)


def polygons_and_matches(
    model: str, images: list[Path], data: Path, out: Path
) -> list[dict[str, Any]]:
    """One row per predicted polygon (image, source, score, area, matched, best IoU) and one per
    image with its number of label polygons."""
    import geopandas as gpd
    import rasterio

    from geounet.labels.spec import LabelSpec
    from geounet.labels.vector import read_labels
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import Predictor
    from geounet.training.evaluate import match_pairs

    predictor = Predictor(model, device="cpu")
    rows: list[dict[str, Any]] = []
    for image in images:
        path = out / f"{image.stem}.gpkg"
        predictor.run(image, path, config=PredictConfig(device="cpu"))
        frame = gpd.read_file(path, layer=image.stem)
        with rasterio.open(image) as src:
            lab = read_labels(buildings.labels_for(data, image), LabelSpec())
            rl = lab.for_raster(src.crs, src.transform, src.width, src.height, name=image.name)
        truth = [g for g in rl.geometries if g is not None and not g.is_empty]
        matches, best = match_pairs(list(frame.geometry), truth)
        matched = {i for i, _, _ in matches}
        source = buildings.source_of(image.stem)
        for i in range(len(frame)):
            rows.append(
                {
                    "image": image.stem,
                    "source": source,
                    "score": float(frame["score"].iloc[i]),
                    "area_m2": float(frame["area_m2"].iloc[i]),
                    "matched": i in matched,
                    "best_iou": round(float(best[i]), 4),
                }
            )
        rows.append({"image": image.stem, "source": source, "labels": len(truth)})
    return rows


def sweep(rows: list[dict[str, Any]], source: str | None) -> dict[str, Any]:
    """Object F1 (tp/fp/fn) per minimum score and per minimum area, and the false polygons'
    overlap with the labels, for one source (None: all)."""
    polys = [r for r in rows if "score" in r and source in (None, r["source"])]
    n_labels = sum(r["labels"] for r in rows if "labels" in r and source in (None, r["source"]))
    score = np.array([r["score"] for r in polys])
    area = np.array([r["area_m2"] for r in polys])
    hit = np.array([r["matched"] for r in polys], dtype=bool)
    best = np.array([r["best_iou"] for r in polys])

    def f1(keep: np.ndarray) -> dict[str, Any]:
        tp, fp = int((hit & keep).sum()), int((~hit & keep).sum())
        fn = n_labels - tp
        return {"f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4), "tp": tp, "fp": fp, "fn": fn}

    false = ~hit
    return {
        "min_score": {str(s): f1(score >= s) for s in SCORES},
        "min_area_m2": {str(a): f1(area >= a) for a in AREAS},
        "false_polygons": {
            "no_overlap": int((false & (best == 0)).sum()),
            "iou_under_0.3": int((false & (best > 0) & (best < 0.3)).sum()),
            "iou_0.3_to_0.5": int((false & (best >= 0.3)).sum()),
        },
        "median_score": {
            "matched": round(float(np.median(score[hit])), 3) if hit.any() else None,
            "false": round(float(np.median(score[false])), 3) if false.any() else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=buildings.DATA)
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for the polygons and filters.json"
    )
    ap.add_argument("--model", default="buildings", help="model file or bundled name")
    ap.add_argument(
        "--held-out",
        action="store_true",
        help="the 12 held-out images instead of the 44 training ones",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: not found (needs ../shared/data/buildings-rgb)", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train, val = buildings.held_out(args.data)
    images = val if args.held_out else train
    args.out.mkdir(parents=True, exist_ok=True)
    rows = polygons_and_matches(args.model, images, args.data, args.out)
    report = {src or "all": sweep(rows, src) for src in ("rio", "austin", "chicago", None)}
    print(
        f"{'held-out' if args.held_out else 'training'} images ({len(images)}), object F1 (tp/fp/fn):"
    )
    for key, r in report.items():
        print(
            f"{key}: false polygons {r['false_polygons']}, median score matched {r['median_score']['matched']} / false {r['median_score']['false']}"
        )
        print(
            "  min score "
            + "  ".join(
                f"{s}: {v['f1']:.3f} ({v['tp']}/{v['fp']}/{v['fn']})"
                for s, v in r["min_score"].items()
            )
        )
        print(
            "  min area  "
            + "  ".join(
                f"{a}: {v['f1']:.3f} ({v['tp']}/{v['fp']}/{v['fn']})"
                for a, v in r["min_area_m2"].items()
            )
        )
    (args.out / "filters.json").write_text(
        json.dumps(
            {
                "model": str(args.model),
                "images": [p.stem for p in images],
                "report": report,
                "polygons": rows,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
