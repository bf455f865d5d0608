"""int8 copies of models: ``geounet model quantize`` and ``--precision int8``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import MakeRaster

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from geounet.cli.main import cli
from geounet.errors import GeounetError, OutputError
from geounet.network.checkpoint import bundled_models
from geounet.network.quantize import int8_sibling, is_int8_file, quantize_model
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
RIO = ROOT / "examples" / "rio_55.tif"


def _mask(pred: Predictor, scene: Path, out: Path) -> np.ndarray:
    pred.run(scene, mask=out, config=PredictConfig(device="cpu"))
    with rasterio.open(out) as src:
        return src.read(1)


def test_quantize_writes_a_sibling_that_precision_int8_runs(
    model_file: Path, make_raster: MakeRaster, tmp_path: Path
) -> None:
    scenes = [make_raster(f"s{i}.tif", width=96, height=80) for i in range(2)]
    runner = CliRunner()
    result = runner.invoke(
        cli, ["model", "quantize", str(model_file), "--images", *map(str, scenes)]
    )
    assert result.exit_code == 0, result.output
    sibling = model_file.with_name("model-int8.onnx")
    assert result.output.strip().endswith(str(sibling))
    assert is_int8_file(sibling) and int8_sibling(model_file) == sibling
    assert int8_sibling(sibling) == sibling  # an int8 file is its own

    int8 = Predictor(str(model_file), device="cpu", precision="int8")
    assert int8.backend == "onnxruntime" and int8.amp is None
    fp32 = Predictor(str(model_file), device="cpu", precision="fp32", backend="torch")
    a = _mask(int8, scenes[0], tmp_path / "int8.tif")
    b = _mask(fp32, scenes[0], tmp_path / "fp32.tif")
    assert 0.02 < (b == 1).mean() < 0.95  # the threshold model marks a real share of pixels
    iou = ((a == 1) & (b == 1)).sum() / ((a == 1) | (b == 1)).sum()
    assert iou > 0.8, iou

    # the CLI runs it too, and says nothing is written twice without --overwrite
    out = tmp_path / "out.gpkg"
    result = runner.invoke(
        cli,
        ["predict", str(scenes[1]), "-o", str(out), "-m", str(model_file), "--precision", "int8"],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    again = runner.invoke(cli, ["model", "quantize", str(model_file), "--images", str(scenes[0])])
    assert again.exit_code != 0 and "exists" in again.output


def test_int8_refusals(model_file: Path, make_raster: MakeRaster, tmp_path: Path) -> None:
    with pytest.raises(GeounetError, match="geounet model quantize"):
        Predictor(str(model_file), device="cpu", precision="int8")  # no sibling yet
    scene = make_raster(width=64, height=64)
    with pytest.raises(OutputError, match="ONNX file"):
        quantize_model(model_file, [scene], tmp_path / "q.safetensors")
    with pytest.raises(GeounetError, match="calibration images"):
        quantize_model(model_file, [], tmp_path / "q.onnx")
    quantize_model(model_file, [scene], model_file.with_name("model-int8.onnx"))
    with pytest.raises(GeounetError, match="CPU"):
        Predictor(str(model_file), device="cuda", precision="int8")
    with pytest.raises(GeounetError, match="onnxruntime"):
        Predictor(str(model_file), device="cpu", precision="int8", backend="torch")
    with pytest.raises(GeounetError, match="ONNX file"):
        quantize_model(model_file.with_name("model-int8.onnx"), [scene], tmp_path / "x.onnx")


def test_onnxruntime_backend_settles_auto_precision_as_fp32(model_file: Path) -> None:
    """``--backend onnxruntime`` alone works on every CPU, native bf16 or not."""
    pred = Predictor(str(model_file), device="cpu", backend="onnxruntime")
    assert pred.backend == "onnxruntime" and pred.amp is None


@pytest.mark.skipif(
    "buildings" not in bundled_models(), reason="the bundled model is not installed"
)
def test_bundled_int8_copy_agrees_with_float32(tmp_path: Path) -> None:
    """The shipped buildings-int8.onnx (scripts/make_int8_model.py) against float32 on the held-out
    example chip: on the 12 held-out images its masks equal float32's on 99.73 % of pixels."""
    graph = int8_sibling("buildings")
    assert graph is not None and graph.name == "buildings-int8.onnx"
    assert os.path.getsize(graph) < 8_000_000
    int8 = _mask(Predictor("buildings", device="cpu", precision="int8"), RIO, tmp_path / "i.tif")
    fp32 = _mask(
        Predictor("buildings", device="cpu", precision="fp32", backend="onnxruntime"),
        RIO,
        tmp_path / "f.tif",
    )
    assert (fp32 == 1).mean() > 0.1
    assert (int8 == fp32).mean() > 0.99
