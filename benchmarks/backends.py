"""PyTorch against onnxruntime as ``geounet predict --backend`` runs them: speed and agreement.

Speed (``--speed``): the bundled model (or ``--model``) is loaded twice through
:class:`geounet.prediction.predictor.Predictor`, ``backend="torch"`` (float32, BatchNorm folded, channels_last)
and ``backend="onnxruntime"`` (the in-memory export, cached), and random standardized tiles go
through ``Predictor.net`` alone at batch 1. The backends alternate within each repeat, the one
that goes first swapping every repeat, so that other load on a shared machine hits both; each
repeat times ``--tiles`` tiles per backend. Printed: the median and range of ms per tile for each,
and the median and range of the per-repeat ratio (PyTorch's time over onnxruntime's; above 1:
onnxruntime faster).

Agreement (default): every held-out buildings-rgb image (``benchmarks/buildings.py``'s split) is
predicted with each backend at the model's defaults; printed per backend: the share of valid
pixels whose class equals PyTorch float32's, and the held-out pixel and object F1 of the building
class (``geounet.training.evaluate.evaluate`` with the model, as ``geounet evaluate`` scores it). Run from
the repository root:

    python benchmarks/backends.py --speed [--repeats 9] [--tiles 3] [--tile 512]
    python benchmarks/backends.py [--data ../shared/data/buildings-rgb] [--int8 model-int8.onnx]
    python benchmarks/backends.py --quantize /tmp/int8.onnx     # int8 trial, then scored

``--quantize`` writes an int8 copy of the backend graph (:func:`quantize`) and adds it to either
mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from geounet.network.checkpoint import resolve_model
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import Predictor


def ms_per_tile(net: torch.nn.Module, x: torch.Tensor, tiles: int) -> float:
    """Mean wall time of ``tiles`` forward passes of the batch ``x``, per tile."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(tiles):
            net(x)
    return (time.perf_counter() - t0) / (tiles * x.shape[0]) * 1000


def speed(
    model: str | None, *, tile: int, repeats: int, tiles: int, int8: Path | None = None
) -> None:
    """Print interleaved per-tile times of both backends (and an int8 graph; see the module
    docstring)."""
    path = str(resolve_model(model))
    preds = {
        b: Predictor(path, device="cpu", precision="fp32", backend=b)
        for b in ("torch", "onnxruntime")
    }
    if int8 is not None:
        preds["int8"] = Predictor(str(int8), device="cpu")
    bands = preds["torch"].meta.bands
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((1, bands, tile, tile), dtype=np.float32)
    )
    x = x.contiguous(memory_format=torch.channels_last)  # as Predictor feeds both
    times: dict[str, list[float]] = {b: [] for b in preds}
    for p in preds.values():
        ms_per_tile(p.net, x, 1)  # warm-up
    with open("/proc/loadavg") as f:
        load0 = f.read().split()[0]
    for r in range(repeats):
        order = list(preds) if r % 2 == 0 else list(reversed(list(preds)))
        for b in order:
            times[b].append(ms_per_tile(preds[b].net, x, tiles))
    with open("/proc/loadavg") as f:
        load1 = f.read().split()[0]
    ratios = [t / o for t, o in zip(times["torch"], times["onnxruntime"], strict=True)]
    print(
        f"{Path(path).name}, {tile} px tiles, batch 1, {torch.get_num_threads()} threads, {repeats} repeats x {tiles} tiles; load {load0} -> {load1}"
    )
    for b, ts in times.items():
        print(
            f"  {b:<12} median {statistics.median(ts):7.1f} ms/tile  range {min(ts):7.1f} .. {max(ts):7.1f}"
        )
    wins = sum(r > 1 for r in ratios)
    print(
        f"  ratio torch/onnxruntime median {statistics.median(ratios):.2f}  range {min(ratios):.2f} .. {max(ratios):.2f}  (onnxruntime faster in {wins} of {repeats})"
    )
    if int8 is not None:
        r8 = [o / q for o, q in zip(times["onnxruntime"], times["int8"], strict=True)]
        print(
            f"  ratio onnxruntime/int8 median {statistics.median(r8):.2f}  range {min(r8):.2f} .. {max(r8):.2f}"
        )


