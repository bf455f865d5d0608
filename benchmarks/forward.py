"""One tile through the network: BatchNorm folded or not, ms per tile and peak memory it adds.

Each variant runs in a fresh child process (so its peak RSS is its own): the model file is
loaded, BatchNorm folded (``geounet.network.unet.fuse_batchnorm``) or left as trained, the network put
in channels_last (or not), and ``--tiles`` random tiles go through it after one warm-up.
Printed: ms per tile and how much the forward passes raised the peak RSS above the loaded model.
Run by hand from the repository root:

    python benchmarks/forward.py --model examples/output/buildings.safetensors [--tile 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

VARIANTS = {
    "NCHW, BatchNorm as trained": {"fuse": False, "channels_last": False},
    "channels_last, BatchNorm as trained": {"fuse": False, "channels_last": True},
    "channels_last, BatchNorm folded (geounet's CPU path)": {"fuse": True, "channels_last": True},
}


def child(model: str, tile: int, tiles: int, fuse: bool, channels_last: bool) -> dict[str, float]:
    import resource
    import time

    import torch

    from geounet.network.checkpoint import load_model
    from geounet.network.unet import fuse_batchnorm

    net, meta = load_model(model)
    net = (fuse_batchnorm(net) if fuse else net).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.rand(1, meta.bands, tile, tile).contiguous(memory_format=fmt)
    with torch.inference_mode():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        net(x)
        t0 = time.perf_counter()
        for _ in range(tiles):
            net(x)
        ms = (time.perf_counter() - t0) / tiles * 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": ms, "added_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        v = VARIANTS[args.child]
        print(json.dumps(child(args.model, args.tile, args.tiles, v["fuse"], v["channels_last"])))
        return
    print(f"model {args.model}, one {args.tile} px tile per forward, {args.tiles} timed")
    for name in VARIANTS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--tile",
                str(args.tile),
                "--tiles",
                str(args.tiles),
                "--child",
                name,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:<55} {r['ms']:6.0f} ms/tile   peak RSS +{r['added_mb']:.0f} MB")


if __name__ == "__main__":
    main()
