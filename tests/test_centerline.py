from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geounet.vectors.centerline import CenterlineOptions, StripCenterliner, centerline_mask

UTM = CRS.from_epsg(32633)
T = from_origin(500000, 5000000, 1.0, 1.0)
NAMES = ["background", "road"]
OPT = CenterlineOptions(line_width_m=5)


def to_px(geom: shapely.Geometry) -> shapely.Geometry:
    """Map coordinates of T back to pixel coordinates (x = column, y = row)."""
    return shapely.transform(
        geom, lambda xy: np.column_stack([xy[:, 0] - 500000, 5000000 - xy[:, 1]])
    )


def test_straight_band_gives_one_line_on_its_centre() -> None:
    m = np.zeros((60, 100), np.uint8)
    m[20:27, 10:90] = 1  # rows 20..26: centre row 23, y = 23.5
    f = centerline_mask(m, T, UTM, NAMES, [1], options=OPT)
    assert len(f) == 1 and f.geometry[0].geom_type == "LineString"
    line = to_px(f.geometry[0])
    truth = shapely.LineString([(10, 23.5), (90, 23.5)])
    assert shapely.hausdorff_distance(line, shapely.intersection(truth, line.buffer(1.0))) <= 1.0
    assert line.length >= 80 - 7  # thinning shortens each free end by about half the width
    assert f["class"][0] == "road" and f["class_id"][0] == 1
    assert f["length_m"][0] == pytest.approx(line.length, abs=0.01)


def test_l_shaped_band_gives_one_line_within_a_pixel() -> None:
    m = np.zeros((100, 100), np.uint8)
    m[20:27, 10:80] = 1
    m[20:90, 73:80] = 1
    f = centerline_mask(
        m, T, UTM, NAMES, [1], options=CenterlineOptions(line_width_m=5, simplify=0)
    )
    assert len(f) == 1
    line = to_px(f.geometry[0])
    truth = shapely.LineString([(10, 23.5), (76.5, 23.5), (76.5, 90)])
    coords = shapely.points(np.asarray(line.coords))
    assert shapely.distance(coords, truth).max() <= 1.0 + 1e-9  # every skeleton pixel
    assert line.length >= truth.length - 10


def test_crossing_roads_are_noded_at_their_junctions() -> None:
    m = np.zeros((120, 120), np.uint8)
    m[50:57, :] = 1
    m[:, 30:37] = 1
    m[:, 80:86] = 1
    f = centerline_mask(m, T, UTM, NAMES, [1], options=OPT)
    assert len(f) == 7  # the horizontal road in three, each vertical one in two
    ends = [tuple(np.round(c, 6)) for g in f.geometry for c in (g.coords[0], g.coords[-1])]
    shared = {e for e in ends if ends.count(e) == 4}
    assert len(shared) == 2  # two crossings, four lines ending exactly at each


def test_spurs_are_pruned_and_gaps_bridged() -> None:
    m = np.zeros((60, 160), np.uint8)
    m[20:27, 5:70] = 1
    m[20:27, 76:150] = 1  # a 6 px gap along the road
    m[10:20, 40:42] = 1  # a 10 px hair on its edge
    f = centerline_mask(
        m, T, UTM, NAMES, [1], options=CenterlineOptions(line_width_m=5, prune_m=15, bridge_m=16)
    )  # thinning shortens each end by ~3 px
    assert len(f) == 1, f.geometry.to_wkt().tolist()
    assert f.geometry[0].length > 130
    no_bridge = centerline_mask(
        m, T, UTM, NAMES, [1], options=CenterlineOptions(line_width_m=5, prune_m=15, bridge_m=0)
    )
    assert len(no_bridge) == 2


def test_side_by_side_ends_are_not_bridged() -> None:
    m = np.zeros((60, 160), np.uint8)
    m[10:15, 5:80] = 1
    m[22:27, 5:80] = 1  # parallel: their ends are 12 px apart, across the roads' direction
    f = centerline_mask(
        m, T, UTM, NAMES, [1], options=CenterlineOptions(line_width_m=3, bridge_m=20)
    )
    assert len(f) == 2


