"""Train a building model on ../shared/data/buildings-rgb and score it on whole held-out images.

The held-out images never contribute a training window: the Inria crops that the source
repository put in its ``val`` split (4 Austin, 4 Chicago, aerial 0.3 m) and four Rio images
(rio_51, rio_55, rio_59, rio_63; WorldView-2 0.5 m). Everything else trains. The model is trained
through the library (``geounet.training.train.train_model``) with geounet's defaults unless flags say
otherwise, then every held-out image is predicted whole (``Predictor.run``, a class mask) and
scored against the polygons: pixel IoU/F1 and object F1 (SpaceNet matching, IoU >= 0.5), per
source (tp, fp, fn summed over its images) and overall. Run from the repository root:

    python benchmarks/buildings.py --out /tmp/b --epochs 20                # defaults
    python benchmarks/buildings.py --out /tmp/b2 --epochs 20 --augment flip  # an ablation
    python benchmarks/buildings.py --out /tmp/b --evaluate-only --model M    # score a model
    python benchmarks/buildings.py --out /tmp/b --evaluate-only --model M --score-on training --threshold 0.4

Prints one table and writes ``OUT/report.json`` (config, timings, per image and per source).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "buildings-rgb"
VAL_RIO = ("rio_51", "rio_55", "rio_59", "rio_63")


def source_of(name: str) -> str:
    """``rio``, ``austin`` or ``chicago`` from an image name."""
    return "rio" if name.startswith("rio") else name.split("1_")[0]


def held_out(data: Path) -> tuple[list[Path], list[Path]]:
    """(training images, held-out images) of the data folder."""
    import geopandas as gpd

    val_inria: set[str] = set()
    for city in ("austin", "chicago"):
        frame = gpd.read_file(
            data / "inria" / f"buildings_{city}.geojson", columns=["image", "source_split"]
        )
        val_inria |= set(frame.loc[frame["source_split"] == "val", "image"].astype(str))
    images = sorted((data / "rio").glob("*.tif")) + sorted((data / "inria").glob("*.tif"))
    val = [p for p in images if p.stem in VAL_RIO or p.stem in val_inria or p.name in val_inria]
    train = [p for p in images if p not in val]
    return train, val


def label_files(data: Path) -> list[Path]:
    return [
        data / "rio" / "buildings.geojson",
        data / "inria" / "buildings_austin.geojson",
        data / "inria" / "buildings_chicago.geojson",
    ]


def labels_for(data: Path, image: Path) -> Path:
    src = source_of(image.stem)
    return label_files(data)[{"rio": 0, "austin": 1, "chicago": 2}[src]]


def score(
    model: Path,
    images: list[Path],
    data: Path,
    *,
    tta: bool = False,
    regularize: bool | None = None,
    split_m: float | None = None,
    split_seeds: float | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Predict each image whole and score it (``geounet.training.evaluate.evaluate`` with the model, as
    ``geounet evaluate`` does); sums per source and overall."""
    import rasterio

    from geounet.errors import LabelsError
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import Predictor
    from geounet.training.evaluate import evaluate

    cfg = PredictConfig(
        device="cpu",
        tta=tta,
        regularize=regularize,
        split_m=split_m,
        split_seeds=split_seeds,
        threshold=threshold,
    )
    per_image: dict[str, Any] = {}
    sums: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    for image in images:
        try:
            rep = evaluate(image, labels_for(data, image), model=model, config=cfg)
            px = rep["pixel"][rep["classes"][1]]
            ob = rep["object"].get(rep["classes"][1], {"tp": 0, "fp": 0, "fn": 0})
            row = {k: int(px[k]) for k in ("tp", "fp", "fn")} | {
                f"obj_{k}": int(ob[k]) for k in ("tp", "fp", "fn")
            }
        except LabelsError:  # an image without buildings: every predicted pixel is false
            with tempfile.TemporaryDirectory() as tmp:
                mask = Path(tmp) / "mask.tif"
                Predictor(str(model), device="cpu").run(image, mask=mask, config=cfg)
                with rasterio.open(mask) as src:
                    m = src.read(1)
            row = {
                "tp": 0,
                "fp": int(((m > 0) & (m < 255)).sum()),
                "fn": 0,
                "obj_tp": 0,
                "obj_fp": -1,
                "obj_fn": 0,
            }
        per_image[image.stem] = row
        for key in (source_of(image.stem), "all"):
            acc = sums.setdefault(key, {})
            for k, v in row.items():
                if v >= 0:
                    acc[k] = acc.get(k, 0) + v
    out: dict[str, Any] = {"per_image": per_image, "seconds": round(time.perf_counter() - t0, 1)}
    for key, acc in sums.items():
        out[key] = figures(acc, sum(1 for i in per_image if key == "all" or source_of(i) == key))
    return out


