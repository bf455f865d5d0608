"""benchmarks/end_to_end.py in its tiny mode: the table has its rows and onnxruntime's mask agrees
with PyTorch's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import BUILDINGS_RGB, requires_buildings_rgb

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "end_to_end.py"


@requires_buildings_rgb
def test_end_to_end_tiny(tmp_path: Path) -> None:
    runs = ["torch", "onnxruntime", "auto"]
    if (
        importlib.util.find_spec("pytorch_toolbelt") is not None
        and importlib.util.find_spec("cv2") is not None
    ):
        runs.append("toolbelt")
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--sizes",
            "512",
            "--runs",
            ",".join(runs),
            "--net-tiles",
            "0",
            "--work-dir",
            str(tmp_path / "work"),
            "--data",
            str(BUILDINGS_RGB),
            "--json",
            str(out),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "### 512 x 512" in text
    for name in runs:
        assert f"| {name} |" in text, text
    assert "end-to-end speed-up of onnxruntime vs torch" in text
    assert "FLOPs per 512 px tile" in text
    report = json.loads(out.read_text())
    rows = report["sizes"]["512"]["runs"]
    assert rows["onnxruntime"][0]["backend"] == "onnxruntime fp32"
    assert rows["torch"][0]["backend"] == "torch fp32"
    # no option: onnxruntime float32, or PyTorch bf16 on a CPU with native bf16
    assert rows["auto"][0]["backend"] in ("onnxruntime fp32", "torch bf16")
    assert rows["onnxruntime"][0]["agree_ref"] >= 0.999
    for name in runs:
        r = rows[name][0]
        assert r["tiles"] >= 1 and r["wall_s"] > r["model_s"] > 0 and r["peak_rss_mb"] > 50
    assert report["netbench"]["flops_per_tile"] > 1e9


def _cpu_peak_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cpu_peak", ROOT / "benchmarks" / "cpu_peak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_peak_measures_clock_and_fma_rate() -> None:
    """benchmarks/cpu_peak.py builds its probe and reports a clock and an fp32 FMA rate that a
    real x86-64 core can have (it reads 3.5-3.7 GHz and ~32 FLOP/cycle on this project's VMs,
    whose /proc/cpuinfo says 2.4-2.6 GHz)."""
    import platform

    import pytest

    cpu_peak = _cpu_peak_module()
    if cpu_peak.compiler() is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("benchmarks/cpu_peak.py needs a C compiler and an x86-64 CPU")
    result = cpu_peak.measure(threads=1, iterations=5_000_000)
    assert 0.5 < result["clock_ghz"] < 7.0, result
    # AVX2 FMA: at most 2 units x 8 lanes x 2 FLOP per cycle; a busy machine only lowers it
    assert 2.0 < result["flop_per_cycle_per_core"] < 33.5, result
    assert result["bf16_gflops"] is None or result["bf16_gflops"] > 0
