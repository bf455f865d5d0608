"""Does the default training command fit one real scene? (SpaceNet Atlanta, 16-bit pan, 43 buildings)

    python benchmarks/atlanta.py --out /tmp/atl                 # the issue's command, about 50 min on 2 cores
    python benchmarks/atlanta.py --out /tmp/atl -- --lr 5e-3    # extra train flags after --
    python benchmarks/atlanta.py --out /tmp/atl -- --keep best  # the highest validation IoU

Runs ``geounet train --images buildings_pan.tif --labels buildings.geojson --epochs 15
--tile-size 256 --width 16 --depth 4 --batch-size 8 --seed 0`` on
``../shared/data/spacenet-vegas-samples`` exactly as a user would (the CLI, its defaults), then
scores the whole scene (``geounet.training.evaluate.evaluate``, pixel IoU and object F1 at IoU >= 0.5)
with the model the run kept (``--keep auto``: the latest epoch within one standard error of the best validation IoU) and with the last epoch's weights (from the
resume checkpoint: the weight average, or the raw weights with ``--ema 0``). The scene's IoU
mixes the training area (about 80 %, which the network must fit) with the validation band it
never saw; the band's own IoU is in the metrics file.
Prints one JSON object and writes it to ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spacenet-vegas-samples"
COMMAND = [
    "--epochs",
    "15",
    "--tile-size",
    "256",
    "--width",
    "16",
    "--depth",
    "4",
    "--batch-size",
    "8",
    "--seed",
    "0",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True, help="folder for the model and report.json")
    ap.add_argument("train_args", nargs="*", help="after --: extra flags for geounet train")
    args = ap.parse_args(argv)

    from geounet.network.checkpoint import load_model, save_model
    from geounet.training.evaluate import evaluate
    from geounet.training.finish import _metrics_path, _resume_path
    from geounet.training.resume import _load_resume

    scene, labels = args.data / "buildings_pan.tif", args.data / "buildings.geojson"
    if not scene.exists():
        print(
            f"no {scene}: this benchmark needs ../shared/data/spacenet-vegas-samples",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "atl.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "geounet",
        "train",
        "--images",
        str(scene),
        "--labels",
        str(labels),
        *COMMAND,
        "-o",
        str(model),
        "--overwrite",
        *args.train_args,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0

    net, meta = load_model(model)
    weights, _, state = _load_resume(_resume_path(model))
    net.load_state_dict(
        state["ema_weights"] or weights
    )  # the last epoch's weight average, if the run kept one
    last = args.out / "atl_last.safetensors"
    save_model(net, meta, last)

    history = [json.loads(line) for line in _metrics_path(model).read_text().splitlines()]
    report: dict[str, Any] = {
        "command": "geounet train " + " ".join(COMMAND + args.train_args),
        "train_seconds": round(seconds, 1),
        "best_epoch": meta.provenance.get("best_epoch"),
        "kept_epoch": meta.provenance.get("epochs"),
        "final_train_loss": history[-1]["train_loss"],
        "val_iou_per_epoch": [h["val_iou"] for h in history],
        "val_iou_se_per_epoch": [h.get("val_iou_se") for h in history],
    }
    for name, path in (("kept", model), ("last", last)):
        rep = evaluate(scene, labels, model=path)
        cls = rep["classes"][1]
        report[name] = {
            "scene_pixel_iou": round(rep["pixel"][cls]["iou"], 4),
            "scene_object_f1": round(rep["object"][cls]["f1"], 4),
        }
    text = json.dumps(report, indent=2)
    (args.out / "report.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
