from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from conftest import MakeRaster, constant_unet, meta_for, threshold_unet
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage

from geounet.errors import (
    BandMismatchError,
    MissingCRSError,
    OutputExistsError,
    RasterReadError,
    TilingError,
)
from geounet.network.checkpoint import create_model
from geounet.network.unet import calibrate_batchnorm, cpu_supports_bf16
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import Predictor, predict_raster
from geounet.vectors.writer import VECTOR_FORMATS


def burn_boxes(
    make_raster: MakeRaster,
    boxes: list[shapely.Polygon],
    *,
    crs: str,
    transform,
    size: tuple[int, int],
    name: str = "boxes.tif",
    nodata=None,
) -> Path:
    h, w = size
    band = rasterize(
        [(b, 255) for b in boxes], out_shape=(h, w), transform=transform, dtype="uint8"
    )
    data = np.stack([band, np.full_like(band, 40), np.full_like(band, 90)])
    return make_raster(name, data=data, crs=crs, transform=transform, nodata=nodata)


CASES = {
    "utm": (
        "EPSG:32633",
        from_origin(500000, 5000000, 0.5, 0.5),
        [
            shapely.box(500010, 4999950, 500030, 4999980),
            shapely.box(500071.5, 4999901, 500090, 4999930.5),
            shapely.box(500020, 4999902, 500024, 4999906),
        ],
    ),
    "geographic": (
        "EPSG:4326",
        from_origin(-115.30, 36.20, 5e-6, 5e-6),
        [
            shapely.box(-115.29990, 36.19960, -115.29975, 36.19980),
            shapely.box(-115.29950, 36.19930, -115.29930, 36.19945),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_known_answer_boxes_come_back_within_a_pixel(
    make_raster: MakeRaster, tmp_path: Path, case: str
) -> None:
    crs, transform, boxes = CASES[case]
    scene = burn_boxes(make_raster, boxes, crs=crs, transform=transform, size=(200, 190))
    net = threshold_unet(3)
    model = (net, meta_for(net))
    pixel = abs(transform.a)
    for suffix in sorted(VECTOR_FORMATS):
        out = tmp_path / f"{case}{suffix}"
        result = predict_raster(
            scene, out, model=model, config=PredictConfig(tile_size=64, overlap=16, device="cpu")
        )
        assert result.features == len(boxes)
        frame = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
        assert frame.crs == rasterio.crs.CRS.from_string(crs), suffix
        assert len(frame) == len(boxes)
        assert set(frame.geom_type) <= {"Polygon", "MultiPolygon"} and frame.is_valid.all()
        for box in boxes:
            match = frame[frame.intersects(box)]
            assert len(match) == 1, (suffix, box)
            assert match.geometry.iloc[0].hausdorff_distance(box) <= pixel * 1.0001
            assert match["score"].iloc[0] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-3)
            assert match["area_m2"].iloc[0] > 0


def test_to_crs_reprojects_vectors(make_raster: MakeRaster, tmp_path: Path) -> None:
    crs, transform, boxes = CASES["utm"]
    scene = burn_boxes(make_raster, boxes, crs=crs, transform=transform, size=(200, 190))
    net = threshold_unet(3)
    out = tmp_path / "wgs84.geojson"
    predict_raster(
        scene,
        out,
        model=(net, meta_for(net)),
        config=PredictConfig(tile_size=64, overlap=16, to_crs="EPSG:4326"),
    )
    frame = gpd.read_file(out)
    assert frame.crs.to_epsg() == 4326
    ref = gpd.GeoSeries(boxes, crs=crs).to_crs(4326)
    assert (
        frame.union_all().symmetric_difference(ref.union_all()).area < 0.05 * ref.union_all().area
    )


def calibrated_random_unet(img: np.ndarray, seed: int = 0):
    """A random U-Net whose BatchNorm statistics come from the image, so its logits have structure."""
    net, meta = create_model(bands=img.shape[0], classes=1, width=8, depth=4, seed=seed)
    x = (torch.from_numpy(img[None]) - 127.5) / 63.75
    return calibrate_batchnorm(net, [x[..., :512, :512], x[..., 512:, 512:]]), meta


def test_tiled_prediction_matches_whole_scene_forward(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.normal(size=(3, 1024, 1024)), (0, 6, 6))
    img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.float32)
    scene = make_raster("big.tif", data=img.round().astype(np.uint8))
    with rasterio.open(scene) as src:
        pixels = src.read().astype(np.float32)
    net, meta = calibrated_random_unet(img)
    predictor = Predictor((net, meta), device="cpu")
    whole = predictor.forward(pixels[None], np.ones((1, 1024, 1024), bool))[0, 0]
    probs = tmp_path / "p.tif"
    predictor.run(
        scene, probabilities=probs, config=PredictConfig(tile_size=256, overlap=64, batch_size=4)
    )
    with rasterio.open(probs) as src:
        tiled = src.read(1)
    whole_p = 1 / (1 + np.exp(-whole))
    agree = ((whole_p >= 0.5) == (tiled >= 0.5)).mean()
    assert 0.001 < (whole_p >= 0.5).mean() < 0.999  # the mask is not trivial
    assert agree >= 0.999, agree
    assert np.abs(whole_p - tiled).mean() < 1e-3


@pytest.mark.parametrize(("height", "width"), [(1, 1), (30, 70), (100, 63)])
def test_constant_model_and_small_scenes(
    make_raster: MakeRaster, tmp_path: Path, height: int, width: int
) -> None:
    scene = make_raster("s.tif", width=width, height=height)
    net = constant_unet(3, 1.5)
    probs, mask = tmp_path / "p.tif", tmp_path / "m.tif"
    r = predict_raster(
        scene,
        tmp_path / "v.gpkg",
        model=(net, meta_for(net)),
        probabilities=probs,
        mask=mask,
        config=PredictConfig(tile_size=64, overlap=16),
    )
    with rasterio.open(probs) as src:
        assert (src.height, src.width, src.dtypes[0]) == (height, width, "float32")
        np.testing.assert_allclose(src.read(1), 1 / (1 + np.exp(-1.5)), rtol=1e-6)
    with rasterio.open(mask) as src:
        assert (src.read(1) == 1).all() and src.nodata == 255
        assert src.colormap(1)[1][3] == 255
    assert r.features == 1


def test_nodata_is_kept_skipped_and_never_vectorized(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    data = np.full((3, 200, 200), 100, dtype=np.uint8)
    data[:, :, 120:] = 0  # nodata collar covering whole tiles
    scene = make_raster("nd.tif", data=data, nodata=0)
    net = constant_unet(3, 2.0)
    mask, probs = tmp_path / "m.tif", tmp_path / "p.tif"
    r = predict_raster(
        scene,
        tmp_path / "v.fgb",
        model=(net, meta_for(net)),
        mask=mask,
        probabilities=probs,
        config=PredictConfig(tile_size=64, overlap=16, prob_dtype="uint8"),
    )
    assert r.tiles_skipped > 0
    with rasterio.open(mask) as src:
        m = src.read(1)
    assert (m[:, 120:] == 255).all() and (m[:, :120] == 1).all()
    with rasterio.open(probs) as src:
        p = src.read(1)
        assert src.nodata == 255 and src.scales[0] == pytest.approx(1 / 254)
    assert (p[:, 120:] == 255).all() and (p[:, :120] == round(254 / (1 + np.exp(-2.0)))).all()
    frame = gpd.read_file(tmp_path / "v.fgb")
    assert len(frame) == 1
    assert frame.total_bounds[2] == pytest.approx(500000 + 120 * 0.5)


def test_alpha_band_is_the_mask_not_a_band(make_raster: MakeRaster, tmp_path: Path) -> None:
    data = np.full((4, 64, 64), 200, dtype=np.uint8)
    data[3] = 255
    data[3, :, :20] = 0
    scene = make_raster("rgba.tif", data=data, photometric="RGB", alpha="YES")
    net = constant_unet(3, 1.0)
    mask = tmp_path / "m.tif"
    predict_raster(
        scene, mask=mask, model=(net, meta_for(net)), config=PredictConfig(tile_size=64, overlap=16)
    )
    with rasterio.open(mask) as src:
        m = src.read(1)
    assert (m[:, :20] == 255).all() and (m[:, 20:] == 1).all()


def test_band_selection_and_mismatch(make_raster: MakeRaster, tmp_path: Path) -> None:
    scene = make_raster("five.tif", count=5)
    net = constant_unet(3, 1.0)
    model = (net, meta_for(net))
    with pytest.raises(
        BandMismatchError, match=r"model expects 3 bands, five\.tif has 5; pass --bands"
    ):
        predict_raster(scene, tmp_path / "a.gpkg", model=model)
    with pytest.raises(BandMismatchError, match="band 9 does not exist"):
        predict_raster(
            scene, tmp_path / "a.gpkg", model=model, config=PredictConfig(bands=(1, 2, 9))
        )
    r = predict_raster(
        scene,
        tmp_path / "a.gpkg",
        model=model,
        config=PredictConfig(bands=(5, 3, 1), tile_size=64, overlap=16),
    )
    assert r.features == 1
    one = make_raster("one.tif", count=1)
    with pytest.raises(BandMismatchError, match="has 1; use a model trained on this band count"):
        predict_raster(one, tmp_path / "b.gpkg", model=model)


def test_dtype_mismatch(make_raster: MakeRaster, tmp_path: Path) -> None:
    scene = make_raster("u16.tif", dtype="uint16")
    net = constant_unet(3, 1.0)
    with pytest.raises(BandMismatchError, match=r"model expects uint8 pixels, u16.tif is uint16"):
        predict_raster(scene, tmp_path / "a.gpkg", model=(net, meta_for(net)))


def test_a_scene_stretched_model_takes_16_bit_scenes(
    make_raster: MakeRaster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A model that stretches each scene by its own percentiles (the bundled building model)
    # sees a 16-bit scene as it sees the 8-bit one it is an affine copy of: the same mask.
    rng = np.random.default_rng(3)
    data = rng.integers(20, 60, (3, 96, 96)).astype(np.uint8)
    data[0, 20:50, 30:70] = 200
    data[0, 60:90, 10:40] = 180
    byte = make_raster("byte.tif", data=data)
    wide = make_raster("u16.tif", data=data.astype(np.uint16) * 9 + 300, dtype="uint16")
    net = threshold_unet(3)
    meta = meta_for(net)
    meta.normalization = {"mode": "scene", "low": 2.0, "high": 98.0}
    meta.mean, meta.std = [0.5] * 3, [0.25] * 3
    model = (net, meta)
    a = predict_raster(byte, tmp_path / "a.gpkg", model=model, mask=tmp_path / "a.tif")
    with caplog.at_level("WARNING", logger="geounet.prediction.plan"):
        b = predict_raster(wide, tmp_path / "b.gpkg", model=model, mask=tmp_path / "b.tif")
    assert "u16.tif is uint16, the model was trained on uint8" in caplog.text
    with rasterio.open(tmp_path / "a.tif") as ma, rasterio.open(tmp_path / "b.tif") as mb:
        got, want = mb.read(1), ma.read(1)
    assert a.features == b.features == 2 and want.sum() > 0
    assert (got == want).all()


def test_bad_scenes(make_raster: MakeRaster, tmp_path: Path) -> None:
    net = constant_unet(3, 1.0)
    model = (net, meta_for(net))
    out = tmp_path / "o.gpkg"
    with pytest.raises(RasterReadError, match="no such file"):
        predict_raster(tmp_path / "missing.tif", out, model=model)
    with pytest.raises(RasterReadError, match="is a directory"):
        predict_raster(tmp_path, out, model=model)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(RasterReadError, match="empty"):
        predict_raster(tmp_path / "empty.tif", out, model=model)
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(RasterReadError, match="not a readable raster"):
        predict_raster(tmp_path / "text.tif", out, model=model)
    nocrs = make_raster("nocrs.tif", crs=None)
    with pytest.raises(MissingCRSError, match="has no CRS"):
        predict_raster(nocrs, out, model=model)
    assert not out.exists()
    assert list(tmp_path.glob(".*tmp")) == []


def test_truncated_scene_leaves_no_output(make_raster: MakeRaster, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    scene = make_raster(
        "full.tif",
        data=rng.integers(0, 255, (3, 300, 300)).astype(np.uint8),
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )
    raw = scene.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    net = constant_unet(3, 1.0)
    out, probs = tmp_path / "o.gpkg", tmp_path / "p.tif"
    with pytest.raises(RasterReadError, match=r"cut.tif"):
        predict_raster(
            cut,
            out,
            model=(net, meta_for(net)),
            probabilities=probs,
            config=PredictConfig(tile_size=64, overlap=16),
        )
    assert not out.exists() and not probs.exists()
    assert [p.name for p in tmp_path.iterdir() if "geounet" in p.name] == []


def test_existing_output_and_tile_size(make_raster: MakeRaster, tmp_path: Path) -> None:
    scene = make_raster()
    net = constant_unet(3, 1.0)
    out = tmp_path / "o.gpkg"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        predict_raster(
            scene, out, model=(net, meta_for(net)), config=PredictConfig(tile_size=64, overlap=16)
        )
    assert out.read_text() == "keep me"
    with pytest.raises(TilingError, match="not divisible by 4"):
        predict_raster(
            scene,
            tmp_path / "x.gpkg",
            model=(net, meta_for(net)),
            config=PredictConfig(tile_size=30, overlap=4),
        )
    predict_raster(
        scene,
        out,
        model=(net, meta_for(net)),
        config=PredictConfig(tile_size=64, overlap=16, overwrite=True),
    )
    assert len(gpd.read_file(out)) == 1


def test_multiclass_mask_and_probabilities(make_raster: MakeRaster, tmp_path: Path) -> None:
    scene = make_raster(width=80, height=70)
    net = constant_unet(3, 0.0, classes=3)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 2.0, 1.0]))
    meta = meta_for(net, classes=["background", "building", "road"])
    probs, mask = tmp_path / "p.tif", tmp_path / "m.tif"
    predict_raster(
        scene,
        tmp_path / "v.gpkg",
        model=(net, meta),
        probabilities=probs,
        mask=mask,
        config=PredictConfig(tile_size=64, overlap=16),
    )
    with rasterio.open(probs) as src:
        p = src.read()
        assert src.count == 3
        assert src.descriptions == (
            "probability of background",
            "probability of building",
            "probability of road",
        )
    e = np.exp([0.0, 2.0, 1.0])
    np.testing.assert_allclose(p[:, 5, 5], e / e.sum(), rtol=1e-5)
    with rasterio.open(mask) as src:
        assert (src.read(1) == 1).all()
        assert src.tags(1)["CLASS_1"] == "building"
    frame = gpd.read_file(tmp_path / "v.gpkg")
    assert list(frame["class"]) == ["building"]


def test_strip_thread_gives_the_same_outputs_and_leaves_the_model_alone(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.normal(size=(3, 700, 900)), (0, 5, 5))
    img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.float32)
    scene = make_raster("t.tif", data=img.round().astype(np.uint8))
    net, meta = calibrated_random_unet(img[:, :512, :512].repeat(2, axis=1).repeat(2, axis=2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    outputs = {}
    for threaded in (False, True):
        d = tmp_path / str(threaded)
        d.mkdir()
        cfg = PredictConfig(tile_size=128, overlap=32, strip_thread=threaded)
        r = predict_raster(
            scene,
            d / "v.gpkg",
            model=(net, meta),
            mask=d / "m.tif",
            probabilities=d / "p.tif",
            config=cfg,
        )
        with rasterio.open(d / "m.tif") as m, rasterio.open(d / "p.tif") as p:
            outputs[threaded] = (
                m.read(),
                p.read(),
                r.features,
                gpd.read_file(d / "v.gpkg", layer="v"),
            )
        assert r.timings["tail"] > 0 and r.timings["vectorize"] > 0
    (m0, p0, n0, v0), (m1, p1, n1, v1) = outputs[False], outputs[True]
    assert 0.01 < (m0 == 1).mean() < 0.99
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(p0, p1)
    assert n0 == n1 > 3
    assert v0.geometry.geom_equals(v1.geometry).all()
    for (
        k,
        v,
    ) in net.state_dict().items():  # Predictor folded BatchNorm into a copy, not the caller's
        assert torch.equal(v, before[k]), k
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".parquet"])
def test_polygons_stream_to_the_file_and_a_failure_leaves_nothing(
    make_raster: MakeRaster, tmp_path: Path, monkeypatch, suffix: str
) -> None:
    import geounet.prediction.sinks as predict_module
    from geounet.vectors.writer import VectorWriter

    rng = np.random.default_rng(0)
    band = ((rng.random((256, 200)) < 0.3) * 255).astype(np.uint8)  # speckle: many small polygons
    scene = make_raster("speckle.tif", data=np.stack([band, band, band]), width=200, height=256)
    net = threshold_unet(3)
    model = (net, meta_for(net, tile_size=64, overlap=16))
    whole = tmp_path / f"whole{suffix}"
    predict_raster(scene, whole, model=model)
    expected = gpd.read_parquet(whole) if suffix == ".parquet" else gpd.read_file(whole)
    assert len(expected) > 500

    monkeypatch.setattr(predict_module, "WRITE_BATCH", 50)
    sizes: list[int] = []
    write = VectorWriter.write

    def spy(self, frame):
        sizes.append(len(frame))
        write(self, frame)

    monkeypatch.setattr(VectorWriter, "write", spy)
    out = tmp_path / f"streamed{suffix}"
    res = predict_raster(scene, out, model=model)
    assert res.features == len(expected) and len(sizes) > 5 and max(sizes) <= 50
    got = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    assert sorted(got["area_m2"]) == sorted(expected["area_m2"])
    assert got.geometry.union_all().symmetric_difference(expected.geometry.union_all()).area < 1e-6

    # Interrupted after batches were written: no output, no temporary, no scratch file.
    sizes.clear()

    def stop(done: int, total: int) -> None:
        if done > total * 3 // 4:
            raise KeyboardInterrupt

    late = tmp_path / f"late{suffix}"
    with pytest.raises(KeyboardInterrupt):
        predict_raster(scene, late, model=model, progress=stop)
    assert sizes and not late.exists()
    assert [p.name for p in tmp_path.iterdir() if "geounet" in p.name or "batches" in p.name] == []


