"""Does strip work on a background thread slow the network? (Why strips run inline on a busy CPU.)

Times ``Predictor.forward`` on 512 px tiles alone, then while a second thread post-processes and
vectorizes 448-row strips of a synthetic 8192-wide mask without pause (the work
``predict_raster`` does per finished strip). Run by hand from the repository root:

    python benchmarks/contention.py [--model PATH] [--tiles 12]

Prints ms per tile in both cases and the strips the thread managed meanwhile. On a machine
whose cores are all taken by PyTorch's threads, the thread costs the network far more than its
own work; with a spare core it costs little. ``geounet.prediction.predictor`` runs the strip worker thread only
when ``spare_cores()`` (or on CUDA), see ``PredictConfig.strip_thread``.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from geounet.network.checkpoint import create_model
from geounet.prediction.predictor import Predictor
from geounet.prediction.stages import spare_cores
from geounet.vectors.strips import StripVectorizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: a seeded width-16 U-Net)")
    ap.add_argument("--tiles", type=int, default=12)
    args = ap.parse_args()
    model = args.model or create_model(bands=3, classes=1, width=16, depth=4, seed=0)
    pred = Predictor(model, device="cpu")
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((448, 8192)), 6) > 0.515  # building-sized blobs
    mask = blobs.astype(np.uint8)
    logits = np.where(blobs, 2.0, -2.0).astype(np.float32)[None]
    x = rng.random((1, pred.meta.bands, 512, 512)).astype(np.float32) * 255
    valid = np.ones((1, 512, 512), bool)
    scaling = pred.array_scaling(x, valid)  # once per scene, as the pipeline does
    pred.forward(x, valid, scaling=scaling)  # warm-up

    def forward_ms() -> float:
        t0 = time.perf_counter()
        for _ in range(args.tiles):
            pred.forward(x, valid, scaling=scaling)
        return (time.perf_counter() - t0) / args.tiles * 1000

    alone = forward_ms()
    stop = threading.Event()
    strips = [0]

    def strip_work() -> None:
        vec = StripVectorizer(
            from_origin(0, 0, 0.5, 0.5), CRS.from_epsg(32633), ["background", "building"]
        )
        row = 0
        while not stop.is_set():
            p = 1 / (1 + np.exp(-logits))
            vec.add(row, mask, p[0])
            row += mask.shape[0]
            strips[0] += 1

    th = threading.Thread(target=strip_work, daemon=True)
    th.start()
    t0 = time.perf_counter()
    busy = forward_ms()
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    print(f"torch threads {torch.get_num_threads()}, spare cores: {spare_cores()}")
    print(f"forward alone: {alone:.0f} ms/tile")
    print(
        f"forward beside a busy strip thread: {busy:.0f} ms/tile ({busy / alone:.2f}x); "
        f"the thread handled {strips[0]} strips in those {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
