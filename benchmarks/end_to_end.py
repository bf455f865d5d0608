"""End to end on the CPU: ``geounet predict`` per backend, int8, and pytorch-toolbelt's tiler.

The bundled building model over real-looking RGB scenes at 0.3 m in a UTM CRS (a mosaic of the
Austin buildings-rgb crops, each turned by a quarter more each time it recurs:
``deepness.mosaic``), cached in ``--work-dir``. Every run is a FRESH child process, so that its
peak RSS and its fixed cost per process (imports, model load, writing) count as for a user
running the CLI; the wall time is taken by this process from the child's start to its exit and
the peak RSS is the child's own high-water mark (``VmHWM``, read as it exits; ``os.wait4``'s
``ru_maxrss`` would include this process's RSS at the fork). The runs (``--runs``):

- ``torch``: ``geounet predict SCENE -o out.gpkg --mask mask.tif --backend torch --precision fp32`` (PyTorch float32
  was the default before ``--backend``); the child runs what the CLI runs (``Predictor`` then
  ``Predictor.run``, as ``predict_raster``) and reports ``PredictResult.timings["model"]``;
- ``onnxruntime``: the same with ``--backend onnxruntime`` (float32);
- ``auto``: no ``--backend`` or ``--precision``: what a user gets (onnxruntime float32 on an AVX2
  CPU; PyTorch bf16 autocast on a CPU with native bf16, AVX512-BF16 or AMX);
- ``int8``: ``geounet predict -m int8.onnx ...`` with the model's int8 copy (``--precision int8``:
  the bundled ``buildings-int8.onnx``), or, for a model without one, the graph
  ``benchmarks/backends.py --quantize`` writes;
- ``toolbelt``: the usual hand-written tiled inference with pytorch-toolbelt 0.8
  (``ImageSlicer`` + ``TileMerger``, pyramid weights), the same network and weights (geounet's
  ``load_model``, float32, eval), geounet's normalization for this model (the scene's own
  percentile stretch then standardization, ``normalize.scene_scaling``), tile 512 and overlap 64
  (the model's contract), batch 1 (geounet's CPU default), the whole scene read with rasterio and
  the thresholded building mask written as a GeoTIFF. Needs
  ``.venv/bin/pip install --no-deps pytorch-toolbelt==0.8.0 opencv-python-headless``
  (``tiles.py`` imports cv2; the package's ``inference/__init__`` imports torchvision through
  ``utils``, so ``tiles.py`` is loaded from its file when that import fails). Without it the row
  is skipped with a message.

Printed per scene size: wall s, peak RSS MB (2^20 bytes), the network's seconds and share of the
wall, tiles, the network's GFLOP/s in the run, and the share of pixels whose mask equals the
first run's (``torch``). Then the ratios: end-to-end speed-up of each run against ``torch``
(goal >= 1.5x), ``onnxruntime`` against ``toolbelt`` (goal: faster at every size), and the
network's GFLOP/s as a share of the CPU's float32 peak (goal >= 60 %).

FLOPs per tile are counted from the network: forward hooks on every Conv2d / ConvTranspose2d of
the (unfused) model at 1 x bands x 512 x 512, 2 x MACs (biases, BatchNorm, activations,
pooling not counted). The fp32 peak is measured by ``benchmarks/cpu_peak.py`` (``--threads``
threads of AVX2 FMA chains; its clock from a chain of dependent adds); without a C compiler it
falls back to threads x 32 FLOP/cycle (AVX2: 2 FMA units x 8 lanes x 2) x lscpu's max MHz or
/proc/cpuinfo's "cpu MHz" (a VM's nominal figure, below the boost clock the cores run at). Before the runs, a separate child times the pure
network per tile at batch 1 (warm-up, then ``--net-tiles`` tiles): PyTorch fp32 channels_last
(fused, as geounet runs it), onnxruntime, int8 and the unfused NCHW network (as the toolbelt
script runs it).

Run from the repository root (a by-hand benchmark, not run in CI):

    python benchmarks/end_to_end.py [--sizes 4096 8192] [--runs torch,onnxruntime,auto,int8,toolbelt]
        [--repeats 1] [--threads 2] [--work-dir /tmp/geounet-e2e] [--json OUT]
    python benchmarks/end_to_end.py --sizes 512 --runs torch,onnxruntime   # a couple of minutes
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA = ROOT.parent / "shared" / "data" / "buildings-rgb"
RUNS = ("torch", "onnxruntime", "auto", "int8", "toolbelt")
GEOUNET_RUNS = ("torch", "onnxruntime", "auto", "int8")
TOOLBELT_INSTALL = ".venv/bin/pip install --no-deps pytorch-toolbelt==0.8.0 opencv-python-headless"
#: float32 FLOP per cycle per core with AVX2: 2 FMA units x 8 lanes x 2 (multiply and add).
FLOP_PER_CYCLE = 32
#: --backend and --precision of each geounet run. "auto" is what a user gets with no option: on a
#: CPU with native bf16 (AVX512-BF16, AMX) PyTorch in bf16, elsewhere onnxruntime in float32.
RUN_SETTINGS = {
    "torch": ("torch", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "auto": ("auto", "auto"),
    "int8": ("auto", "int8"),
}

# geounet's library by its current module paths (the package is being reorganized into
# subpackages; the flat paths of the previous layout are the fallback).
_MODULES = (
    "geounet.prediction.predictor",
    "geounet.prediction.config",
    "geounet.prediction.predict",
    "geounet.network.checkpoint",
    "geounet.geodata.normalize",
    "geounet.geodata.raster",
    "geounet.predict",
    "geounet.checkpoint",
    "geounet.normalize",
    "geounet.raster",
)


def api(attr: str, module: str | None = None) -> Any:
    """A function or class of geounet's library by name (``module``: only modules whose last
    part is this, e.g. ``normalize`` for ``scene_scaling``)."""
    for path in _MODULES:
        if module is not None and path.rsplit(".", 1)[-1] != module:
            continue
        try:
            mod = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name is None or not path.startswith(exc.name):
                raise
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
    raise ImportError(f"{attr} not found in {_MODULES}")


# --------------------------------------------------------------------------------------------
# children


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def child_geounet(p: dict[str, Any]) -> dict[str, Any]:
    """``geounet predict SCENE -o OUT --mask MASK [-m MODEL] --backend B`` as the CLI runs it."""
    t0 = time.perf_counter()
    _threads(p["threads"])
    config_cls, predictor_cls = api("PredictConfig"), api("Predictor")
    t_import = time.perf_counter() - t0
    cfg = config_cls(backend=p["backend"], precision=p["precision"], overwrite=True)
    t1 = time.perf_counter()
    pred = predictor_cls(
        p["model"],
        device=cfg.device,
        compile=cfg.compile,
        precision=cfg.precision,
        backend=cfg.backend,
    )
    t_load = time.perf_counter() - t1
    result = pred.run(p["scene"], p["out"], mask=p["mask"], config=cfg)
    import torch

    ort_threads = None
    session = getattr(pred.net, "session", None)
    if session is not None:
        ort_threads = session.get_session_options().intra_op_num_threads
    return {
        "backend": pred.backend
        + (" int8" if p["precision"] == "int8" else " bf16" if pred.amp is not None else " fp32"),
        "import_s": t_import,
        "load_s": t_load,
        "run_s": result.seconds,
        "model_s": result.timings["model"],
        "timings": result.timings,
        "tiles": result.tiles - result.tiles_skipped,
        "features": result.features,
        "torch_threads": torch.get_num_threads(),
        "ort_threads": ort_threads,
    }


def load_toolbelt_tiles() -> Any:
    """``pytorch_toolbelt.inference.tiles`` (from its file when the package's ``inference``
    import needs torchvision, which this environment does not install); None when absent."""
    try:
        from pytorch_toolbelt.inference import tiles

        return tiles
    except ModuleNotFoundError as exc:
        if exc.name in ("pytorch_toolbelt", "cv2"):
            return None
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "inference" / "tiles.py"
    tspec = importlib.util.spec_from_file_location("pytorch_toolbelt_tiles", path)
    module = importlib.util.module_from_spec(tspec)  # type: ignore[arg-type]
    try:
        tspec.loader.exec_module(module)  # type: ignore[union-attr]
    except ModuleNotFoundError:
        return None
    return module


def toolbelt_available() -> str | None:
    """The installed pytorch-toolbelt version when it and cv2 (its tiler's one import beyond
    numpy and torch) are installed, else None; found without importing them, so that this
    process stays small (a child's peak RSS starts from its parent's)."""
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec("cv2") is None:
        return None
    try:
        return version("pytorch-toolbelt")
    except PackageNotFoundError:
        return None


def child_toolbelt(p: dict[str, Any]) -> dict[str, Any]:
    """The usual hand-written tiled inference with pytorch-toolbelt (see the module docstring)."""
    t0 = time.perf_counter()
    _threads(p["threads"])
    import numpy as np
    import rasterio
    import torch

    tiles_mod = load_toolbelt_tiles()
    load_model, scene_scaling = api("load_model", "checkpoint"), api("scene_scaling", "normalize")
    open_scene = api("open_scene", "raster")
    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    net, meta = load_model(p["model"])
    net = net.float().eval()
    t_load = time.perf_counter() - t1
    tile, overlap, batch = meta.tile_size, meta.overlap, p["batch_size"]
    with rasterio.open(p["scene"]) as src:
        profile = src.profile
        bands = list(range(1, meta.bands + 1))
        image = src.read(bands)
        scene = open_scene(p["scene"])
        offset, scale = scene_scaling(meta.normalization, meta.mean, meta.std, src, scene, bands)
    x = (image.astype(np.float32) - offset.reshape(-1, 1, 1)) / scale.reshape(-1, 1, 1)
    del image
    x = np.ascontiguousarray(np.moveaxis(x, 0, -1))  # HWC, as the slicer takes it
    slicer = tiles_mod.ImageSlicer(
        x.shape, tile_size=tile, tile_step=tile - overlap, weight="pyramid"
    )
    tiles = slicer.split(x)
    merger = tiles_mod.TileMerger(slicer.target_shape, meta.outputs, slicer.weight)
    model_s = 0.0
    with torch.inference_mode():
        for i in range(0, len(tiles), batch):
            xb = torch.from_numpy(np.stack(tiles[i : i + batch])).permute(0, 3, 1, 2).contiguous()
            t = time.perf_counter()
            y = net(xb)
            model_s += time.perf_counter() - t
            merger.integrate_batch(y, slicer.crops[i : i + batch])
    del tiles, x
    merged = np.moveaxis(merger.merge().numpy(), 0, -1)
    logits = slicer.crop_to_orignal_size(merged)[..., 0]
    mask = (logits >= np.log(p["threshold"] / (1 - p["threshold"]))).astype(
        np.uint8
    )  # sigmoid >= threshold
    profile.update(
        driver="GTiff",
        count=1,
        dtype="uint8",
        nodata=None,
        compress="deflate",
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    profile.pop("photometric", None)
    with rasterio.open(p["mask"], "w", **profile) as dst:
        dst.write(mask, 1)
    return {
        "backend": "torch (toolbelt)",
        "import_s": t_import,
        "load_s": t_load,
        "run_s": time.perf_counter() - t1,
        "model_s": model_s,
        "tiles": len(slicer.crops),
        "torch_threads": torch.get_num_threads(),
        "ort_threads": None,
    }


def conv_flops(net: Any, bands: int, size: int) -> int:
    """2 x MACs of every Conv2d / ConvTranspose2d for one ``bands x size x size`` tile, counted
    with forward hooks on the module's real shapes."""
    import torch

    total = 0

    def hook(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        if isinstance(module, torch.nn.ConvTranspose2d):
            # every input pixel scatters into out_channels/groups x kh x kw outputs
            macs = inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        else:
            macs = output.numel() * (module.in_channels // module.groups) * kh * kw
        total += 2 * macs

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    with torch.inference_mode():
        net(torch.zeros(1, bands, size, size))
    for h in handles:
        h.remove()
    return total


def seconds_per_tile(net: Any, x: Any, batches: int) -> float:
    """Mean wall time of ``batches`` forward passes of the batch ``x``, per tile."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(batches):
            net(x)
    return (time.perf_counter() - t0) / (batches * int(x.shape[0]))


def child_netbench(p: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per tile, and the pure network's seconds per tile at batch ``batch_size`` for each
    way of running it (random standardized tiles, warm-up first)."""
    _threads(p["threads"])
    import torch

    predictor = api("Predictor")
    net, meta = api("load_model", "checkpoint")(p["model"])
    net = net.float().eval()
    tile = meta.tile_size
    flops = conv_flops(net, meta.bands, tile)
    out: dict[str, Any] = {
        "flops_per_tile": flops,
        "tile": tile,
        "batch_size": p["batch_size"],
        "s_per_tile": {},
    }
    if p["tiles"] < 1:  # FLOPs only
        return out
    nets: dict[str, Any] = {
        "torch fp32 channels_last (fused)": predictor(
            p["model"], device="cpu", precision="fp32", backend="torch"
        ).net,
        "onnxruntime fp32": predictor(
            p["model"], device="cpu", precision="fp32", backend="onnxruntime"
        ).net,
        "toolbelt: unfused NCHW": net,
    }
    bf16 = predictor(p["model"], device="cpu", precision="auto", backend="torch")
    if bf16.amp is not None:  # native bf16 (AVX512-BF16 / AMX): what precision auto runs here
        nets["torch bf16 channels_last (fused)"] = bf16._forward_plain
    if p.get("int8"):
        nets["int8 (onnxruntime)"] = predictor(p["int8"], device="cpu").net
    x = torch.randn(
        p["batch_size"], meta.bands, tile, tile, generator=torch.Generator().manual_seed(0)
    )
    for name, n in nets.items():
        xin = x.contiguous(memory_format=torch.channels_last) if name.startswith("torch ") else x
        seconds_per_tile(n, xin, 2)  # warm-up
        out["s_per_tile"][name] = seconds_per_tile(n, xin, p["tiles"])
    return out


def child_quantize(p: dict[str, Any]) -> dict[str, Any]:
    """The int8 graph, written by benchmarks/backends.py's own ``quantize``."""
    _threads(p["threads"])
    sys.path.insert(0, str(BENCH))
    import backends

    backends.quantize(
        None if p["model"] == "buildings" else p["model"], Path(p["data"]), Path(p["out"])
    )
    return {"int8": p["out"]}


def child_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Fill the onnxruntime backend's graph cache (a user's second run finds it there)."""
    _threads(p["threads"])
    pred = api("Predictor")(p["model"], device="cpu", precision="fp32", backend="onnxruntime")
    return {"backend": pred.backend}


CHILDREN = {
    "geounet": child_geounet,
    "toolbelt": child_toolbelt,
    "netbench": child_netbench,
    "quantize": child_quantize,
    "prepare": child_prepare,
}


def run_child(kind: str, params: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one child process; its result plus ``wall_s`` (start to exit) and ``peak_rss_mb``."""
    pfile = work / f"child-{kind}.json"
    rfile = work / f"child-{kind}.result.json"
    pfile.write_text(json.dumps(params))
    rfile.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(pfile), str(rfile)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not rfile.exists():
        raise RuntimeError(f"child {kind} failed (exit {proc.returncode}): {' '.join(cmd)}")
    result: dict[str, Any] = json.loads(rfile.read_text())
    result["wall_s"] = wall
    # The child's own high-water mark (VmHWM, read as it exits): rusage's ru_maxrss of a child
    # counts the parent's RSS at the fork as well.
    result["peak_rss_mb"] = result.pop("vm_hwm_kb") / 1024
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    return result


def vm_hwm_kb() -> int:
    """This process's peak resident set size in KiB (Linux's VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------------------------
# parent


def cpu_info(threads: int) -> dict[str, Any]:
    model, mhz, source = platform.processor() or "?", None, None
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("?", "x86_64", ""):
                model = value.strip()
            if key.strip() == "cpu MHz" and mhz is None:
                mhz, source = float(value), '/proc/cpuinfo "cpu MHz"'
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("CPU max MHz:"):
                mhz, source = float(line.split(":")[1]), "lscpu CPU max MHz"
    except OSError:
        pass
    reported = mhz
    peak = threads * FLOP_PER_CYCLE * (mhz or 0) / 1000
    peak_source = f"{threads} x {FLOP_PER_CYCLE} FLOP/cycle x {source}"
    bf16_peak = None
    try:  # the clock and peak measured by benchmarks/cpu_peak.py (a VM's cpu MHz is not its clock)
        sys.path.insert(0, str(BENCH))
        import cpu_peak

        probe = cpu_peak.measure(threads, 100_000_000)
        mhz, source = (
            probe["clock_ghz"] * 1000,
            "measured by benchmarks/cpu_peak.py (dependent adds)",
        )
        peak, peak_source = probe["fma_gflops"], f"measured: {threads} threads of AVX2 FMA chains"
        bf16_peak = probe["bf16_gflops"]
    except (RuntimeError, OSError) as exc:
        print(f"cpu_peak.py could not measure the peak ({exc}); using the reported clock")
    return {
        "model": model,
        "cores": os.cpu_count(),
        "threads": threads,
        "mhz": mhz,
        "mhz_source": source,
        "reported_mhz": reported,
        "peak_gflops": peak,
        "peak_source": peak_source,
        "bf16_peak_gflops": bf16_peak,
    }


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "onnxruntime", "pytorch-toolbelt", "opencv-python-headless", "geounet"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def build_scene(work: Path, size: int, data: Path) -> Path:
    """A ``size`` x ``size`` mosaic of the Austin crops at 0.3 m (UTM 14N), cached."""
    path = work / f"scene-{size}.tif"
    if path.exists():
        return path
    sys.path.insert(0, str(BENCH))
    import deepness  # benchmarks/deepness.py

    crops = sorted((data / "inria").glob("austin*.tif"))
    if not crops:
        raise SystemExit(f"no Austin crops under {data / 'inria'}")
    tmp = work / f"scene-{size}.partial.tif"
    deepness.mosaic(crops, tmp, size // 256)
    tmp.rename(path)
    return path


def read_mask(path: Path) -> Any:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def agree(a: Any, b: Any) -> float:
    return float((a == b).mean())


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best (by wall) and median of a run's repeats."""
    best = min(rows, key=lambda r: r["wall_s"])
    med = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "peak_rss_mb", "model_s")}
    return {"best": best, "median": med, "repeats": len(rows)}


