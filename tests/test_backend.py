"""``--backend``: a PyTorch model run by onnxruntime, exported once and cached by the file's hash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import BUILDINGS_RGB, requires_buildings_rgb

from geounet.cli.main import cli
from geounet.errors import GeounetError
from geounet.network.backends import backend_cache_entry, cache_dir, load_backend
from geounet.network.checkpoint import create_model, file_hash, load_model, save_model
from geounet.network.export import export_onnx
from geounet.network.unet import calibrate_batchnorm, cpu_supports_bf16, fuse_batchnorm
from geounet.prediction.config import PredictConfig
from geounet.prediction.plan import choose_backend
from geounet.prediction.predictor import Predictor

pytest.importorskip("onnxruntime")
import onnxruntime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache directory (``GEOUNET_CACHE``)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOUNET_CACHE", str(cache))
    return cache


def lively_file(path: Path, *, classes: int = 1, seed: int = 0) -> Path:
    """A seeded width-8 U-Net with BatchNorm statistics from random batches, saved at ``path``."""
    net, meta = create_model(
        bands=3, classes=classes, width=8, depth=3, seed=seed, tile_size=64, overlap=16
    )
    gen = torch.Generator().manual_seed(seed)
    calibrate_batchnorm(net, [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(3)])
    save_model(net, meta, path)
    return path


def torch_logits(path: Path, x: np.ndarray) -> np.ndarray:
    net, _ = load_model(path)
    with torch.inference_mode():
        return fuse_batchnorm(net).eval()(torch.from_numpy(x)).numpy()


def test_the_cache_is_keyed_by_the_file_and_reused(tmp_path: Path, private_cache: Path) -> None:
    model = lively_file(tmp_path / "m.safetensors")
    assert cache_dir() == private_cache
    entry = backend_cache_entry(model, onnxruntime.__version__)
    assert entry.parent == private_cache / "onnx" and file_hash(model) in entry.name
    net, _ = load_backend(model)
    first = entry.stat()
    # A dynamic size (fit_tile shrinks tiles for small scenes) and logits equal to PyTorch's.
    for size in (32, 96):
        x = np.random.default_rng(size).standard_normal((2, 3, size, size), dtype=np.float32)
        got = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, torch_logits(model, x), atol=1e-4, rtol=1e-4)
    load_backend(model)
    again = entry.stat()
    assert (again.st_ino, again.st_mtime_ns) == (
        first.st_ino,
        first.st_mtime_ns,
    )  # not exported again
    other = lively_file(tmp_path / "other.safetensors", seed=1)
    load_backend(other)
    assert len(list((private_cache / "onnx").glob("*.onnx"))) == 2


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = lively_file(tmp_path / "m.safetensors")
    entry = backend_cache_entry(model, onnxruntime.__version__)
    load_backend(model)
    good = entry.read_bytes()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    for broken in (b"not onnx", good[: len(good) // 2], good.replace(good[-64:], bytes(64))):
        entry.write_bytes(broken)
        with caplog.at_level(logging.INFO, logger="geounet.network.backends"):
            net, _ = load_backend(model)
        assert "rebuilding the onnxruntime graph" in caplog.text
        caplog.clear()
        assert entry.read_bytes() != broken
        np.testing.assert_allclose(
            net(torch.from_numpy(x)).numpy(), torch_logits(model, x), atol=1e-4, rtol=1e-4
        )


def test_an_unwritable_cache_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = lively_file(tmp_path / "m.safetensors")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GEOUNET_CACHE", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="geounet.network.backends"):
        net, _ = load_backend(model)
    assert (
        len(caplog.records) == 1
        and "cannot cache the onnxruntime graph" in caplog.records[0].getMessage()
    )
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(
        net(torch.from_numpy(x)).numpy(), torch_logits(model, x), atol=1e-4, rtol=1e-4
    )


def test_auto_rule_and_refusals(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert choose_backend("auto", cpu, None, compile=False) == "onnxruntime"
    assert choose_backend("auto", cpu, torch.bfloat16, compile=False) == "torch"
    assert choose_backend("auto", cpu, None, compile=True) == "torch"
    assert choose_backend("auto", torch.device("cuda"), torch.bfloat16, compile=False) == "torch"
    assert choose_backend("torch", cpu, None, compile=False) == "torch"
    assert choose_backend("auto", cpu, None, compile=False, model_file=False) == "torch"
    assert (
        choose_backend("onnxruntime", cpu, None, compile=False, model_file=False) == "onnxruntime"
    )
    with pytest.raises(GeounetError, match="runs float32 on the CPU"):
        choose_backend("onnxruntime", cpu, torch.bfloat16, compile=False)
    model = lively_file(tmp_path / "m.safetensors")
    # with no option: PyTorch in bf16 on a CPU with native bf16, else onnxruntime in float32
    expected = "torch" if cpu_supports_bf16() else "onnxruntime"
    assert Predictor(str(model), device="cpu").backend == expected
    assert Predictor(str(model), device="cpu", precision="fp32").backend == "onnxruntime"
    assert Predictor(str(model), device="cpu", backend="torch").backend == "torch"
    loaded = load_model(model)
    assert Predictor(loaded, device="cpu").backend == "torch"
    assert Predictor(loaded, device="cpu", backend="onnxruntime").backend == "onnxruntime"
    onnx_file = export_onnx(str(model), tmp_path / "m.onnx")
    with pytest.raises(GeounetError, match=r"--backend torch runs \.safetensors models"):
        Predictor(str(onnx_file), device="cpu", backend="torch")


def test_cli_backends_write_the_same_mask(tmp_path: Path, make_raster: object) -> None:
    model = lively_file(tmp_path / "m.safetensors", classes=2)
    data = np.random.default_rng(0).integers(0, 255, (3, 150, 170), dtype=np.uint8)
    scene = make_raster(width=170, height=150, count=3, data=data)  # type: ignore[operator]
    masks = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.tif"
        r = CliRunner().invoke(
            cli,
            [
                "predict",
                str(scene),
                "-m",
                str(model),
                "--mask",
                str(out),
                "--backend",
                backend,
                "--precision",
                "fp32",  # PyTorch would run bf16 on a CPU with native bf16
                "--device",
                "cpu",
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        with rasterio.open(out) as src:
            masks[backend] = src.read(1)
    assert (masks["torch"] == masks["onnxruntime"]).mean() >= 0.999
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-m",
            str(model),
            "--mask",
            str(tmp_path / "x.tif"),
            "--backend",
            "onnxruntime",
            "--precision",
            "bf16",
            "--device",
            "cpu",
        ],
    )
    assert (
        r.exit_code == 1
        and "--backend onnxruntime runs float32 on the CPU" in r.stderr
        and "Traceback" not in r.stderr
    )
    assert not (tmp_path / "x.tif").exists()


@requires_buildings_rgb
def test_the_bundled_model_agrees_across_backends(tmp_path: Path) -> None:
    """Every output channel (the core channel included) survives the export: the masks after the
    core-seeded split agree with PyTorch's on >= 99.9 % of a held-out image's pixels."""
    image = BUILDINGS_RGB / "inria" / "austin1_17.tif"
    masks = {}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor("buildings", device="cpu", precision="fp32", backend=backend)
        assert predictor.backend == backend
        out = tmp_path / f"{backend}.tif"
        predictor.run(image, mask=out, config=PredictConfig(device="cpu"))
        with rasterio.open(out) as src:
            masks[backend] = src.read(1)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    assert (
        predictor.net(torch.from_numpy(x)).shape[1] == predictor.meta.outputs == 2
    )  # building + core
    valid = masks["torch"] != 255
    assert valid.all() and (masks["torch"] == 1).sum() > 1000
    assert (masks["torch"][valid] == masks["onnxruntime"][valid]).mean() >= 0.999


def test_a_cached_entry_is_checked_against_the_logits_stored_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A warm run checks the cached graph against PyTorch's logits stored at export (no PyTorch
    # forward pass); stored logits that disagree make it rebuild, missing ones are written back.
    model = lively_file(tmp_path / "m.safetensors")
    entry = backend_cache_entry(model, onnxruntime.__version__)
    load_backend(model)
    stored = entry.with_suffix(".npy")
    expected = np.load(stored)
    size = expected.shape[-1]
    x = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
    np.testing.assert_allclose(expected, torch_logits(model, x), atol=1e-4, rtol=1e-4)
    np.save(stored, expected + 1)
    with caplog.at_level(logging.INFO, logger="geounet.network.backends"):
        load_backend(model)
    assert (
        "rebuilding the onnxruntime graph" in caplog.text and "differ from PyTorch's" in caplog.text
    )
    np.testing.assert_allclose(np.load(stored), expected, atol=1e-5)
    caplog.clear()
    stored.unlink()
    with caplog.at_level(logging.INFO, logger="geounet.network.backends"):
        load_backend(model)
    assert "rebuilding" not in caplog.text
    np.testing.assert_allclose(np.load(stored), expected, atol=1e-5)