def test_precision_bf16_runs_the_network_in_bf16_and_keeps_the_mask(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.normal(size=(3, 256, 256)), (0, 5, 5))
    img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.float32)
    scene = make_raster("s.tif", data=img.round().astype(np.uint8))
    net, meta = create_model(bands=3, classes=1, width=8, depth=4, seed=0)
    x = (torch.from_numpy(img[None]) - 127.5) / 63.75
    net = calibrate_batchnorm(net, [x[..., :128, :], x[..., 128:, :]])
    probs = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"{precision}.tif"
        cfg = PredictConfig(tile_size=128, overlap=32, precision=precision)  # type: ignore[arg-type]
        predict_raster(scene, None, model=(net, meta), probabilities=out, config=cfg)
        with rasterio.open(out) as src:
            probs[precision] = src.read(1)
    assert 0.01 < (probs["fp32"] >= 0.5).mean() < 0.99  # not a trivial mask
    diff = np.abs(probs["bf16"] - probs["fp32"])
    assert diff.max() > 0  # bf16 arithmetic really ran...
    assert diff.mean() < 0.02  # ...and is close to float32
    assert ((probs["bf16"] >= 0.5) == (probs["fp32"] >= 0.5)).mean() > 0.98
    # auto on a CPU: bf16 only where the CPU has it natively (emulated elsewhere, and slower)
    assert np.array_equal(probs["auto"], probs["bf16" if cpu_supports_bf16() else "fp32"])


