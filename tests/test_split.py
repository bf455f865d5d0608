"""Touching buildings come apart when vectorizing: polygons split at narrow necks, masks cut
along the probability valleys between confident cores."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from conftest import MakeRaster, meta_for, threshold_unet
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import predict_raster
from geounet.training.evaluate import evaluate, match_objects, match_pairs
from geounet.vectors.separate import split_at_valleys, split_necks
from geounet.vectors.strips import StripVectorizer, vectorize_mask

DUMBBELL = shapely.union_all(
    [shapely.box(0, 0, 20, 20), shapely.box(20, 9, 23, 10), shapely.box(23, 0, 40, 18)]
)


def test_two_roofs_joined_by_a_neck_come_apart() -> None:
    pieces = split_necks(DUMBBELL, 3)
    assert len(pieces) == 2
    left, right = sorted(pieces, key=lambda g: g.bounds[0])
    assert all(p.is_valid for p in pieces) and left.intersection(right).area == 0
    # Each piece is its roof, right angles and all: only the neck is lost.
    assert left.symmetric_difference(shapely.box(0, 0, 20, 20)).area <= 3
    assert right.symmetric_difference(shapely.box(23, 0, 40, 18)).area <= 3
    assert DUMBBELL.area - left.area - right.area <= 3


@pytest.mark.parametrize(
    "shape",
    [
        shapely.box(0, 0, 30, 12),
        shapely.Polygon([(0, 0), (40, 0), (40, 15), (15, 15), (15, 30), (0, 30)]),  # an L
        shapely.box(0, 0, 40, 40).difference(shapely.box(10, 10, 30, 30)),  # a courtyard
        shapely.box(0, 0, 4, 30),  # a narrow shed: one core only, or none
    ],
)
def test_shapes_without_a_neck_are_left_alone(shape: shapely.Polygon) -> None:
    assert split_necks(shape, 3) == [shape]


def test_a_wider_neck_needs_a_wider_split() -> None:
    assert len(split_necks(DUMBBELL, 0.5)) == 1  # the 1-unit neck is wider than 0.5
    assert len(split_necks(DUMBBELL, 0)) == 1


def test_strip_vectorizer_splits_across_a_strip_seam() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[2:18, 5:25] = 1
    mask[18:20, 14:15] = 1  # a one-pixel neck that crosses the seam at row 20
    mask[20:36, 5:30] = 1
    score = np.where(mask > 0, 0.8, 0.0).astype(np.float32)
    t = from_origin(500000, 5000000, 0.5, 0.5)
    frames = []
    for split_px in (0.0, 3.0):
        vec = StripVectorizer(
            t, CRS.from_epsg(32633), ["background", "building"], split_px=split_px
        )
        vec.add(0, mask[:20], score[:20])
        vec.add(20, mask[20:], score[20:])
        frames.append(vec.finish())
    plain, split = frames
    assert len(plain) == 1 and len(split) == 2
    assert list(split.columns) == list(plain.columns)
    assert (split["class"] == "building").all() and np.allclose(split["score"], 0.8)
    assert split.is_valid.all() and abs(split.area.sum() - plain.area.sum()) <= 2 * 0.25


def _twin_houses(
    make_raster: MakeRaster, tmp_path: Path
) -> tuple[Path, Path, list[shapely.Polygon]]:
    t = from_origin(500000, 5000000, 0.5, 0.5)
    band = np.full((80, 80), 30, np.uint8)
    band[10:40, 10:30] = 230
    band[10:40, 31:55] = 230
    band[24:26, 30] = 230  # the roofs touch through a 2-pixel bridge (1 m)
    scene = make_raster(
        "twins.tif",
        width=80,
        height=80,
        data=np.stack([band, np.full_like(band, 40), np.full_like(band, 90)]),
        transform=t,
    )
    truth = []
    for c0, c1 in ((10, 30), (31, 55)):
        x0, y0 = t * (c0, 10)
        x1, y1 = t * (c1, 40)
        truth.append(shapely.box(x0, y1, x1, y0))
    labels = tmp_path / "twins.geojson"
    gpd.GeoDataFrame(geometry=truth, crs="EPSG:32633").to_file(labels)
    return scene, labels, truth


def test_predict_and_evaluate_split_touching_houses(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    scene, labels, truth = _twin_houses(make_raster, tmp_path)
    net = threshold_unet(3)
    meta = meta_for(net)
    plain = predict_raster(
        scene, tmp_path / "p.gpkg", model=(net, meta), config=PredictConfig(device="cpu")
    )
    split = predict_raster(
        scene,
        tmp_path / "s.gpkg",
        model=(net, meta),
        config=PredictConfig(device="cpu", split_m=1.5),
    )
    assert plain.features == 1 and split.features == 2
    got = sorted(gpd.read_file(tmp_path / "s.gpkg", layer="s").geometry, key=lambda g: g.bounds[0])
    for g, want in zip(got, truth, strict=True):
        assert g.intersection(want).area / g.union(want).area > 0.9
    # The model's default applies unless the config says otherwise; evaluate follows it too.
    meta.split_m = 1.5
    by_default = predict_raster(
        scene, tmp_path / "d.gpkg", model=(net, meta), config=PredictConfig(device="cpu")
    )
    off = predict_raster(
        scene, tmp_path / "o.gpkg", model=(net, meta), config=PredictConfig(device="cpu", split_m=0)
    )
    assert by_default.features == 2 and off.features == 1
    from geounet.network.checkpoint import save_model

    path = tmp_path / "m.safetensors"
    save_model(net, meta, path)
    rep = evaluate(scene, labels, model=path, config=PredictConfig(device="cpu"))
    rep_off = evaluate(scene, labels, model=path, config=PredictConfig(device="cpu", split_m=0))
    on, plain_obj = rep["object"]["foreground"], rep_off["object"]["foreground"]
    assert (on["tp"], on["fp"], on["fn"]) == (2, 0, 0)
    assert (plain_obj["tp"], plain_obj["fn"]) == (
        1,
        1,
    )  # the joined outline matches the larger house only
    assert rep["pixel"] == rep_off["pixel"]  # pixel figures come from the mask


def _valley() -> tuple[np.ndarray, np.ndarray]:
    """Two roofs side by side, sharing a whole edge: probability 0.95 on each, 0.6 on the two
    columns where they meet (above the 0.5 threshold: one blob, and no neck to split)."""
    prob = np.full((30, 50), 0.05, np.float32)
    prob[5:25, 5:24] = 0.95
    prob[5:25, 26:45] = 0.95
    prob[5:25, 24:26] = 0.6
    return (prob >= 0.5).astype(np.uint8), prob


def test_valley_between_two_cores_is_cut() -> None:
    mask, prob = _valley()
    out = split_at_valleys(mask, prob, 0.8, 16)
    assert not (out > mask).any()  # nothing is added
    assert (mask.astype(int) - out).sum() == 20  # one column of the valley, 20 pixels, is cut
    cut_cols = np.nonzero((mask != out).any(axis=0))[0]
    assert set(cut_cols) <= {24, 25}
    t = from_origin(500000, 5000000, 0.5, 0.5)
    frame = vectorize_mask(out, t, CRS.from_epsg(32633), ["background", "building"])
    assert (
        len(frame) == 2
        and len(vectorize_mask(mask, t, CRS.from_epsg(32633), ["background", "building"])) == 1
    )
    # A valley shallower than the seed level is one core: nothing to cut.
    assert split_at_valleys(mask, prob, 0.55, 16) is mask
    # Cores smaller than the minimum do not count; nodata and background stay as they were.
    assert split_at_valleys(mask, prob, 0.8, 400) is mask
    masked = mask.copy()
    masked[:, :3] = 255
    assert (split_at_valleys(masked, prob, 0.8, 16)[:, :3] == 255).all()


def test_one_confident_blob_is_left_alone() -> None:
    _, prob = _valley()
    prob[5:25, 24:26] = 0.95  # no valley: one core
    assert (
        split_at_valleys((prob >= 0.5).astype(np.uint8), prob, 0.8, 16).sum() == (prob >= 0.5).sum()
    )
    empty = np.zeros((8, 8), np.uint8)
    assert split_at_valleys(empty, np.zeros((8, 8), np.float32), 0.8, 4) is empty


def test_predict_cuts_touching_houses_along_the_valley(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    # threshold_unet: p = sigmoid(4 * (x - 127.5) / 63.75 - 4); roofs at 230 give p = 0.92, the
    # 2-pixel seam at 200 gives p = 0.63: one blob at 0.5, and no neck (they share a whole edge).
    t = from_origin(500000, 5000000, 0.5, 0.5)
    band = np.full((80, 80), 30, np.uint8)
    band[10:40, 10:30] = 230
    band[10:40, 32:55] = 230
    band[10:40, 30:32] = 200
    scene = make_raster(
        "seam.tif",
        width=80,
        height=80,
        data=np.stack([band, np.full_like(band, 40), np.full_like(band, 90)]),
        transform=t,
    )
    truth = [
        shapely.box(*(t * (10, 40)), *(t * (31, 10))),
        shapely.box(*(t * (31, 40)), *(t * (55, 10))),
    ]
    labels = tmp_path / "seam.geojson"
    gpd.GeoDataFrame(geometry=truth, crs="EPSG:32633").to_file(labels)
    net = threshold_unet(3)
    meta = meta_for(net)
    kw = {"device": "cpu", "split_m": 1.5}
    plain = predict_raster(
        scene, tmp_path / "p.gpkg", model=(net, meta), config=PredictConfig(**kw)
    )  # type: ignore[arg-type]
    cut = predict_raster(
        scene,
        tmp_path / "c.gpkg",
        mask=tmp_path / "c.tif",
        model=(net, meta),
        config=PredictConfig(split_seeds=0.8, **kw),
    )  # type: ignore[arg-type]
    assert plain.features == 1 and cut.features == 2  # the neck split alone cannot part them
    got = sorted(gpd.read_file(tmp_path / "c.gpkg", layer="c").geometry, key=lambda g: g.bounds[0])
    for g, want in zip(got, truth, strict=True):
        assert g.intersection(want).area / g.union(want).area > 0.9
    import rasterio

    with rasterio.open(tmp_path / "c.tif") as src:  # the mask agrees with the polygons
        m = src.read(1)
    assert (m[10:40, 30:32] == 0).any(axis=1).all() and (m[10:40, 10:30] == 1).all()
    # The model's default applies unless the run says otherwise, and evaluate follows it.
    from geounet.network.checkpoint import save_model

    meta.split_seeds = 0.8
    path = tmp_path / "m.safetensors"
    save_model(net, meta, path)
    on = evaluate(scene, labels, model=path, config=PredictConfig(**kw))["object"]["foreground"]  # type: ignore[arg-type]
    off = evaluate(scene, labels, model=path, config=PredictConfig(split_seeds=0, **kw))["object"][
        "foreground"
    ]  # type: ignore[arg-type]
    assert (on["tp"], on["fp"], on["fn"]) == (2, 0, 0) and off["tp"] <= 1
    from click.testing import CliRunner

    from geounet.cli.main import cli

    counts = []
    for extra in ([], ["--split-seeds", "0"]):
        out = tmp_path / f"cli{len(extra)}.geojson"
        r = CliRunner().invoke(
            cli, ["predict", str(scene), "-o", str(out), "-m", str(path), "--device", "cpu", *extra]
        )
        assert r.exit_code == 0, r.output
        counts.append(len(gpd.read_file(out)))
    assert counts == [2, 1]


def test_object_matching_is_one_to_one_best_first_and_knows_each_best_iou() -> None:
    truth = [shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)]
    predicted = [
        shapely.box(0, 0, 2.2, 1),  # both neighbours joined: IoU 1/2.2 with each, below 0.5
        shapely.box(0, 0, 1, 1),  # the first exactly
        shapely.box(1, 0, 2, 1.2),  # the second at IoU 1/1.2
        shapely.box(1, 0, 2, 1.5),  # the second again at 1/1.5: matched already, so false
        shapely.box(5, 5, 6, 6),  # nothing near
    ]
    matches, best = match_pairs(predicted, truth)
    assert [(i, j) for i, j, _ in matches] == [(1, 0), (2, 1)]
    np.testing.assert_allclose([iou for _, _, iou in matches], [1.0, 1 / 1.2])
    np.testing.assert_allclose(best, [1 / 2.2, 1.0, 1 / 1.2, 1 / 1.5, 0.0])
    counts = match_objects(predicted, truth)
    assert (counts["tp"], counts["fp"], counts["fn"]) == (2, 3, 0)
    assert counts["mean_iou"] == pytest.approx((1.0 + 1 / 1.2) / 2)
