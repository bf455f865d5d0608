"""ONNX export: onnxruntime against PyTorch, Deepness' metadata and input convention, predict."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import BUILDINGS_RGB, MakeRaster, meta_for, requires_buildings_rgb, threshold_unet

from geounet.cli.main import cli
from geounet.errors import CheckpointError, GeounetError, OutputError, TilingError
from geounet.network.backends import load_onnx
from geounet.network.checkpoint import create_model, load_model, read_meta, save_model
from geounet.network.contract import ModelMeta
from geounet.network.export import export_onnx
from geounet.network.onnx_file import read_onnx_meta
from geounet.network.unet import UNet, calibrate_batchnorm, fuse_batchnorm
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import Predictor


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def lively_model(
    *, bands: int = 3, classes: int | list[str] = 1, width: int = 8, depth: int = 3, seed: int = 0
) -> tuple[UNet, ModelMeta]:
    """A seeded U-Net with BatchNorm statistics from random batches: logits with structure."""
    net, meta = create_model(
        bands=bands, classes=classes, width=width, depth=depth, seed=seed, tile_size=64, overlap=16
    )
    gen = torch.Generator().manual_seed(seed)
    calibrate_batchnorm(net, [torch.randn(4, bands, 32, 32, generator=gen) for _ in range(3)])
    return net, meta


def torch_logits(net: UNet, x: np.ndarray) -> np.ndarray:
    """What Predictor runs on the CPU: BatchNorm fused, channels_last, float32."""
    fused = fuse_batchnorm(copy.deepcopy(net)).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return (
            fused(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
            .contiguous()
            .numpy()
        )


def session(path: Path) -> Any:
    """The file as Deepness opens it: a plain onnxruntime session."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path: Path) -> dict[str, Any]:
    """``custom_metadata_map`` decoded the way Deepness decodes it (json.loads of every value)."""
    return {k: json.loads(v) for k, v in session(path).get_modelmeta().custom_metadata_map.items()}


def deepness_probabilities(path: Path, tiles_hwc: np.ndarray) -> np.ndarray:
    """Deepness' Segmentor on uint8 (N, H, W, C) tiles: /255, standardize, NCHW, run, output 0."""
    meta = metadata(path)
    sess = session(path)
    x = np.float32(tiles_hwc * 1.0 / 255.0)
    x = (x - np.float32(meta["standardization_mean"])) / np.float32(meta["standardization_std"])
    x = np.transpose(x, (0, 3, 1, 2)).astype(np.float32)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("classes", [1, 3])
def test_logits_match_pytorch_on_random_tiles(tmp_path: Path, classes: int) -> None:
    net, meta = lively_model(classes=classes)
    path = export_onnx((net, meta), tmp_path / "m.onnx", dynamic_size=True)
    onnx_net, onnx_meta = load_onnx(path)
    assert onnx_meta == meta
    rng = np.random.default_rng(1)
    for n, h, w in [(1, 8, 8), (1, 64, 64), (3, 40, 40), (4, 96, 96), (2, 32, 64)]:
        x = rng.standard_normal((n, 3, h, w), dtype=np.float32) * 2
        expected = torch_logits(net, x)
        with torch.inference_mode():
            got = onnx_net(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape == (n, classes, h, w)
        assert np.abs(expected).max() > 0.5  # not a constant network
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@requires_buildings_rgb
def test_logits_match_pytorch_on_real_tiles_with_the_bundled_model(tmp_path: Path) -> None:
    path = export_onnx("buildings", tmp_path / "buildings.onnx", dynamic_size=True)
    # float32 on both sides (auto is bf16 on CPUs with native bf16; the ONNX graph is float32)
    ref = Predictor("buildings", device="cpu", precision="fp32", backend="torch")
    onnx = Predictor(str(path), device="cpu")
    for name in ("inria/chicago1_4.tif", "rio/rio_53.tif"):
        with rasterio.open(BUILDINGS_RGB / name) as src:
            tile = src.read(window=((0, 256), (0, 256))).astype(np.float32)[None]
        valid = np.ones((1, 256, 256), bool)
        # The file holds the class channel; the core channel stays out of it.
        classes = ref.meta.class_channels
        expected, got = ref.forward(tile, valid)[:, :classes], onnx.forward(tile, valid)
        assert got.shape[1] == classes == onnx.meta.outputs and onnx.meta.core_m == 0
        assert (expected > 0).any() and (expected < 0).any()  # buildings and ground
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            onnx.forward(tile, valid, tta=True),
            ref.forward(tile, valid, tta=True)[:, :classes],
            rtol=0,
            atol=1e-4,
        )