def agreement(
    model: str | None, data: Path, *, int8: Path | None, bf16: bool = False
) -> dict[str, Any]:
    """Agreement with PyTorch float32 and held-out F1 per backend (see the module docstring)."""
    import rasterio
    from buildings import held_out, labels_for

    from geounet.errors import LabelsError
    from geounet.training.evaluate import evaluate

    path = str(resolve_model(model))
    runs: dict[str, tuple[Any, PredictConfig]] = {
        "torch fp32": (path, PredictConfig(device="cpu", precision="fp32", backend="torch")),
        "onnxruntime": (path, PredictConfig(device="cpu", precision="fp32", backend="onnxruntime")),
    }
    if bf16:  # what --precision auto runs on a CPU with native bf16 (AVX512-BF16, AMX)
        runs["torch bf16"] = (path, PredictConfig(device="cpu", precision="bf16", backend="torch"))
    if int8 is not None:
        runs["int8"] = (str(int8), PredictConfig(device="cpu", precision="fp32"))
    _, images = held_out(data)
    masks: dict[str, dict[str, np.ndarray]] = {k: {} for k in runs}
    sums: dict[str, dict[str, int]] = {k: {} for k in runs}
    seconds = dict.fromkeys(runs, 0.0)
    with tempfile.TemporaryDirectory(prefix="geounet-backends-") as tmp:
        for image in images:
            for name, (m, cfg) in runs.items():
                predictor = Predictor(
                    m, device=cfg.device, precision=cfg.precision, backend=cfg.backend
                )
                out = Path(tmp) / f"{image.stem}-{name.replace(' ', '-')}.tif"
                t0 = time.perf_counter()
                predictor.run(image, mask=out, config=cfg)
                seconds[name] += time.perf_counter() - t0
                with rasterio.open(out) as src:
                    masks[name][image.stem] = src.read(1)
                try:
                    rep = evaluate(image, labels_for(data, image), model=m, config=cfg)
                    px = rep["pixel"][rep["classes"][1]]
                    ob = rep["object"].get(rep["classes"][1], {"tp": 0, "fp": 0, "fn": 0})
                except (
                    LabelsError
                ):  # no building in the image: every predicted pixel is false (as buildings.score)
                    m_ = masks[name][image.stem]
                    px, ob = (
                        {"tp": 0, "fp": int(((m_ > 0) & (m_ < 255)).sum()), "fn": 0},
                        {"tp": 0, "fp": 0, "fn": 0},
                    )
                acc = sums[name]
                for k in ("tp", "fp", "fn"):
                    acc[k] = acc.get(k, 0) + int(px[k])
                    acc[f"obj_{k}"] = acc.get(f"obj_{k}", 0) + int(ob[k])
    result: dict[str, Any] = {}
    ref = masks["torch fp32"]
    for name in runs:
        same = total = 0
        worst = 1.0
        for stem, m in masks[name].items():
            valid = ref[stem] != 255
            agree = int((m[valid] == ref[stem][valid]).sum())
            same, total = same + agree, total + int(valid.sum())
            worst = min(worst, agree / max(1, int(valid.sum())))
        acc = sums[name]
        f1 = 2 * acc["tp"] / max(1, 2 * acc["tp"] + acc["fp"] + acc["fn"])
        of1 = 2 * acc["obj_tp"] / max(1, 2 * acc["obj_tp"] + acc["obj_fp"] + acc["obj_fn"])
        result[name] = {
            "agreement": same / total,
            "worst_image": worst,
            "pixel_f1": f1,
            "object_f1": of1,
            "predict_s": seconds[name],
        }
        print(
            f"{name:<12} agreement {100 * same / total:8.4f} % (worst image {100 * worst:.4f} %)  pixel F1 {f1:.4f}  "
            f"object F1 {of1:.4f}  predict {seconds[name]:.1f} s over {len(images)} images",
            flush=True,
        )
    return result


def quantize(
    model: str | None,
    data: Path,
    out: Path,
    *,
    windows: int = 2,
    size: int = 256,
    reduce_range: bool = True,
    calibration: str = "minmax",
) -> Path:
    """Write an int8 copy of the model with :func:`geounet.network.quantize.quantize_model`,
    calibrated on windows of its training images (the held-out ones excluded).

    ``reduce_range=False`` (full-range 8-bit weights) and ``calibration="percentile"`` are kept
    for the experiments of benchmarks/README.md ("int8"); geounet itself always reduces the range."""
    from buildings import held_out

    from geounet.network.quantize import quantize_model

    train, _ = held_out(data)
    t0 = time.perf_counter()
    written = quantize_model(
        model,
        train,
        out,
        windows=windows,
        size=size,
        overwrite=True,
        reduce_range=reduce_range,
        calibration=calibration,
    )
    print(
        f"quantized on windows of {len(train)} training images in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file or bundled name [default: the bundled 'buildings']")
    ap.add_argument(
        "--speed",
        action="store_true",
        help="time the network per tile instead of scoring agreement",
    )
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--tiles", type=int, default=3, help="tiles per backend per repeat")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/buildings-rgb"))
    ap.add_argument("--int8", type=Path, help="also score this quantized .onnx file")
    ap.add_argument(
        "--quantize",
        type=Path,
        metavar="OUT",
        help="write an int8 graph calibrated on training windows to OUT first (then scored, or timed)",
    )
    ap.add_argument(
        "--bf16", action="store_true", help="also score PyTorch under bf16 autocast (agreement)"
    )
    ap.add_argument(
        "--full-range",
        action="store_true",
        help="with --quantize: full 8-bit weights (saturate VPMADDUBSW on AVX2 CPUs; geounet "
        "always uses 7-bit weights)",
    )
    ap.add_argument(
        "--calibration", choices=("minmax", "percentile"), default="minmax", help="with --quantize"
    )
    args = ap.parse_args()
    if args.quantize:
        args.int8 = quantize(
            args.model,
            args.data,
            args.quantize,
            reduce_range=not args.full_range,
            calibration=args.calibration,
        )
    if args.speed:
        speed(args.model, tile=args.tile, repeats=args.repeats, tiles=args.tiles, int8=args.int8)
    else:
        agreement(args.model, args.data, int8=args.int8, bf16=args.bf16)


if __name__ == "__main__":
    main()
