"""Prediction benchmarks: end-to-end throughput, pipeline efficiency, a naive reference,
vectorization cost and memory scaling.

Run by hand from the repository root (not in CI); see ``benchmarks/README.md``:

    python benchmarks/predict.py --size 2048 --size 4096            # end-to-end + forward + naive
    python benchmarks/predict.py --vectorize --size 16384             # StripVectorizer vs model time
    python benchmarks/predict.py --memory-scaling --size 2048x1024    # peak RSS vs scene height

Scenes are synthetic (:func:`geounet.synthetic.make_scene`) and cached in ``--work-dir``, as is
the default model: a seeded U-Net of ``--model-width`` whose BatchNorm statistics are calibrated
on a synthetic scene and whose head bias makes about 10% of the pixels foreground, so there are
polygons to vectorize. ``--model PATH`` benchmarks a real model instead.

Every measured run happens in a fresh child process (this script run with ``--child``), so each
peak RSS is that run's own; it includes the interpreter, PyTorch and the model, whose share is
printed as the start-up baseline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULT = "@@BENCH-RESULT "
#: Main-thread steps of PredictResult.timings (they add up to the run, with "other").
STEPS = ("read_wait", "model", "stitch", "strips", "strips_wait", "tail")
#: Where strip handling and the tail spent their time (inline, or on the strip worker thread).
BACKGROUND = ("postprocess", "write", "vectorize")
HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------
# Children: each runs in a fresh interpreter and prints one JSON line prefixed with RESULT.


def _setup_child(p: dict[str, Any]) -> None:
    import torch

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))


def _predictor(p: dict[str, Any]) -> Any:
    from geounet.prediction.predictor import Predictor

    kwargs = {"compile": True} if p.get("compile") else {}
    return Predictor(p["model"], device=p["device"], **kwargs)


def _batch(pred: Any, p: dict[str, Any]) -> int:
    """The batch size given, else geounet's own choice (4 on the CPU; from free memory on CUDA)."""
    if p.get("batch"):
        return int(p["batch"])
    if hasattr(pred, "batch_size_for"):
        return int(pred.batch_size_for(p["tile"]))
    return 16 if pred.device.type == "cuda" else 4


def _peaks(device: str) -> dict[str, Any]:
    import resource

    out: dict[str, Any] = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        import torch

        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child_load(p: dict[str, Any]) -> dict[str, Any]:
    """Start-up baseline: imports and a loaded Predictor, nothing run."""
    _setup_child(p)
    _predictor(p)
    return _peaks(p["device"])


def child_e2e(p: dict[str, Any]) -> dict[str, Any]:
    """One ``predict_raster`` run with vector, mask and probability outputs.

    Without a batch size on CUDA, geounet picks one from the free GPU memory; the run is then
    ``Predictor(...).run(...)`` (what ``predict_raster`` does) so the chosen size can be reported
    and reused by the pure-forward and naive runs.
    """
    _setup_child(p)
    import torch

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    paths = {"mask": out / "mask.tif", "probabilities": out / "probabilities.tif"}
    extra: dict[str, Any] = {"compile": True} if p.get("compile") else {}
    if p.get("strip_thread") is not None:
        extra["strip_thread"] = p["strip_thread"]
    t0 = time.perf_counter()
    if p.get("batch"):
        batch = int(p["batch"])
        cfg = PredictConfig(
            tile_size=p["tile"],
            overlap=p["overlap"],
            batch_size=batch,
            device=p["device"],
            overwrite=True,
            **extra,
        )
        r = predict_raster(p["scene"], out / "vectors.gpkg", model=p["model"], config=cfg, **paths)
    else:
        pred = _predictor(p)
        batch = _batch(pred, p)
        if pred.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()  # not the batch-size probe's peak
        cfg = PredictConfig(
            tile_size=p["tile"],
            overlap=p["overlap"],
            batch_size=batch,
            device=p["device"],
            overwrite=True,
            **extra,
        )
        r = pred.run(p["scene"], out / "vectors.gpkg", config=cfg, **paths)
    wall = time.perf_counter() - t0
    sizes = {
        f.name: f.stat().st_size / 2**20
        for f in out.iterdir()
        if f.is_file() and f.name.startswith(("vectors.", "mask.", "probabilities."))
    }
    return {
        "wall": wall,
        "seconds": r.seconds,
        "timings": r.timings,
        "features": r.features,
        "batch": batch,
        "tiles": r.tiles,
        "skipped": r.tiles_skipped,
        "class_counts": r.class_counts,
        "output_mb": sizes,
        **_peaks(p["device"]),
    }


