"""Peak memory of ``geounet predict`` against scene height (it must stay flat).

Generates synthetic scenes of one width and growing heights, predicts each in a fresh process
(vector, mask and probability outputs), and prints the peak RSS of each run and its ratio to the
shortest scene's. Run from the repository root:

    python benchmarks/memory.py [--width 2048] [--height 1024] [--factors 1,2,4,8] [--tile-size 512]

Peak RSS includes the Python + PyTorch start-up (also printed, measured in a process that only
imports and loads the model), so the growth above that baseline is printed too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from geounet.predict import PredictConfig, predict_raster
from geounet.checkpoint import load_model
scene, model, out, tile, only_load = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
if only_load:
    load_model(model)
    r = None
else:
    t = time.perf_counter()
    r = predict_raster(scene, out + "/v.gpkg", model=model, mask=out + "/m.tif", probabilities=out + "/p.tif",
                       config=PredictConfig(tile_size=tile, overlap=64, device="cpu", overwrite=True))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": r.seconds if r else 0, "features": r.features if r else 0,
                  "tiles": r.tiles if r else 0}))
"""


def child(scene: str, model: str, out: str, tile: int, only_load: bool) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, scene, model, out, str(tile), "1" if only_load else "0"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--factors", default="1,2,4,8")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--model-width", type=int, default=8)
    args = ap.parse_args()
    from geounet.checkpoint import create_model, save_model
    from geounet.synthetic import make_scene

    factors = [int(f) for f in args.factors.split(",")]
    with tempfile.TemporaryDirectory(prefix="geounet-bench-") as tmp:
        tmpd = Path(tmp)
        model = tmpd / "m.safetensors"
        net, meta = create_model(bands=3, classes=["building"], width=args.model_width, depth=4, seed=0)
        save_model(net, meta, model)
        base = child("", str(model), tmp, args.tile_size, True)["peak_rss_mb"]
        print(f"# {time.strftime('%Y-%m-%d')}  width {args.width}, tile {args.tile_size}, overlap 64, "
              f"U-Net width {args.model_width}, CPU")
        print(f"start-up baseline (imports + model): {base:.0f} MB")
        print(f"{'scene':>12} {'tiles':>6} {'seconds':>8} {'peak RSS MB':>12} {'ratio':>6} {'above base MB':>14} {'ratio':>6} {'polygons':>9}")
        first = None
        for f in factors:
            h = args.height * f
            scene = tmpd / f"scene_{h}.tif"
            make_scene(scene, width=args.width, height=h, seed=f)
            outd = tmpd / f"out_{h}"
            outd.mkdir()
            r = child(str(scene), str(model), str(outd), args.tile_size, False)
            if first is None:
                first = r
            ratio = r["peak_rss_mb"] / first["peak_rss_mb"]
            above = r["peak_rss_mb"] - base
            ratio_above = above / max(first["peak_rss_mb"] - base, 1e-9)
            print(f"{args.width}x{h:>6} {r['tiles']:>6} {r['seconds']:>8.1f} {r['peak_rss_mb']:>12.0f} {ratio:>6.3f} {above:>14.0f} {ratio_above:>6.2f} {r['features']:>9}")
            scene.unlink()


if __name__ == "__main__":
    main()