def figures(acc: dict[str, int], images: int) -> dict[str, Any]:
    """Pixel IoU/F1/precision/recall and object F1 from summed counts."""
    tp, fp, fn = acc.get("tp", 0), acc.get("fp", 0), acc.get("fn", 0)
    otp, ofp, ofn = acc.get("obj_tp", 0), acc.get("obj_fp", 0), acc.get("obj_fn", 0)
    return {
        "pixel_iou": round(tp / max(1, tp + fp + fn), 4),
        "pixel_f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
        "pixel_precision": round(tp / max(1, tp + fp), 4),
        "pixel_recall": round(tp / max(1, tp + fn), 4),
        "object_f1": round(2 * otp / max(1, 2 * otp + ofp + ofn), 4),
        "objects": {"tp": otp, "fp": ofp, "fn": ofn},
        "images": images,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True, help="folder for the model and report.json")
    ap.add_argument("--model", type=Path, help="with --evaluate-only: the model to score")
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--tta", action="store_true", help="score with test-time augmentation too")
    ap.add_argument(
        "--split-seeds",
        type=float,
        default=None,
        metavar="P",
        help="score with predict --split-seeds P too",
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="foreground probability threshold for scoring (predict --threshold)",
    )
    ap.add_argument(
        "--score-on",
        choices=["held-out", "training"],
        default="held-out",
        help="with --evaluate-only: the images to score (training: for choices made without the held-out ones)",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--samples-per-epoch", type=int, default=None)
    ap.add_argument("--augment", default="flip,scale,colour,noise")
    ap.add_argument("--scale-jitter", type=float, default=1.25)
    ap.add_argument("--normalization", default="scene")
    ap.add_argument("--gsd", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init", type=Path, help="continue from this model (fine-tuning: a new schedule)"
    )
    ap.add_argument(
        "--separation", type=float, default=None, help="train --separation (metres; 0 = off)"
    )
    ap.add_argument("--contact-weight", type=float, default=None)
    ap.add_argument(
        "--core", type=float, default=None, help="train --core (metres; 0 = no core channel)"
    )
    ap.add_argument(
        "--core-only", action="store_true", help="train --core-only (the core channel alone)"
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=None,
        help="train --ema (weight average decay; 0 = raw weights)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (same flags; --threads may differ)",
    )
    args = ap.parse_args(argv)

    import torch

    from geounet.training.config import TrainConfig
    from geounet.training.dataset import Augment
    from geounet.training.finish import _resume_path
    from geounet.training.train import train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"{args.data} not found", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = held_out(args.data)
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_images": len(train),
        "val_images": [p.stem for p in val],
    }
    model = args.model or args.out / "model.safetensors"
    if args.evaluate_only and args.score_on == "training":
        val = train
        report["scored_on"] = "training images"
    if not args.evaluate_only:
        kw: dict[str, Any] = {}
        if args.lr:
            kw["lr"] = args.lr
        if args.init:
            kw["init"] = str(args.init)
        if args.separation is not None:
            kw["separation_m"] = args.separation
        if args.contact_weight is not None:
            kw["contact_weight"] = args.contact_weight
        if args.core is not None:
            kw["core_m"] = args.core
        if args.core_only:
            kw["core_only"] = True
        if args.ema is not None:
            kw["ema"] = args.ema
        if args.resume:
            kw["resume"] = str(_resume_path(model))
        cfg = TrainConfig(
            images=[str(p) for p in train],
            val_images=[str(p) for p in val],
            labels=[str(p) for p in label_files(args.data)],
            out=str(model),
            tile_size=args.tile_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            width=args.width,
            samples_per_epoch=args.samples_per_epoch,
            augment=Augment.parse(args.augment, scale=args.scale_jitter),
            normalization=args.normalization,
            gsd=args.gsd,
            seed=args.seed,
            device="cpu",
            overwrite=True,
            **kw,
        )
        t0 = time.perf_counter()

        def on_epoch(r: dict[str, Any]) -> None:
            print(
                f"epoch {r['epoch']}: loss {r['train_loss']:.4f} val IoU {r['val_iou']} F1 {r['val_f1']} "
                f"({r['seconds']:.0f} s, {time.perf_counter() - t0:.0f} s in all)",
                flush=True,
            )

        result = train_model(cfg, on_epoch=on_epoch, on_info=lambda line: print(line, flush=True))
        report["train_seconds"] = round(time.perf_counter() - t0, 1)
        report["best_epoch"] = result.best_epoch
        report["best_val_iou_windows"] = round(result.best_iou, 4)
    report["plain"] = score(
        model, val, args.data, regularize=False, split_seeds=0, threshold=args.threshold
    )
    report["regularized"] = score(
        model, val, args.data, regularize=True, split_seeds=0, threshold=args.threshold
    )
    if args.tta:
        report["tta"] = score(
            model,
            val,
            args.data,
            tta=True,
            regularize=False,
            split_seeds=0,
            threshold=args.threshold,
        )
    if args.split_seeds is not None:
        report["seeds"] = score(
            model,
            val,
            args.data,
            regularize=False,
            split_seeds=args.split_seeds,
            threshold=args.threshold,
        )
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{'':20} {'pixel IoU':>9} {'pixel F1':>9} {'object F1':>9}  images")
    for variant in ("plain", "regularized", "tta", "seeds"):
        if variant not in report:
            continue
        for key in ("rio", "austin", "chicago", "all"):
            r = report[variant].get(key)
            if r:
                print(
                    f"{variant + ' ' + key:20} {r['pixel_iou']:9.3f} {r['pixel_f1']:9.3f} {r['object_f1']:9.3f}  {r['images']}"
                )
    if "train_seconds" in report:
        print(
            f"trained in {report['train_seconds'] / 60:.1f} min, best epoch {report['best_epoch']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
