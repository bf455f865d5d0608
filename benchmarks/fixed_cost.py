"""Fixed cost of a small prediction: the time ``geounet predict`` spends outside the network.

Printed, for ``examples/rio_55.tif`` (438 x 406 px) and a 256 x 256 crop of it, with the bundled
model and the default backend (onnxruntime on the CPU, graph cached under ``$GEOUNET_CACHE``):

- ``import geounet.cli.main`` in a fresh interpreter (what ``geounet --help`` pays), median;
- the wall time of ``geounet predict SCENE -o OUT.gpkg --overwrite`` as a subprocess: the first
  run against an empty cache (it exports the onnxruntime graph) and the median of the warm runs;
- one warm in-process run of :func:`geounet.prediction.predictor.predict_raster` split into its imports, the
  model load (``Predictor``), the network (``timings["model"]``), the rest of ``Predictor.run``
  and the network's share of the whole process.

Run from the repository root (a private cache in a temporary folder; the first run exports):

    python benchmarks/fixed_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENE = Path(__file__).resolve().parent.parent / "examples" / "rio_55.tif"

#: Run in a fresh interpreter: one warm prediction, timed stage by stage, printed as JSON.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from geounet.prediction.predictor import Predictor, predict_raster
from geounet.prediction.config import PredictConfig
t1 = time.perf_counter()
Predictor("buildings")
t2 = time.perf_counter()
r = predict_raster(sys.argv[1], sys.argv[2], model="buildings", config=PredictConfig(overwrite=True))
t3 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "predict": t3 - t2, "run": r.seconds,
                  "model": r.timings["model"]}))
"""


def wall(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds one command takes, as a subprocess (its output discarded; it must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def crop(src: Path, dst: Path, size: int) -> Path:
    """The top-left ``size`` x ``size`` pixels of ``src`` as a GeoTIFF."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        window = Window(0, 0, size, size)
        profile = ds.profile | {
            "width": size,
            "height": size,
            "transform": ds.window_transform(window),
        }
        data = ds.read(window=window)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per figure (median)")
    args = parser.parse_args()
    python = sys.executable
    geounet = str(Path(python).with_name("geounet"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = os.environ | {"GEOUNET_CACHE": str(tmp / "cache")}
        imports = [
            wall([python, "-c", "import geounet.cli.main"], env) for _ in range(args.repeats)
        ]
        bare = [wall([python, "-c", "pass"], env) for _ in range(args.repeats)]
        print(
            f"import geounet.cli.main: {statistics.median(imports):.2f} s "
            f"(bare interpreter {statistics.median(bare):.2f} s), median of {args.repeats}"
        )
        scenes = {
            "rio_55.tif (438 x 406)": SCENE,
            "256 x 256 crop": crop(SCENE, tmp / "crop256.tif", 256),
        }
        for i, (label, scene) in enumerate(scenes.items()):
            out = tmp / "out.gpkg"
            cmd = [geounet, "predict", str(scene), "-o", str(out), "--overwrite"]
            first = wall(cmd, env)
            runs = [wall(cmd, env) for _ in range(args.repeats)]
            note = "empty cache: exports the graph" if i == 0 else "cache already built"
            print(
                f"{label}: geounet predict first run {first:.2f} s ({note}), "
                f"warm median {statistics.median(runs):.2f} s (min {min(runs):.2f}) of {args.repeats}"
            )
            t0 = time.perf_counter()
            child = subprocess.run(
                [python, "-c", CHILD, str(scene), str(out)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            total = time.perf_counter() - t0
            s = json.loads(child.stdout.splitlines()[-1])
            print(
                f"  in process: {total:.2f} s = imports {s['imports']:.2f} + model load {s['load']:.2f} "
                f"+ predict_raster {s['predict']:.2f} (Predictor.run {s['run']:.2f}, network "
                f"{s['model']:.2f}) + interpreter; network share {s['model'] / total:.0%}"
            )


if __name__ == "__main__":
    main()
