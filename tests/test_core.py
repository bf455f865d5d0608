"""Touching buildings come apart: a core channel (``train --core``) learns each object's
footprint shrunk on its own, and ``predict`` grows the objects from the cores it predicts."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from click.testing import CliRunner
from conftest import MakeRaster, meta_for, threshold_unet
from rasterio.transform import from_origin
from scipy import ndimage

from geounet.errors import CheckpointError, GeounetError
from geounet.geodata.raster import open_scene
from geounet.labels.vector import read_labels
from geounet.network.checkpoint import load_model, read_meta, save_model
from geounet.network.contract import ModelMeta
from geounet.network.unet import UNet, add_core_channel, drop_core_channel
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import predict_raster
from geounet.training.dataset import (
    BORDER_INDEX,
    CONTACT_INDEX,
    ImageEntry,
    Sample,
    WindowDataset,
    mark_borders,
)
from geounet.training.evaluate import evaluate
from geounet.training.metrics import confusion
from geounet.training.step import segmentation_loss
from geounet.training.train import train_model
from geounet.vectors.separate import split_at_valleys

T = from_origin(500000, 5000000, 0.5, 0.5)


def _box(r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    x0, y0 = T * (c0, r0)
    x1, y1 = T * (c1, r1)
    return shapely.box(x0, y1, x1, y0)


def test_borders_shrink_each_object_on_its_own() -> None:
    r = 2
    ids = np.zeros((20 + 2 * r, 30 + 2 * r), np.int32)
    ids[4 + r : 14 + r, 3 + r : 11 + r] = 1  # 10 x 8
    ids[4 + r : 14 + r, 11 + r : 23 + r] = 2  # 10 x 12, sharing a whole edge with the first
    target = (ids[r:-r, r:-r] > 0).astype(np.uint8)
    out = mark_borders(target, ids, r)
    core = out == 1
    # Each block loses r pixels on every side, its own neighbour included.
    assert core.sum() == (10 - 4) * (8 - 4) + (10 - 4) * (12 - 4)
    assert core[6:12, 5:9].all() and core[6:12, 13:21].all()
    assert not core[:, 9:13].any()  # 2 r columns between the cores
    _, n = ndimage.label(core)
    assert n == 2
    assert ((out == BORDER_INDEX) == ((target == 1) & ~core)).all()
    assert (out[target == 0] == 0).all()  # the background is untouched
    assert mark_borders(target, ids, 0) is target
    # An object thinner than 2 r + 1 has no core at all.
    thin = np.zeros_like(ids)
    thin[5 + r : 8 + r, 5 + r : 20 + r] = 1
    assert not (mark_borders((thin[r:-r, r:-r] > 0).astype(np.uint8), thin, r) == 1).any()


def test_training_windows_get_borders_and_contacts(make_raster: MakeRaster, tmp_path: Path) -> None:
    data = np.full((3, 64, 64), 40, np.uint8)
    path = make_raster("rows.tif", width=64, height=64, data=data, transform=T)
    labels = tmp_path / "rows.geojson"
    gpd.GeoDataFrame(
        geometry=[_box(10, 10, 30, 30), _box(10, 30, 30, 50)], crs="EPSG:32633"
    ).to_file(labels)
    scene = open_scene(path)
    rl = read_labels(labels).for_scene(scene)
    ds = lambda e: WindowDataset(
        [e], [Sample(0, 0, 0)], tile_size=64, mean=[0, 0, 0], std=[1, 1, 1]
    )
    entry = ImageEntry(scene, scene.data_bands, rl, [], contact_px=1, core_px=2)
    _, target = ds(entry).read(Sample(0, 0, 0))
    core = target == 1
    _, n = ndimage.label(core)
    assert n == 2 and core.sum() == 16 * 16 + 16 * 16
    assert (target[10:30, 29] == CONTACT_INDEX).all()  # the seam (radius 1)
    foreground = (target == 1) | (target == BORDER_INDEX)
    assert foreground.sum() == 20 * 40 - 20  # both houses, less the seam
    # Without a core, the same window has no border pixels and the same contacts.
    entry.core_px = 0
    _, plain = ds(entry).read(Sample(0, 0, 0))
    assert not (plain == BORDER_INDEX).any()
    np.testing.assert_array_equal(np.where(target == BORDER_INDEX, 1, target), plain)


def test_the_core_channel_adds_its_own_loss_and_borders_are_foreground() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = BORDER_INDEX
    target[:, 3:5, 3:5] = 1
    target[0, 0, :3] = CONTACT_INDEX
    foreground = target.masked_fill(target == BORDER_INDEX, 1)
    one = segmentation_loss(logits[:, :1], target, True, 10.0)
    # Channel 0 sees borders as foreground.
    torch.testing.assert_close(one, segmentation_loss(logits[:, :1], foreground, True, 10.0))
    # Channel 1 is the core: the same loss against the core alone, added.
    core_only = torch.where(target == 1, 1, torch.where(target == CONTACT_INDEX, CONTACT_INDEX, 0))
    torch.testing.assert_close(
        segmentation_loss(logits, target, True, 10.0),
        one + segmentation_loss(logits[:, 1:], core_only, True, 10.0),
    )
    # Scoring reads channel 0 and counts borders as foreground.
    torch.testing.assert_close(
        confusion(logits, target, 2, True), confusion(logits[:, :1], foreground, 2, True)
    )


def test_a_core_channel_joins_and_leaves_a_binary_unet() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, width=4, depth=2).eval()
    x = torch.randn(1, 3, 16, 16)
    cored = add_core_channel(net).eval()
    with torch.no_grad():
        y, yc = net(x), cored(x)
    assert yc.shape[1] == 2
    torch.testing.assert_close(yc[:, :1], y)  # the foreground is unchanged
    assert (yc[:, 1] < yc[:, 0]).all()  # the core starts inside it
    with torch.no_grad():
        torch.testing.assert_close(drop_core_channel(cored).eval()(x), y)
    with pytest.raises(ValueError, match="one foreground channel"):
        add_core_channel(UNet(3, 3, width=4, depth=2))


def test_model_files_say_what_the_core_channel_is(tmp_path: Path) -> None:
    net = add_core_channel(threshold_unet(3))
    meta = meta_for(threshold_unet(3))
    meta.arch_args["classes"] = 2
    with pytest.raises(CheckpointError, match="1 class names for 2 outputs"):
        meta.validate()
    meta.core_m = 1.0
    meta.validate()
    assert (
        meta.binary
        and meta.outputs == 2
        and meta.class_channels == 1
        and meta.mask_classes == ["background", "building"]
    )
    save_model(net, meta, tmp_path / "c.safetensors")
    assert read_meta(tmp_path / "c.safetensors").core_m == 1.0
    # A file that says two outputs but no core channel is refused on reading, not misread.
    data = {**meta.__dict__, "core_m": 0.0, "arch_args": dict(meta.arch_args)}
    with pytest.raises(CheckpointError, match="class names for 2 outputs"):
        ModelMeta.from_dict(data, source="x")
    multi = meta_for(threshold_unet(3), classes=["background", "a", "b"])
    multi.arch_args["classes"] = 4
    multi.classes = ["background", "a", "b"]
    multi.colours = []
    multi.core_m = 1.0
    with pytest.raises(CheckpointError, match="needs a binary model"):
        multi.validate()


def _core_unet() -> UNet:
    """``threshold_unet(3)`` on red for the foreground, plus a core channel that thresholds
    green the same way (the full-resolution path's channel 1)."""
    net = add_core_channel(threshold_unet(3))
    with torch.no_grad():
        net.head.weight[1].zero_()
        net.inc[0].weight[1, 1, 1, 1] = 1.0
        net.inc[3].weight[1, 1, 1, 1] = 1.0
        last = net.ups[-1].conv
        last[0].weight[1, 1, 1, 1] = 1.0
        last[3].weight[1, 1, 1, 1] = 1.0
        net.head.weight[1, 1, 0, 0] = 4.0
        net.head.bias[1] = -4.0
    return net.eval()


def test_predict_grows_touching_houses_from_their_cores(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    # Red is one flat blob over both roofs (no valley in the foreground probability); green
    # marks each roof's core, with a 6-pixel gap where the roofs meet.
    red = np.full((80, 80), 30, np.uint8)
    red[10:40, 10:55] = 230
    green = np.full((80, 80), 30, np.uint8)
    green[13:37, 13:28] = 230
    green[13:37, 34:52] = 230
    scene = make_raster(
        "row.tif",
        width=80,
        height=80,
        data=np.stack([red, green, np.full_like(red, 90)]),
        transform=T,
    )
    truth = [_box(10, 10, 40, 31), _box(10, 31, 40, 55)]
    labels = tmp_path / "row.geojson"
    gpd.GeoDataFrame(geometry=truth, crs="EPSG:32633").to_file(labels)
    net = _core_unet()
    meta = meta_for(threshold_unet(3))
    meta.arch_args["classes"], meta.core_m, meta.split_seeds = 2, 1.0, 0.5
    path = tmp_path / "core.safetensors"
    save_model(net, meta, path)
    cut = predict_raster(
        scene,
        tmp_path / "c.gpkg",
        probabilities=tmp_path / "p.tif",
        model=path,
        config=PredictConfig(device="cpu"),
    )
    plain = predict_raster(
        scene, tmp_path / "o.gpkg", model=path, config=PredictConfig(device="cpu", split_seeds=0)
    )
    assert cut.features == 2 and plain.features == 1
    got = sorted(gpd.read_file(tmp_path / "c.gpkg", layer="c").geometry, key=lambda g: g.bounds[0])
    for g, want in zip(got, truth, strict=True):
        assert g.intersection(want).area / g.union(want).area > 0.85
    with rasterio.open(tmp_path / "p.tif") as src:  # the core channel is not a class: one band
        assert src.count == 1
    on = evaluate(scene, labels, model=path, config=PredictConfig(device="cpu"))["object"][
        "foreground"
    ]
    off = evaluate(scene, labels, model=path, config=PredictConfig(device="cpu", split_seeds=0))[
        "object"
    ]["foreground"]
    assert (on["tp"], on["fp"], on["fn"]) == (2, 0, 0) and off["tp"] <= 1
    # The cut follows the core channel's valley, not the flat foreground probability.
    p = np.full((30, 45), 0.95, np.float32)
    core = np.full_like(p, 0.05)
    core[3:27, 3:18], core[3:27, 24:42] = 0.95, 0.95
    mask = np.ones(p.shape, np.uint8)
    out = split_at_valleys(mask, p, 0.5, 16, core=core)
    assert split_at_valleys(mask, p, 0.5, 16) is mask  # no valley in p itself
    cols = np.nonzero((out != mask).any(axis=0))[0]
    assert len(cols) >= 1 and set(cols) <= set(range(18, 24))
    from geounet.cli.main import cli

    r = CliRunner().invoke(cli, ["model", "info", str(path)])
    assert (
        r.exit_code == 0
        and "core channel (footprints shrunk by 1 m)" in r.output
        and "grown from predicted cores >= 0.5" in r.output
    )


def test_onnx_export_leaves_the_core_channel_out(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from geounet.network.export import export_onnx

    meta = meta_for(threshold_unet(3))
    meta.arch_args["classes"], meta.core_m = 2, 1.0
    out = tmp_path / "core.onnx"
    export_onnx((_core_unet(), meta), out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (1, 1, 64, 64)


def test_train_with_a_core_channel_and_fine_tune_it_away(tmp_path: Path) -> None:
    from test_train import small_config, synthetic_scene

    img, lab = synthetic_scene(tmp_path / "a.tif", tmp_path / "a.gpkg", seed=1)
    scenes = {"a": img, "la": lab}
    out = tmp_path / "core.safetensors"
    kw = {
        "classes": ["building"],
        "epochs": 1,
        "samples_per_epoch": 16,
        "width": 4,
        "depth": 2,
        "tile_size": 32,
    }
    result = train_model(small_config(scenes, out, core_m=1.0, **kw))  # type: ignore[arg-type]
    net, meta = load_model(out)
    assert meta.core_m == 1.0 and meta.outputs == 2 and meta.binary and net.classes == 2
    assert meta.provenance["core_m"] == 1.0
    plain = train_model(small_config(scenes, tmp_path / "plain.safetensors", **kw))  # type: ignore[arg-type]
    assert (
        result.history[0]["train_loss"] > plain.history[0]["train_loss"]
    )  # the core's loss is added
    # Fine-tuning keeps the init model's core unless told otherwise; --core 0 drops it.
    kept = train_model(small_config(scenes, tmp_path / "kept.safetensors", init=str(out), **kw))  # type: ignore[arg-type]
    assert read_meta(tmp_path / "kept.safetensors").core_m == 1.0 and kept.history
    train_model(
        small_config(scenes, tmp_path / "dropped.safetensors", init=str(out), core_m=0.0, **kw)
    )  # type: ignore[arg-type]
    dropped = read_meta(tmp_path / "dropped.safetensors")
    assert dropped.core_m == 0.0 and dropped.outputs == 1
    with pytest.raises(GeounetError, match="needs one foreground class"):
        train_model(small_config(scenes, tmp_path / "x.safetensors", core_m=1.0, epochs=1))


def test_core_only_training_changes_the_core_weights_and_nothing_else(tmp_path: Path) -> None:
    from test_train import small_config, synthetic_scene

    img, lab = synthetic_scene(tmp_path / "a.tif", tmp_path / "a.gpkg", seed=1)
    scenes = {"a": img, "la": lab}
    kw = {
        "classes": ["building"],
        "epochs": 1,
        "samples_per_epoch": 16,
        "width": 4,
        "depth": 2,
        "tile_size": 32,
    }
    base = tmp_path / "base.safetensors"
    train_model(small_config(scenes, base, **kw))  # type: ignore[arg-type]
    out = tmp_path / "core.safetensors"
    train_model(small_config(scenes, out, init=str(base), core_m=1.0, core_only=True, **kw))  # type: ignore[arg-type]
    a, _ = load_model(base)
    b, meta = load_model(out)
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():  # every weight and BatchNorm statistic of the init model, exactly
        torch.testing.assert_close(
            sb[k][:1].float() if k.startswith("head.") else sb[k].float(),
            v.float(),
            rtol=0,
            atol=0,
            msg=k,
        )
    # The core row started as the foreground's (bias lowered by 1) and has learnt.
    assert not torch.equal(sb["head.weight"][1].float(), sa["head.weight"][0].float())
    assert meta.core_m == 1.0 and meta.provenance["core_only"] is True
    with pytest.raises(GeounetError, match="--core-only"):
        train_model(
            small_config(scenes, tmp_path / "x.safetensors", core_m=1.0, core_only=True, **kw)
        )  # type: ignore[arg-type]
