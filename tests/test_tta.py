"""Test-time augmentation: the mean of the logits over the 8 symmetries of the square."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from click.testing import CliRunner
from conftest import MakeRaster
from scipy import ndimage

from geounet.cli.main import cli
from geounet.network.checkpoint import create_model
from geounet.network.unet import UNet, calibrate_batchnorm
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import Predictor, predict_raster
from geounet.prediction.tta import TTA_VARIANTS, dihedral, undo_dihedral

Array = np.ndarray
# The 8 symmetries of the square on the last two axes, as (transform, inverse), written out with
# numpy independently of geounet's dihedral()/undo_dihedral().
D4: list[tuple[Callable[[Array], Array], Callable[[Array], Array]]] = [
    (lambda a: a, lambda a: a),
    (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1))),
    (lambda a: np.rot90(a, 2, axes=(-2, -1)), lambda a: np.rot90(a, 2, axes=(-2, -1))),
    (lambda a: np.rot90(a, 3, axes=(-2, -1)), lambda a: np.rot90(a, 1, axes=(-2, -1))),
    (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),  # mirror left-right
    (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),  # mirror top-bottom
    (lambda a: np.swapaxes(a, -2, -1), lambda a: np.swapaxes(a, -2, -1)),  # transpose
    (
        lambda a: np.swapaxes(a, -2, -1)[..., ::-1, ::-1],
        lambda a: np.swapaxes(a, -2, -1)[..., ::-1, ::-1],
    ),  # anti-transpose
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; more threads only fight over a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_image(shape: tuple[int, ...], seed: int) -> Array:
    """Smooth random uint8-range float32 pixels (bands, rows, cols)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=shape), (0,) * (len(shape) - 2) + (3, 3))
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.float32)


def random_unet(seed: int = 0, *, symmetric: bool = False) -> tuple[UNet, object]:
    """A seeded width-8 U-Net with calibrated BatchNorm; ``symmetric``: every kernel D4-symmetric.

    A convolution whose kernels are each the mean of their 8 transforms commutes with rotating and
    mirroring a square input (zero padding is symmetric too), and so do 2x2 max pooling, the 2x2
    stride-2 transposed convolutions (their symmetric kernels are constant) and BatchNorm: the
    whole network is then D4-equivariant, ``net(t(x)) == t(net(x))``.
    """
    net, meta = create_model(
        bands=3, classes=1, width=8, depth=3, seed=seed, tile_size=64, overlap=16
    )
    if symmetric:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                    w = m.weight.numpy()
                    m.weight.copy_(torch.from_numpy(np.mean([t(w) for t, _ in D4], axis=0).copy()))
    x = (torch.from_numpy(smooth_image((2, 3, 64, 64), seed + 1)) - 127.5) / 63.75
    return calibrate_batchnorm(net, [x]), meta


def test_dihedral_is_the_eight_symmetries_and_undo_inverts_it() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    got = [dihedral(x, k).numpy() for k in range(TTA_VARIANTS)]
    want = [t(x.numpy()) for t, _ in D4]
    # the same 8 arrays, all different, identity first
    assert len({a.tobytes() for a in got}) == TTA_VARIANTS
    assert {a.tobytes() for a in got} == {np.ascontiguousarray(a).tobytes() for a in want}
    np.testing.assert_array_equal(got[0], x.numpy())
    for k in range(TTA_VARIANTS):
        np.testing.assert_array_equal(undo_dihedral(dihedral(x, k), k).numpy(), x.numpy())
    wide = torch.zeros(1, 2, 6)  # non-square: quarter turns swap the axes, undo swaps them back
    assert dihedral(wide, 1).shape == (1, 6, 2) and undo_dihedral(dihedral(wide, 5), 5).shape == (
        1,
        2,
        6,
    )


