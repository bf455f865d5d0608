"""Tests for the synthetic scene generator."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.enums import ColorInterp, Compression
from rasterio.features import rasterize
from rasterio.transform import Affine

from geounet.synthetic import STRIP_ROWS, SceneInfo, make_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneInfo:
    """The default 1024 x 1024 RGB scene at 0.5 m, with GeoJSON labels."""
    out = tmp_path_factory.mktemp("scene")
    return make_scene(out / "scene.tif", labels_path=out / "buildings.geojson", seed=7)


@pytest.fixture(scope="module")
def pixels(scene: SceneInfo) -> np.ndarray:
    """The default scene's pixels, (bands, rows, cols)."""
    with rasterio.open(scene.path) as src:
        data: np.ndarray = src.read()
    return data


def _building_mask(info: SceneInfo) -> np.ndarray:
    mask: np.ndarray = rasterize(
        ((g, 1) for g in info.buildings),
        out_shape=(info.height, info.width),
        transform=info.transform,
        fill=0,
        dtype="uint8",
    )
    return mask.astype(bool)


def _sides_m(poly: shapely.Polygon, mx: float = 1.0, my: float = 1.0) -> tuple[float, float]:
    """Sides (short, long) in metres of the minimum rotated rectangle of a footprint."""
    scaled = shapely.transform(poly, lambda c: c * np.array([mx, my]))
    rect = np.asarray(scaled.minimum_rotated_rectangle.exterior.coords)
    a = float(np.hypot(*(rect[1] - rect[0])))
    b = float(np.hypot(*(rect[2] - rect[1])))
    return min(a, b), max(a, b)