def test_geographic_lengths_are_geodesic() -> None:
    t = from_origin(-115.2, 36.2, 3e-6, 3e-6)
    m = np.zeros((40, 400), np.uint8)
    m[15:22, :] = 1
    f = centerline_mask(
        m, t, CRS.from_epsg(4326), NAMES, [1], options=CenterlineOptions(line_width_m=2)
    )
    assert len(f) == 1 and f.crs.to_epsg() == 4326
    # ~0.27 m a pixel at 36 degrees north: far from the length in degrees
    assert 90 < f["length_m"][0] < 110


def rand_mask(seed: int, shape: tuple[int, int] = (150, 130)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(rng.integers(1, 8)):
        line = shapely.LineString(rng.uniform(-20, 170, (rng.integers(2, 4), 2)))
        shapes.append((line.buffer(rng.uniform(0.8, 6)), int(rng.integers(1, 3))))
    m = rasterize(shapes, out_shape=shape).astype(np.uint8)
    noise = rng.random(shape) < rng.uniform(0, 0.03)
    m[noise] = rng.integers(0, 3, int(noise.sum()))
    return m


def key(frame) -> list[tuple[int, str, float]]:
    return sorted(
        (int(c), shapely.normalize(g).wkt, s)
        for c, g, s in zip(frame["class_id"], frame.geometry, frame["score"], strict=True)
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000), strip=st.integers(1, 70), bridge=st.sampled_from([0.0, 8.0, 14.0])
)
def test_strip_centerlines_equal_whole_mask(seed: int, strip: int, bridge: float) -> None:
    m = rand_mask(seed)
    score = np.random.default_rng(seed).random(m.shape).astype(np.float32)
    opt = CenterlineOptions(line_width_m=4, bridge_m=bridge, max_width_m=20)
    whole = centerline_mask(
        m, T, UTM, ["background", "road", "river"], [1, 2], score=score, options=opt
    )
    strips = centerline_mask(
        m,
        T,
        UTM,
        ["background", "road", "river"],
        [1, 2],
        score=score,
        strip_height=strip,
        options=opt,
    )
    assert key(strips) == key(whole)


@pytest.mark.parametrize("strip", [1, 3, 16, 37])
def test_lines_are_taken_while_strips_come(strip: int) -> None:
    m = np.zeros((400, 60), np.uint8)
    for r in range(10, 390, 40):  # short horizontal roads, one under the other
        m[r : r + 5, 5:55] = 1
    cl = StripCenterliner(T, UTM, NAMES, [1], OPT)
    early = 0
    for r0 in range(0, 400, strip):
        cl.add(r0, m[r0 : r0 + strip], None)
        if r0 < 200 and cl.ready:
            early += len(cl.take())
    rest = cl.finish()
    assert early >= 3  # finished lines do not wait for the end of the scene
    assert early + len(rest) == 10
    assert (rest["score"] == 1.0).all()


def test_only_line_classes_are_traced() -> None:
    m = np.zeros((60, 60), np.uint8)
    m[10:50, 10:50] = 1  # a building
    m[55:58, :] = 2
    f = centerline_mask(m, T, UTM, ["background", "building", "road"], [2], options=OPT)
    assert set(f["class"]) == {"road"}


# -- prediction: where line classes go