def test_metadata_has_deepness_keys_and_types(tmp_path: Path) -> None:
    net, meta = lively_model(classes=["building"])
    meta.gsd = 0.25
    path = export_onnx((net, meta), tmp_path / "m.onnx", threshold=0.4)
    props = metadata(path)
    assert props["model_type"] == "Segmentor"
    assert props["class_names"] == {"0": "background", "1": "building"}
    assert sorted(int(k) for k in props["class_names"]) == [0, 1]  # consecutive, as Deepness checks
    assert props["resolution"] == 25.0 and isinstance(props["resolution"], float)
    assert props["tiles_size"] == props["tile_size"] == 64 and isinstance(props["tiles_size"], int)
    # twice the model's 16 of 64 px: Deepness keeps tile centres without blending
    assert props["tiles_overlap"] == 50 and isinstance(props["tiles_overlap"], int)
    assert props["seg_thresh"] == 0.4 and isinstance(props["seg_thresh"], float)
    assert props["seg_small_segment"] == 0
    # create_model's raw-unit mean/std (127.5, 63.75) in Deepness' units: pixel / 255
    assert props["standardization_mean"] == pytest.approx([0.5] * 3)
    assert props["standardization_std"] == pytest.approx([0.25] * 3)
    assert ModelMeta.from_dict(props["geounet"]) == meta
    assert props["geounet_onnx"]["activation"] == "sigmoid"
    sess = session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    # Deepness reads an integer tile size off the input: fixed to the model's tile size by default
    assert inp.shape == ["batch", 3, 64, 64] and inp.type == "tensor(float)"
    assert (
        len(out.shape) == 4 and out.shape[1] == 1 and out.shape[2] == out.shape[3]
    )  # Deepness' checks


def test_multiclass_metadata_and_softmax_output(tmp_path: Path) -> None:
    net, meta = lively_model(classes=["background", "water", "trees"])
    path = export_onnx((net, meta), tmp_path / "m.onnx")
    props = metadata(path)
    assert props["class_names"] == {"0": "background", "1": "water", "2": "trees"}
    assert props["seg_thresh"] == 0.0  # Deepness then takes the plain argmax, as geounet does
    assert "resolution" not in props  # the model does not know its pixel size
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    probs = deepness_probabilities(path, x)
    assert probs.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["raw", "dataset", "scene"])