def test_raster_profile(scene: SceneInfo) -> None:
    with rasterio.open(scene.path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
        assert (src.width, src.height) == (1024, 1024)
        assert src.count == 3
        assert src.dtypes == ("uint8", "uint8", "uint8")
        assert src.block_shapes == [(256, 256)] * 3
        assert src.profile["tiled"]
        assert src.compression == Compression.deflate
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.nodata is None
    assert scene.crs.to_epsg() == 32633
    assert scene.transform == Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
    assert (scene.width, scene.height) == (1024, 1024)


def test_buildings_are_sensible_and_disjoint(scene: SceneInfo) -> None:
    buildings = np.array(scene.buildings, dtype=object)
    assert len(buildings) > 20
    assert all(g.geom_type == "Polygon" and g.is_valid for g in buildings)
    # Inside the scene.
    left, top = scene.transform.c, scene.transform.f
    right, bottom = left + 0.5 * scene.width, top - 0.5 * scene.height
    scene_box = shapely.box(left, bottom, right, top)
    assert shapely.within(buildings, scene_box).all()
    # No two overlap (or even touch).
    pairs = shapely.STRtree(buildings).query(buildings, predicate="intersects")
    assert (pairs[0] == pairs[1]).all()
    # 8 to 40 m across.
    for g in buildings:
        short, long = _sides_m(g)
        assert 7.9 <= short and long <= 40.1
    # Clear of the roads (narrowest road half-width is 2.8 m, plus clearance).
    assert scene.roads
    for road in scene.roads:
        assert shapely.distance(buildings, road).min() > 5.0
    # Buildings of several shapes: some rotated rectangles, some L-shapes (more vertices).
    n_vertices = shapely.get_num_coordinates(buildings)
    assert (n_vertices > 5).any()
    rectangles = buildings[n_vertices == 5]
    rotated = ~np.isclose(shapely.area(rectangles), shapely.area(shapely.envelope(rectangles)))
    assert rotated.any() and not rotated.all()


def test_labels_roundtrip(scene: SceneInfo) -> None:
    assert scene.labels_path is not None and scene.labels_path.exists()
    gdf = gpd.read_file(scene.labels_path)
    assert gdf.crs is not None and gdf.crs.to_epsg() == 32633
    assert len(gdf) == len(scene.buildings)
    assert set(gdf["class"]) == {"building"}
    assert (gdf.geom_type == "Polygon").all()
    assert gdf.area.sum() == pytest.approx(sum(g.area for g in scene.buildings), rel=1e-6)


def test_roofs_differ_from_background(scene: SceneInfo, pixels: np.ndarray) -> None:
    inside = _building_mask(scene)
    assert 0.03 < inside.mean() < 0.5
    img = pixels.astype(np.float64)
    roof_mean = img[:, inside].mean(axis=1)
    ground_mean = img[:, ~inside].mean(axis=1)
    assert np.linalg.norm(roof_mean - ground_mean) > 25.0
    # Roofs are also more varied in colour than the ground (distinct palettes).
    assert img[:, inside].std(axis=1).mean() > img[:, ~inside].std(axis=1).mean()
    # Each roof is nearly uniform compared with the scene: per-building colour spread is small.
    ids = rasterize(
        ((g, i + 1) for i, g in enumerate(scene.buildings)),
        out_shape=inside.shape,
        transform=scene.transform,
        dtype="int32",
    )
    flat_ids = ids.ravel()
    n = np.bincount(flat_ids)
    big = n[1:] > 50
    spreads = []
    for band in img.reshape(img.shape[0], -1):
        mean = np.bincount(flat_ids, weights=band) / np.maximum(n, 1)
        var = np.bincount(flat_ids, weights=band * band) / np.maximum(n, 1) - mean * mean
        spreads.append(np.sqrt(np.maximum(var[1:][big], 0.0)))
    assert np.median(np.mean(spreads, axis=0)) < 20.0


def _seam_ratios(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-to-row change at each strip boundary relative to typical row-to-row change."""
    boundaries = np.arange(STRIP_ROWS, grey.shape[0], STRIP_ROWS) - 1
    row_diff = np.abs(np.diff(grey, axis=0)).mean(axis=1)  # [i]: between rows i and i + 1
    jumps = np.abs(np.diff(grey.mean(axis=1)))
    return (
        row_diff[boundaries] / np.median(row_diff),
        jumps[boundaries] / max(4 * np.median(jumps), 1.0),
    )


def test_strips_are_seamless(tmp_path: Path, pixels: np.ndarray) -> None:
    # Ground texture only (no straight road or roof edges that could fall on a boundary).
    info = make_scene(
        tmp_path / "bare.tif", width=512, height=1024, roads=False, building_density=0.0
    )
    with rasterio.open(info.path) as src:
        grey = src.read().astype(np.float64).mean(axis=0)
    texture_change, mean_jump = _seam_ratios(grey)
    assert (texture_change < 1.4).all(), texture_change
    assert (mean_jump < 1.0).all(), mean_jump
    # The full scene too, with a looser bound (edges can happen to fall on a boundary).
    texture_change, _ = _seam_ratios(pixels.astype(np.float64).mean(axis=0))
    assert (texture_change < 2.0).all(), texture_change


def test_deterministic(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a.tif", width=384, height=520, seed=3)
    b = make_scene(tmp_path / "b.tif", width=384, height=520, seed=3)
    c = make_scene(tmp_path / "c.tif", width=384, height=520, seed=4)
    with rasterio.open(a.path) as sa, rasterio.open(b.path) as sb, rasterio.open(c.path) as sc:
        pa, pb, pc = sa.read(), sb.read(), sc.read()
    assert pa.tobytes() == pb.tobytes()
    assert [g.wkb for g in a.buildings] == [g.wkb for g in b.buildings]
    assert not np.array_equal(pa, pc)
    assert [g.wkb for g in a.buildings] != [g.wkb for g in c.buildings]


def test_nodata_collar(tmp_path: Path) -> None:
    info = make_scene(tmp_path / "nd.tif", width=512, height=512, nodata=0, seed=1)
    assert info.nodata == 0
    with rasterio.open(info.path) as src:
        assert src.nodata == 0
        data = src.read()
        valid = src.dataset_mask() > 0
    assert (data[:, 0, 0] == 0).all()
    assert valid[-1, -1] and valid[0, -1] and valid[-1, 0]
    assert 0.03 < (~valid).mean() < 0.2
    # Nodata pixels are nodata in every band; real pixels never equal the nodata value.
    assert (data[:, ~valid] == 0).all()
    assert (data[:, valid] >= 1).all()
    # No building falls in the collar.
    assert info.buildings
    assert valid[_building_mask(info)].all()


def test_geographic_crs(tmp_path: Path) -> None:
    origin, px = (-115.3, 36.2), 5e-6
    info = make_scene(
        tmp_path / "geo.tif",
        width=512,
        height=512,
        crs="EPSG:4326",
        pixel_size=px,
        origin=origin,
        labels_path=tmp_path / "geo.fgb",
        road_labels=True,
        seed=2,
    )
    with rasterio.open(info.path) as src:
        assert src.crs.is_geographic and src.crs.to_epsg() == 4326
        assert src.transform == Affine(px, 0.0, origin[0], 0.0, -px, origin[1])
        left, bottom, right, top = src.bounds
    assert info.buildings
    lat = math.radians(origin[1] - 256 * px)
    mx, my = 111320.0 * math.cos(lat), 111320.0
    for g in info.buildings:
        minx, miny, maxx, maxy = g.bounds
        assert left < minx and maxx < right and bottom < miny and maxy < top
        short, long = _sides_m(g, mx, my)
        assert 7.5 <= short and long <= 40.5
    gdf = gpd.read_file(info.labels_path)
    assert gdf.crs is not None and gdf.crs.to_epsg() == 4326
    counts = gdf["class"].value_counts().to_dict()
    assert counts == {"building": len(info.buildings), "road": len(info.roads)}
    assert set(gdf.loc[gdf["class"] == "road"].geom_type) == {"LineString"}


def test_uint16_single_band(tmp_path: Path) -> None:
    info = make_scene(tmp_path / "pan.tif", width=512, height=300, bands=1, dtype="uint16")
    with rasterio.open(info.path) as src:
        assert src.count == 1 and src.dtypes == ("uint16",)
        assert (src.width, src.height) == (512, 300)
        assert src.block_shapes == [(256, 256)]
        assert src.colorinterp == (ColorInterp.gray,)
        data = src.read(1)
    assert 255 < data.max() <= 2100
    assert data.min() > 0
    inside = _building_mask(info)
    assert inside.any()


def test_four_bands_nir_is_not_alpha(tmp_path: Path) -> None:
    info = make_scene(tmp_path / "rgbn.tif", width=256, height=256, bands=4)
    with rasterio.open(info.path) as src:
        assert src.count == 4
        assert src.colorinterp[3] != ColorInterp.alpha
        assert src.descriptions[3] == "nir"
        data = src.read()
    assert data[3].std() > 5


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".fgb", ".parquet"])
def test_label_formats(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    labels = tmp_path / f"labels{suffix}"
    info = make_scene(tmp_path / "s.tif", width=256, height=256, labels_path=labels, seed=5)
    gdf = gpd.read_parquet(labels) if suffix == ".parquet" else gpd.read_file(labels)
    assert len(gdf) == len(info.buildings) > 0
    assert gdf.crs is not None and gdf.crs.to_epsg() == 32633
    assert set(gdf["class"]) == {"building"}


def test_no_roads_and_no_buildings(tmp_path: Path) -> None:
    info = make_scene(tmp_path / "bare.tif", width=300, height=200, roads=False, building_density=0)
    assert info.buildings == [] and info.roads == []
    with rasterio.open(info.path) as src:
        assert src.read().std() > 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bands": 5},
        {"dtype": "float32"},
        {"width": 0},
        {"pixel_size": 0.0},
        {"seed": -1},
        {"nodata": 300},
        {"building_density": -1.0},
        {"labels_path": "x.csv"},
        {"labels_path": "x.shp", "road_labels": True},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    if "labels_path" in kwargs:
        kwargs = {**kwargs, "labels_path": tmp_path / str(kwargs["labels_path"])}
    with pytest.raises(ValueError):
        make_scene(tmp_path / "bad.tif", width=kwargs.pop("width", 64), height=64, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.tif").exists()