@pytest.fixture(scope="module")
def line_scene(tmp_path_factory: pytest.TempPathFactory):
    """A scene and two untrained models (road only; building + road) with road a line class,
    and a threshold at which the road-only model's mask has structure (not all or nothing)."""
    import rasterio

    from geounet.network.checkpoint import create_model, save_model
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    d = tmp_path_factory.mktemp("lines")
    rng = np.random.default_rng(0)
    img = (rng.random((3, 160, 150)) * 255).astype(np.uint8)
    img[:, 70:80, :] = 40  # a dark band
    scene = d / "s.tif"
    with rasterio.open(
        scene,
        "w",
        driver="GTiff",
        width=150,
        height=160,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
    ) as dst:
        dst.write(img)
    models = {}
    for name, classes in (("roads", ["road"]), ("both", ["background", "building", "road"])):
        net, meta = create_model(bands=3, classes=classes, width=4, depth=2, seed=3, tile_size=64)
        meta.class_geometry = {"road": "line"}
        meta.line_width_m = 3.0
        save_model(net, meta, d / f"{name}.safetensors")
        models[name] = d / f"{name}.safetensors"
    predict_raster(
        scene,
        probabilities=d / "p.tif",
        model=models["roads"],
        config=PredictConfig(device="cpu", tile_size=64, overlap=16),
    )
    with rasterio.open(d / "p.tif") as src:
        threshold = float(np.quantile(src.read(1), 0.8))
    return d, scene, models, threshold


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".fgb"])
def test_line_only_model_writes_linestrings_to_the_output(line_scene, suffix: str) -> None:
    import pyogrio

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    d, scene, models, threshold = line_scene
    out = d / f"roads{suffix}"
    r = predict_raster(
        scene,
        out,
        model=models["roads"],
        config=PredictConfig(
            device="cpu", tile_size=64, overlap=16, threshold=threshold, overwrite=True
        ),
    )
    assert r.lines == out and r.vectors == out
    frame = gpd_read(out)
    assert len(frame) == r.line_features == r.features > 0
    assert set(frame.geom_type) == {"LineString"}
    assert set(frame["class"]) == {"road"} and frame.crs.to_epsg() == 32633
    assert {"class", "class_id", "score", "length_m"} <= set(frame.columns)
    assert (frame["length_m"] > 0).all() and frame["score"].between(0, 1).all()
    if suffix != ".geojson":
        assert pyogrio.read_info(out, layer="roads")["geometry_type"] == "LineString"
    if suffix == ".gpkg":
        import sqlite3

        qml = sqlite3.connect(out).execute("SELECT styleQML FROM layer_styles").fetchone()[0]
    else:
        qml = out.with_suffix(".qml").read_text()
    assert (
        'class="SimpleLine"' in qml
        and "RenderMetersInMapUnits" in qml
        and 'name="line_width" value="3"' in qml
    )


def gpd_read(path):
    import geopandas as gpd

    return gpd.read_file(path, layer=path.stem)


def test_polygon_and_line_model_writes_two_layers_or_two_files(line_scene) -> None:
    import pyogrio

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    d, scene, models, _ = line_scene
    cfg = PredictConfig(device="cpu", tile_size=64, overlap=16, overwrite=True)
    r = predict_raster(scene, d / "both.gpkg", model=models["both"], config=cfg)
    layers = dict(pyogrio.list_layers(d / "both.gpkg").tolist())
    assert layers["both"] in ("MultiPolygon", "Polygon") and layers["both_lines"] == "LineString"
    import geopandas as gpd

    assert set(gpd.read_file(d / "both.gpkg", layer="both")["class"]) <= {"building"}
    lines = gpd.read_file(d / "both.gpkg", layer="both_lines")
    assert set(lines["class"]) <= {"road"} and len(lines) == r.line_features
    r = predict_raster(scene, d / "both.geojson", model=models["both"], config=cfg)
    assert (
        r.lines == d / "both_lines.geojson" and r.lines.exists() and (d / "both_lines.qml").exists()
    )
    assert set(gpd.read_file(r.lines).geom_type) <= {"LineString"}


def test_a_failed_run_leaves_no_line_file(line_scene) -> None:
    from geounet.errors import GeounetError
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    d, scene, models, _ = line_scene
    (d / "bad_lines.shp").write_text("taken")
    with pytest.raises(GeounetError, match=r"bad_lines\.shp exists"):
        predict_raster(
            scene,
            d / "bad.shp",
            model=models["both"],
            config=PredictConfig(device="cpu", tile_size=64, overlap=16),
        )
    assert [p.name for p in d.glob("*bad*")] == ["bad_lines.shp"]