def child_forward(p: dict[str, Any]) -> dict[str, Any]:
    """Predictor.forward on random batches: the model alone, same path as the pipeline."""
    _setup_child(p)
    import numpy as np
    import torch

    pred = _predictor(p)
    cuda = pred.device.type == "cuda"
    bands, ts, bs, n = pred.meta.bands, p["tile"], _batch(pred, p), p["tiles"]
    top = {"uint8": 255.0, "uint16": 2047.0, "int16": 2047.0}.get(pred.meta.dtype, 1.0)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, top, (bs, bands, ts, ts)).astype(np.float32) for _ in range(2)]
    valid = np.ones((bs, ts, ts), dtype=bool)
    warmup = 3 if cuda or p.get("compile") else 1
    scaling = pred.array_scaling(batches[0], valid)  # once per scene, as the pipeline does
    for i in range(warmup):
        pred.forward(batches[i % 2], valid, scaling=scaling)
    if cuda:
        torch.cuda.synchronize()
    calls = done = 0
    t0 = time.perf_counter()
    while done < n:
        k = min(bs, n - done)
        pred.forward(
            batches[calls % 2][:k], valid[:k], scaling=scaling
        )  # numpy on the CPU: synchronous
        done += k
        calls += 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "tiles": done,
        "calls": calls,
        "warmup_batches": warmup,
        "batch": bs,
        **_peaks(p["device"]),
    }


