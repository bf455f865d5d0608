"""onnxruntime against PyTorch on the CPU: milliseconds per tile of the same network.

Each model is exported with :func:`geounet.network.export.export_onnx` and loaded twice through
:class:`geounet.prediction.predictor.Predictor`: from its safetensors file (PyTorch as geounet runs it on the CPU:
BatchNorm folded, channels_last, float32) and from the ONNX file (onnxruntime's CPU provider, as
many threads as PyTorch). Random standardized tiles go through ``Predictor.net`` (the network
alone, no reading or blending) at batch 1 and 4 after one warm-up; the two backends alternate
within each repeat so that other load on the machine hits both, and the best repeat counts.
Printed: ms per tile for each, and PyTorch's time over onnxruntime's (above 1: onnxruntime
faster). (Not named ``onnx.py``: run as a script, that name would shadow the onnx package.)
Run from the repository root:

    python benchmarks/onnx_cpu.py [--tile 512] [--repeats 3] [--widths 16 32] [--no-bundled]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geounet.network.checkpoint import create_model, save_model
from geounet.network.export import export_onnx
from geounet.network.unet import calibrate_batchnorm
from geounet.prediction.predictor import Predictor


def ms_per_tile(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Wall time of one forward pass of the batch ``x``, per tile."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        net(x)
    return (time.perf_counter() - t0) / x.shape[0] * 1000


def compare(
    name: str, model: Path, tmp: Path, *, tile: int, batches: list[int], repeats: int
) -> None:
    onnx_path = export_onnx(model, tmp / f"{model.stem}.onnx", overwrite=True)
    reference = Predictor(str(model), device="cpu", backend="torch")
    nets = {"pytorch": reference.net, "onnxruntime": Predictor(str(onnx_path), device="cpu").net}
    bands = reference.meta.bands
    for batch in batches:
        x = torch.from_numpy(
            np.random.default_rng(0).standard_normal((batch, bands, tile, tile), dtype=np.float32)
        )
        x = x.contiguous(memory_format=torch.channels_last)  # as Predictor feeds both
        best = {k: float("inf") for k in nets}
        for net in nets.values():
            ms_per_tile(net, x)  # warm-up
        for _ in range(repeats):
            for k, net in nets.items():
                best[k] = min(best[k], ms_per_tile(net, x))
        pt, ort = best["pytorch"], best["onnxruntime"]
        print(
            f"{name:<28} batch {batch}: PyTorch {pt:7.1f} ms/tile   onnxruntime {ort:7.1f} ms/tile   ratio {pt / ort:4.2f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--no-bundled", action="store_true", help="Skip the bundled buildings model.")
    args = ap.parse_args()
    import onnxruntime

    print(
        f"{args.tile} px tiles, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for width in args.widths:
            net, meta = create_model(bands=3, classes=1, width=width, depth=4, seed=0)
            calibrate_batchnorm(net, [torch.randn(2, 3, 64, 64) for _ in range(2)])
            path = tmp / f"w{width}.safetensors"
            save_model(net, meta, path)
            compare(
                f"width {width}, depth 4",
                path,
                tmp,
                tile=args.tile,
                batches=args.batches,
                repeats=args.repeats,
            )
        if not args.no_bundled:
            from geounet.network.checkpoint import resolve_model

            compare(
                "bundled buildings (w16)",
                resolve_model("buildings"),
                tmp,
                tile=args.tile,
                batches=args.batches,
                repeats=args.repeats,
            )


if __name__ == "__main__":
    main()
