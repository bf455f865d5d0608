"""The work done per finished strip, without the network: post-processing, both GeoTIFF writers,
the vectorizer, and the end (COG copies, vector finish).

A probability GeoTIFF of a finished run (by default the one ``benchmarks/predict.py --size 8192``
leaves in its work folder) is turned back into logits and replayed through ``predict``'s own
strip functions in strips of ``--strip-rows`` rows, as a prediction would. Run by hand from the
repository root:

    python benchmarks/strips.py [--probabilities PATH] [--strip-rows 448]

Prints the seconds of each part. Works on older geounet versions too (``StripWriter`` was in
``geounet.geodata.raster`` before ``geounet.geodata.cog`` existed), for before/after comparisons.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from geounet.geodata.raster import open_scene
from geounet.prediction.blend import Strip
from geounet.prediction.sinks import _postprocess, _prob_array
from geounet.vectors.strips import StripVectorizer

try:
    from geounet.geodata.cog import StripWriter
except ImportError:  # geounet before geounet.geodata.cog
    from geounet.geodata.raster import StripWriter  # type: ignore[attr-defined,no-redef]

WORK = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "geounet-bench"


class _Binary:
    """The two model-metadata fields ``_postprocess`` reads, for a binary model."""

    binary = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--probabilities", type=Path, default=WORK / "out" / "8192x8192" / "probabilities.tif"
    )
    ap.add_argument("--strip-rows", type=int, default=448, help="rows per strip (tile - overlap)")
    args = ap.parse_args()
    scene = open_scene(args.probabilities)
    with rasterio.open(args.probabilities) as src:
        p = np.clip(src.read(1), 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p)).astype(np.float32)
    del p
    out = Path(tempfile.mkdtemp(prefix="geounet-strips-"))
    t = dict.fromkeys(("postprocess", "probabilities", "mask", "vectorize", "close", "finish"), 0.0)
    probs_w = StripWriter(out / "p.tif", scene, count=1, dtype="float32", nodata=float("nan"))
    mask_w = StripWriter(
        out / "m.tif", scene, count=1, dtype="uint8", nodata=255, overview_resampling="nearest"
    )
    vec = StripVectorizer(scene.transform, scene.crs, ["background", "building"])
    for row in range(0, scene.height, args.strip_rows):
        lg = logits[None, row : row + args.strip_rows].copy()
        strip = Strip(row, lg, np.ones(lg.shape[1:], bool))
        t0 = time.perf_counter()
        cls, score, probs = _postprocess(strip, _Binary(), 0.5)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        probs_w.write(row, _prob_array(probs, strip.valid, "float32"))
        t2 = time.perf_counter()
        mask_w.write(row, cls[None])
        t3 = time.perf_counter()
        vec.add(row, cls, score)
        t4 = time.perf_counter()
        t["postprocess"] += t1 - t0
        t["probabilities"] += t2 - t1
        t["mask"] += t3 - t2
        t["vectorize"] += t4 - t3
    t0 = time.perf_counter()
    probs_w.close()
    mask_w.close()
    t["close"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = len(vec.finish())
    t["finish"] = time.perf_counter() - t0
    print(f"{scene.width}x{scene.height} in strips of {args.strip_rows} rows, {n} polygons:")
    print(
        "  "
        + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
        + f"; total {sum(t.values()):.2f} s"
    )
    for f in out.iterdir():
        f.unlink()
    out.rmdir()


if __name__ == "__main__":
    main()