def test_evaluate_reports_line_measures_of_a_mask(tmp_path) -> None:
    import geopandas as gpd
    import rasterio

    from geounet.labels.spec import LabelSpec
    from geounet.training.evaluate import evaluate

    t = from_origin(500000, 5000000, 0.5, 0.5)
    lines = [
        shapely.LineString([(500005, 4999950), (500095, 4999950)]),
        shapely.LineString([(500050, 4999995), (500050, 4999905)]),
    ]
    gpd.GeoDataFrame({"kind": ["road", "road"]}, geometry=lines, crs="EPSG:32633").to_file(
        tmp_path / "roads.geojson"
    )
    px = rasterize([(g.buffer(2.0), 1) for g in lines], out_shape=(200, 200), transform=t).astype(
        np.uint8
    )
    px[:, 150:] = 0  # a stretch the prediction misses
    prof = {
        "driver": "GTiff",
        "width": 200,
        "height": 200,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": t,
    }
    with rasterio.open(tmp_path / "scene.tif", "w", **{**prof, "count": 1}) as dst:
        dst.write(np.full((1, 200, 200), 100, np.uint8))
    with rasterio.open(tmp_path / "mask.tif", "w", **prof) as dst:
        dst.write(px[None])
    report = evaluate(
        tmp_path / "scene.tif",
        tmp_path / "roads.geojson",
        prediction=tmp_path / "mask.tif",
        spec=LabelSpec(line_width_m=4.0),
        line_buffer_m=2.0,
    )
    m = report["line"]["foreground"]
    assert m["correctness"] > 0.97
    # 20 of the 180 m missed (the horizontal road beyond x = 75 m); thinning shortens free ends
    assert 0.8 < m["completeness"] < 160 / 180 + 0.005
    assert m["quality"] < m["completeness"]
    assert m["length_true"] == pytest.approx(180, abs=1)


# -- training on line labels, end to end


def road_scene(path, labels, *, size: int = 160) -> list[shapely.LineString]:
    """Two crossing dark roads (6 m) on noisy green ground, 1 m pixels, and their centerlines."""
    import geopandas as gpd
    import rasterio

    rng = np.random.default_rng(5)
    t = from_origin(500000, 5000000, 1.0, 1.0)
    lines = [
        shapely.LineString([(500000, 4999940), (500000 + size, 4999930)]),
        shapely.LineString([(500090, 5000000), (500100, 5000000 - size)]),
    ]
    road = rasterize([(g.buffer(3), 1) for g in lines], out_shape=(size, size), transform=t).astype(
        bool
    )
    img = np.stack([np.full((size, size), v, np.float32) for v in (90, 130, 60)]) + rng.normal(
        0, 12, (3, size, size)
    )
    img[:, road] = 60 + rng.normal(0, 6, (3, int(road.sum())))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=t,
    ) as dst:
        dst.write(np.clip(img, 1, 255).astype(np.uint8))
    gpd.GeoDataFrame({"kind": ["road", "road"]}, geometry=lines, crs="EPSG:32633").to_file(labels)
    return lines


