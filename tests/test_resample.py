"""Prediction at the model's pixel size: a scene 4x finer gives the same buildings, on its own grid."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import MakeRaster, meta_for, threshold_unet
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geounet.geodata.raster import open_scene
from geounet.prediction.config import PredictConfig
from geounet.prediction.plan import resample_factor
from geounet.prediction.predictor import predict_raster

BOXES = [
    shapely.box(500006.0, 4999970.0, 500018.0, 4999988.0),
    shapely.box(500030.0, 4999950.0, 500045.0, 4999962.0),
    shapely.box(500050.1, 4999976.0, 500062.7, 4999991.2),
]


def _scene(make_raster: MakeRaster, name: str, res: float) -> Path:
    size = round(72 / res)
    t = from_origin(500000, 5000000, res, res)
    band = rasterize([(b, 230) for b in BOXES], out_shape=(size, size), transform=t, dtype="uint8")
    data = np.stack([np.maximum(band, 30), np.full_like(band, 40), np.full_like(band, 90)])
    return make_raster(name, data=data, transform=t)


def test_a_4x_finer_scene_gives_polygons_within_one_coarse_pixel(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    coarse = _scene(make_raster, "coarse.tif", 0.3)
    fine = _scene(make_raster, "fine.tif", 0.075)
    net = threshold_unet(3, bias=-0.2)  # foreground above 131 of the 30..230 step: its middle
    meta = meta_for(net, tile_size=64, overlap=16)
    meta.gsd = 0.3
    model = (net, meta)
    assert resample_factor(meta, open_scene(coarse)) == 1.0
    assert resample_factor(meta, open_scene(fine)) == pytest.approx(4.0)
    assert resample_factor(meta, open_scene(fine), "off") == 1.0
    cfg = PredictConfig(device="cpu")
    a = predict_raster(coarse, tmp_path / "a.gpkg", model=model, config=cfg)
    b = predict_raster(fine, tmp_path / "b.gpkg", model=model, mask=tmp_path / "b.tif", config=cfg)
    assert a.resample_factor == 1.0 and b.resample_factor == pytest.approx(4.0)
    # The fine scene ran on 4x larger windows of its own pixels: far fewer tiles than at 1:1.
    assert b.tiles <= 25
    pa, pb = gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")
    assert len(pa) == len(pb) == len(BOXES)
    for box in BOXES:
        ga = pa[pa.intersects(box)].geometry.iloc[0]
        gb = pb[pb.intersects(box)].geometry.iloc[0]
        assert ga.hausdorff_distance(box) <= 0.3 * 1.0001
        assert gb.hausdorff_distance(ga) <= 0.3 * 1.0001
        assert gb.hausdorff_distance(box) <= 0.3 * 1.0001
    # The mask is on the fine scene's own grid.
    with rasterio.open(fine) as s, rasterio.open(tmp_path / "b.tif") as m:
        assert (m.width, m.height, m.transform, m.crs) == (s.width, s.height, s.transform, s.crs)
        painted = s.read(1) > 100
        got = m.read(1) == 1
        assert (painted == got).mean() > 0.99


def test_resample_off_runs_on_the_scene_pixels(make_raster: MakeRaster, tmp_path: Path) -> None:
    fine = _scene(make_raster, "fine.tif", 0.075)
    net = threshold_unet(3, bias=-0.2)  # foreground above 131 of the 30..230 step: its middle
    meta = meta_for(net, tile_size=64, overlap=16)
    meta.gsd = 0.3
    r = predict_raster(
        fine,
        tmp_path / "b.gpkg",
        model=(net, meta),
        config=PredictConfig(device="cpu", resample="off"),
    )
    assert r.resample_factor == 1.0 and r.tiles > 100


def test_web_mercator_pixels_are_measured_on_the_ground(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    # Imagery exported from web map tiles is in EPSG:3857, whose grid metres at 52.5 deg N are
    # 1/1.643 ground metres: 0.3 m pixels there are 0.493 grid metres. The same buildings on a
    # UTM grid at 0.3 m and on that Mercator grid give the same prediction: no resampling (the
    # pixels are the model's size), the same areas in square metres, the same polygons.
    import pyproj

    from geounet.geodata.raster import pixel_size_m, projection_scale

    utm = _scene(make_raster, "utm.tif", 0.3)
    with rasterio.open(utm) as src:
        data = src.read()
    x0, y0 = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(13.4, 52.5)
    k = float(projection_scale(rasterio.crs.CRS.from_epsg(3857), x0, y0)[0])
    assert k == pytest.approx(1 / np.cos(np.radians(52.5)), rel=2e-3)
    merc = make_raster(
        "merc.tif", data=data, crs="EPSG:3857", transform=from_origin(x0, y0, 0.3 * k, 0.3 * k)
    )
    assert pixel_size_m(open_scene(merc)) == pytest.approx(0.3, rel=2e-3)
    assert pixel_size_m(open_scene(utm)) == pytest.approx(0.3)
    net = threshold_unet(3, bias=-0.2)
    meta = meta_for(net, tile_size=64, overlap=16)
    meta.gsd = 0.3
    assert resample_factor(meta, open_scene(merc)) == 1.0
    cfg = PredictConfig(device="cpu")
    a = predict_raster(utm, tmp_path / "a.gpkg", model=(net, meta), config=cfg)
    b = predict_raster(merc, tmp_path / "b.gpkg", model=(net, meta), config=cfg)
    assert a.resample_factor == b.resample_factor == 1.0
    pa, pb = gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")
    ground = sorted(b.area for b in BOXES)
    assert len(pa) == len(pb) == 3
    assert sorted(pa["area_m2"]) == pytest.approx(ground, rel=0.05)
    assert sorted(pb["area_m2"]) == pytest.approx(sorted(pa["area_m2"]), rel=3e-3)
    # In grid units the Mercator polygons are k^2 larger: what area_m2 would say without the scale.
    assert sorted(pb.geometry.area) == pytest.approx(
        [v * k * k for v in sorted(pa.geometry.area)], rel=3e-3
    )
