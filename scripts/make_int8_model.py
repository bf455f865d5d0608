"""Write the bundled building model's int8 copy, ``geounet/models/buildings-int8.onnx``.

Calibrated on 2 windows (256 px, top-left and bottom-right corners) of each of the 44 training
images of ``../shared/data/buildings-rgb`` (the 12 held-out images excluded, as in
``benchmarks/buildings.py``), with :func:`geounet.network.quantize.quantize_model`. Then
``python benchmarks/backends.py --int8 geounet/models/buildings-int8.onnx`` scores it on the
held-out images against float32 (benchmarks/README.md, "int8").

    python scripts/make_int8_model.py [--data ../shared/data/buildings-rgb] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "buildings-rgb")
    ap.add_argument("--out", type=Path, default=ROOT / "geounet" / "models" / "buildings-int8.onnx")
    args = ap.parse_args()
    from buildings import held_out

    from geounet.network.quantize import quantize_model

    train, _ = held_out(args.data)
    out = quantize_model("buildings", train, args.out, windows=2, size=256, overwrite=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {len(train)} training images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