def print_table(
    size: int,
    results: dict[str, list[dict[str, Any]]],
    flops: int,
    peaks: dict[str, float | None],
    ref: str | None,
) -> None:
    print(f"\n### {size} x {size}\n")
    rep = max((len(v) for v in results.values()), default=1)
    head = f"| run | backend | wall s | peak RSS MB | network s | network share | tiles | network GFLOP/s | % of peak (its precision) | mask = {ref}'s |"
    if rep > 1:
        head = head.replace("| wall s |", "| wall s best (median) |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, rows in results.items():
        s = summarize(rows)
        b = s["best"]
        gf = flops * b["tiles"] / b["model_s"] / 1e9 if b["model_s"] else None
        wall = f"{b['wall_s']:.1f}" + (f" ({s['median']['wall_s']:.1f})" if rep > 1 else "")
        same = b.get("agree_ref")
        label = name
        print(
            f"| {label} | {b['backend']} | {wall} | {b['peak_rss_mb']:.0f} | {b['model_s']:.1f} | "
            f"{100 * b['model_s'] / b['wall_s']:.1f} % | {b['tiles']} | {fmt(gf)} | {fmt(100 * gf / peak_of(b, peaks) if gf and peak_of(b, peaks) else None)} % | "
            f"{fmt(100 * same if same is not None else None, '.4f')} % |"
        )
    print(
        f"\nmask agreement against: {ref or '-'}; GFLOP/s = {flops / 1e9:.2f} GFLOP per tile x tiles / network s"
    )


def peak_of(row: dict[str, Any], peaks: dict[str, float | None]) -> float | None:
    """The peak a run's network is a share of: bf16's for a bf16 run, float32's otherwise."""
    return peaks["bf16"] if str(row.get("backend", "")).endswith("bf16") else peaks["fp32"]


def print_ratios(
    size: int, results: dict[str, list[dict[str, Any]]], peaks: dict[str, float | None], flops: int
) -> dict[str, Any]:
    best = {k: summarize(v)["best"] for k, v in results.items()}
    out: dict[str, Any] = {}
    print(f"\nratios, {size} x {size}:")
    if "torch" in best:
        for name, b in best.items():
            if name == "torch":
                continue
            r = best["torch"]["wall_s"] / b["wall_s"]
            out[f"speedup_{name}"] = r
            print(
                f"  end-to-end speed-up of {name} vs torch: {r:.2f}x (goal >= 1.5x: {'met' if r >= 1.5 else 'missed'})"
            )
    default = "auto" if "auto" in best else "onnxruntime"
    if default in best and "toolbelt" in best:
        r = best["toolbelt"]["wall_s"] / best[default]["wall_s"]
        out[f"{default}_vs_toolbelt"] = r
        print(
            f"  geounet default ({default}: {best[default]['backend']}) vs toolbelt: {r:.2f}x faster (goal > 1: {'met' if r > 1 else 'missed'}); "
            f"peak RSS {best[default]['peak_rss_mb'] / best['toolbelt']['peak_rss_mb']:.2f}x toolbelt's"
        )
    for name, b in best.items():
        peak = peak_of(b, peaks)
        if b["model_s"] and peak:
            frac = flops * b["tiles"] / b["model_s"] / 1e9 / peak
            out[f"peak_fraction_{name}"] = frac
            kind = "bf16" if peak == peaks["bf16"] else "fp32"
            print(
                f"  network GFLOP/s of {name} as a share of the {kind} peak: {100 * frac:.1f} % (goal >= 60 %: {'met' if frac >= 0.6 else 'missed'})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[4096, 8192],
        help="scene sizes in pixels (multiples of 256)",
    )
    ap.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated, from {','.join(RUNS)}"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of all runs, interleaved; >1 reports best and median",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch / onnxruntime intra-op threads for every run",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/geounet-e2e"),
        help="scenes, outputs, int8 graph, graph cache",
    )
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="buildings")
    ap.add_argument(
        "--net-tiles",
        type=int,
        default=5,
        help="tiles per way in the pure-network timing (0: count FLOPs only)",
    )
    ap.add_argument("--json", type=Path, help="dump the raw figures here")
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        if r not in RUNS:
            ap.error(f"unknown run {r!r}; choose from {','.join(RUNS)}")
    if not args.data.is_dir():
        print(f"{args.data} not found (the buildings-rgb images build the scenes)", file=sys.stderr)
        return 2
    work = args.work_dir.resolve()
    if ROOT in work.parents or work == ROOT:
        ap.error("--work-dir must lie outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("GEOUNET_CACHE", str(work / "cache"))
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if "toolbelt" in runs and toolbelt_available() is None:
        print(
            f"SKIPPED toolbelt: pytorch-toolbelt (and cv2) not installed; install with: {TOOLBELT_INSTALL}",
            flush=True,
        )
        runs.remove("toolbelt")

    cpu = cpu_info(args.threads)
    vers = versions()
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores; threads per run (torch and onnxruntime intra-op): {args.threads}"
    )
    print(
        f"clock: {cpu['mhz']:.0f} MHz {cpu['mhz_source']} (reported: {cpu['reported_mhz']} MHz); fp32 peak {cpu['peak_gflops']:.1f} GFLOP/s ({cpu['peak_source']}); bf16 peak {fmt(cpu['bf16_peak_gflops'])} GFLOP/s"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(f"load average at start: {os.getloadavg()}", flush=True)

    base = {"model": args.model, "threads": args.threads}
    t = time.perf_counter()
    run_child("prepare", base, work, env)
    print(
        f"onnxruntime graph cache ready under {env['GEOUNET_CACHE']} ({time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    # the model's own int8 copy (the bundled buildings-int8.onnx), else one quantized here
    sibling = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from geounet.network.quantize import int8_sibling; "
            + "print(int8_sibling(sys.argv[1]) or '')",
            args.model,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    ).stdout.strip()
    int8 = Path(sibling) if sibling else work / "int8.onnx"
    if "int8" in runs and not int8.exists():
        t = time.perf_counter()
        run_child("quantize", {**base, "data": str(args.data), "out": str(int8)}, work, env)
        print(
            f"int8 graph written by benchmarks/backends.py's quantize: {int8} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )

    batch = 1  # geounet's CPU default (Predictor.batch_size_for)
    net = run_child(
        "netbench",
        {
            **base,
            "batch_size": batch,
            "tiles": args.net_tiles,
            "int8": str(int8) if "int8" in runs else None,
        },
        work,
        env,
    )
    flops = net["flops_per_tile"]
    peak = cpu["peak_gflops"]
    peaks: dict[str, float | None] = {"fp32": peak, "bf16": cpu["bf16_peak_gflops"]}
    print(
        f"\nFLOPs per {net['tile']} px tile, counted by forward hooks (2 x MACs of every Conv2d/ConvTranspose2d): {flops / 1e9:.2f} GFLOP"
    )
    print(
        f"pure network per tile at batch {batch} (2 warm-up, {args.net_tiles} timed, random standardized tiles, one process):\n"
    )
    print("| network | s per tile | GFLOP/s | % of peak (its precision) |")
    print("|---|---|---|---|")
    for name, s in net["s_per_tile"].items():
        print(
            f"| {name} | {s:.3f} | {flops / s / 1e9:.1f} | {fmt(100 * flops / s / 1e9 / p if (p := peaks['bf16' if 'bf16' in name else 'fp32']) else None)} % |"
        )
    sys.stdout.flush()

    report: dict[str, Any] = {
        "cpu": cpu,
        "versions": vers,
        "netbench": net,
        "sizes": {},
        "argv": sys.argv,
    }
    for size in args.sizes:
        scene = build_scene(work, size, args.data)
        results: dict[str, list[dict[str, Any]]] = {r: [] for r in runs}
        for rep in range(args.repeats):
            masks: dict[str, Path] = {}
            for name, rows in results.items():
                out_dir = work / f"out-{size}" / name
                out_dir.mkdir(parents=True, exist_ok=True)
                mask = out_dir / "mask.tif"
                p = {**base, "scene": str(scene), "mask": str(mask)}
                if name == "toolbelt":
                    r = run_child(
                        "toolbelt", {**p, "batch_size": batch, "threshold": 0.5}, work, env
                    )
                else:
                    model = str(int8) if name == "int8" else args.model
                    backend, precision = RUN_SETTINGS[name]
                    r = run_child(
                        "geounet",
                        {
                            **p,
                            "model": model,
                            "backend": backend,
                            "precision": precision,
                            "out": str(out_dir / "out.gpkg"),
                        },
                        work,
                        env,
                    )
                r["load_avg_after"] = os.getloadavg()
                masks[name] = mask
                rows.append(r)
                print(
                    f"  {size}: {name} (repeat {rep + 1}): wall {r['wall_s']:.1f} s, network {r['model_s']:.1f} s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB, load {r['load_avg_after'][0]:.2f}",
                    flush=True,
                )
            ref_name = "torch" if "torch" in masks else next(iter(masks))
            ref = read_mask(masks[ref_name])
            for name, mpath in masks.items():
                results[name][-1]["agree_ref"] = agree(read_mask(mpath), ref)
            if "auto" in masks and "onnxruntime" in masks:
                a = agree(read_mask(masks["auto"]), read_mask(masks["onnxruntime"]))
                results["auto"][-1]["agree_onnxruntime"] = a
                print(
                    f"  auto ran {results['auto'][-1]['backend']}; its mask equals onnxruntime's on {100 * a:.4f} % of pixels",
                    flush=True,
                )
        print_table(
            size,
            results,
            flops,
            peaks,
            "torch" if "torch" in results else next(iter(results), None),
        )
        ratios = print_ratios(size, results, peaks, flops)
        sys.stdout.flush()
        report["sizes"][str(size)] = {"scene": str(scene), "runs": results, "ratios": ratios}
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    if "int8" in runs:
        print(
            "\nint8 (--precision int8): held-out pixel F1 0.7441 against 0.7456 in float32 (benchmarks/README.md, int8)."
        )
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _kind, _params, _result = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        _out = CHILDREN[_kind](json.loads(_params.read_text()))
        _out["vm_hwm_kb"] = vm_hwm_kb()
        _result.write_text(json.dumps(_out, default=str))
        sys.exit(0)
    sys.exit(main())
