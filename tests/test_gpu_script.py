"""The prepared GPU run (benchmarks/gpu.py) in its tiny configuration, on whatever device is here,
and the wheel repacking of benchmarks/gpu_prepare.py, so that neither rots between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BUILDINGS_RGB, requires_buildings_rgb

from geounet.network.checkpoint import load_model, read_meta
from geounet.network.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # benchmarks/gpu.py
import gpu_prepare  # benchmarks/gpu_prepare.py


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """One ``--tiny`` run of every part (without the data: the benchmark parts only)."""
    out = tmp_path_factory.mktemp("gpu-out")
    parts = "forward,e2e,train" if BUILDINGS_RGB.is_dir() else "forward,e2e"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu.py"),
            "--out",
            str(out),
            "--tiny",
            "--parts",
            parts,
            "--data",
            str(BUILDINGS_RGB),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out, proc.stdout


def expected_unet_flops(bands: int, classes: int, width: int, depth: int, size: int) -> int:
    """Convolution FLOPs of the classic U-Net written out level by level (2 per multiply-add)."""
    c = [width * 2**i for i in range(depth + 1)]
    px = [(size // 2**i) ** 2 for i in range(depth + 1)]
    total = 2 * px[0] * 9 * (bands * c[0] + c[0] * c[0])  # in: two 3x3 convolutions
    for i in range(1, depth + 1):  # down: two 3x3 convolutions at level i
        total += 2 * px[i] * 9 * (c[i - 1] * c[i] + c[i] * c[i])
    for i in reversed(
        range(depth)
    ):  # up: 2x2 transposed convolution, then two 3x3 on the concatenation
        total += 2 * px[i + 1] * c[i + 1] * (c[i + 1] // 2) * 4
        total += 2 * px[i] * 9 * ((c[i + 1] // 2 + c[i]) * c[i] + c[i] * c[i])
    return total + 2 * px[0] * c[0] * classes  # the 1x1 head


@pytest.mark.parametrize(("width", "size"), [(8, 64), (64, 512)])
def test_the_flop_count_matches_the_architecture(width: int, size: int) -> None:
    net = UNet(3, 1, width, 4)
    x = (
        torch.zeros(1, 3, size, size, device="meta")
        if width == 64
        else torch.zeros(1, 3, size, size)
    )
    counted = gpu.conv_flops(net.to(x.device), x)
    assert counted == expected_unet_flops(3, 1, width, 4, size)
    if width == 64:  # the seed-size network: 385 GFLOP (193 G multiply-adds) per 512 px tile
        assert 380e9 < counted < 390e9


def test_the_forward_part_reports_throughput_and_fractions(
    tiny_run: tuple[dict[str, Any], Path, str],
) -> None:
    report, out, stdout = tiny_run
    fwd = report["forward"]
    assert fwd["width"] == 8 and fwd["tile"] == 64
    assert fwd["gflop_per_tile"] * 1e9 == expected_unet_flops(3, 1, 8, 4, 64)
    assert fwd["matmul"]["tflops"] > 0
    device = report["device"]
    assert set(fwd["variants"]) == ({"bf16", "tf32"} if device == "cuda" else {"bf16", "fp32"})
    for v in fwd["variants"].values():
        assert v["mpx_per_s"] > 0 and v["tflops"] > 0 and v["ms_per_batch"] > 0
        assert v["mpx_per_s"] == pytest.approx(
            fwd["batch"] * fwd["tile"] ** 2 / v["ms_per_batch"] / 1e3
        )
        assert v["fraction_of_matmul"] > 0
        if (
            device == "cuda"
        ):  # on a loaded CPU a tiny matrix product is no ceiling; an 8192³ one on a GPU is
            assert v["fraction_of_matmul"] <= 1
        if v["fraction_of_nominal"] is not None:
            assert 0 < v["fraction_of_nominal"] <= 1
    assert "forward bf16:" in stdout and (out / "report.md").read_text().count("| bf16 |") == 1


def test_the_end_to_end_part_compares_with_the_naive_script(
    tiny_run: tuple[dict[str, Any], Path, str],
) -> None:
    e2e = tiny_run[0]["e2e"]
    assert e2e["size"] == 512
    g, n = e2e["geounet"], e2e["naive"]
    assert g["wall"] > 0 and n["wall"] > 0 and g["tiles"] >= 1 and n["tiles"] == 1
    assert e2e["ratio"] == pytest.approx(g["wall"] / n["wall"])
    assert (
        g["features"] >= 0 and n["features"] >= 0 and g["peak_rss_mb"] > 0 and n["peak_rss_mb"] > 0
    )
    assert "widened to 8" in e2e["model"]


@requires_buildings_rgb
def test_the_candidate_is_trained_scored_and_saved(
    tiny_run: tuple[dict[str, Any], Path, str],
) -> None:
    report, out, stdout = tiny_run
    assert not report["errors"]
    train, score = report["train"], report["score"]
    assert train["base_width"] == 4 and train["width"] == 6
    assert [s["name"] for s in train["stages"]] == ["widened cycle", "core channel alone"]
    assert all(s["epochs"] >= 1 and s["seconds"] > 0 for s in train["stages"])
    assert train["probe"]["seconds_per_step"] > 0 and train["probe"]["steps"] == 3
    epochs = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    assert len(epochs) == sum(s["epochs"] for s in train["stages"])

    net, meta = load_model(out / "candidate.safetensors")
    assert (
        net.width == 6 and meta.core_m == 1.0 and meta.outputs == 2
    )  # widened, core channel learnt again
    assert meta.split_m == 2.0 and meta.min_area_m2 == 5.0 and meta.tile_size == 512
    prov = meta.provenance
    assert prov["command"].startswith("python benchmarks/gpu.py") and "--tiny" in prov["command"]
    assert len(prov["stages"]) == 2 and prov["commit"]
    assert prov["validation"] == score["candidate"]
    assert score["bundled"] == read_meta(None).provenance["validation"]
    for key in ("rio", "austin", "chicago", "all"):
        for side in ("candidate", "bundled"):
            assert (
                0 <= score[side][key]["pixel_f1"] <= 1 and 0 <= score[side][key]["object_f1"] <= 1
            )
    assert score["candidate"]["all"]["images"] == 3  # one held-out image per source
    c, b = score["candidate"]["all"], score["bundled"]["all"]
    ship = c["pixel_f1"] > b["pixel_f1"] and c["object_f1"] > b["object_f1"]
    assert score["verdict"] == ("ship" if ship else "keep the bundled model")
    assert score["candidate_bytes"] == (out / "candidate.safetensors").stat().st_size < 15e6
    assert f"verdict: {score['verdict']}" in stdout
    assert "Verdict:" in (out / "report.md").read_text()


def _wheel(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_repacked_wheels_install_with_pip_and_list_their_requirements(tmp_path: Path) -> None:
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    info = "demo_pkg-1.0.dist-info"
    _wheel(
        wheel,
        {
            "demo_pkg/__init__.py": b"VALUE = 42\n",
            f"{info}/METADATA": (
                b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nRequires-Dist: numpy>=1.24\n"
                b"Requires-Dist: Shapely_Extra ; extra == 'x'\nRequires-Dist: importlib-metadata ; python_version < '3.10'\n"
                b"Requires-Dist: no-such-package>=2\n"
            ),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            f"{info}/RECORD": b"",
        },
    )
    assert gpu_prepare.requirements(wheel) == ["numpy", "no-such-package"]
    assert gpu_prepare.check_closure(tmp_path) == [f"{wheel.name} needs no-such-package"]
    gpu_prepare.rewrite(wheel, gpu_prepare.read_all(wheel))
    with zipfile.ZipFile(wheel) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
        record = z.read(f"{info}/RECORD").decode().splitlines()
    assert gpu_prepare.record_line("demo_pkg/__init__.py", b"VALUE = 42\n") in record
    target = tmp_path / "site"
    gpu_prepare.install_wheels(sys.executable, [wheel], target)  # as the device command does
    assert (target / "demo_pkg" / "__init__.py").read_text() == "VALUE = 42\n"


def test_the_probe_takes_the_mean_step_of_bursty_loaders() -> None:
    probe = gpu.Probe()
    probe.start = 0.0
    probe.steps = [5.0, 5.01, 5.02, 6.0, 6.01, 6.02, 7.0]  # three loader processes: bursts of three
    probe.epochs = [(8.0, {"seconds": 4.0})]  # the epoch began at 4 s and ended at 8 s
    t = probe.timing()
    assert t["setup_s"] == 4.0 and t["first_step_s"] == 1.0 and t["validation_s"] == 1.0
    assert t["steps"] == 7 and t["seconds_per_step"] == pytest.approx(
        2.0 / 6
    )  # the median gap would say 0.01