def test_deepness_input_convention_gives_geounets_probabilities(tmp_path: Path, mode: str) -> None:
    """Deepness divides by 255 and standardizes with the metadata; geounet normalizes raw pixels
    itself: both must reach the network with the same values."""
    net, meta = lively_model()
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    if mode == "dataset":
        meta.normalization = {
            "mode": "dataset",
            "low": 2,
            "high": 98,
            "lo": [10, 20, 30],
            "hi": [200, 220, 240],
        }
        meta.mean, meta.std = [0.5, 0.4, 0.6], [0.3, 0.25, 0.2]
    elif mode == "scene":
        meta.normalization = {"mode": "scene", "low": 2, "high": 98}
        meta.mean, meta.std = [0.45, 0.46, 0.43], [0.29, 0.29, 0.28]
        tiles[:, :, :2, :] = 0  # more than 2 % of each band at 0 and at 255: the stretch is 0..255
        tiles[:, :, -2:, :] = 255
    path = export_onnx((net, meta), tmp_path / "m.onnx", dynamic_size=True)
    logits = Predictor(str(path), device="cpu").forward(
        tiles.astype(np.float32), np.ones((2, 32, 32), bool)
    )
    expected = 1 / (1 + np.exp(-logits))
    got = deepness_probabilities(path, np.transpose(tiles, (0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_predict_with_onnx_gives_the_same_mask_and_polygons(
    make_raster: MakeRaster, tmp_path: Path, tta: bool
) -> None:
    net, meta = lively_model()
    model = tmp_path / "m.safetensors"
    save_model(net, meta, model)
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    scene = make_raster(width=150, height=130)
    cfg = PredictConfig(device="cpu", tta=tta)
    outputs = {}
    for name, m in (("pt", model), ("onnx", onnx_path)):
        backend = "torch" if name == "pt" else "onnxruntime"  # PyTorch against the file
        result = Predictor(str(m), device="cpu", precision="fp32", backend=backend).run(
            scene,
            tmp_path / f"{name}.gpkg",
            probabilities=tmp_path / f"{name}_p.tif",
            mask=tmp_path / f"{name}_m.tif",
            config=cfg,
        )
        with rasterio.open(tmp_path / f"{name}_m.tif") as src:
            mask = src.read(1)
        with rasterio.open(tmp_path / f"{name}_p.tif") as src:
            probs = src.read(1)
        outputs[name] = (result, mask, probs)
    (r_pt, m_pt, p_pt), (r_onnx, m_onnx, p_onnx) = outputs["pt"], outputs["onnx"]
    assert 0 < (m_pt == 1).mean() < 1  # both classes present
    np.testing.assert_allclose(p_onnx, p_pt, rtol=0, atol=1e-5)
    differ = m_pt != m_onnx
    assert not (differ & (np.abs(p_pt - 0.5) >= 1e-4)).any()
    assert r_pt.features == r_onnx.features > 0
    assert len(gpd.read_file(tmp_path / "onnx.gpkg", layer="onnx")) == r_pt.features


def test_cli_export_info_and_predict_end_to_end(
    make_raster: MakeRaster, model_file: Path, tmp_path: Path
) -> None:
    data = np.zeros((3, 150, 130), dtype=np.uint8)
    data[0, 20:60, 30:70] = 255
    data[0, 90:140, 10:50] = 255
    scene = make_raster(data=data)
    onnx_path = tmp_path / "m.onnx"
    r = run("model", "export", str(model_file), "-o", str(onnx_path))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(onnx_path)
    assert read_onnx_meta(onnx_path) == read_meta(model_file)
    r = run("model", "info", str(onnx_path))
    assert r.exit_code == 0, r.stderr
    assert "opset 17, input (batch, bands, 64, 64); Deepness Segmentor" in r.stdout
    assert "width=4 depth=2 outputs=1 binary" in r.stdout
    r = run(
        "predict",
        str(scene),
        "-o",
        str(tmp_path / "b.geojson"),
        "-m",
        str(onnx_path),
        "--mask",
        str(tmp_path / "m.tif"),
    )
    assert r.exit_code == 0, r.stderr
    assert "2 polygons" in r.stderr
    frame = gpd.read_file(tmp_path / "b.geojson")
    assert sorted(frame["area_m2"]) == [pytest.approx(400.0), pytest.approx(500.0)]
    r = run("model", "export", str(model_file), "-o", str(onnx_path))
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr
    r = run(
        "predict",
        str(scene),
        "-o",
        str(tmp_path / "c.geojson"),
        "-m",
        str(onnx_path),
        "--precision",
        "bf16",
    )
    assert (
        r.exit_code == 1
        and "an ONNX model runs in float32" in r.stderr
        and "Traceback" not in r.stderr
    )
    assert not (tmp_path / "c.geojson").exists()


def test_fixed_size_export(make_raster: MakeRaster, model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    r = run("model", "export", str(model_file), "-o", str(path), "--fixed-size", "32")
    assert r.exit_code == 0, r.stderr
    assert session(path).get_inputs()[0].shape == ["batch", 3, 32, 32]
    assert metadata(path)["tile_size"] == 32 and read_onnx_meta(path).tile_size == 32
    predictor = Predictor(str(path), device="cpu")
    with pytest.raises(
        TilingError,
        match="exported for 32 px tiles, got 64 x 64; predict tiles a scene at that size",
    ):
        predictor.forward(np.zeros((1, 3, 64, 64), np.float32), np.ones((1, 64, 64), bool))
    result = predictor.run(
        make_raster(width=70, height=50), tmp_path / "o.gpkg", config=PredictConfig(device="cpu")
    )
    assert result.tiles > 1
    r = run(
        "model", "export", str(model_file), "-o", str(tmp_path / "bad.onnx"), "--fixed-size", "30"
    )
    assert r.exit_code == 1 and "tile size 30 is not divisible by 4" in r.stderr
    assert not (tmp_path / "bad.onnx").exists()


def test_bad_inputs_give_one_line_and_leave_nothing(
    model_file: Path, tmp_path: Path, make_raster: MakeRaster
) -> None:
    cases = [
        (
            (
                "model",
                "export",
                str(tmp_path / "missing.safetensors"),
                "-o",
                str(tmp_path / "a.onnx"),
            ),
            1,
            "model file not found",
        ),
        (
            ("model", "export", "nosuchname", "-o", str(tmp_path / "a.onnx")),
            1,
            "(bundled models: buildings)",
        ),
        (("model", "export", str(model_file), "-o", str(model_file / "a.onnx")), 1, "cannot write"),
        (
            ("model", "export", str(model_file), "-o", str(tmp_path / "a.onnx"), "--opset", "9"),
            2,
            "9 is not in the range 13<=x<=20",
        ),
        (
            (
                "predict",
                str(make_raster()),
                "-o",
                str(tmp_path / "o.gpkg"),
                "-m",
                str(tmp_path / "missing.onnx"),
            ),
            1,
            "missing.onnx: model file not found",
        ),
    ]
    for args, code, message in cases:
        r = run(*args)
        assert r.exit_code == code, (args, r.stderr)
        assert message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        if code == 1:
            assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "scene.tif"]


def test_foreign_onnx_files_and_load_model_are_refused(tmp_path: Path, model_file: Path) -> None:
    path = export_onnx(model_file, tmp_path / "m.onnx")
    with pytest.raises(
        CheckpointError, match=r"m\.onnx is an ONNX model: geounet runs it for prediction only"
    ):
        load_model(path)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match=r"plain\.onnx has no geounet metadata"):
        Predictor(str(tmp_path / "plain.onnx"), device="cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    r = run("model", "info", str(tmp_path / "junk.onnx"))
    assert r.exit_code == 1 and "junk.onnx is not a readable ONNX file" in r.stderr
    with pytest.raises(OutputError, match=r"directory .* does not exist"):
        export_onnx(model_file, tmp_path / "nowhere" / "m.onnx")
    with pytest.raises(GeounetError, match="opset 9 is not supported"):
        export_onnx(model_file, tmp_path / "o9.onnx", opset=9)


def test_without_onnxruntime_the_message_names_the_extra(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_raster: MakeRaster
) -> None:
    path = export_onnx(model_file, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    r = run("predict", str(make_raster()), "-o", str(tmp_path / "o.gpkg"), "-m", str(path))
    assert r.exit_code == 1
    assert (
        r.stderr == "Error: running an ONNX model needs onnxruntime: pip install 'geounet[onnx]'\n"
    )
    r = run("model", "export", str(model_file), "-o", str(tmp_path / "n.onnx"))
    assert r.exit_code == 1 and "pip install 'geounet[onnx]'" in r.stderr
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "n.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    r = run("model", "info", str(path))
    assert (
        r.exit_code == 1
        and r.stderr
        == "Error: reading an ONNX model needs the onnx package: pip install 'geounet[onnx]'\n"
    )


def test_export_leaves_the_callers_model_alone(tmp_path: Path) -> None:
    net = threshold_unet(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx((net, meta_for(net)), tmp_path / "m.onnx")
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_default_export_is_fixed_to_the_tile_size_and_dynamic_size_is_asked_for(
    model_file: Path, tmp_path: Path
) -> None:
    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    assert run("model", "export", str(model_file), "-o", str(fixed)).exit_code == 0
    assert session(fixed).get_inputs()[0].shape == ["batch", 3, 64, 64]
    assert json.loads(onnx.load(str(fixed)).metadata_props[-1].value)["fixed_size"] == 64
    r = run("model", "export", str(model_file), "-o", str(dynamic), "--dynamic-size")
    assert r.exit_code == 0, r.stderr
    assert session(dynamic).get_inputs()[0].shape == ["batch", 3, "size", "size"]
    r = run("model", "info", str(dynamic))
    assert "input (batch, bands, size, size)" in r.stdout
    r = run(
        "model",
        "export",
        str(model_file),
        "-o",
        str(tmp_path / "x.onnx"),
        "--dynamic-size",
        "--fixed-size",
        "32",
    )
    assert r.exit_code == 2 and "--fixed-size and --dynamic-size exclude each other" in r.stderr
    with pytest.raises(GeounetError, match="exclude each other"):
        export_onnx(model_file, tmp_path / "x.onnx", fixed_size=32, dynamic_size=True)
    assert not (tmp_path / "x.onnx").exists()


def test_a_fixed_size_graph_is_tiled_at_its_size_padded_and_resampled(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    net, meta = lively_model()  # tiles of 64, depth 3
    meta.gsd = 0.5
    model = tmp_path / "m.safetensors"
    save_model(net, meta, model)
    fixed = Predictor(str(export_onnx(model, tmp_path / "fixed.onnx")), device="cpu")
    dynamic = Predictor(
        str(export_onnx(model, tmp_path / "dynamic.onnx", dynamic_size=True)), device="cpu"
    )
    cfg = PredictConfig(device="cpu")
    # A scene smaller than a tile: PyTorch and a dynamic graph fit the tile to it (40 px); the
    # fixed graph reads one 64 px tile, the scene padded and the padding masked.
    small = make_raster(
        name="small.tif",
        width=40,
        height=30,
        data=np.random.default_rng(4).integers(0, 256, (3, 30, 40)).astype(np.uint8),
    )
    assert dynamic.plan(small, cfg).tile_size == 40
    plan = fixed.plan(small, cfg)
    assert (plan.tile_size, len(plan.tiles), plan.net_size) == (64, 1, None)
    fixed.run(small, probabilities=tmp_path / "p.tif", config=cfg)
    with rasterio.open(tmp_path / "p.tif") as src:
        got = src.read(1)
    with rasterio.open(small) as src:
        raw = src.read().astype(np.float32)
    tile = np.zeros((1, 3, 64, 64), np.float32)
    tile[0, :, :30, :40] = raw
    valid = np.zeros((1, 64, 64), bool)
    valid[0, :30, :40] = True
    logits = Predictor((net, meta), device="cpu", precision="fp32").forward(tile, valid)[
        0, 0, :30, :40
    ]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    # Another tile size is refused before any work, with what to do.
    with pytest.raises(TilingError, match=r"fixed\.onnx takes 64 px tiles only .* --dynamic-size"):
        fixed.plan(small, PredictConfig(device="cpu", tile_size=32))
    # Scene pixels of 0.25 m for a 0.5 m model: windows of 128 scene pixels, 64 for the network.
    data = np.random.default_rng(5).integers(0, 256, (3, 150, 170)).astype(np.uint8)
    fine = make_raster(
        name="fine.tif",
        width=170,
        height=150,
        data=data,
        transform=rasterio.transform.from_origin(500000, 5000000, 0.25, 0.25),
    )
    plan = fixed.plan(fine, cfg)
    assert (plan.tile_size, plan.net_size) == (128, 64) and plan.factor == pytest.approx(2.0)
    for name, predictor in (("f", fixed), ("d", dynamic)):
        predictor.run(fine, probabilities=tmp_path / f"{name}.tif", config=cfg)
    with rasterio.open(tmp_path / "f.tif") as a, rasterio.open(tmp_path / "d.tif") as b:
        np.testing.assert_allclose(a.read(1), b.read(1), rtol=0, atol=1e-5)


def test_a_scene_stretch_folds_into_deepness_standardization(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    """A model that stretches each scene: the export folds the recorded typical stretch, or with
    stretch_from one scene's own, exactly into Deepness' mean/std (applied after /255)."""
    from geounet.geodata.normalize import scene_scaling
    from geounet.geodata.raster import open_scene

    net, meta = lively_model()
    meta.mean, meta.std = [0.45, 0.46, 0.43], [0.29, 0.29, 0.28]
    lo, hi = [20.0, 30.0, 40.0], [200.0, 210.0, 220.0]
    meta.normalization = {"mode": "scene", "low": 2, "high": 98, "typical_lo": lo, "typical_hi": hi}
    props = metadata(export_onnx((net, meta), tmp_path / "typical.onnx"))
    span = np.subtract(hi, lo)
    assert props["standardization_mean"] == pytest.approx(
        list((np.add(lo, np.multiply(meta.mean, span))) / 255)
    )
    assert props["standardization_std"] == pytest.approx(list(np.multiply(meta.std, span) / 255))
    assert props["geounet_onnx"]["stretch"] == {"source": "typical", "lo": lo, "hi": hi}
    assert (
        ModelMeta.from_dict(props["geounet"]).normalization == meta.normalization
    )  # geounet keeps its per-scene stretch

    data = np.random.default_rng(6).integers(40, 180, (3, 96, 80)).astype(np.uint8)
    scene = make_raster(width=80, height=96, data=data)
    path = export_onnx((net, meta), tmp_path / "own.onnx", stretch_from=scene)
    props = metadata(path)
    assert props["geounet_onnx"]["stretch"]["source"] == "scene scene.tif"
    with rasterio.open(scene) as src:
        offset, scale = scene_scaling(
            meta.normalization, meta.mean, meta.std, src, open_scene(scene), [1, 2, 3]
        )
    window = data[:, :64, :64].astype(np.float32)
    geounet_input = (window - offset[:, None, None]) / scale[:, None, None]
    # Deepness' preprocessing of the same pixels with the file's keys: /255, then standardize
    x = np.float32(np.transpose(data[:, :64, :64], (1, 2, 0)) * 1.0 / 255.0)
    deepness_input = np.transpose(
        (x - np.float32(props["standardization_mean"])) / np.float32(props["standardization_std"]),
        (2, 0, 1),
    )
    np.testing.assert_allclose(deepness_input, geounet_input, rtol=0, atol=1e-5)
    logits = Predictor(str(path), device="cpu").forward(
        window[None], np.ones((1, 64, 64), bool), scaling=(offset, scale)
    )
    got = deepness_probabilities(path, np.transpose(data[:, :64, :64], (1, 2, 0))[None])
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    r = run("model", "info", str(path))
    assert "stretch scene scene.tif folded into its standardization" in r.stdout

    meta.normalization = {
        "mode": "scene",
        "low": 2,
        "high": 98,
    }  # an older file: the full 0..255 range
    props = metadata(export_onnx((net, meta), tmp_path / "old.onnx"))
    assert (
        props["standardization_mean"] == pytest.approx(meta.mean)
        and props["geounet_onnx"]["stretch"]["source"] == "full range"
    )
    raw_net, raw_meta = lively_model()
    with pytest.raises(
        GeounetError, match="--stretch-from applies to models that stretch each scene"
    ):
        export_onnx((raw_net, raw_meta), tmp_path / "raw.onnx", stretch_from=scene)
    for bad in (
        {"typical_lo": [1.0, 2.0], "typical_hi": [9.0, 9.0]},
        {"typical_lo": [5.0] * 3, "typical_hi": [5.0] * 3},
    ):
        meta.normalization = {"mode": "scene", "low": 2, "high": 98, **bad}
        with pytest.raises(CheckpointError, match="typical_lo/typical_hi"):
            meta.validate()