def test_training_on_line_labels_records_a_line_class_and_predict_writes_centerlines(
    tmp_path,
) -> None:
    import geopandas as gpd
    from click.testing import CliRunner

    from geounet.cli.main import cli
    from geounet.network.checkpoint import read_meta

    truth = road_scene(tmp_path / "s.tif", tmp_path / "roads.gpkg")
    args = [
        "train",
        "--images",
        str(tmp_path / "s.tif"),
        "--labels",
        str(tmp_path / "roads.gpkg"),
        "--class-field",
        "kind",
        "--line-width",
        "3",
        "--tile-size",
        "64",
        "--batch-size",
        "8",
        "--samples-per-epoch",
        "48",
        "--lr",
        "1e-2",
        "--width",
        "4",
        "--depth",
        "2",
        "--device",
        "cpu",
        "--no-plot",
        "--seed",
        "0",
    ]
    r = CliRunner().invoke(
        cli,
        [*args, "--epochs", "6", "-o", str(tmp_path / "lines.safetensors")],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    meta = read_meta(tmp_path / "lines.safetensors")
    assert meta.class_geometry == {"road": "line"} and meta.geometry_of("road") == "line"
    assert meta.line_width_m == 3.0 and meta.line_class_ids

    r = CliRunner().invoke(
        cli,
        [
            *args,
            "--epochs",
            "1",
            "--class-geometry",
            "road=polygon",
            "-o",
            str(tmp_path / "poly.safetensors"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    poly = read_meta(tmp_path / "poly.safetensors")
    assert (
        poly.geometry_of("road") == "polygon"
        and not poly.line_class_ids
        and poly.line_width_m is None
    )

    out = tmp_path / "roads_pred.gpkg"
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(tmp_path / "s.tif"),
            "-o",
            str(out),
            "-m",
            str(tmp_path / "lines.safetensors"),
            "--device",
            "cpu",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    frame = gpd.read_file(out, layer="roads_pred")
    assert (
        len(frame) > 0
        and set(frame.geom_type) == {"LineString"}
        and set(frame["class"]) == {"road"}
    )
    assert frame.crs.to_epsg() == 32633
    # The training scene itself (a smoke test, not a score): on the roads, not fragmented.
    near = shapely.union_all(truth).buffer(4)
    on_road = frame.geometry.intersection(near).length.sum() / frame.length.sum()
    assert on_road > 0.9 and len(frame) <= 8  # two crossing roads: four edges from their junction


def test_evaluate_reads_both_layers_of_a_polygon_and_line_prediction(tmp_path) -> None:
    """A GeoPackage from a model with both kinds: polygons in one layer, centerlines in
    ``<stem>_lines``; a GeoJSON: the lines in ``<stem>_lines.geojson`` beside it."""
    import geopandas as gpd
    import rasterio

    from geounet.labels.spec import LabelSpec
    from geounet.training.evaluate import evaluate

    t = from_origin(500000, 5000000, 0.5, 0.5)
    road = shapely.LineString([(500005, 4999950), (500095, 4999950)])
    house = shapely.box(500020, 4999970, 500040, 4999990)
    gpd.GeoDataFrame(
        {"kind": ["road", "building"]}, geometry=[road, house], crs="EPSG:32633"
    ).to_file(tmp_path / "truth.gpkg")
    with rasterio.open(
        tmp_path / "scene.tif",
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=t,
    ) as dst:
        dst.write(np.full((1, 200, 200), 100, np.uint8))
    polys = gpd.GeoDataFrame({"class": ["building"]}, geometry=[house], crs="EPSG:32633")
    lines = gpd.GeoDataFrame({"class": ["road"]}, geometry=[road], crs="EPSG:32633").to_crs(
        "EPSG:4326"
    )
    polys.to_file(tmp_path / "p.gpkg", layer="p")
    lines.to_file(tmp_path / "p.gpkg", layer="p_lines")
    polys.to_file(tmp_path / "p.geojson")
    lines.to_file(tmp_path / "p_lines.geojson")
    spec = LabelSpec(class_field="kind", line_width_m=4.0)
    for pred in ("p.gpkg", "p.geojson"):
        report = evaluate(
            tmp_path / "scene.tif",
            tmp_path / "truth.gpkg",
            prediction=tmp_path / pred,
            spec=spec,
            line_buffer_m=2.0,
        )
        assert report["object"]["building"]["f1"] == 1.0, pred
        assert (
            report["line"]["road"]["completeness"] > 0.99
            and report["line"]["road"]["correctness"] > 0.99
        ), pred
