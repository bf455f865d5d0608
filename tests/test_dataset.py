"""Training windows: the split that fits, augmentations that keep labels aligned, normalization."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import BUILDINGS_RGB, MakeRaster, requires_buildings_rgb
from rasterio.transform import from_origin

from geounet.errors import GeounetError
from geounet.geodata import normalize
from geounet.geodata.raster import open_scene, pixel_size_m
from geounet.labels.vector import read_labels
from geounet.training.dataset import (
    IGNORE_INDEX,
    Augment,
    ImageEntry,
    Sample,
    SpatialSplit,
    WindowDataset,
    fit_normalization,
    plan_epoch,
)


def _entries(paths: list[Path], labels_path: Path) -> list[ImageEntry]:
    labels = read_labels(labels_path)
    out = []
    for p in paths:
        scene = open_scene(p)
        out.append(ImageEntry(scene, scene.data_bands, labels.for_scene(scene), []))
    return out


def _square_scene(
    make_raster: MakeRaster,
    tmp_path: Path,
    *,
    size: int = 768,
    name: str = "s.tif",
    res: float = 0.5,
) -> tuple[Path, Path]:
    """A scene with a few bright squares (labelled) on a dark ground."""
    data = np.full((3, size, size), 40, np.uint8)
    t = from_origin(500000, 5000000, res, res)
    boxes = []
    for k, (r, c) in enumerate([(0.2, 0.2), (0.6, 0.3), (0.35, 0.7), (0.8, 0.8)]):
        r0, c0, w = int(r * size), int(c * size), max(4, size // 12)
        data[:, r0 : r0 + w, c0 : c0 + w] = 220 - 10 * k
        x0, y0 = t * (c0, r0)
        boxes.append(shapely.box(x0, y0 - w * res, x0 + w * res, y0))
    path = make_raster(name, data=data, transform=t)
    labels = tmp_path / f"{Path(name).stem}.geojson"
    gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32633").to_file(labels)
    return path, labels


def _assert_no_leak(split: SpatialSplit, plan: list[Sample]) -> None:
    """No training window comes within the split's gap of a validation area (map coordinates)."""
    for s in plan:
        e = split.entries[s.image]
        size = s.size or split.tile_size
        rect = e.window_rect(s.row, s.col, size).expand(
            split.gap * e.scale * max(e.scene.res) * 0.99
        )
        for other in split.entries:
            if other.scene.crs != e.scene.crs:
                continue
            for w in other.val_blocks:
                v = other.window_rect(int(w.row_off), int(w.col_off), int(w.height), int(w.width))
                assert not rect.intersects(v), (s, w)


def test_one_768_scene_at_tile_256_gets_a_split(make_raster: MakeRaster, tmp_path: Path) -> None:
    path, labels = _square_scene(make_raster, tmp_path)
    entries = _entries([path], labels)
    split = SpatialSplit(entries, tile_size=256, val_fraction=0.2, seed=0)
    assert split.kind in {"blocks", "band"} and split.description.startswith("validation:")
    assert split.val_windows(100, 0)
    plan = plan_epoch(split, samples=200, epoch=0, seed=0)
    assert len(plan) == 200
    _assert_no_leak(split, plan)
    assert 0.05 <= split.val_share() <= 0.4


