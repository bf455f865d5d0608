"""The quick start: the bundled building model on a real image, then train-and-predict on a
synthetic scene.

Run from the repository root (``bash scripts/demo.sh`` sets up .venv and runs this):

    python examples/quickstart.py [--out examples/output] [--epochs 6] [--no-synthetic]

1. ``geounet predict examples/rio_55.tif`` with no model named: the bundled building model on a
   WorldView-2 image of Rio de Janeiro that it never saw in training (SpaceNet, CC BY-SA 4.0).
2. A synthetic aerial scene with labels: train a small model, predict, evaluate.

Every step is a plain ``geounet`` command, printed before it runs, so you can repeat it by hand.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args: str) -> str:
    cmd = [sys.executable, "-m", "geounet", *args]
    print("$ geounet " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE / "output", help="Where to write everything."
    )
    parser.add_argument(
        "--epochs", type=int, default=6, help="Training epochs (about 10 s each on a CPU)."
    )
    parser.add_argument("--size", type=int, default=1024, help="Example scene size in pixels.")
    parser.add_argument(
        "--no-synthetic", action="store_true", help="Only the bundled model on the real image."
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    real = HERE / "rio_55.tif"
    found_real = out / "rio_55_buildings.geojson"
    run("predict", str(real), "-o", str(found_real), "--overwrite")
    import geopandas as gpd

    print(
        f"\nThe bundled model found {len(gpd.read_file(found_real))} buildings in {real.name}: {found_real}\n"
    )
    if args.no_synthetic:
        return

    sys.path.insert(0, str(HERE.parent))
    from geounet.synthetic import make_scene

    scene = out / "scene.tif"
    labels = out / "buildings_labels.geojson"
    info = make_scene(scene, width=args.size, height=args.size, labels_path=labels, seed=0)
    print(
        f"example scene: {scene} ({info.width}x{info.height} px, {info.crs}), {len(info.buildings)} labelled buildings in {labels}"
    )

    model = out / "buildings.safetensors"
    run(
        "train",
        "--images",
        str(scene),
        "--labels",
        str(labels),
        "-o",
        str(model),
        "--tile-size",
        "128",
        "--width",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        str(args.epochs),
        "--samples-per-epoch",
        "160",
        "--classes",
        "building",
        "--overwrite",
    )
    predicted = out / "predicted_buildings.geojson"
    run(
        "predict",
        str(scene),
        "-o",
        str(predicted),
        "-m",
        str(model),
        "--mask",
        str(out / "mask.tif"),
        "--probabilities",
        str(out / "probabilities.tif"),
        "--prob-dtype",
        "uint8",
        "--min-area",
        "10",
        "--simplify",
        "1",
        "--overwrite",
    )
    report = out / "evaluation.json"
    print(
        run(
            "evaluate",
            str(scene),
            "--labels",
            str(labels),
            "--classes",
            "building",
            "-m",
            str(model),
            "--json",
            str(report),
        )
    )

    import json

    found = len(gpd.read_file(predicted))
    r = json.loads(report.read_text())
    iou = r["pixel"]["building"]["iou"]
    print(
        f"\nFound {found} buildings ({len(info.buildings)} labelled); pixel IoU {iou:.3f}. "
        f"Polygons: {predicted}  (open them in QGIS over {scene}); done in {time.perf_counter() - t0:.0f} s."
    )


if __name__ == "__main__":
    main()
