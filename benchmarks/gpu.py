"""One prepared GPU run: the GPU figures and a wider bundled-model candidate, in one command.

    python benchmarks/gpu.py --out OUT --data DATA [--budget-s 240] [--deadline-s 480]
    python benchmarks/gpu.py --out /tmp/g --tiny          # the same code paths on the CPU, in about a minute

Parts, in order, each bounded in time, with progress lines as they go and ``OUT/report.json``
(and ``OUT/report.md``) rewritten after each part, so a run stopped early still says where it got:

1. ``forward``: the seed-size U-Net (``geounet.network.unet.UNet``, width 64, depth 4) on a batch of
   512 x 512 tiles on the device, BatchNorm folded and channels_last as ``Predictor`` runs it:
   bf16 autocast and float32 with TF32 (and, at the very end of the run if 90 s are left,
   bf16 through ``torch.compile``, whose compilation time is not known in advance); Mpx/s, the achieved
   TFLOP/s (the convolutions' multiply-adds counted by forward hooks, 2 FLOPs each) and their
   fraction of the card's nominal dense peak and of a measured large matrix product.
2. ``train``: the bundled model widened (``geounet.network.unet.widen``, the same function, without its
   core channel) to ``--width`` channels, then trained on the building data as the bundled
   model's last two stages were (``scripts/make_bundled_model.py`` stages 8 and 9: a cycle with
   the separation weight, then the core channel alone), for a fixed wall-time budget: a short
   probe run times a step and a validation, and the epochs are chosen to fit.
3. ``score`` (with ``train``): the candidate packaged and scored by ``scripts/make_bundled_model.py --from-model``
   itself (the same held-out images, polygon defaults, switches chosen by object F1 and the
   float16 file scored again), saved as ``OUT/candidate.safetensors``, its table printed beside
   the bundled model's recorded figures, and the verdict: ship only if held-out pixel F1 and
   object F1 both beat the bundled model's.
4. ``e2e``: ``geounet``'s pipeline against the naive whole-scene script on a synthetic 8192 x
   8192 RGB scene, both from ``benchmarks/predict.py`` (fresh child processes), with the bundled
   model widened to width 64 (the seed-size network's work, a trained model's output). It
   runs last, in the time kept for it (``--e2e-reserve-s``): its child processes cannot be
   stopped part-way, and the candidate matters more. The scene is generated on the CPU from the
   start, while the GPU works.

``--tiny`` runs every part with tiny sizes (a width-8 network, a 512 x 512 scene, a narrow seeded
stand-in for the bundled model, a few steps, one held-out image per source) on whatever device
is there; ``tests/test_gpu_script.py`` runs it. ``benchmarks/README.md`` ("Prepared GPU run")
gives the exact device command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
for _folder in (ROOT / "benchmarks", ROOT / "scripts"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import buildings  # (benchmarks/buildings.py)
import make_bundled_model  # (scripts/make_bundled_model.py)
import predict as bench_predict  # (benchmarks/predict.py)

#: Nominal dense (no sparsity) tensor-core peaks in TFLOP/s by GPU name, from the vendors'
#: datasheets: (bf16, tf32). The H100 and H200 SXM parts share the H100's arithmetic.
NOMINAL_PEAKS = {
    "H200": (989.4, 494.7),
    "H100 80GB HBM3": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "A100": (312.0, 156.0),
}
#: Largest file the bundled model may be (tests/test_bundled.py checks the shipped one).
MAX_MODEL_BYTES = 15e6
PARTS = ("forward", "train", "e2e")
T0 = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since the start, flushed at once."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# The report: rewritten whole after each part.


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` and ``report.md`` in ``out`` (each through a temporary file)."""
    report["elapsed_s"] = round(time.perf_counter() - T0, 1)
    for name, text in (
        ("report.json", json.dumps(report, indent=1, default=str)),
        ("report.md", markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def markdown(report: dict[str, Any]) -> str:
    """The report's figures as short Markdown tables."""
    info = report.get("machine", {})
    lines = [
        f"# geounet GPU run, {report.get('date', '?')}",
        "",
        f"- machine: {info.get('gpu') or info.get('cpu')}; torch {info.get('torch')}; commit {info.get('commit', '?')}",
        f"- command: `{report.get('command', '')}`",
        f"- elapsed: {report.get('elapsed_s')} s",
        "",
    ]
    fwd = report.get("forward")
    if fwd:
        title = (
            f"## Pure forward: U-Net width {fwd['width']}, {fwd['tile']} px tiles, batch {fwd['batch']}, "
            f"{fwd['gflop_per_tile']:.1f} GFLOP per tile"
        )
        lines += [
            title,
            "",
            f"Matrix product {fwd['matmul']['size']}³ {fwd['matmul']['dtype']}: {fwd['matmul']['tflops']:.1f} TFLOP/s.",
            "",
            "| variant | ms/batch | Mpx/s | TFLOP/s | of nominal peak | of measured matmul |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in fwd["variants"].items():
            if "error" in v:
                lines.append(f"| {name} | failed: {v['error'][:80]} | | | | |")
                continue
            nominal = (
                f"{v['fraction_of_nominal']:.3f} of {v['nominal_peak_tflops']:g}"
                if v.get("fraction_of_nominal")
                else "-"
            )
            lines.append(
                f"| {name} | {v['ms_per_batch']:.2f} | {v['mpx_per_s']:.1f} | {v['tflops']:.1f} | {nominal} | "
                f"{v['fraction_of_matmul']:.3f} |"
            )
        lines.append("")
    e2e = report.get("e2e")
    if e2e and "geounet" in e2e:
        g, n = e2e["geounet"], e2e.get("naive")
        lines += [
            f"## End to end: {e2e['size']} x {e2e['size']} scene, U-Net width {e2e['model_width']}",
            "",
            "| | geounet | naive | geounet/naive |",
            "|---|---|---|---|",
        ]
        if n:
            lines += [
                f"| wall s | {g['wall']:.2f} | {n['wall']:.2f} | {g['wall'] / n['wall']:.3f} |",
                f"| Mpx/s | {e2e['mpx_per_s']:.1f} | {e2e['naive_mpx_per_s']:.1f} | |",
                f"| peak RSS MB | {g['peak_rss_mb']:.0f} | {n['peak_rss_mb']:.0f} | {g['peak_rss_mb'] / n['peak_rss_mb']:.3f} |",
                f"| features | {g['features']} | {n['features']} | |",
            ]
        lines.append("")
    train = report.get("train")
    if train:
        lines += [f"## Training: width {train.get('width')}, budget {train.get('budget_s')} s", ""]
        probe = train.get("probe")
        if probe:
            lines.append(
                f"- probe: {probe['seconds_per_step'] * 1000:.0f} ms/step (batch {train['batch_size']}), "
                f"validation {probe['validation_s']:.1f} s, set-up {probe['setup_s']:.1f} s"
            )
        for stage in train.get("stages", []):
            lines.append(
                f"- {stage['name']}: {stage['epochs']} epochs of {stage['samples_per_epoch']} windows in "
                f"{stage['seconds']:.0f} s, kept epoch {stage['kept_epoch']}"
            )
        lines.append("")
    score = report.get("score")
    if score and "candidate" in score:
        lines += [
            "## Held-out images (whole), candidate against the bundled model",
            "",
            "| source | candidate pixel F1 | bundled pixel F1 | candidate object F1 | bundled object F1 |",
            "|---|---|---|---|---|",
        ]
        for key in ("rio", "austin", "chicago", "all"):
            c, b = score["candidate"].get(key, {}), score["bundled"].get(key, {})
            lines.append(
                f"| {key} | {c.get('pixel_f1', float('nan')):.4f} | {b.get('pixel_f1', float('nan')):.4f} | "
                f"{c.get('object_f1', float('nan')):.4f} | {b.get('object_f1', float('nan')):.4f} |"
            )
        lines += ["", f"Verdict: **{score['verdict']}** ({score['reason']}).", ""]
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    return "\n".join(lines)


def machine(device: str) -> dict[str, Any]:
    """The machine, torch and the commit (``benchmarks/predict.py``'s description)."""
    info = bench_predict.machine(device)
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


# ----------------------------------------------------------------------------------------------
# Part 1: pure forward.


def conv_flops(net: Any, x: Any) -> int:
    """FLOPs of one forward pass of ``net`` on ``x``, counted from its convolutions: 2 per
    multiply-add (a Conv2d: output elements x in-channels per group x kernel area; a
    ConvTranspose2d: input elements x out-channels per group x kernel area). Element-wise
    work (bias, ReLU, pooling, concatenation) is left out."""
    import torch
    from torch import nn

    total = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            total[0] += 2 * inputs[0].numel() * (module.out_channels // module.groups) * k
        else:
            total[0] += 2 * output.numel() * (module.in_channels // module.groups) * k

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.inference_mode():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def time_calls(
    fn: Any, device: str, seconds: float, warmup: int, best: bool = False
) -> tuple[float, int]:
    """Seconds per call of ``fn`` (after ``warmup`` calls): the median (``best``: the fastest) of
    three blocks of calls sized to take about ``seconds`` together, timed with CUDA events on a GPU."""
    import torch

    cuda = device == "cuda"

    def block(n: int) -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000 / n
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    one = block(1)
    n = max(1, math.ceil(seconds / 3 / max(one, 1e-6)))
    times = [block(n) for _ in range(3)]
    return (min(times) if best else statistics.median(times)), 3 * n + 1


def matmul_rate(device: str, size: int) -> dict[str, Any]:
    """TFLOP/s of a ``size``³ matrix product on random data (bf16 on a GPU, float32 on a CPU), the
    fastest of three blocks: the attainable rate that the forward passes are set against."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in range(2))
    per_call, calls = time_calls(
        lambda: a @ b, device, 1.0 if device == "cuda" else 0.3, 3, best=True
    )
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "tflops": 2 * size**3 / per_call / 1e12,
        "calls": calls,
    }


def nominal_peaks(device: str, override: float | None) -> tuple[float | None, float | None]:
    """(bf16, tf32) nominal dense peaks of this GPU in TFLOP/s; None where not known."""
    if override:
        return override, override / 2
    if device != "cuda":
        return None, None
    import torch

    name = torch.cuda.get_device_name(0)
    for key, peaks in NOMINAL_PEAKS.items():
        if key in name:
            return peaks
    return None, None


def part_forward(
    args: argparse.Namespace, device: str, earlier: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pure forward of the seed-size U-Net on device tensors: bf16 and TF32; given the
    ``earlier`` result, bf16 through ``torch.compile`` added to it (its matrix product reused)."""
    import torch

    from geounet.network.unet import UNet, fuse_batchnorm

    torch.backends.cudnn.benchmark = True
    tf32_before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.manual_seed(0)
    net = (
        fuse_batchnorm(UNet(3, 1, args.fwd_width, 4))
        .to(device)
        .eval()
        .to(memory_format=torch.channels_last)
    )
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (args.fwd_batch, 3, args.fwd_tile, args.fwd_tile)
    inputs = [
        torch.randn(shape, device=device, generator=gen).contiguous(
            memory_format=torch.channels_last
        )
        for _ in range(2)
    ]
    flops = conv_flops(net, inputs[0][:1])
    mm = earlier["matmul"] if earlier else matmul_rate(device, args.matmul_size)
    bf16_peak, tf32_peak = nominal_peaks(device, args.peak_tflops)
    log(
        f"forward: U-Net width {args.fwd_width}, {flops / 1e9:.1f} GFLOP per {args.fwd_tile} px tile; "
        f"matrix product {mm['size']}³ {mm['dtype']}: {mm['tflops']:.1f} TFLOP/s"
    )
    res: dict[str, Any] = {
        "width": args.fwd_width,
        "depth": 4,
        "tile": args.fwd_tile,
        "batch": args.fwd_batch,
        "gflop_per_tile": flops / 1e9,
        "matmul": mm,
        "nominal_peak_note": "vendor datasheet dense (no sparsity) tensor-core peak; bf16 989.4, TF32 494.7 TFLOP/s on H100/H200 SXM",
        "variants": {},
    }
    variants: list[tuple[str, Any, torch.dtype | None, float | None]] = [
        ("bf16", net, torch.bfloat16, bf16_peak),
        ("tf32" if device == "cuda" else "fp32", net, None, tf32_peak),
    ]
    if earlier:
        res = earlier
        variants = [("bf16 compiled", None, torch.bfloat16, bf16_peak)]
    for name, model, amp, peak in variants:
        t = time.perf_counter()
        try:
            if model is None:
                model = torch.compile(net)

            turn = itertools.cycle(inputs)  # two inputs in turn

            def run(model: Any = model, amp: torch.dtype | None = amp, turn: Any = turn) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast(device, dtype=amp or torch.bfloat16, enabled=amp is not None),
                ):
                    model(next(turn))

            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = amp is None
            per_call, n = time_calls(run, device, args.fwd_seconds, args.fwd_warmup)
        # A variant that fails (a compiler missing, say) is reported, not fatal.
        except Exception as exc:  # noqa: BLE001
            res["variants"][name] = {
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            }
            log(f"forward {name}: failed ({res['variants'][name]['error']})")
            continue
        tflops = flops * args.fwd_batch / per_call / 1e12
        v = {
            "ms_per_batch": per_call * 1000,
            "calls": n,
            "mpx_per_s": args.fwd_batch * args.fwd_tile**2 / per_call / 1e6,
            "tflops": tflops,
            "fraction_of_matmul": tflops / mm["tflops"],
            "nominal_peak_tflops": peak,
            "fraction_of_nominal": tflops / peak if peak else None,
            "seconds_with_warmup": round(time.perf_counter() - t, 1),
        }
        if device == "cuda":
            v["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        res["variants"][name] = v
        nominal = f", {v['fraction_of_nominal']:.3f} of the nominal {peak:g}" if peak else ""
        log(
            f"forward {name}: {v['ms_per_batch']:.2f} ms per batch of {args.fwd_batch}, {v['mpx_per_s']:.1f} Mpx/s, "
            f"{tflops:.1f} TFLOP/s{nominal}, {v['fraction_of_matmul']:.3f} of the measured matmul "
            f"({v['seconds_with_warmup']} s with warm-up)"
        )
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
    return res


# ----------------------------------------------------------------------------------------------
# Part 2: end to end against the naive script.


def scene_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options ``benchmarks/predict.py``'s scene helper reads."""
    return argparse.Namespace(seed=0, pixel_size=0.5)


def e2e_model(args: argparse.Namespace, work: Path) -> Path:
    """The bundled model widened to ``--e2e-width`` (64: the seed size) without its core channel:
    the seed-size network's work with a trained model's output (buildings, not the seeded
    network's noise, which makes about 25,000 polygons per megapixel)."""
    from geounet.network.checkpoint import resolve_model

    base = tiny_base(work, args.tiny_base_width) if args.tiny else resolve_model(None)
    return make_bundled_model.widened(base, args.e2e_width, 0, work)


def part_e2e(
    args: argparse.Namespace, device: str, work: Path, scene_job: Future[Path] | None
) -> dict[str, Any]:
    """``predict_raster`` and the naive script on one scene, each in a fresh child process."""
    ns = scene_args(args)
    model = e2e_model(args, work)
    scene = (
        scene_job.result()
        if scene_job is not None
        else bench_predict.ensure_scene(work, args.scene_size, args.scene_size, ns, 3, "uint8")
    )
    common = {
        "model": str(model),
        "device": device,
        "tile": 512,
        "overlap": 64,
        "batch": None,
        "threads": None,
        "compile": False,
        "strip_thread": None,
    }
    log(f"e2e: geounet on {args.scene_size}² ({device}, U-Net width {args.e2e_width})")
    e2e = bench_predict.run_child("e2e", {**common, "scene": str(scene), "out": str(work / "e2e")})
    mpx = args.scene_size**2 / 1e6
    res: dict[str, Any] = {
        "size": args.scene_size,
        "model_width": args.e2e_width,
        "model": f"{'the tiny stand-in' if args.tiny else 'the bundled model'} widened to {args.e2e_width}, "
        "without its core channel",
        "geounet": e2e,
        "mpx_per_s": mpx / e2e["wall"],
    }
    log(
        f"e2e: geounet {e2e['wall']:.2f} s ({mpx / e2e['wall']:.1f} Mpx/s, batch {e2e['batch']}, {e2e['features']} features, "
        f"model {e2e['timings'].get('model', 0):.2f} s); naive next"
    )
    nv = bench_predict.run_child(
        "naive", {**common, "batch": e2e["batch"], "scene": str(scene), "out": str(work / "e2e")}
    )
    res.update(naive=nv, naive_mpx_per_s=mpx / nv["wall"], ratio=e2e["wall"] / nv["wall"])
    log(
        f"e2e: naive {nv['wall']:.2f} s ({mpx / nv['wall']:.1f} Mpx/s); geounet/naive = {res['ratio']:.3f}"
    )
    shutil.rmtree(work / "e2e", ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------
# Part 3: the candidate.


def tiny_data(data: Path, work: Path) -> Path:
    """A copy of the building data with one training and one held-out image per source (and
    their labels), for ``--tiny``."""
    train, val = buildings.held_out(data)
    keep: list[Path] = []
    for source in ("rio", "austin", "chicago"):
        keep += [
            next(p for p in train if buildings.source_of(p.stem) == source),
            next(p for p in val if buildings.source_of(p.stem) == source),
        ]
    import geopandas as gpd

    names = {p.stem for p in keep} | {p.name for p in keep}
    out = work / "tiny-data"
    for label in buildings.label_files(data):
        (out / label.parent.name).mkdir(parents=True, exist_ok=True)
        frame = gpd.read_file(label)
        frame[frame["image"].astype(str).isin(names)].to_file(
            out / label.parent.name / label.name, driver="GeoJSON"
        )
    for image in keep:
        shutil.copy(image, out / image.parent.name / image.name)
    return out


def tiny_base(work: Path, width: int) -> Path:
    """A narrow seeded network with the bundled model's contract (metadata, core channel): the
    bundled model's stand-in for ``--tiny``, so that widening and training take seconds."""
    import copy

    import torch

    from geounet.network.checkpoint import build_model, read_meta, save_model

    meta = copy.deepcopy(read_meta(None))
    meta.arch_args = {**meta.arch_args, "width": width}
    torch.manual_seed(0)
    out = work / f"tiny-base-w{width}.safetensors"
    save_model(build_model(meta), meta, out)
    return out


class Probe:
    """Timestamps of one training run's steps and epochs (``train_model``'s callbacks)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps: list[float] = []
        self.epochs: list[tuple[float, dict[str, Any]]] = []

    def progress(self, done: int, total: int) -> None:
        self.steps.append(time.perf_counter())

    def on_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append((time.perf_counter(), record))
        log(
            f"  epoch {record['epoch']}: loss {record['train_loss']:.4f}, val IoU {record['val_iou']}, "
            f"F1 {record['val_f1']} ({record['seconds']:.1f} s)"
        )

    def timing(self) -> dict[str, float]:
        """Set-up, first step, later steps and validation of the first epoch, in seconds."""
        end, record = self.epochs[0]
        epoch_start = end - record["seconds"]
        n = len([s for s in self.steps if s <= end])
        steps = self.steps[:n]
        # The mean after the first step, not the median: loader processes deliver batches in
        # bursts (one from each process at about the same time), so most gaps are short.
        per_step = (steps[-1] - steps[0]) / (n - 1) if n > 1 else steps[0] - epoch_start
        return {
            "setup_s": epoch_start - self.start,
            "first_step_s": steps[0] - epoch_start,
            "seconds_per_step": per_step,
            "validation_s": end - steps[-1],
            "steps": n,
        }


def part_train(
    args: argparse.Namespace,
    device: str,
    data: Path,
    work: Path,
    deadline: float,
    report: dict[str, Any],
) -> Path:
    """Widen the bundled model, probe the step time, train two stages within the budget;
    returns the trained model (float32, not yet packaged)."""
    import torch

    from geounet.network.checkpoint import read_meta, resolve_model
    from geounet.training.config import TrainConfig
    from geounet.training.dataset import Augment
    from geounet.training.train import train_model

    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window sizes: cuDNN's fastest kernels pay
    start_time = time.perf_counter()
    reserve = args.score_reserve_s + (args.e2e_reserve_s if "e2e" in args.parts else 0.0)
    budget = min(args.budget_s, deadline - start_time - reserve)
    train, val = buildings.held_out(data)
    base = tiny_base(work, args.tiny_base_width) if args.tiny else resolve_model(None)
    base_meta = read_meta(base)
    core_m = base_meta.core_m or 1.0
    start = make_bundled_model.widened(base, args.width, args.widen_seed, work)
    info = report["train"] = {
        "width": args.width,
        "base": str(base),
        "base_width": base_meta.arch_args["width"],
        "budget_s": round(budget, 1),
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "workers": args.workers,
        "device": device,
        "precision": "bf16" if device == "cuda" else "auto",
        "memory_format": "channels_last" if device == "cuda" else "contiguous",
        "train_images": len(train),
        "val_images": [p.stem for p in val],
        "stages": [],
    }
    log(
        f"train: {base.name} (width {info['base_width']}) widened to {args.width}; budget {budget:.0f} s; "
        f"{len(train)} training images, {len(val)} held out"
    )

    def config(out: Path, init: Path, epochs: int, samples: int, *, core: bool) -> TrainConfig:
        return TrainConfig(
            images=[str(p) for p in train],
            val_images=[str(p) for p in val],
            labels=[str(p) for p in buildings.label_files(data)],
            out=str(out),
            tile_size=args.tile_size,
            batch_size=args.batch_size,
            epochs=epochs,
            width=args.width,
            lr=args.core_lr if core else args.lr,
            samples_per_epoch=samples,
            augment=Augment.parse("flip,scale,colour,noise", scale=1.5),
            normalization="scene",
            seed=args.seed + (1 if core else 0),
            device=device,
            workers=args.workers,
            precision="bf16" if device == "cuda" else "auto",
            init=str(init),
            separation_m=1.0,
            core_m=core_m if core else 0.0,
            core_only=core,
            overwrite=True,
            plot=False,
            max_val_windows=args.max_val_windows,
        )

    probe = Probe()
    train_model(
        config(
            work / "probe.safetensors", start, 1, args.probe_steps * args.batch_size, core=False
        ),
        progress=probe.progress,
        on_epoch=probe.on_epoch,
    )
    timing = info["probe"] = probe.timing()
    log(
        f"train: probe {timing['seconds_per_step'] * 1000:.0f} ms/step, first step {timing['first_step_s']:.1f} s, "
        f"validation {timing['validation_s']:.1f} s, set-up {timing['setup_s']:.1f} s"
    )

    # Each epoch starts its loader processes afresh (the first step) and ends with a validation:
    # epochs long enough that these take at most a fifth of one.
    fixed = timing["validation_s"] + timing["first_step_s"]
    samples = args.samples_per_epoch or max(
        args.probe_steps * args.batch_size,
        math.ceil(4 * fixed / timing["seconds_per_step"]) * args.batch_size,
    )
    info["samples_per_epoch"] = samples

    def epochs_for(seconds: float, samples: int) -> int:
        steps = math.ceil(samples / args.batch_size)
        per_epoch = steps * timing["seconds_per_step"] + fixed
        return max(1, min(args.max_epochs, int((seconds - timing["setup_s"]) // per_epoch)))

    model = start
    stages = [
        ("widened cycle", False, 1 - args.core_share),
        ("core channel alone", True, args.core_share),
    ]
    for i, (name, core, share) in enumerate(stages):
        left = budget - (time.perf_counter() - start_time)
        seconds = left if core else left * share
        epochs = epochs_for(seconds, samples)
        out = work / f"stage{i + 1}.safetensors"
        log(
            f"train: {name}, {epochs} epochs of {samples} windows (about {max(0.0, seconds):.0f} s left for it)"
        )
        runner = Probe()
        result = train_model(
            config(out, model, epochs, samples, core=core),
            progress=runner.progress,
            on_epoch=runner.on_epoch,
        )
        info["stages"].append(
            {
                "name": name,
                "epochs": epochs,
                "samples_per_epoch": samples,
                "lr": args.core_lr if core else args.lr,
                "core_only": core,
                "seed": args.seed + (1 if core else 0),
                "seconds": round(result.seconds, 1),
                "planned_s": round(seconds, 1),
                "kept_epoch": result.kept_epoch,
                "best_val_iou_windows": round(result.best_iou, 4),
                "history": result.history,
            }
        )
        model = out
    info["seconds"] = round(time.perf_counter() - start_time, 1)
    return model


def part_score(
    args: argparse.Namespace, trained: Path, data: Path, out: Path, report: dict[str, Any]
) -> dict[str, Any]:
    """Package and score ``trained`` with ``scripts/make_bundled_model.py --from-model``; the
    table beside the bundled model's recorded figures, and the verdict."""
    from geounet.geodata.raster import AtomicOutputs
    from geounet.network.checkpoint import load_model, read_meta, save_model

    candidate = out / "candidate.safetensors"
    t = time.perf_counter()
    commit = current_commit(args.data)
    if shutil.which("git") is None:  # make_bundled_model asks git for the commit; without git, none
        shim = Path(tempfile.mkdtemp(prefix="geounet-nogit-"))
        (shim / "git").write_text("#!/bin/sh\nexit 1\n")
        (shim / "git").chmod(0o755)
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    log(
        "score: make_bundled_model.py --from-model (held-out images, switches chosen by object F1, float16 scored)"
    )
    code = make_bundled_model.main(
        [
            "--from-model",
            str(trained),
            "--out",
            str(candidate),
            "--data",
            str(data),
            "--note",
            "GPU candidate: benchmarks/gpu.py (see stages)",
        ]
    )
    if code:
        raise RuntimeError(f"scripts/make_bundled_model.py exited {code}")
    # The provenance names the run that made the weights (make_bundled_model records its own
    # nine CPU stages when it only packages a model); float16 weights re-saved as float16 are unchanged.
    net, meta = load_model(candidate)
    train = report.get("train", {})
    meta.provenance["command"] = "python benchmarks/gpu.py " + " ".join(sys.argv[1:])
    meta.provenance["stages"] = [
        {k: v for k, v in s.items() if k != "history"}
        | {
            "init": f"<bundled model widened to {train.get('width')} channels>"
            if i == 0
            else "<stage 1 model>"
        }
        for i, s in enumerate(train.get("stages", []))
    ]
    meta.provenance["trained_on"] = {
        k: train.get(k)
        for k in ("device", "precision", "memory_format", "batch_size", "tile_size", "budget_s")
    }
    meta.provenance["gpu"] = report.get("machine", {}).get("gpu")
    meta.provenance["commit"] = commit
    with AtomicOutputs() as outputs:
        save_model(net, meta, outputs.reserve(candidate, overwrite=True), half=True)
    bundled = read_meta(None).provenance["validation"]
    cand = meta.provenance["validation"]
    c, b = cand["all"], bundled["all"]
    ship = c["pixel_f1"] > b["pixel_f1"] and c["object_f1"] > b["object_f1"]
    size = candidate.stat().st_size
    res = {
        "candidate": cand,
        "bundled": bundled,
        "candidate_file": candidate.name,
        "candidate_bytes": size,
        "fits_size_budget": size < MAX_MODEL_BYTES,
        "regularize": meta.regularize,
        "split_seeds": meta.split_seeds,
        "seconds": round(time.perf_counter() - t, 1),
        "verdict": "ship" if ship and size < MAX_MODEL_BYTES else "keep the bundled model",
        "reason": f"held-out pixel F1 {c['pixel_f1']:.4f} vs {b['pixel_f1']:.4f}, object F1 {c['object_f1']:.4f} vs {b['object_f1']:.4f}"
        f"; file {size / 1e6:.2f} MB (limit {MAX_MODEL_BYTES / 1e6:g} MB)",
    }
    print(
        f"{'':10} {'pixel F1':>19} {'object F1':>19}   (candidate / bundled, whole held-out images)"
    )
    for key in ("rio", "austin", "chicago", "all"):
        print(
            f"{key:10} {cand[key]['pixel_f1']:9.4f} {bundled[key]['pixel_f1']:9.4f} "
            f"{cand[key]['object_f1']:9.4f} {bundled[key]['object_f1']:9.4f}"
        )
    log(f"verdict: {res['verdict']} ({res['reason']})")
    return res


def current_commit(data: Path) -> str:
    """The repository's commit (``git rev-parse HEAD``), or, where git or the repository's
    history is missing (a copy of the working tree), the one ``benchmarks/gpu_prepare.py``
    recorded beside the data it copied."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except OSError:
        pass
    recorded = data.parent / "commit.txt"
    return recorded.read_text().strip() if recorded.is_file() else "unknown"


# ----------------------------------------------------------------------------------------------


TINY = {
    "fwd_width": 8,
    "fwd_tile": 64,
    "fwd_batch": 2,
    "fwd_seconds": 0.2,
    "fwd_warmup": 1,
    "matmul_size": 512,
    "scene_size": 512,
    "e2e_width": 8,
    "width": 6,
    "batch_size": 4,
    "tile_size": 64,
    "samples_per_epoch": 8,
    "max_val_windows": 6,
    "probe_steps": 3,
    "budget_s": 8.0,
    "max_epochs": 2,
    "score_reserve_s": 0.0,
    "e2e_reserve_s": 0.0,
    "workers": 1,
    "compile": False,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for report.json, report.md and candidate.safetensors",
    )
    ap.add_argument(
        "--data", type=Path, default=buildings.DATA, help="the building data (buildings-rgb)"
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder (scenes, training runs; default: a temporary one)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny sizes on any device, every code path (the test's run)",
    )
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated parts to run (train includes scoring)",
    )
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=480.0,
        help="the whole run ends within about this (training shrinks to fit)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training wall time, probe included (default 240; tiny 8)",
    )
    ap.add_argument(
        "--score-reserve-s",
        type=float,
        default=None,
        help="time kept for packaging and scoring (default 90)",
    )
    ap.add_argument(
        "--e2e-reserve-s",
        type=float,
        default=None,
        help="time kept for the end-to-end part, which runs last (default 150)",
    )
    g = ap.add_argument_group("forward")
    g.add_argument(
        "--fwd-width", type=int, default=None, help="U-Net width (default 64, the seed size)"
    )
    g.add_argument("--fwd-tile", type=int, default=None, help="tile size (default 512)")
    g.add_argument("--fwd-batch", type=int, default=None, help="tiles per batch (default 32)")
    g.add_argument(
        "--fwd-seconds", type=float, default=None, help="timed seconds per variant (default 3)"
    )
    g.add_argument(
        "--fwd-warmup", type=int, default=None, help="warm-up calls per variant (default 5)"
    )
    g.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="matrix product size for the measured peak (default 8192)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile (default: on a GPU)",
    )
    g.add_argument(
        "--compile-min-s",
        type=float,
        default=90.0,
        help="the compiled variant runs last, only with this much time left before the deadline",
    )
    g.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="nominal dense bf16 peak (default: from the GPU's name)",
    )
    g = ap.add_argument_group("end to end")
    g.add_argument(
        "--scene-size", type=int, default=None, help="synthetic scene side in pixels (default 8192)"
    )
    g.add_argument(
        "--e2e-width", type=int, default=None, help="U-Net width of the seeded model (default 64)"
    )
    g = ap.add_argument_group("training")
    g.add_argument(
        "--width",
        type=int,
        default=None,
        help="candidate width (default 30: 13.7 MB as float16; 32 would be 15.6 MB)",
    )
    g.add_argument("--batch-size", type=int, default=None, help="windows per step (default 32)")
    g.add_argument("--tile-size", type=int, default=None, help="training window size (default 256)")
    g.add_argument(
        "--samples-per-epoch",
        type=int,
        default=None,
        help="windows per epoch (default: enough that validation takes at most a fifth of an epoch)",
    )
    g.add_argument(
        "--max-val-windows",
        type=int,
        default=None,
        help="validation windows per epoch (default 256, train's)",
    )
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the widened cycle")
    g.add_argument(
        "--core-lr", type=float, default=2e-3, help="peak learning rate of the core-channel stage"
    )
    g.add_argument(
        "--core-share",
        type=float,
        default=0.15,
        help="share of the budget for the core-channel stage",
    )
    g.add_argument(
        "--probe-steps", type=int, default=None, help="steps of the timing probe (default 60)"
    )
    g.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="at most this many epochs per stage (default 200)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loader processes (default on a GPU: 12, or the cores less 2; else 0)",
    )
    g.add_argument(
        "--seed", type=int, default=20, help="seed of the widened cycle (the core stage: +1)"
    )
    g.add_argument("--widen-seed", type=int, default=12, help="seed of the widening")
    g.add_argument("--tiny-base-width", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return args


def resolve_defaults(args: argparse.Namespace, device: str) -> None:
    """Fill the options left unset: tiny sizes with ``--tiny``, the GPU run's otherwise."""
    full = {
        "fwd_width": 64,
        "fwd_tile": 512,
        "fwd_batch": 32,
        "fwd_seconds": 3.0,
        "fwd_warmup": 5,
        "matmul_size": 8192,
        "scene_size": 8192,
        "e2e_width": 64,
        "width": 30,
        "batch_size": 32,
        "tile_size": 256,
        "max_val_windows": 256,
        "probe_steps": 60,
        "budget_s": 240.0,
        "max_epochs": 200,
        "score_reserve_s": 90.0,
        "e2e_reserve_s": 150.0,
        "workers": min(12, (os.cpu_count() or 2) - 2) if device == "cuda" else 0,
        "compile": device == "cuda",
    }
    for key, value in (TINY if args.tiny else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = (
        args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but PyTorch sees no CUDA GPU", file=sys.stderr)
        return 1
    resolve_defaults(args, device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(
            f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr
        )
        return 1
    if "train" in parts and not args.data.is_dir():
        print(
            f"{args.data} not found: give --data (the buildings-rgb folder), or --parts forward,e2e",
            file=sys.stderr,
        )
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = T0 + args.deadline_s
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(device),
        "device": device,
        "tiny": args.tiny,
        "parts": parts,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "errors": {},
    }
    log(
        f"geounet GPU run on {report['machine'].get('gpu') or report['machine']['cpu']} ({device}), "
        f"torch {torch.__version__}, parts {', '.join(parts)}, deadline {args.deadline_s:.0f} s"
    )
    write_report(args.out, report)
    status = 0
    with tempfile.TemporaryDirectory(prefix="geounet-gpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene_job: Future[Path] | None = None
        pool = None
        if "e2e" in parts:  # the scene is generated on the CPU while the GPU runs part 1
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            scene_job = pool.submit(
                bench_predict.ensure_scene,
                work,
                args.scene_size,
                args.scene_size,
                scene_args(args),
                3,
                "uint8",
            )
        try:
            data = tiny_data(args.data, work) if args.tiny and "train" in parts else args.data
            steps: list[tuple[str, Any]] = [
                ("forward", lambda: part_forward(args, device)),
                ("train", lambda: part_train(args, device, data, work, deadline, report)),
                ("e2e", lambda: part_e2e(args, device, work, scene_job)),
            ]
            for name, fn in steps:
                if name not in parts:
                    continue
                t = time.perf_counter()
                try:
                    result = fn()
                    if name == "train":
                        save_training_log(report, args.out)
                        write_report(args.out, report)
                        report["score"] = part_score(args, result, data, args.out, report)
                    else:
                        report[name] = result
                # One part's failure is reported; the next parts still run.
                except Exception as exc:  # noqa: BLE001
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    log(f"{name}: FAILED: {report['errors'][name]}")
                    import traceback

                    traceback.print_exc()
                    status = 1
                report.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t, 1)
                write_report(args.out, report)
            left = deadline - time.perf_counter()
            if args.compile and "forward" in report and left > args.compile_min_s:
                # Last, in what time is left: compiling may take a minute.
                log(f"forward: torch.compile variant ({left:.0f} s left before the deadline)")
                report["forward"] = part_forward(args, device, report["forward"])
                write_report(args.out, report)
            elif args.compile and "forward" in report:
                log(
                    f"forward: torch.compile variant skipped ({left:.0f} s left before the deadline)"
                )
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    log(
        f"done: {args.out / 'report.json'}"
        + (f"; failed parts: {', '.join(report['errors'])}" if report["errors"] else "")
    )
    return status


def save_training_log(report: dict[str, Any], out: Path) -> None:
    """Each epoch of each stage, one JSON line each, in ``OUT/training.jsonl`` (the report keeps
    the stages without their histories)."""
    lines = []
    for stage in report.get("train", {}).get("stages", []):
        for record in stage.pop("history", []):
            lines.append(json.dumps({"stage": stage["name"], **record}))
    (out / "training.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
