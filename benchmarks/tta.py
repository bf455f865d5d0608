"""Test-time augmentation against plain prediction: accuracy gained, time paid.

Each image is predicted twice through the library (``geounet.prediction.predictor.Predictor.run``, one loaded
model, a class mask per run): plain, then with ``PredictConfig(tta=True)`` (the 8 rotations and
mirrors of every tile, logits averaged). Each mask is scored against the vector labels with
``geounet.training.evaluate.evaluate(image, labels, prediction=mask)``. Printed per image and overall (tp,
fp, fn summed over the images) for every foreground class: pixel IoU and F1, object F1 (SpaceNet
matching at IoU >= 0.5) with and without TTA, and the time ratio TTA / plain, of the whole run
and of the network alone. Runs on a CPU; run by hand from the repository root:

    python benchmarks/tta.py --model buildings.safetensors \\
        --images ../shared/data/buildings-rgb/rio/rio_5*.tif \\
        --labels ../shared/data/buildings-rgb/rio/buildings.geojson
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("plain", "tta")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model file (.safetensors)")
    ap.add_argument("--images", nargs="+", required=True, help="GeoTIFFs to predict")
    ap.add_argument(
        "--labels",
        nargs="+",
        required=True,
        help="vector labels: one file for every image, or one per image (in order)",
    )
    ap.add_argument(
        "--class-field", help="attribute holding each label's class (as geounet evaluate)"
    )
    ap.add_argument("--classes", help="comma-separated class names, in the model's order")
    ap.add_argument("--tile-size", type=int, help="tile size [default: the model's]")
    ap.add_argument("--overlap", type=int, help="overlap [default: the model's]")
    ap.add_argument("--batch-size", type=int, help="tiles per forward pass [default: geounet's]")
    ap.add_argument(
        "--device", default="cpu", choices=("auto", "cpu", "cuda"), help="[default: cpu]"
    )
    ap.add_argument("--threads", type=int, help="torch.set_num_threads [default: torch's]")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = ap.parse_args(argv)
    if len(args.labels) not in (1, len(args.images)):
        ap.error(f"give one --labels file, or one per image ({len(args.images)})")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Predict and score every image both ways; the figures as a dict (also printed)."""
    import numpy as np
    import torch

    from geounet.errors import LabelsError
    from geounet.labels.spec import LabelSpec
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import Predictor
    from geounet.training.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device=args.device)
    meta = predictor.meta
    tile = args.tile_size or meta.tile_size
    spec = LabelSpec(
        class_field=args.class_field,
        classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
    )
    configs = {
        v: PredictConfig(
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=args.device,
            overwrite=True,
            tta=v == "tta",
        )
        for v in VARIANTS
    }
    print_header(args, predictor)
    # Warm-up, both ways: the first forward passes of a shape pay for kernel selection.
    warm = np.zeros((1, meta.bands, tile, tile), np.float32)
    for v in VARIANTS:
        predictor.forward(warm, np.ones((1, tile, tile), bool), tta=v == "tta")

    images: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="geounet-tta-") as tmp:
        for i, image in enumerate(args.images):
            labels = args.labels[0] if len(args.labels) == 1 else args.labels[i]
            row: dict[str, Any] = {"image": image, "labels": labels}
            for v in VARIANTS:
                mask = Path(tmp) / f"{i}-{v}.tif"
                result = predictor.run(image, mask=mask, config=configs[v])
                try:
                    report = evaluate(image, labels, prediction=mask, spec=spec)
                except LabelsError as exc:  # no label inside this image
                    row["skipped"] = str(exc)
                    break
                row[v] = {
                    "seconds": result.seconds,
                    "network_seconds": result.timings["model"],
                    "tiles": result.tiles - result.tiles_skipped,
                    "pixel": report["pixel"],
                    "object": report["object"],
                }
            images.append(row)
            print_image(row)
    scored = [r for r in images if "skipped" not in r]
    overall = {v: summed(scored, v) for v in VARIANTS} if scored else {}
    if overall:
        print_rows("overall", overall)
        print(time_ratio(overall["plain"], overall["tta"], "overall"))
    return {
        "model": args.model,
        "tile_size": tile,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "images": images,
        "overall": overall,
    }


def summed(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    """Overall figures of one variant: tp/fp/fn and seconds summed over images, scores from the sums."""
    out: dict[str, Any] = {
        "seconds": 0.0,
        "network_seconds": 0.0,
        "tiles": 0,
        "pixel": {},
        "object": {},
    }
    for r in rows:
        v = r[variant]
        for key in ("seconds", "network_seconds", "tiles"):
            out[key] += v[key]
        for kind in ("pixel", "object"):
            for name, m in v[kind].items():
                acc = out[kind].setdefault(name, {"tp": 0, "fp": 0, "fn": 0})
                for k in ("tp", "fp", "fn"):
                    acc[k] += int(m[k])
    for kind in ("pixel", "object"):
        for m in out[kind].values():
            m.update(scores(m["tp"], m["fp"], m["fn"]))
    return out


def scores(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """IoU and F1 from counts (None when undefined: nothing predicted and nothing labelled)."""
    return {
        "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    }


def print_header(args: argparse.Namespace, predictor: Any) -> None:
    import torch

    meta = predictor.meta
    print(
        f"# geounet TTA benchmark, {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )
    print(f"# command: python {shlex.join(sys.argv)}")
    la = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {la}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {predictor.device}"
    )
    print(
        f"# model: {args.model}, U-Net width {meta.arch_args['width']}, depth {meta.arch_args['depth']}, "
        f"tile {args.tile_size or meta.tile_size}, overlap {meta.overlap if args.overlap is None else args.overlap}"
    )
    print()
    print(
        f"{'image':<24}{'run':<7}{'class':<14}{'px IoU':>8}{'px F1':>8}{'obj F1':>8}  {'obj tp/fp/fn':<14}{'s':>8}{'net s':>8}"
    )


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_rows(name: str, row: dict[str, Any]) -> None:
    for v in VARIANTS:
        r = row[v]
        classes = [c for c in r["pixel"] if c != "background"]
        for j, c in enumerate(classes):
            px, ob = r["pixel"][c], r["object"].get(c)
            obj = (_f(ob["f1"]), f"{ob['tp']}/{ob['fp']}/{ob['fn']}") if ob else ("-", "-")
            t = (f"{r['seconds']:>8.2f}{r['network_seconds']:>8.2f}") if j == 0 else ""
            print(
                f"{name[:23]:<24}{v:<7}{c[:13]:<14}{_f(px['iou']):>8}{_f(px['f1']):>8}{obj[0]:>8}  {obj[1]:<14}{t}"
            )


def time_ratio(plain: dict[str, Any], tta: dict[str, Any], name: str) -> str:
    wall = tta["seconds"] / plain["seconds"]
    net = (
        tta["network_seconds"] / plain["network_seconds"]
        if plain["network_seconds"]
        else float("nan")
    )
    return f"{name[:23]:<24}time TTA / plain: {wall:.2f}x the run, {net:.2f}x the network"


def print_image(row: dict[str, Any]) -> None:
    name = Path(row["image"]).name
    if "skipped" in row:
        print(f"{name[:23]:<24}skipped: {row['skipped']}")
        return
    print_rows(name, row)
    print(time_ratio(row["plain"], row["tta"], name))


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    figures = run(args)
    print(f"\n# {time.perf_counter() - t0:.1f} s in all")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
