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
    runs = ["torch", "onnxruntime"]
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
    assert rows["onnxruntime"][0]["backend"] == "onnxruntime"
    assert rows["torch"][0]["backend"] == "torch"
    assert rows["onnxruntime"][0]["agree_ref"] >= 0.999
    for name in runs:
        r = rows[name][0]
        assert r["tiles"] >= 1 and r["wall_s"] > r["model_s"] > 0 and r["peak_rss_mb"] > 50
    assert report["netbench"]["flops_per_tile"] > 1e9