def test_several_images_give_whole_image_validation(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    paths = []
    labels = None
    for k in range(5):  # five images 1 km apart
        data = np.random.default_rng(k).integers(0, 200, (3, 128, 128)).astype(np.uint8)
        paths.append(
            make_raster(
                f"i{k}.tif", data=data, transform=from_origin(500000 + 1000 * k, 5000000, 0.5, 0.5)
            )
        )
    labels = tmp_path / "l.geojson"
    gpd.GeoDataFrame(
        geometry=[
            shapely.box(500000 + 1000 * k + 10, 4999970, 500000 + 1000 * k + 20, 4999980)
            for k in range(5)
        ],
        crs="EPSG:32633",
    ).to_file(labels)
    entries = _entries(paths, labels)
    split = SpatialSplit(entries, tile_size=64, val_fraction=0.2, seed=0)
    assert split.kind == "images"
    assert sum(e.all_val for e in entries) == 1
    assert "1 of 5 images" in split.description
    plan = plan_epoch(split, samples=100, epoch=0, seed=0)
    assert all(not entries[s.image].all_val for s in plan)


def test_two_images_of_the_same_place_never_leak(make_raster: MakeRaster, tmp_path: Path) -> None:
    # Two acquisitions of the same ground: validation areas of one exclude the other's windows.
    path_a, labels = _square_scene(make_raster, tmp_path, size=512, name="a.tif")
    path_b, _ = _square_scene(make_raster, tmp_path, size=512, name="b.tif")
    entries = _entries([path_a, path_b], labels)
    split = SpatialSplit(entries, tile_size=128, val_fraction=0.2, seed=3)
    for epoch in range(3):
        _assert_no_leak(split, plan_epoch(split, samples=150, epoch=epoch, seed=3))


def test_explicit_val_images_covering_the_training_image_are_refused(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    path_a, labels = _square_scene(make_raster, tmp_path, size=256, name="a.tif")
    path_b, _ = _square_scene(make_raster, tmp_path, size=256, name="b.tif")
    with pytest.raises(GeounetError, match="val-images"):
        SpatialSplit(
            _entries([path_a, path_b], labels),
            tile_size=64,
            val_fraction=0.2,
            seed=0,
            val_images=[1],
        )


def test_an_image_smaller_than_a_tile_is_refused_only_when_nothing_fits(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    path, labels = _square_scene(make_raster, tmp_path, size=1)
    with pytest.raises(GeounetError, match="cannot split"):
        SpatialSplit(_entries([path], labels), tile_size=64, val_fraction=0.2, seed=0)


@requires_buildings_rgb
def test_a_real_438_x_406_image_at_tile_128_gets_a_split() -> None:
    path = BUILDINGS_RGB / "rio" / "rio_50.tif"
    entries = _entries([path], BUILDINGS_RGB / "rio" / "buildings.geojson")
    assert (entries[0].scene.width, entries[0].scene.height) == (438, 406)
    split = SpatialSplit(entries, tile_size=128, val_fraction=0.2, seed=0)
    plan = plan_epoch(split, samples=100, epoch=0, seed=0)
    _assert_no_leak(split, plan)
    assert split.val_windows(50, 0)


def _bright(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    grey = img.mean(axis=0)
    return valid & (grey > grey[valid].mean())


@pytest.mark.parametrize(
    "rot,flip,size",
    [
        (0, False, 0),
        (1, False, 0),
        (2, True, 0),
        (3, True, 0),
        (0, False, 96),
        (1, True, 40),
        (3, False, 80),
    ],
)
def test_augmentations_move_labels_with_the_image(
    make_raster: MakeRaster, tmp_path: Path, rot: int, flip: bool, size: int
) -> None:
    # One labelled square, off centre and asymmetric in the window: wherever rotation, mirror
    # and resampling move it, the label must cover the same pixels as the bright image.
    data = np.full((3, 64, 64), 30, np.uint8)
    data[:, 10:26, 36:58] = 230
    t = from_origin(500000, 5000000, 1.0, 1.0)
    path = make_raster("sq.tif", data=data, transform=t)
    labels = tmp_path / "sq.geojson"
    gpd.GeoDataFrame(
        geometry=[shapely.box(500036, 4999974, 500058, 4999990)], crs="EPSG:32633"
    ).to_file(labels)
    entries = _entries([path], labels)
    entries[0].lo, entries[0].hi = np.zeros(3), np.full(3, 255.0)
    ds = WindowDataset(
        entries,
        [Sample(0, 0, 0, rot, flip, size, aug=7)],
        tile_size=64,
        mean=[0, 0, 0],
        std=[1, 1, 1],
        augment=Augment(colour=True, noise=False),
    )
    img, target = (t.numpy() for t in ds[0])
    assert img.shape == (3, 64, 64) and target.shape == (64, 64)
    bright = _bright(img, target != IGNORE_INDEX)
    label = target == 1
    iou = (bright & label).sum() / (bright | label).sum()
    assert iou > (0.9 if not size else 0.7), iou  # resampling softens the edges by about a pixel
    # Where the square went: the same transform applied to the untouched label.
    expected = np.zeros((64, 64), bool)
    expected[10:26, 36:58] = True
    src = size or 64
    if src != 64:
        big = np.zeros((src, src), bool)
        big[: min(src, 64), : min(src, 64)] = expected[: min(src, 64), : min(src, 64)]
        idx = np.minimum(((np.arange(64) + 0.5) * src / 64).astype(int), src - 1)
        expected = big[np.ix_(idx, idx)]
    expected = np.rot90(expected, rot)
    if flip:
        expected = expected[:, ::-1]
    assert (label == expected).mean() > 0.995
    if size > 64:  # the window overhangs the scene: padding is ignored, never background
        assert (target == IGNORE_INDEX).any()


def test_photometric_augmentation_changes_values_not_labels(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    path, labels = _square_scene(make_raster, tmp_path, size=256)
    entries = _entries([path], labels)
    plain = WindowDataset(entries, [Sample(0, 0, 0)], tile_size=128, mean=[0, 0, 0], std=[1, 1, 1])
    n = 40
    plan = [Sample(0, 0, 0, aug=k) for k in range(1, n + 1)]
    jittered = WindowDataset(
        entries, plan, tile_size=128, mean=[0, 0, 0], std=[1, 1, 1], augment=Augment()
    )
    colour_only = WindowDataset(
        entries, plan, tile_size=128, mean=[0, 0, 0], std=[1, 1, 1], augment=Augment(noise=False)
    )
    x0, y0 = plain[0]
    changed = coloured = 0
    for k in range(n):
        x, y = jittered[k]
        assert (y == y0).all()
        changed += int(not np.allclose(x.numpy(), x0.numpy()))
        coloured += int(not np.allclose(colour_only[k][0].numpy(), x0.numpy()))
    # Colour on about half the windows (COLOUR_SHARE), blur or noise on 2 in 5 of all.
    assert 0.3 * n <= coloured <= 0.7 * n
    assert coloured < changed < n


def test_scale_jitter_plans_windows_of_other_sizes(make_raster: MakeRaster, tmp_path: Path) -> None:
    path, labels = _square_scene(make_raster, tmp_path, size=512)
    split = SpatialSplit(_entries([path], labels), tile_size=128, val_fraction=0.2, seed=0)
    sizes = {
        s.size or 128
        for s in plan_epoch(split, samples=200, epoch=0, seed=0, augment=Augment(scale=1.5))
    }
    assert min(sizes) < 100 and max(sizes) > 160
    assert {
        s.size for s in plan_epoch(split, samples=50, epoch=0, seed=0, augment=Augment(scale=1.0))
    } == {0}


def test_augment_parse() -> None:
    assert Augment.parse("flip,scale,colour,noise") == Augment()
    assert Augment.parse("none").names == []
    assert Augment.parse("flip,color").names == ["flip", "colour"]
    with pytest.raises(GeounetError, match="unknown augmentation"):
        Augment.parse("flip,warp")


def test_scene_normalization_is_invariant_to_gain_and_offset(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    # The same ground seen by a brighter, higher-contrast sensor (16-bit) reaches the network
    # with the same values: the stretch is each scene's own percentiles.
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, (3, 300, 300)).astype(np.float64)
    a = make_raster("a.tif", data=base.astype(np.uint16))
    b = make_raster("b.tif", data=(base * 7 + 300).astype(np.uint16))
    norm = {"mode": "scene", "low": 2.0, "high": 98.0}
    values = []
    for p in (a, b):
        scene = open_scene(p)
        with rasterio.open(p) as src:
            offset, scale = normalize.scene_scaling(
                norm, [0.5] * 3, [0.25] * 3, src, scene, (1, 2, 3)
            )
            values.append(
                (src.read().astype(np.float32) - offset[:, None, None]) / scale[:, None, None]
            )
    np.testing.assert_allclose(values[0], values[1], atol=1e-4)


def test_fit_normalization_records_and_standardizes(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    path, labels = _square_scene(make_raster, tmp_path, size=256)
    entries = _entries([path], labels)
    record, mean, std = fit_normalization(entries, "dataset", 2.0, 98.0)
    assert record["mode"] == "dataset" and len(record["lo"]) == 3
    normalize.check(record, 3)
    assert entries[0].lo is not None and all(0 <= m <= 1 for m in mean) and all(s > 0 for s in std)
    record, _, _ = fit_normalization(entries, "scene", 2.0, 98.0)
    assert "lo" not in record
    with pytest.raises(GeounetError):
        normalize.check({"mode": "nope", "low": 2, "high": 98}, 3)


@requires_buildings_rgb
def test_pixel_size_in_metres_for_geographic_and_projected_scenes() -> None:
    assert pixel_size_m(open_scene(BUILDINGS_RGB / "inria" / "austin1_0.tif")) == pytest.approx(0.3)
    # Rio: 4.49e-6 degrees at 23 S, about half a metre.
    assert pixel_size_m(open_scene(BUILDINGS_RGB / "rio" / "rio_50.tif")) == pytest.approx(
        0.48, abs=0.03
    )