def test_inference_dtype_choices() -> None:
    from geounet.errors import GeounetError
    from geounet.prediction.plan import inference_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype(cpu, "fp32") is None and inference_dtype(cuda, "fp32") is None
    assert (
        inference_dtype(cpu, "bf16") is torch.bfloat16
        and inference_dtype(cuda, "auto") is torch.bfloat16
    )
    assert inference_dtype(cpu, "auto") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(GeounetError, match="unknown precision"):
        inference_dtype(cpu, "fp16")


def test_a_scene_smaller_than_a_tile_gets_a_tile_of_its_own_size(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.normal(size=(3, 200, 150)), (0, 4, 4))
    img = ((img - img.min()) / (img.max() - img.min()) * 255).round().astype(np.uint8)
    scene = make_raster("small.tif", data=img)
    net, meta = create_model(bands=3, classes=1, width=8, depth=4, seed=1)
    x = (torch.from_numpy(img[None, :, :192, :144].astype(np.float32)) - 127.5) / 63.75
    net = calibrate_batchnorm(net, [x])
    predictor = Predictor((net, meta), device="cpu")
    plan = predictor.plan(scene, PredictConfig(tile_size=512, overlap=64))
    assert (plan.tile_size, plan.overlap, len(plan.tiles)) == (208, 64, 1)  # 200 rounded up to 16
    probs = {}
    for tile in (512, 208):
        out = tmp_path / f"p{tile}.tif"
        predictor.run(scene, probabilities=out, config=PredictConfig(tile_size=tile, overlap=64))
        with rasterio.open(out) as src:
            probs[tile] = src.read(1)
    # The same network input either way: no frame of padding up to 512 px.
    np.testing.assert_array_equal(probs[512], probs[208])
    # Resampled scenes fit in model pixels: 400 scene px at 0.15 m are 200 px of a 0.3 m model.
    fine = make_raster(
        "fine.tif",
        data=np.repeat(np.repeat(img, 2, axis=1), 2, axis=2),
        transform=from_origin(500000, 5000000, 0.15, 0.15),
    )
    meta.gsd = 0.3
    plan = Predictor((net, meta), device="cpu").plan(fine, PredictConfig(tile_size=512, overlap=64))
    assert (plan.net_size, plan.tile_size, len(plan.tiles)) == (208, 416, 1)
