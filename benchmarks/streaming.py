"""Memory and interruption of prediction on busy outputs (many polygons, scene-wide polygons).

Run by hand from the repository root (not in CI); figures in ``benchmarks/README.md``:

    python benchmarks/streaming.py --scaling                  # peak RSS, 1024 vs 8192 rows, every format
    python benchmarks/streaming.py --wide --model M.safetensors # 100,000 x 2,048: RSS, time, SIGTERM
    python benchmarks/streaming.py --speckle                  # the vectorizer alone on speckle

Scenes are uniform RGB noise, 2048 px wide (``--scaling``) or 100,000 px wide and 2,048 rows
(``--wide``), cached in ``--work-dir``. The stress model is an untrained U-Net (``geounet model
create --bands 3 --classes 1 --width 4 --depth 4 --seed 0``): on noise it marks about half the
pixels, a speckle of small polygons and one polygon with holes that spans the scene. Every run is
the real command line, ``geounet predict SCENE -o OUT -m MODEL --tile-size 512 --overlap 64``, in
a child process whose peak RSS comes from ``os.wait4``. To measure an older checkout, put it
first on ``PYTHONPATH``. ``--wide`` then runs it again and sends
SIGTERM at 90% of the first run's time (in the vectorizing and writing), and reports how long
the process took to exit and whether anything was left behind.

``--speckle`` times the strip vectorizer alone (no network, no file): a random mask 100,000 px
wide and 80 rows, 29 % foreground in single pixels and small clusters (about what the stress
model makes of noise: 0.13 polygons per pixel), fed to ``StripVectorizer`` in strips of 40 rows
and taken in batches of 10,000 as ``geounet predict`` does, in a child process: polygons,
seconds and peak RSS. Put an older checkout first on ``PYTHONPATH`` to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORMATS = ("gpkg", "fgb", "shp", "geojson", "parquet")


def noise_scene(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """Uniform uint8 RGB noise, tiled 256 px, written 512 rows at a time."""
    if path.exists():
        return path
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(
        tmp,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        BIGTIFF="IF_SAFER",
    ) as ds:
        for r0 in range(0, height, 512):
            rows = min(512, height - r0)
            ds.write(
                rng.integers(0, 256, (3, rows, width), dtype=np.uint8),
                window=Window(0, r0, width, rows),
            )
    tmp.rename(path)
    return path


def stress_model(work: Path) -> Path:
    path = work / "stress_w4.safetensors"
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "geounet",
                "model",
                "create",
                "--bands",
                "3",
                "--classes",
                "1",
                "--width",
                "4",
                "--depth",
                "4",
                "--seed",
                "0",
                "-o",
                str(path),
            ],
            check=True,
            capture_output=True,
            cwd=work,
        )
    return path


def predict(
    scene: Path, out: Path, model: Path, *, term_after: float | None = None
) -> dict[str, Any]:
    """One ``geounet predict`` child: seconds, peak RSS (MB), exit code, what was left."""
    cmd = [
        sys.executable,
        "-m",
        "geounet",
        "predict",
        str(scene),
        "-o",
        str(out),
        "-m",
        str(model),
        "--tile-size",
        "512",
        "--overlap",
        "64",
        "--overwrite",
    ]
    for p in out.parent.glob(out.stem + ".*"):
        p.unlink()
    t0 = time.perf_counter()
    # Run from the scene's folder: `python -m` puts the working directory first on sys.path,
    # which would shadow PYTHONPATH (how an older checkout is measured) from the repository root.
    child = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scene.parent
    )
    t_term = None
    if term_after is not None:
        time.sleep(term_after)
        t_term = time.perf_counter()
        child.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(child.pid, 0)
    t1 = time.perf_counter()
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    left = sorted(
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith((out.name, "." + out.name, out.stem + "."))
    )
    result = {
        "seconds": round(t1 - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "exit": os.waitstatus_to_exitcode(status),
        "left": left,
        "stderr_tail": err.strip().splitlines()[-1:] if err.strip() else [],
    }
    if t_term is not None:
        result["exit_after_sigterm_s"] = round(t1 - t_term, 1)
    elif out.exists():
        import pyogrio

        result["features"] = (
            int(__import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(out).metadata.num_rows)
            if out.suffix == ".parquet"
            else int(
                pyogrio.read_info(
                    out, layer=out.stem if out.suffix == ".gpkg" else None, force_feature_count=True
                )["features"]
            )
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scaling", action="store_true", help="peak RSS at 1024 and 8192 rows, every format"
    )
    ap.add_argument(
        "--wide", action="store_true", help="the 100,000 x 2,048 scene: RSS, time, SIGTERM"
    )
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="--wide: model(s) to run (default: the stress model)",
    )
    ap.add_argument(
        "--sigterm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--wide: also the run stopped by SIGTERM",
    )
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--width", type=int, default=100_000, help="--wide: scene width")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "geounet-streaming",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--speckle", action="store_true", help="the strip vectorizer alone on a speckle mask"
    )
    ap.add_argument("--speckle-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.speckle_child:
        speckle_child()
        return
    if args.speckle:
        child = subprocess.Popen(
            [sys.executable, __file__, "--speckle-child"], stdout=subprocess.PIPE, cwd="/"
        )
        out = child.communicate()[0].decode()
        print(out.strip(), flush=True)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.model = [m.resolve() for m in args.model] if args.model else None
    results: dict[str, Any] = {}
    if args.scaling:
        model = stress_model(work)
        for fmt in args.formats.split(","):
            runs = {}
            for rows in (1024, 8192):
                scene = noise_scene(work / f"noise_2048x{rows}.tif", 2048, rows)
                runs[rows] = predict(scene, work / f"scaling.{fmt}", model)
            ratio = runs[8192]["peak_rss_mb"] / runs[1024]["peak_rss_mb"]
            results[f"scaling_{fmt}"] = {
                "1024": runs[1024],
                "8192": runs[8192],
                "rss_ratio": round(ratio, 3),
            }
            print(
                f"{fmt:8s} 1024 rows: {runs[1024]['peak_rss_mb']:5d} MB {runs[1024]['seconds']:6.1f} s "
                f"{runs[1024].get('features', '?')} features | 8192 rows: {runs[8192]['peak_rss_mb']:5d} MB "
                f"{runs[8192]['seconds']:6.1f} s {runs[8192].get('features', '?')} features | "
                f"ratio {ratio:.2f} ({'ok' if ratio <= 1.15 else 'OVER'} <= 1.15)",
                flush=True,
            )
    if args.wide:
        scene = noise_scene(work / f"noise_{args.width}x2048.tif", args.width, 2048)
        for model in args.model or [stress_model(work)]:
            out = work / "wide.gpkg"
            full = predict(scene, out, model)
            print(
                f"wide {model.name}: {full['seconds']} s, peak {full['peak_rss_mb']} MB, "
                f"{full.get('features')} features, exit {full['exit']} "
                f"({'ok' if full['peak_rss_mb'] < 2048 else 'OVER'} < 2 GB)",
                flush=True,
            )
            results[f"wide_{model.stem}"] = {"run": full}
            if args.sigterm:
                term = predict(scene, out, model, term_after=0.9 * full["seconds"])
                print(
                    f"  SIGTERM at {0.9 * full['seconds']:.0f} s: exit {term['exit']} after "
                    f"{term['exit_after_sigterm_s']} s; left behind: {term['left'] or 'nothing'}",
                    flush=True,
                )
                results[f"wide_{model.stem}"]["sigterm"] = term
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def speckle_child(
    width: int = 100_000, rows: int = 80, strip: int = 40, density: float = 0.29
) -> None:
    """Vectorize a speckle mask strip by strip, as predict does; print the figures."""
    import resource

    import numpy as np
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from geounet.vectors.strips import StripVectorizer

    rng = np.random.default_rng(0)
    mask = (rng.random((rows, width)) < density).astype(np.uint8)
    score = np.full(mask.shape, 0.7, np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    vec = StripVectorizer(
        from_origin(500000, 5000000, 0.5, 0.5), CRS.from_epsg(32633), ["background", "speckle"]
    )
    t0 = time.perf_counter()
    n = 0
    for r0 in range(0, rows, strip):
        vec.add(r0, mask[r0 : r0 + strip], score[r0 : r0 + strip])
        while vec.ready >= 10_000:
            n += len(vec.take(10_000))
    last = vec.take(final=True)
    n += 0 if last is None else len(last)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"speckle {width} x {rows}, strips of {strip}: {n} polygons in {time.perf_counter() - t0:.1f} s, "
        f"peak RSS {peak:.0f} MB ({peak - base:.0f} MB over the {base:.0f} MB before vectorizing)"
    )


if __name__ == "__main__":
    main()