def child_naive(p: dict[str, Any]) -> dict[str, Any]:
    """The script a user writes by hand: whole scene in memory, non-overlapping tiles.

    Reads the scene at once, cuts non-overlapping tiles (the last ones zero-padded), runs the
    same network with the same normalization in batches, hard-stitches the logits into a
    whole-scene array, thresholds it, polygonizes the whole mask with ``rasterio.features.shapes``
    and writes a GeoPackage with geopandas.
    """
    _setup_child(p)
    import geopandas as gpd
    import numpy as np
    import rasterio
    import torch
    from rasterio.features import shapes
    from shapely.geometry import shape

    from geounet.network.checkpoint import load_model

    t_start = time.perf_counter()
    device = torch.device(p["device"])
    net, meta = load_model(p["model"])
    net = net.to(device).eval()
    mean = torch.tensor(meta.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    tile, batch = p["tile"], p["batch"]

    t0 = time.perf_counter()
    with rasterio.open(p["scene"]) as src:
        img = src.read().astype(np.float32)
        transform, crs = src.transform, src.crs
    bands, height, width = img.shape
    t_read = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_out = meta.arch_args["classes"]
    logits = np.zeros((n_out, height, width), dtype=np.float32)
    windows = [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            x = np.zeros((len(chunk), bands, tile, tile), dtype=np.float32)
            for k, (r, c) in enumerate(chunk):
                part = img[:, r : r + tile, c : c + tile]
                x[k, :, : part.shape[1], : part.shape[2]] = part
            xt = (torch.from_numpy(x).to(device) - mean) / std
            y = net(xt).cpu().numpy()
            for k, (r, c) in enumerate(chunk):
                h, w = min(tile, height - r), min(tile, width - c)
                logits[:, r : r + h, c : c + w] = y[k, :, :h, :w]
    t_model = time.perf_counter() - t0

    t0 = time.perf_counter()
    if n_out == 1:
        cls = (logits[0] >= 0).astype(np.uint8)  # sigmoid(logit) >= 0.5
        names = ["background", *meta.classes]
    else:
        cls = logits.argmax(axis=0).astype(np.uint8)
        names = list(meta.classes)
    t_threshold = time.perf_counter() - t0

    t0 = time.perf_counter()
    geoms, values = [], []
    for geom, value in shapes(cls, mask=cls > 0, connectivity=4, transform=transform):
        geoms.append(shape(geom))
        values.append(int(value))
    t_shapes = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = Path(p["out"]) / "naive"
    out.mkdir(parents=True, exist_ok=True)
    frame = gpd.GeoDataFrame({"class": [names[v] for v in values]}, geometry=geoms, crs=crs)
    frame.to_file(out / "naive.gpkg", driver="GPKG")
    t_write = time.perf_counter() - t0
    return {
        "wall": time.perf_counter() - t_start,
        "features": len(frame),
        "tiles": len(windows),
        "timings": {
            "read": t_read,
            "model": t_model,
            "threshold": t_threshold,
            "shapes": t_shapes,
            "write": t_write,
        },
        **_peaks(p["device"]),
    }


def child_vectorize(p: dict[str, Any]) -> dict[str, Any]:
    """Burn a seeded mask of thousands of shapes and polygonize it with StripVectorizer."""
    import numpy as np
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from geounet.vectors.strips import StripVectorizer
    from geounet.vectors.writer import write_vectors

    width, height, rows = p["width"], p["height"], p["strip_rows"]
    t0 = time.perf_counter()
    mask, n_shapes = _synthetic_mask(width, height, p["shapes"], p["seed"])
    t_gen = time.perf_counter() - t0
    fg = float(mask.mean())
    px = p["pixel_size"]
    transform = Affine(px, 0.0, 500000.0, 0.0, -px, 5000000.0)
    crs = CRS.from_epsg(32633)

    vec = StripVectorizer(transform, crs, ["background", "building"])
    t_add = 0.0
    for r0 in range(0, height, rows):
        m = mask[r0 : r0 + rows]
        score = np.where(m > 0, np.float32(0.9), np.float32(0.1))  # not timed
        t0 = time.perf_counter()
        vec.add(r0, m, score)
        t_add += time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = vec.finish()
    t_finish = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    write_vectors(frame, out / "vectorized.gpkg")
    t_write = time.perf_counter() - t0
    res: dict[str, Any] = {
        "generate": t_gen,
        "add": t_add,
        "finish": t_finish,
        "write": t_write,
        "features": len(frame),
        "shapes_burned": n_shapes,
        "foreground": fg,
    }
    res.update(_peaks("cpu"))
    if p["reference"]:
        from rasterio.features import shapes
        from shapely.geometry import shape

        t0 = time.perf_counter()
        ref = [
            shape(g) for g, _ in shapes(mask, mask=mask > 0, connectivity=4, transform=transform)
        ]
        res["reference_seconds"] = time.perf_counter() - t0
        res["reference_features"] = len(ref)
    return res


def _synthetic_mask(width: int, height: int, n: int, seed: int) -> tuple[Any, int]:
    """A uint8 mask (1 = foreground) of ~``n`` seeded shapes, burned strip by strip.

    60% rotated rectangles 8-80 px across (buildings at 0.5 m), 40% irregular star-shaped blobs
    6-50 px in radius (a quarter of them with a hole), and ``n // 250`` long road-like bands
    4-12 px wide crossing the scene (large polygons joined across every strip seam).
    Geometries are in pixel coordinates (x = column, y = row, downwards).
    """
    import numpy as np
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    n_rect = int(n * 0.6)
    n_blob = n - n_rect
    geoms: list[Any] = []
    # Rotated rectangles.
    cx, cy = rng.uniform(0, width, n_rect), rng.uniform(0, height, n_rect)
    hw, hh = rng.uniform(4, 40, n_rect), rng.uniform(4, 40, n_rect)
    ang = rng.uniform(0, np.pi, n_rect)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    for i in range(n_rect):
        xy = corners * [hw[i], hh[i]]
        c, s = math.cos(ang[i]), math.sin(ang[i])
        rot = xy @ np.array([[c, s], [-s, c]]) + [cx[i], cy[i]]
        geoms.append(shapely.Polygon(rot))
    # Star-shaped blobs, some with holes.
    k = 20
    theta = np.linspace(0, 2 * np.pi, k, endpoint=False)
    bx, by = rng.uniform(0, width, n_blob), rng.uniform(0, height, n_blob)
    radius = rng.uniform(6, 50, n_blob)
    for i in range(n_blob):
        r = radius[i] * rng.uniform(0.6, 1.0, k)
        shell = np.column_stack([bx[i] + r * np.cos(theta), by[i] + r * np.sin(theta)])
        holes = None
        if i % 4 == 0 and radius[i] > 15:
            hr = radius[i] * 0.3
            holes = [np.column_stack([bx[i] + hr * np.cos(theta), by[i] + hr * np.sin(theta)])]
        geoms.append(shapely.Polygon(shell, holes))
    # Long road-like bands.
    for _ in range(max(1, n // 250)):
        pts = [(rng.uniform(0, width), 0.0)]
        for j in range(1, 9):
            pts.append((min(max(pts[-1][0] + rng.normal(0, width / 10), 0), width), height * j / 8))
        if rng.random() < 0.5:
            pts = [(y * width / height, x * height / width) for x, y in pts]  # some run across
        geoms.append(shapely.LineString(pts).buffer(rng.uniform(2, 6)))
    arr = np.array(geoms, dtype=object)
    bounds = shapely.bounds(arr)
    mask = np.zeros((height, width), dtype=np.uint8)
    step = 1024
    for r0 in range(0, height, step):
        r1 = min(r0 + step, height)
        sel = arr[(bounds[:, 1] < r1) & (bounds[:, 3] > r0)]
        if len(sel):
            rasterize(((g, 1) for g in sel), out=mask[r0:r1], transform=Affine.translation(0, r0))
    return mask, len(geoms)


CHILDREN = {
    "load": child_load,
    "e2e": child_e2e,
    "forward": child_forward,
    "naive": child_naive,
    "vectorize": child_vectorize,
}


def run_child(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run a child in a fresh interpreter and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", kind, json.dumps(params)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT) and proc.returncode == 0:
            return json.loads(line[len(RESULT) :])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"benchmark child {kind!r} failed (exit {proc.returncode})")


def best_of(
    kind: str, params: dict[str, Any], repeat: int, key: str
) -> tuple[dict[str, Any], list[float]]:
    """Run a child ``repeat`` times; return the fastest run and every time."""
    runs = []
    for _ in range(max(1, repeat)):
        load = os.getloadavg()[0]
        runs.append({**run_child(kind, params), "load_before": load})
    return min(runs, key=lambda r: r[key]), [r[key] for r in runs]


# ----------------------------------------------------------------------------------------------
# Inputs: cached scenes and the calibrated model.


def parse_size(text: str) -> tuple[int, int]:
    """``N`` or ``WxH`` -> (width, height)."""
    t = text.lower().strip()
    try:
        if "x" in t:
            w, h = t.split("x")
            return int(w), int(h)
        return int(t), int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, not {text!r}") from None


def ensure_scene(
    work: Path, width: int, height: int, args: argparse.Namespace, bands: int, dtype: str
) -> Path:
    """A cached synthetic scene (generated once; make_scene's memory is bounded)."""
    from geounet.synthetic import make_scene

    name = f"scene_{width}x{height}_b{bands}_{dtype}_px{args.pixel_size:g}_s{args.seed}.tif"
    path = work / "scenes" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp.tif")
        t0 = time.perf_counter()
        make_scene(
            tmp,
            width=width,
            height=height,
            pixel_size=args.pixel_size,
            seed=args.seed,
            bands=bands,
            dtype=dtype,
        )
        os.replace(tmp, path)
        print(f"(generated {name} in {time.perf_counter() - t0:.1f} s)")
    return path


def ensure_model(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The model to benchmark: --model as is, or a cached calibrated random U-Net."""
    from geounet.network.checkpoint import read_meta

    if args.model:
        path = Path(args.model)
        meta = read_meta(path)
        return path, {
            "source": str(path),
            "calibrated": False,
            "width": meta.arch_args.get("width"),
            "depth": meta.depth,
            "bands": meta.bands,
            "dtype": meta.dtype,
        }
    path = (
        work
        / "models"
        / f"unet_w{args.model_width}_d{args.model_depth}_s{args.seed}_calibrated.safetensors"
    )
    info_path = path.with_suffix(".json")
    if not path.exists() or not info_path.exists():
        info = calibrate_model(work, path, args)
        info_path.write_text(json.dumps(info))
    info = json.loads(info_path.read_text())
    return path, info


def calibrate_model(work: Path, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A seeded U-Net whose output looks like a segmentation: ~10% foreground, in blobs.

    BatchNorm statistics come from train-mode forwards (momentum None: a plain average) on four
    512 x 512 crops of a 1024 x 1024 synthetic scene (another seed than the benchmarked scenes),
    then the head bias is lowered by the 90th percentile of the eval-mode logits of those crops.
    """
    import numpy as np
    import rasterio
    import torch

    from geounet.network.checkpoint import create_model, save_model
    from geounet.network.unet import calibrate_batchnorm

    t0 = time.perf_counter()
    net, meta = create_model(
        bands=3,
        classes=["building"],
        width=args.model_width,
        depth=args.model_depth,
        seed=args.seed,
    )
    calib = ensure_scene(
        work,
        1024,
        1024,
        argparse.Namespace(pixel_size=args.pixel_size, seed=args.seed + 1000),
        3,
        "uint8",
    )
    with rasterio.open(calib) as src:
        img = torch.from_numpy(src.read().astype(np.float32))
    mean = torch.tensor(meta.mean).view(-1, 1, 1)
    std = torch.tensor(meta.std).view(-1, 1, 1)
    crops = [
        ((img[:, r : r + 512, c : c + 512] - mean) / std)[None] for r in (0, 512) for c in (0, 512)
    ]
    calibrate_batchnorm(net, crops)
    with torch.no_grad():
        logits = torch.cat([net(x) for x in crops]).numpy()
        q90 = float(np.quantile(logits, 0.9))
        net.head.bias -= q90
    fg = float((logits - q90 >= 0).mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    meta.provenance = {
        "created": "benchmarks/predict.py",
        "seed": args.seed,
        "trained": False,
        "calibrated": "BatchNorm on 4 synthetic 512px crops, head bias -> 10% foreground",
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_model(net, meta, tmp)
    os.replace(tmp, path)
    print(
        f"(calibrated U-Net width {args.model_width} depth {args.model_depth} in "
        f"{time.perf_counter() - t0:.1f} s: head bias -{q90:.3f}, foreground {fg:.1%} on the crops)"
    )
    return {
        "source": "seeded, calibrated",
        "calibrated": True,
        "width": args.model_width,
        "depth": args.model_depth,
        "bands": 3,
        "dtype": "uint8",
        "head_shift": q90,
        "calibration_foreground": fg,
    }


# ----------------------------------------------------------------------------------------------
# Reporting helpers.


def machine(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average": os.getloadavg(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        rev = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "geounet"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        info["commit"] = rev + (" (geounet/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def print_header(
    args: argparse.Namespace, info: dict[str, Any], model_info: dict[str, Any]
) -> None:
    print(
        f"# geounet prediction benchmark, {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )
    print(f"# command: python {shlex.join(sys.argv)}")
    la = ", ".join(f"{x:.2f}" for x in info["load_average"])
    print(
        f"# machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']:.0f} GB RAM; "
        f"load average {la}"
    )
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    print(
        f"# python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
        f"device {info['device']}{gpu}; geounet commit {info.get('commit', '?')}"
    )
    print(
        f"# model: {model_info['source']}, U-Net width {model_info['width']}, depth {model_info['depth']}, "
        f"{model_info['bands']} bands {model_info['dtype']}"
    )
    print()


def mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} MB"


def n_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    from geounet.geodata.tiling import tile_windows

    return len(tile_windows(height, width, tile, overlap))


def pipeline_calls(height: int, width: int, tile: int, overlap: int, batch: int) -> int:
    """Forward calls the pipeline makes: full batches (they run across rows of tiles)."""
    return math.ceil(n_tiles(height, width, tile, overlap) / batch)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ----------------------------------------------------------------------------------------------
# Modes.


def resolve(args: argparse.Namespace) -> tuple[str, int | None]:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but PyTorch sees no CUDA GPU")
    # None: geounet's own choice, made in the child by Predictor.batch_size_for (1 on the CPU
    # since 8c28f35, 4 before; on CUDA from a probe of the free GPU memory).
    return device, args.batch_size


def mode_predict(
    args: argparse.Namespace,
    work: Path,
    device: str,
    batch: int | None,
    model: Path,
    model_info: dict[str, Any],
) -> list[dict[str, Any]]:
    sizes = args.size or [(2048, 2048)]
    ts, ov = args.tile_size, args.overlap
    common = {
        "model": str(model),
        "device": device,
        "tile": ts,
        "overlap": ov,
        "batch": batch,
        "threads": args.threads,
        "compile": args.compile,
        "strip_thread": args.strip_thread,
    }
    base = run_child("load", common)
    print(f"start-up baseline (imports + model on {device}): peak RSS {mb(base['peak_rss_mb'])}\n")
    results = []
    for width, height in sizes:
        scene = ensure_scene(work, width, height, args, model_info["bands"], model_info["dtype"])
        pixels = width * height
        mp = pixels / 1e6
        km2 = pixels * args.pixel_size**2 / 1e6
        tiles = n_tiles(height, width, ts, ov)
        overhead = tiles * ts * ts / pixels
        print(
            f"== scene {width}x{height} ({mp:.1f} MP, {km2:.2f} km² at {args.pixel_size:g} m), "
            f"tile {ts}, overlap {ov}, batch {batch or 'auto'}, {device}"
            f"{', torch.compile' if args.compile else ''} =="
        )
        out = work / "out" / f"{width}x{height}"
        e2e, walls = best_of(
            "e2e", {**common, "scene": str(scene), "out": str(out)}, args.repeat, "wall"
        )
        bs = e2e["batch"]
        common_bs = {**common, "batch": bs}
        calls = pipeline_calls(height, width, ts, ov, bs)
        print(
            f"tiles {tiles}; overlap overhead tiles*tile²/(H*W) = {overhead:.3f}; batch {bs}"
            f"{' (chosen by geounet)' if not batch else ''}: {calls} forward calls in the pipeline "
            f"at most (all-nodata tiles are skipped)"
        )
        load = e2e["wall"] - e2e["seconds"]
        tm = e2e["timings"]
        other = e2e["seconds"] - sum(tm.get(k, 0.0) for k in STEPS)
        rep = (
            f"best of {len(walls)}: " + ", ".join(f"{w:.1f}" for w in walls) + " s"
            if len(walls) > 1
            else "1 run"
        )
        rep += f"; 1-min load average {e2e['load_before']:.2f} before it"
        print(f"geounet predict_raster -> vectors.gpkg + mask.tif + probabilities.tif ({rep}):")
        gpu = f", peak GPU memory {mb(e2e['gpu_peak_mb'])}" if "gpu_peak_mb" in e2e else ""
        print(
            f"  wall {e2e['wall']:.2f} s (model load {load:.2f} s), {mp / e2e['wall']:.3f} MP/s, "
            f"{km2 / e2e['wall'] * 3600:,.0f} km²/h; peak RSS {mb(e2e['peak_rss_mb'])}{gpu}; "
            f"{e2e['features']} features ({e2e['features'] / km2:,.0f}/km²)"
        )
        split = ", ".join(
            f"{k} {tm.get(k, 0.0):.2f} s ({tm.get(k, 0.0) / e2e['seconds']:.1%})" for k in STEPS
        )
        print(f"  main thread: {split}, other {other:.2f} s ({other / e2e['seconds']:.1%})")
        busy = ", ".join(f"{k} {tm.get(k, 0.0):.2f} s" for k in BACKGROUND)
        print(f"  strip handling and tail, by kind of work: {busy}")

        res: dict[str, Any] = {
            "size": [width, height],
            "tiles": tiles,
            "overlap_overhead": overhead,
            "batch": bs,
            "pipeline_calls": calls,
            "e2e": e2e,
            "e2e_walls": walls,
            "startup_rss_mb": base["peak_rss_mb"],
        }
        fwd_tiles = e2e["tiles"] - e2e["skipped"]
        if args.forward_tiles is not None:
            fwd_tiles = min(fwd_tiles, args.forward_tiles)
        if fwd_tiles > 0:
            fwd, _fwalls = best_of(
                "forward", {**common_bs, "tiles": fwd_tiles}, args.repeat, "seconds"
            )
            per_tile = fwd["seconds"] / fwd["tiles"]
            forward_all = per_tile * (e2e["tiles"] - e2e["skipped"])
            eff = forward_all / e2e["wall"]
            scaled = (
                ""
                if fwd_tiles == e2e["tiles"] - e2e["skipped"]
                else f" (scaled from {fwd_tiles} tiles: {fwd['seconds']:.2f} s)"
            )
            print(
                f"pure forward (Predictor.forward, random batches of {bs}, after "
                f"{fwd['warmup_batches']} warm-up): {e2e['tiles'] - e2e['skipped']} tiles in "
                f"{forward_all:.2f} s{scaled} = {per_tile * 1000:.0f} ms/tile, "
                f"{ts * ts / per_tile / 1e6:.3f} MP/s of tile pixels (load {fwd['load_before']:.2f} before)"
            )
            print(
                f"pipeline efficiency = pure forward / end-to-end = {forward_all:.2f} / "
                f"{e2e['wall']:.2f} = {eff:.3f}"
                + (
                    f"  [target >= 0.9 on the CPU: {verdict(eff >= 0.9)}]"
                    if device == "cpu"
                    else ""
                )
            )
            print(
                f"  (model time inside the pipeline {tm['model']:.2f} s = "
                f"{tm['model'] / forward_all:.3f} x pure forward)"
            )
            imports = tm.get("imports", 0.0)
            if imports > 0:
                eff_scene = forward_all / (e2e["wall"] - imports)
                print(
                    f"  per scene of a batch (pandas/pyogrio, {imports:.2f} s, load once per process): "
                    f"{forward_all:.2f} / {e2e['wall'] - imports:.2f} = {eff_scene:.3f}"
                )
                res.update(efficiency_per_batch_scene=eff_scene)
            share = tm["model"] / e2e["wall"]
            print(
                f"model share of the end-to-end wall, same run = {tm['model']:.2f} / {e2e['wall']:.2f} = "
                f"{share:.3f} (the same ratio measured inside one process: unaffected by the machine "
                f"getting faster or slower between the two runs above)"
            )
            res.update(model_share=share)
            res.update(forward=fwd, forward_seconds_all_tiles=forward_all, efficiency=eff)
        if args.naive:
            nv, nwalls = best_of(
                "naive", {**common_bs, "scene": str(scene), "out": str(out)}, args.repeat, "wall"
            )
            nt = nv["timings"]
            print(
                f"naive reference (whole scene in memory, {nv['tiles']} non-overlapping tiles, "
                f"hard stitch, whole-mask shapes, GeoPackage; load {nv['load_before']:.2f} before): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in nt.items())
            )
            rows = [
                ("seconds", f"{e2e['wall']:.2f}", f"{nv['wall']:.2f}", e2e["wall"] / nv["wall"]),
                (
                    "µs per useful pixel",
                    f"{e2e['wall'] / pixels * 1e6:.3f}",
                    f"{nv['wall'] / pixels * 1e6:.3f}",
                    e2e["wall"] / nv["wall"],
                ),
                (
                    "peak RSS MB",
                    f"{e2e['peak_rss_mb']:,.0f}",
                    f"{nv['peak_rss_mb']:,.0f}",
                    e2e["peak_rss_mb"] / nv["peak_rss_mb"],
                ),
                (
                    "peak RSS above start-up MB",
                    f"{e2e['peak_rss_mb'] - base['peak_rss_mb']:,.0f}",
                    f"{nv['peak_rss_mb'] - base['peak_rss_mb']:,.0f}",
                    (e2e["peak_rss_mb"] - base["peak_rss_mb"])
                    / max(nv["peak_rss_mb"] - base["peak_rss_mb"], 1e-9),
                ),
                (
                    "tiles through the model",
                    str(e2e["tiles"]),
                    str(nv["tiles"]),
                    e2e["tiles"] / nv["tiles"],
                ),
                (
                    "features",
                    str(e2e["features"]),
                    str(nv["features"]),
                    e2e["features"] / max(nv["features"], 1),
                ),
            ]
            if "gpu_peak_mb" in e2e:
                rows.append(
                    (
                        "peak GPU MB",
                        f"{e2e['gpu_peak_mb']:,.0f}",
                        f"{nv['gpu_peak_mb']:,.0f}",
                        e2e["gpu_peak_mb"] / max(nv["gpu_peak_mb"], 1e-9),
                    )
                )
            print(f"  {'':<28}{'geounet':>12}{'naive':>12}{'geounet/naive':>15}")
            for name, a, b, ratio in rows:
                print(f"  {name:<28}{a:>12}{b:>12}{ratio:>15.3f}")
            faster = e2e["wall"] < nv["wall"]
            rss_ratio = e2e["peak_rss_mb"] / nv["peak_rss_mb"]
            print(
                f"  [target faster per useful pixel than naive: {verdict(faster)}; "
                f"peak RSS <= 1/4 of naive (defined at 8192x8192): {rss_ratio:.3f}, {verdict(rss_ratio <= 0.25)}]"
            )
            res.update(naive=nv, naive_walls=nwalls)
        print()
        results.append(res)

    if len(results) > 1:
        print("== summary ==")
        print(
            f"{'scene':>12} {'tiles':>6} {'ovh':>6} {'wall s':>8} {'MP/s':>7} {'km²/h':>8} "
            f"{'RSS MB':>8} {'effic.':>7} {'naive s':>8} {'naive RSS':>10} {'features':>9}"
        )
        for r in results:
            w, h = r["size"]
            e = r["e2e"]
            nv = r.get("naive")
            print(
                f"{w:>5}x{h:<6} {r['tiles']:>6} {r['overlap_overhead']:>6.3f} {e['wall']:>8.1f} "
                f"{w * h / 1e6 / e['wall']:>7.3f} {w * h * args.pixel_size**2 / 1e6 / e['wall'] * 3600:>8.0f} "
                f"{e['peak_rss_mb']:>8.0f} {r.get('efficiency', float('nan')):>7.3f} "
                f"{(nv['wall'] if nv else float('nan')):>8.1f} {(nv['peak_rss_mb'] if nv else float('nan')):>10.0f} "
                f"{e['features']:>9}"
            )
        print()
    return results


def mode_vectorize(
    args: argparse.Namespace,
    work: Path,
    device: str,
    batch: int | None,
    model: Path,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    width, height = (args.size or [(16384, 16384)])[0]
    ts, ov = args.tile_size, args.overlap
    print(
        f"== vectorize a {width}x{height} mask (~{args.shapes} seeded shapes) with StripVectorizer "
        f"in strips of {args.strip_rows} rows =="
    )
    v = run_child(
        "vectorize",
        {
            "width": width,
            "height": height,
            "shapes": args.shapes,
            "seed": args.seed,
            "strip_rows": args.strip_rows,
            "pixel_size": args.pixel_size,
            "reference": args.reference,
            "out": str(work / "out" / "vectorize"),
        },
    )
    vec_s = v["add"] + v["finish"]
    print(
        f"mask: {v['shapes_burned']} shapes burned in {v['generate']:.1f} s (not timed), "
        f"{v['foreground']:.1%} foreground"
    )
    print(
        f"StripVectorizer: add {v['add']:.2f} s + finish {v['finish']:.2f} s = {vec_s:.2f} s -> "
        f"{v['features']} polygons ({vec_s / (width * height) * 1e9:.2f} ns/px); GeoPackage write "
        f"{v['write']:.2f} s; child peak RSS {mb(v['peak_rss_mb'])} (the whole mask is held for the benchmark)"
    )
    if "reference_seconds" in v:
        print(
            f"reference: rasterio.features.shapes over the whole mask + shapely: "
            f"{v['reference_seconds']:.2f} s -> {v['reference_features']} polygons "
            f"(StripVectorizer/whole-mask = {vec_s / v['reference_seconds']:.2f})"
        )
    tiles = n_tiles(height, width, ts, ov)
    fwd_tiles = args.forward_tiles if args.forward_tiles else 8
    fwd, _ = best_of(
        "forward",
        {
            "model": str(model),
            "device": device,
            "tile": ts,
            "batch": batch,
            "tiles": fwd_tiles,
            "threads": args.threads,
            "compile": args.compile,
        },
        args.repeat,
        "seconds",
    )
    per_tile = fwd["seconds"] / fwd["tiles"]
    model_s = per_tile * tiles
    ratio = (vec_s + v["write"]) / model_s
    print(
        f"model time for the same scene (estimated): {tiles} tiles of {ts} at overlap {ov} x "
        f"{per_tile * 1000:.0f} ms/tile (pure forward over {fwd['tiles']} tiles, batch {fwd['batch']}, "
        f"{device}) = {model_s:,.0f} s"
    )
    print(
        f"vectorize / model = {vec_s:.1f} / {model_s:,.0f} = {vec_s / model_s:.4f}; "
        f"with the GeoPackage write {ratio:.4f}  [target a small fraction: {verdict(ratio < 0.1)} (< 0.1)]"
    )
    print()
    return {
        "size": [width, height],
        "vectorize": v,
        "forward": fwd,
        "tiles": tiles,
        "model_seconds_estimate": model_s,
        "ratio": vec_s / model_s,
        "ratio_with_write": ratio,
    }


def mode_memory(
    args: argparse.Namespace,
    work: Path,
    device: str,
    batch: int | None,
    model: Path,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    width, height = (args.size or [(2048, 1024)])[0]
    ts, ov = args.tile_size, args.overlap
    factors = [int(f) for f in args.factors.split(",")]
    common = {
        "model": str(model),
        "device": device,
        "tile": ts,
        "overlap": ov,
        "batch": batch,
        "threads": args.threads,
        "compile": args.compile,
    }
    scenes = {
        f: ensure_scene(work, width, height * f, args, model_info["bands"], model_info["dtype"])
        for f in factors
    }
    base = run_child("load", common)["peak_rss_mb"]
    print(
        f"== peak RSS against scene height: width {width}, heights {height} x {args.factors}, "
        f"tile {ts}, overlap {ov}, batch {batch or 'auto'}, {device} =="
    )
    print(f"start-up baseline (imports + model): {base:.0f} MB")
    print(
        f"{'scene':>12} {'tiles':>6} {'seconds':>8} {'peak RSS MB':>12} {'ratio':>6} "
        f"{'above base MB':>14} {'ratio':>6} {'features':>9} {'load':>5}"
    )
    rows = []
    first = None
    for f in factors:
        h = height * f
        r, _ = best_of(
            "e2e",
            {**common, "scene": str(scenes[f]), "out": str(work / "out" / f"mem_{width}x{h}")},
            args.repeat,
            "wall",
        )
        first = first or r
        ratio = r["peak_rss_mb"] / first["peak_rss_mb"]
        above = r["peak_rss_mb"] - base
        ratio_above = above / max(first["peak_rss_mb"] - base, 1e-9)
        print(
            f"{width:>5}x{h:<6} {r['tiles']:>6} {r['wall']:>8.1f} {r['peak_rss_mb']:>12.0f} {ratio:>6.3f} "
            f"{above:>14.0f} {ratio_above:>6.2f} {r['features']:>9} {r['load_before']:>5.2f}"
        )
        rows.append({"height": h, **r})
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(
        f"{factors[-1] // factors[0]}x taller: peak RSS x{growth:.3f}  "
        f"[target under 15% more: {verdict(growth < 1.15)}]"
    )
    print()
    return {
        "width": width,
        "base_height": height,
        "startup_rss_mb": base,
        "runs": rows,
        "growth": growth,
    }


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        result = CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))
        print(RESULT + json.dumps(result))
        return
    ap = argparse.ArgumentParser(
        description="geounet prediction benchmarks (run by hand; see benchmarks/README.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--vectorize",
        action="store_true",
        help="StripVectorizer on a large synthetic mask vs the model time (default size 16384)",
    )
    mode.add_argument(
        "--memory-scaling",
        action="store_true",
        help="peak RSS at heights x --factors (default size 2048x1024)",
    )
    ap.add_argument(
        "--size",
        type=parse_size,
        action="append",
        help="scene size N or WxH; repeat for several (default 2048; see the modes)",
    )
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: geounet's own (Predictor.batch_size_for: 1 on the CPU, "
        "from free GPU memory on CUDA)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the network (PredictConfig.compile)"
    )
    ap.add_argument(
        "--strip-thread",
        dest="strip_thread",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="strips on the worker thread or inline (PredictConfig.strip_thread; default: geounet's choice)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads in the children (default: torch's)"
    )
    ap.add_argument(
        "--model", default=None, help="a real model file (default: a calibrated seeded U-Net)"
    )
    ap.add_argument(
        "--model-width",
        type=int,
        default=16,
        help="width of the seeded U-Net (the seed-size model is 64)",
    )
    ap.add_argument("--model-depth", type=int, default=4)
    ap.add_argument(
        "--pixel-size", type=float, default=0.5, help="metres per pixel of the synthetic scenes"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the naive whole-scene reference",
    )
    ap.add_argument(
        "--forward-tiles",
        type=int,
        default=None,
        help="tiles for the pure-forward measurement (default: as many as the scene; "
        "fewer are scaled up; 0 skips it)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs of each measurement; the fastest is reported"
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "geounet-bench",
        help="cache of scenes and models, and outputs",
    )
    ap.add_argument(
        "--shapes", type=int, default=5000, help="--vectorize: shapes burned into the mask"
    )
    ap.add_argument("--strip-rows", type=int, default=512, help="--vectorize: rows per strip")
    ap.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--vectorize: also time rasterio.features.shapes over the whole mask",
    )
    ap.add_argument("--factors", default="1,2,4,8", help="--memory-scaling: height multipliers")
    ap.add_argument(
        "--json", type=Path, default=None, help="also write every figure to this JSON file"
    )
    args = ap.parse_args()

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    device, batch = resolve(args)
    info = machine(device)
    model, model_info = ensure_model(work, args)
    print_header(args, info, model_info)
    t0 = time.perf_counter()
    fn = mode_vectorize if args.vectorize else mode_memory if args.memory_scaling else mode_predict
    results = fn(args, work, device, batch, model, model_info)
    la = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# done in {time.perf_counter() - t0:.0f} s; load average now {la}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": sys.argv,
                    "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": info,
                    "model": model_info,
                    "device": device,
                    "batch_size": batch,
                    "tile_size": args.tile_size,
                    "overlap": args.overlap,
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
