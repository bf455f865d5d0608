"""Building outlines squared up: right angles along the dominant orientation, jogs removed."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from conftest import MakeRaster, meta_for, threshold_unet
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import predict_raster
from geounet.vectors.polygons import regularize_polygon


def _corner_angles(poly: shapely.Polygon) -> np.ndarray:
    c = np.asarray(poly.exterior.coords)
    d = np.diff(c, axis=0)
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 90


def _iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.mark.parametrize("angle", [0.0, 20.0, 37.0, 81.0])
def test_a_noisy_l_shape_comes_back_square(angle: float) -> None:
    true = shapely.affinity.rotate(
        shapely.Polygon([(0, 0), (40, 0), (40, 15), (15, 15), (15, 30), (0, 30)]),
        angle,
        origin=(0, 0),
    )
    pts = np.asarray(true.segmentize(1).exterior.coords)
    pts = pts + np.random.default_rng(1).normal(0, 0.4, pts.shape)
    pts[-1] = pts[0]
    noisy = shapely.Polygon(pts).buffer(0)
    out = regularize_polygon(noisy)
    assert out.is_valid and out.geom_type == "Polygon"
    assert len(out.exterior.coords) == 7  # six corners, closed
    edges = _corner_angles(out)
    assert np.ptp(edges) < 1e-6  # every edge along one axis or across it
    assert min(abs(edges[0] - angle % 90), 90 - abs(edges[0] - angle % 90)) < 2.0
    assert _iou(out, true) > 0.92 and _iou(out, true) > _iou(noisy, true) - 0.035


def test_pixel_staircase_and_small_jogs_are_removed() -> None:
    # A 30 x 20 rectangle as pixels, with a one-pixel notch on one side.
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:40] = 1
    mask[10, 20:22] = 0
    poly = shapely.geometry.shape(
        next(iter(__import__("rasterio.features").features.shapes(mask, mask=mask.astype(bool))))[0]
    )
    out = regularize_polygon(poly)
    assert len(out.exterior.coords) == 5
    assert _iou(out, shapely.box(10, 10, 40, 30)) > 0.98


def test_round_and_multipart_shapes_stay_valid() -> None:
    disc = shapely.Point(0, 0).buffer(10)
    out = regularize_polygon(disc)
    assert out.is_valid and _iou(out, disc) > 0.75  # no square forced on a round tank
    two = shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 31, 9)])
    out = regularize_polygon(two)
    assert out.is_valid and out.geom_type == "MultiPolygon" and len(out.geoms) == 2
    with_hole = shapely.box(0, 0, 40, 40).difference(shapely.box(10, 10, 30, 30))
    out = regularize_polygon(with_hole)
    assert out.is_valid and len(out.interiors) == 1 and _iou(out, with_hole) > 0.97
    assert regularize_polygon(shapely.Polygon()).is_empty


def test_predict_regularize_keeps_fields_and_validity(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    t = from_origin(500000, 5000000, 0.5, 0.5)
    rotated = [
        shapely.affinity.rotate(shapely.box(500010 + 30 * k, 4999950, 500030 + 30 * k, 4999965), 25)
        for k in range(3)
    ]
    band = rasterize([(b, 230) for b in rotated], out_shape=(160, 220), transform=t, dtype="uint8")
    scene = make_raster(
        "rot.tif",
        data=np.stack([np.maximum(band, 30), np.full_like(band, 40), np.full_like(band, 90)]),
        transform=t,
    )
    net = threshold_unet(3)
    model = (net, meta_for(net))
    plain = predict_raster(
        scene, tmp_path / "p.gpkg", model=model, config=PredictConfig(device="cpu")
    )
    square = predict_raster(
        scene, tmp_path / "r.gpkg", model=model, config=PredictConfig(device="cpu", regularize=True)
    )
    a, b = (
        gpd.read_file(tmp_path / "p.gpkg", layer="p"),
        gpd.read_file(tmp_path / "r.gpkg", layer="r"),
    )
    assert plain.features == square.features == 3
    assert list(a.columns) == list(b.columns) and {"class", "score", "class_id", "area_m2"} <= set(
        b.columns
    )
    assert b.is_valid.all() and (b["score"] == a["score"]).all()
    for geom, truth in zip(b.geometry, sorted(rotated, key=lambda g: g.bounds[0]), strict=True):
        poly = geom.geoms[0] if geom.geom_type == "MultiPolygon" else geom
        assert len(poly.exterior.coords) == 5  # a rectangle, not a pixel staircase
        assert _iou(poly, truth) > 0.9
    assert sum(len(g.exterior.coords) for g in a.geometry.explode()) > 40  # the staircase


def test_an_outline_too_small_to_square_falls_back() -> None:
    # Three runs only (a triangle-ish blob): nothing to square, the simplified outline stays.
    tri = shapely.Polygon([(0, 0), (6, 0), (3, 5)])
    out = regularize_polygon(tri)
    assert out.is_valid and not out.is_empty and _iou(out, tri) > 0.75


def test_squared_outlines_stay_inside_the_scene() -> None:
    # A rotated roof cut by the scene's left edge: squaring it along its own axes would reach
    # past the edge; the outline is clipped to the scene.
    from rasterio.crs import CRS

    from geounet.vectors.strips import StripVectorizer

    t = from_origin(500000, 5000000, 0.5, 0.5)
    roof = shapely.affinity.rotate(shapely.box(-8, 10, 20, 26), 30)
    mask = rasterize([(roof, 1)], out_shape=(48, 48), dtype="uint8")
    vec = StripVectorizer(t, CRS.from_epsg(32633), ["background", "building"], regularize=True)
    vec.add(0, mask, None)
    frame = vec.finish()
    assert len(frame) == 1 and frame.is_valid.all()
    minx, miny, maxx, maxy = frame.total_bounds
    assert minx >= 500000 and maxy <= 5000000 and maxx <= 500000 + 24 and miny >= 5000000 - 24