@pytest.mark.parametrize("max_batch", [None, 1, 2, 3, 5, 100])
def test_tta_logits_are_the_mean_of_the_eight_variants_turned_back(max_batch: int | None) -> None:
    """Known answer: for every grouping of the variants into passes."""
    predictor = Predictor(random_unet(0), device="cpu", precision="fp32")
    batch = smooth_image((3, 3, 64, 64), 7)
    valid = np.ones((3, 64, 64), bool)
    valid[1, :20, 40:] = False  # nodata in one tile: still zeroed before the transforms
    batch[1, :, :20, 40:] = 0
    want = np.mean(
        [inv(predictor.forward(t(batch).copy(), t(valid).copy())) for t, inv in D4], axis=0
    )
    got = predictor.forward(batch, valid, tta=True, max_batch=max_batch)
    assert got.shape == (3, 1, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    plain = predictor.forward(batch, valid)
    assert np.abs(got - plain).max() > 0.05  # a random network is not equivariant: TTA changes it


def test_tta_of_a_non_square_input_is_the_mean_too() -> None:
    predictor = Predictor(random_unet(1), device="cpu", precision="fp32")
    batch = smooth_image((1, 3, 32, 64), 8)
    valid = np.ones((1, 32, 64), bool)
    want = np.mean(
        [inv(predictor.forward(t(batch).copy(), t(valid).copy())) for t, inv in D4], axis=0
    )
    for max_batch in (None, 1, 3):
        np.testing.assert_allclose(
            predictor.forward(batch, valid, tta=True, max_batch=max_batch),
            want,
            rtol=1e-5,
            atol=1e-5,
        )


def test_tta_equals_plain_prediction_for_an_equivariant_network() -> None:
    predictor = Predictor(random_unet(2, symmetric=True), device="cpu", precision="fp32")
    tile = smooth_image((1, 3, 64, 64), 9)
    valid = np.ones((1, 64, 64), bool)
    plain = predictor.forward(tile, valid)
    # the symmetrized network really is equivariant (so the test below means something) ...
    turned = predictor.forward(np.rot90(tile, 1, axes=(-2, -1)).copy(), valid)
    np.testing.assert_allclose(turned, np.rot90(plain, 1, axes=(-2, -1)), atol=1e-4)
    assert plain.std() > 0.1  # ... and not a constant
    # a tile symmetric under all 8 transforms: TTA equals the plain prediction
    sym = np.mean([t(tile) for t, _ in D4], axis=0).astype(np.float32)
    for t, _ in D4:
        np.testing.assert_allclose(t(sym), sym, atol=1e-4)
    np.testing.assert_allclose(
        predictor.forward(sym, valid, tta=True), predictor.forward(sym, valid), atol=1e-4
    )
    # any tile, as the network is equivariant
    np.testing.assert_allclose(predictor.forward(tile, valid, tta=True), plain, atol=1e-4)


def test_tta_through_the_pipeline_keeps_nodata_and_matches_an_equivariant_plain_run(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    data = smooth_image((3, 150, 200), 10).round().astype(np.uint8)
    data[:, :, 136:] = 0  # a nodata collar that covers the last column of tiles
    data[:, 60:70, 20:30] = 0  # and a hole inside one
    scene = make_raster("s.tif", data=data, nodata=0)
    with rasterio.open(scene) as src:
        nodata = src.dataset_mask() == 0
    assert 0.2 < nodata.mean() < 0.4
    probs = {}
    for tta in (False, True):
        for name, model in (("sym", random_unet(3, symmetric=True)), ("rand", random_unet(3))):
            p = tmp_path / f"{name}-{tta}.tif"
            r = predict_raster(
                scene,
                tmp_path / f"{name}-{tta}.gpkg",
                model=model,
                probabilities=p,
                mask=tmp_path / f"{name}-{tta}.m.tif",
                config=PredictConfig(
                    tile_size=64, overlap=16, batch_size=2, tta=tta, precision="fp32"
                ),
            )
            assert r.tiles_skipped > 0
            with rasterio.open(p) as src:
                probs[name, tta] = src.read(1)
            with rasterio.open(tmp_path / f"{name}-{tta}.m.tif") as src:
                mask = src.read(1)
            assert (mask[nodata] == 255).all() and (mask[~nodata] != 255).all()
            assert (
                np.isnan(probs[name, tta][nodata]).all()
                and not np.isnan(probs[name, tta][~nodata]).any()
            )
    np.testing.assert_allclose(probs["sym", True], probs["sym", False], atol=1e-5)
    assert np.nanmax(np.abs(probs["rand", True] - probs["rand", False])) > 0.01


def test_tta_off_is_the_plain_forward_bit_for_bit(make_raster: MakeRaster, tmp_path: Path) -> None:
    """Without TTA nothing changes: the logits are the network's on the normalized tiles, exactly."""
    net, meta = random_unet(4)
    predictor = Predictor((net, meta), device="cpu", precision="fp32")
    batch = smooth_image((2, 3, 64, 64), 11)
    valid = np.ones((2, 64, 64), bool)
    valid[0, 50:, :] = False
    mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (torch.from_numpy(batch) - mean) / std * torch.from_numpy(valid).unsqueeze(1)
    with torch.inference_mode():
        direct = predictor.net(x.contiguous(memory_format=torch.channels_last)).contiguous().numpy()
    np.testing.assert_array_equal(predictor.forward(batch, valid), direct)
    np.testing.assert_array_equal(predictor.forward(batch, valid, tta=False, max_batch=1), direct)

    scene = make_raster("s.tif", data=smooth_image((3, 120, 100), 12).round().astype(np.uint8))
    out = {}
    for name, cfg in (
        ("default", PredictConfig(tile_size=64, overlap=16, precision="fp32")),
        ("off", PredictConfig(tile_size=64, overlap=16, tta=False, precision="fp32")),
        ("on", PredictConfig(tile_size=64, overlap=16, tta=True, precision="fp32")),
    ):
        predict_raster(scene, probabilities=tmp_path / f"{name}.tif", model=(net, meta), config=cfg)
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            out[name] = src.read()
    np.testing.assert_array_equal(out["default"], out["off"])
    assert not np.array_equal(out["default"], out["on"])


def test_predict_and_evaluate_cli_tta(
    make_raster: MakeRaster, model_file: Path, tmp_path: Path
) -> None:
    data = np.zeros((3, 150, 130), dtype=np.uint8)
    data[0, 20:60, 30:70] = 255
    data[0, 90:140, 10:50] = 255
    scene = make_raster(data=data)
    runner = CliRunner()
    outputs = {}
    for flag in ([], ["--tta"]):
        d = tmp_path / ("tta" if flag else "plain")
        d.mkdir()
        r = runner.invoke(
            cli,
            [
                "predict",
                str(scene),
                "-o",
                str(d / "b.gpkg"),
                "-m",
                str(model_file),
                "--probabilities",
                str(d / "p.tif"),
                "--mask",
                str(d / "m.tif"),
                *flag,
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.stderr
        assert "2 polygons from" in r.stderr and "Traceback" not in r.stderr
        assert r.stdout.split() == [str(d / "b.gpkg"), str(d / "p.tif"), str(d / "m.tif")]
        with rasterio.open(d / "p.tif") as p, rasterio.open(d / "m.tif") as m:
            outputs[bool(flag)] = (p.read(1), m.read(1))
        frame = gpd.read_file(d / "b.gpkg", layer="b")
        assert len(frame) == 2 and frame.is_valid.all() and frame.crs.to_epsg() == 32633
    (p0, m0), (p1, m1) = outputs[False], outputs[True]
    expected = np.zeros((150, 130), np.uint8)
    expected[20:60, 30:70] = expected[90:140, 10:50] = 1
    np.testing.assert_array_equal(m1, expected)
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_allclose(p1, p0, atol=1e-6)

    with rasterio.open(scene) as src:
        t = src.transform
    boxes = [
        shapely.box(*rasterio.windows.bounds(rasterio.windows.Window(c, r, w, h), t))
        for r, c, h, w in ((20, 30, 40, 40), (90, 10, 50, 40))
    ]
    labels = tmp_path / "labels.geojson"
    gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32633").to_file(labels)
    r = runner.invoke(
        cli,
        [
            "evaluate",
            str(scene),
            "--labels",
            str(labels),
            "-m",
            str(model_file),
            "--tta",
            "--json",
            str(tmp_path / "r.json"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pixel"]["foreground"]["iou"] == 1.0  # labels without a class field: "foreground"
    assert report["object"]["foreground"]["f1"] == 1.0 and report["object"]["foreground"]["tp"] == 2
