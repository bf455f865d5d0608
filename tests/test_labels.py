"""Tests for geounet.labels.vector: reading, class mapping, reprojection, buffering, rasterizing."""

from __future__ import annotations

import logging
import math
import pickle
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
from conftest import SHARED_DATA, requires_shared_data
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import open_scene
from geounet.labels.rasterize import RasterLabels
from geounet.labels.spec import LabelSpec
from geounet.labels.vector import Labels, check_overlap, read_labels

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_100.0)  # top-left of the test grids in UTM 33N
GRID = from_origin(*ORIGIN, 1.0, 1.0)  # 1 m pixels


def frame(geoms: list[Any], crs: str | None = UTM, **columns: list[Any]) -> gpd.GeoDataFrame:
    """A GeoDataFrame of geometries given in pixel offsets from ORIGIN when crs is UTM."""
    return gpd.GeoDataFrame(columns, geometry=list(geoms), crs=crs)


def px_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A box given in pixel coordinates of GRID, in map coordinates."""
    x0, y0 = GRID * (col0, row1)
    x1, y1 = GRID * (col1, row0)
    return shapely.box(x0, y0, x1, y1)


def px_geom(geom: Any) -> Any:
    """A shapely geometry drawn in pixel coordinates of GRID, moved to map coordinates."""
    return shapely.transform(geom, lambda xy: np.column_stack(GRID * (xy[:, 0], xy[:, 1])))


def labels_of(geoms: list[Any], spec: LabelSpec | None = None, **columns: list[Any]) -> Labels:
    return Labels.from_frame(frame(geoms, **columns), spec, path="mem.gpkg")


def burn(labels: Labels, size: int = 100, crs: str = UTM, transform: Affine = GRID) -> np.ndarray:
    raster = labels.for_raster(crs, transform, size, size, name="scene.tif")
    return raster.rasterize(Window(0, 0, size, size))


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".fgb", ".parquet"])
def test_read_labels_reads_every_format(tmp_path: Path, suffix: str) -> None:
    gdf = frame([px_box(10, 10, 30, 30), px_box(50, 50, 70, 60)], cls=["road", "house"])
    path = tmp_path / f"labels{suffix}"
    if suffix == ".parquet":
        gdf.to_parquet(path)
    else:
        gdf.to_file(path)
    labels = read_labels(path, LabelSpec(class_field="cls"))
    assert labels.class_names == ["house", "road"]
    assert len(labels) == 2 and not labels.binary
    mask = burn(labels)
    assert (mask == 2).sum() == 400 and (mask == 1).sum() == 200


def test_a_styled_geopackage_reads_its_vector_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """geounet's own GeoPackages (a layer_styles table beside the polygons) are labels as they
    are: the table without geometry is passed over, without a warning; two vector layers warn."""
    import pyogrio

    path = tmp_path / "found.gpkg"
    frame([px_box(10, 10, 30, 30)], cls=["house"]).to_file(path, layer="found")
    pyogrio.write_dataframe(
        gpd.pd.DataFrame({"styleName": ["found"]}), path, layer="layer_styles", append=True
    )
    with caplog.at_level(logging.WARNING):
        labels = read_labels(path, LabelSpec(class_field="cls"))
    assert len(labels) == 1 and "layers" not in caplog.text
    frame([px_box(0, 0, 5, 5)], cls=["shed"]).to_file(path, layer="more")
    with caplog.at_level(logging.WARNING):
        read_labels(path, LabelSpec(class_field="cls"))
    assert "2 vector layers; reading the first, 'found'" in caplog.text


def test_missing_file_is_a_labels_error(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"nope\.gpkg: no such file"):
        read_labels(tmp_path / "nope.gpkg")


def test_zero_byte_file_is_a_labels_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.geojson"
    path.touch()
    with pytest.raises(LabelsError, match=r"labels\.geojson is empty \(0 bytes\)"):
        read_labels(path)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_unreadable_file_is_a_labels_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(b"\x00garbage, not a vector file\x01" * 10)
    with pytest.raises(LabelsError, match=rf"labels\{suffix} is not a readable vector file") as e:
        read_labels(path)
    assert "\n" not in str(e.value)


def test_a_raster_is_not_labels(make_raster: Any) -> None:
    with pytest.raises(LabelsError, match=r"scene\.tif is not a readable vector file"):
        read_labels(make_raster("scene.tif"))


def test_empty_layer_is_a_labels_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.gpkg"
    frame([px_box(1, 1, 2, 2)]).iloc[:0].to_file(path)
    with pytest.raises(LabelsError, match=r"labels\.gpkg has no features \(empty layer\)"):
        read_labels(path)


def test_missing_class_field_lists_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "labels.gpkg"
    frame([px_box(1, 1, 2, 2)], Class=["a"], height=[3]).to_file(path)
    with pytest.raises(
        LabelsError,
        match=r"labels\.gpkg has no field 'class'; did you mean 'Class'\? "
        r"available fields: Class, height",
    ):
        read_labels(path, LabelSpec(class_field="class"))


def test_missing_class_field_in_parquet_lists_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    frame([px_box(1, 1, 2, 2)], kind=["a"]).to_parquet(path)
    with pytest.raises(LabelsError, match=r"labels\.parquet has no field 'cls'.*fields: kind"):
        read_labels(path, LabelSpec(class_field="cls"))


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_labels_without_crs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},'
        ' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}'
    )
    frame([px_box(1, 1, 2, 2)], crs=None).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(LabelsError, match=r"nocrs\.gpkg has no CRS; set one.*ogr2ogr -a_srs"):
        read_labels(tmp_path / "nocrs.gpkg")
    # GeoJSON without a "crs" member is WGS 84 by definition (RFC 7946).
    assert read_labels(path).crs.to_epsg() == 4326


def test_non_utf8_attributes_are_read_as_latin1(tmp_path: Path) -> None:
    path = tmp_path / "labels.geojson"
    path.write_bytes(
        b'{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        b'{"cls": "caf\xe9"}, "geometry": {"type": "Point", "coordinates": [15, 45]}}]}'
    )
    labels = read_labels(path, LabelSpec(class_field="cls"))
    assert labels.class_names == ["caf\u00e9"]


def test_multi_layer_file_reads_the_first_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "labels.gpkg"
    frame([px_box(1, 1, 3, 3)]).to_file(path, layer="first")
    frame([px_box(1, 1, 3, 3), px_box(5, 5, 6, 6)]).to_file(path, layer="second")
    with caplog.at_level(logging.WARNING, logger="geounet.labels.vector"):
        labels = read_labels(path)
    assert len(labels) == 1
    assert "reading the first, 'first'" in caplog.text


# --- spec and class mapping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ()}, "classes is empty"),
        ({"class_field": "c", "classes": ("a", "a")}, "classes lists 'a' twice"),
        ({"classes": ("a", "b")}, "classes has 2 names but class_field is not set"),
        ({"line_width_m": 0}, "line_width_m must be a positive number of metres, got 0"),
        ({"point_radius_m": float("nan")}, "point_radius_m must be a positive number"),
    ],
)
def test_label_spec_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelsError, match=message):
        LabelSpec(**kwargs)


def test_label_spec_casts_classes_to_strings() -> None:
    spec = LabelSpec(class_field="c", classes=[2, 1])  # type: ignore[arg-type]
    assert spec.classes == ("2", "1")


def test_binary_labels_are_one_foreground_class() -> None:
    labels = labels_of([px_box(0, 0, 10, 10)], cls=["x"])
    assert labels.binary and labels.class_names == ["foreground"]
    named = labels_of([px_box(0, 0, 10, 10)], LabelSpec(classes=("building",)))
    assert named.class_names == ["building"]
    assert burn(named).max() == 1


def test_classes_map_in_the_given_order_and_others_are_dropped() -> None:
    geoms = [px_box(0, 0, 10, 10), px_box(20, 0, 30, 10), px_box(40, 0, 50, 10)]
    spec = LabelSpec(class_field="kind", classes=("water", "building"))
    labels = labels_of(geoms, spec, kind=["building", "tree", "water"])
    assert labels.class_names == ["water", "building"]
    mask = burn(labels)
    assert mask[5, 5] == 2 and mask[5, 25] == 0 and mask[5, 45] == 1


def test_integer_classes_sort_numerically_and_nulls_are_dropped() -> None:
    geoms = [
        px_box(0, 0, 10, 10),
        px_box(20, 0, 30, 10),
        px_box(40, 0, 50, 10),
        px_box(60, 0, 70, 10),
    ]
    labels = labels_of(geoms, LabelSpec(class_field="code"), code=[10.0, 2.0, float("nan"), 1.0])
    assert labels.class_names == ["1", "2", "10"]
    mask = burn(labels)
    assert [mask[5, c] for c in (5, 25, 45, 65)] == [3, 2, 0, 1]


def test_integer_field_takes_string_classes(tmp_path: Path) -> None:
    path = tmp_path / "labels.gpkg"
    frame([px_box(0, 0, 10, 10), px_box(20, 0, 30, 10)], code=[7, 3]).to_file(path)
    labels = read_labels(path, LabelSpec(class_field="code", classes=("7",)))
    assert labels.class_names == ["7"] and len(labels) == 1


def test_no_feature_in_classes_is_an_error() -> None:
    with pytest.raises(
        LabelsError,
        match=r"no feature has a 'kind' value among classes \(a\); "
        r"values found: b, c",
    ):
        labels_of(
            [px_box(0, 0, 1, 1)] * 2, LabelSpec(class_field="kind", classes=("a",)), kind=["c", "b"]
        )


def test_higher_class_ids_win_where_features_overlap() -> None:
    geoms = [px_box(0, 0, 20, 20), px_box(10, 10, 30, 30), px_box(5, 5, 25, 25)]
    labels = labels_of(
        geoms, LabelSpec(class_field="k", classes=("a", "b", "c")), k=["c", "a", "b"]
    )
    mask = burn(labels)
    assert mask[15, 15] == 3  # all three overlap: class c (id 3) wins though it came first
    assert mask[22, 22] == 2 and mask[28, 28] == 1


# --- geometry: types, repair, buffering -----------------------------------------------------


def test_mixed_geometry_types_and_nulls() -> None:
    geoms = [
        px_box(0, 0, 10, 10),
        px_geom(shapely.LineString([(20, 5), (40, 5)])),
        px_geom(shapely.Point(50.5, 5.5)),
        px_geom(shapely.MultiPolygon([shapely.box(0, 20, 10, 30), shapely.box(20, 20, 30, 30)])),
        px_geom(
            shapely.GeometryCollection(
                [
                    shapely.box(40, 20, 50, 30),
                    shapely.Point(60, 25),
                    shapely.LineString([(70, 20), (70, 40)]),
                ]
            )
        ),
        None,
        shapely.Polygon(),
    ]
    labels = labels_of(geoms)
    assert len(labels) == 5
    raster = labels.for_raster(UTM, GRID, 100, 100, name="scene.tif")
    assert len(raster) == 5 and (raster.source_ids == [0, 1, 2, 3, 4]).all()
    assert set(raster.geometries.geom_type) <= {"Polygon", "MultiPolygon"}
    mask = raster.rasterize(Window(0, 0, 100, 100))
    assert mask[5, 5] and mask[5, 30] and mask[5, 50] and mask[25, 5] and mask[25, 25]
    assert mask[25, 45] and mask[25, 60] and mask[35, 70]  # the collection's 3 parts
    assert not mask[25, 15] and not mask[50, 50]


def test_only_null_geometries_is_an_error() -> None:
    with pytest.raises(LabelsError, match=r"mem\.gpkg has no usable geometry"):
        labels_of([None, shapely.Polygon()])


def test_bowtie_polygon_is_repaired() -> None:
    bowtie = px_geom(shapely.Polygon([(10, 10), (30, 30), (30, 10), (10, 30)]))
    assert not shapely.is_valid(bowtie)
    raster = labels_of([bowtie]).for_raster(UTM, GRID, 100, 100, name="scene.tif")
    assert raster.geometries.is_valid.all()
    mask = raster.rasterize(Window(0, 0, 100, 100))
    assert mask[20, 12] and mask[20, 28] and not mask[12, 20] and not mask[28, 20]
    assert abs(int(mask.sum()) - 200) <= 20  # two triangles of 100 m2


def test_repair_keeps_only_the_polygonal_parts_of_a_polygon() -> None:
    # A square with a zero-width spike: make_valid returns the square plus a stray line, which
    # must not be buffered into a 4 m band.
    spiky = px_geom(
        shapely.Polygon([(10, 10), (20, 10), (20, 15), (60, 15), (20, 15), (20, 20), (10, 20)])
    )
    mask = burn(labels_of([spiky]))
    assert int(mask.sum()) == 100 and not mask[15, 40]


def test_degenerate_line_is_dropped() -> None:
    labels = labels_of([px_geom(shapely.LineString([(5, 5), (5, 5)])), px_box(0, 0, 1, 1)])
    assert len(labels) == 1


def test_line_is_buffered_to_its_width_in_a_projected_crs() -> None:
    line = px_geom(shapely.LineString([(10, 50), (90, 50)]))
    mask = burn(labels_of([line], LabelSpec(line_width_m=4)))
    assert mask[:, 50].sum() == 4 and mask[48:52, 50].all()
    wide = burn(labels_of([line], LabelSpec(line_width_m=10)))
    assert wide[:, 50].sum() == 10


def test_point_is_buffered_to_its_radius() -> None:
    mask = burn(labels_of([px_geom(shapely.Point(50, 50))], LabelSpec(point_radius_m=5)))
    assert abs(int(mask.sum()) - math.pi * 25) < 6
    assert mask[50, 45:55].all() and not mask[50, 44] and not mask[50, 56]


def test_line_width_is_in_metres_in_a_crs_in_feet() -> None:
    # NY Long Island state plane, US survey feet: 4 m is 13.12 ft, 6.56 ft either side of a line
    # on a pixel edge, so 7 + 7 one-foot pixel centres (not 2 + 2, as if the units were metres).
    crs = "EPSG:2263"
    grid = from_origin(1_000_000, 200_100, 1.0, 1.0)
    line = shapely.LineString([grid * (10, 50), grid * (90, 50)])
    labels = Labels.from_frame(frame([line], crs=crs))
    mask = labels.for_raster(crs, grid, 100, 100, name="ft.tif").rasterize(Window(0, 0, 100, 100))
    assert mask[:, 50].sum() == 14


def test_line_width_is_in_ground_metres_in_web_mercator() -> None:
    # EPSG:3857 at 60 deg N stretches the ground 2x (1/cos 60): a 4 m road is 8 grid metres,
    # 8 pixels of a grid with 1 grid-metre pixels, not 4.
    import pyproj

    x0, y0 = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(25.0, 60.0)
    grid = from_origin(x0, y0 + 50, 1.0, 1.0)
    line = shapely.LineString([grid * (10, 50), grid * (90, 50)])
    labels = Labels.from_frame(frame([line], crs="EPSG:3857"), LabelSpec(line_width_m=4))
    mask = labels.for_raster("EPSG:3857", grid, 100, 100, name="merc.tif").rasterize(
        Window(0, 0, 100, 100)
    )
    assert mask[:, 50].sum() == 8 and mask[46:54, 50].all()


@pytest.mark.parametrize(
    ("lat0", "lon0"),
    [(45.0, 15.0), (-33.9, 151.2), (85.0, -40.0)],  # north, south, beyond UTM (polar)
)
def test_line_width_is_in_metres_in_a_geographic_crs(lat0: float, lon0: float) -> None:
    # A 4326 raster with 1 m pixels (lengths of a degree on WGS 84); lines along and across it.
    phi = math.radians(lat0)
    dy = 1 / (111_132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi))
    dx = 1 / (111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi))
    grid = from_origin(lon0, lat0, dx, dy)
    across = shapely.LineString([grid * (10, 50), grid * (90, 50)])
    along = shapely.LineString([grid * (50, 10), grid * (50, 90)])
    labels = Labels.from_frame(frame([across, along], crs="EPSG:4326"), LabelSpec(line_width_m=4))
    raster = labels.for_raster("EPSG:4326", grid, 100, 100, name="geo.tif")
    mask = raster.rasterize(Window(0, 0, 100, 100))
    assert mask[:, 25].sum() == 4 and mask[48:52, 25].all()
    assert mask[75, :].sum() == 4 and mask[75, 48:52].all()


def test_labels_and_raster_labels_pickle() -> None:
    # DataLoader workers receive them pickled.
    labels = labels_of([px_box(10, 10, 20, 20), px_geom(shapely.Point(50, 50))])
    labels.for_raster(UTM, GRID, 100, 100, name="a")
    copy = pickle.loads(pickle.dumps(labels))
    raster = copy.for_raster(UTM, GRID, 100, 100, name="a")
    again = pickle.loads(pickle.dumps(raster))
    assert (again.rasterize(Window(0, 0, 100, 100)) == burn(labels)).all()
    assert again.features_in(Window(45, 45, 10, 10)) == [1]


def test_geographic_raster_with_projected_labels() -> None:
    # Labels in UTM, raster in lon/lat: reprojected to the raster, buffered in metres.
    utm_line = px_geom(shapely.LineString([(0, 50), (100, 50)]))
    labels = labels_of([utm_line])
    to_geo = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    left, top = to_geo.transform(*GRID * (20, 20))
    grid = from_origin(left, top, 1e-5, 1e-5)  # ~0.79 m x 1.11 m pixels
    raster = labels.for_raster("EPSG:4326", grid, 60, 60, name="geo.tif")
    mask = raster.rasterize(Window(0, 0, 60, 60))
    rows = mask[:, 30].sum()
    assert abs(rows * 1.11 - 4) < 1.2


# --- reprojection, overlap, clipping --------------------------------------------------------


def test_box_in_lon_lat_lands_on_the_right_utm_pixels(make_raster: Any) -> None:
    scene = open_scene(make_raster("scene.tif", width=100, height=100, transform=GRID))
    to_geo = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    corners = [GRID * (c, r) for c, r in ((20, 30), (60, 30), (60, 70), (20, 70))]
    lonlat = shapely.Polygon([to_geo.transform(x, y) for x, y in corners])
    labels = Labels.from_frame(frame([lonlat], crs="EPSG:4326"))
    mask = labels.for_scene(scene).rasterize(Window(0, 0, 100, 100))
    expected = np.zeros((100, 100), bool)
    expected[30:70, 20:60] = True
    wrong = mask.astype(bool) ^ expected
    assert wrong.sum() <= 0.05 * expected.sum()
    # Every wrong pixel lies within one pixel of the box's edge.
    rows, cols = np.nonzero(wrong)
    edge = np.minimum(
        np.minimum(abs(rows - 30), abs(rows - 69)), np.minimum(abs(cols - 20), abs(cols - 59))
    )
    assert (edge <= 1).all()


def test_labels_outside_the_raster_give_empty_raster_labels() -> None:
    labels = labels_of([px_box(200, 200, 210, 210)])
    raster = labels.for_raster(UTM, GRID, 100, 100, name="scene.tif")
    assert raster.empty and len(raster) == 0
    assert not raster.rasterize(Window(0, 0, 100, 100)).any()
    assert raster.features_in(Window(0, 0, 100, 100)) == []
    assert raster.centroids_px().shape == (0, 2)


def test_check_overlap_names_overlapping_rasters() -> None:
    labels = labels_of([px_box(10, 10, 20, 20)])
    inside = ("a.tif", UTM, (500_000.0, 5_000_000.0, 500_100.0, 5_000_100.0))
    outside = ("b.tif", UTM, (600_000.0, 5_000_000.0, 600_100.0, 5_000_100.0))
    assert check_overlap(labels, [outside, inside]) == ["a.tif"]


def test_check_overlap_counts_buffered_lines() -> None:
    line = px_geom(shapely.LineString([(0, -1), (100, -1)]))  # 1 m north of the raster
    labels = labels_of([line], LabelSpec(line_width_m=4))
    bounds = (500_000.0, 5_000_000.0, 500_100.0, 5_000_100.0)
    assert check_overlap(labels, [("a.tif", UTM, bounds)]) == ["a.tif"]
    assert (
        labels.for_raster(UTM, GRID, 100, 100, name="a.tif").rasterize(Window(0, 0, 100, 1)).all()
    )


def test_check_overlap_raises_with_both_extents() -> None:
    labels = Labels.from_frame(
        frame([shapely.box(10.1, 45.0, 10.2, 45.1)], crs="EPSG:4326"), path="labels.gpkg"
    )
    images = [
        ("scene.tif", UTM, (500_000.0, 5_000_000.0, 500_450.0, 5_000_450.0)),
        ("other.tif", "EPSG:4326", (11.0, 46.0, 11.1, 46.1)),
    ]
    with pytest.raises(
        LabelsOutsideRasterError,
        match=(
            r"^labels\.gpkg does not overlap any image: labels \(EPSG:4326, reprojected\) cover "
            r"\d{6},\d{7},\d{6},\d{7} in EPSG:32633; scene\.tif covers "
            r"500000\.0,5000000\.0,500450\.0,5000450\.0 \(1 more images not shown\); "
        ),
    ):
        check_overlap(labels, images)
    with pytest.raises(
        LabelsOutsideRasterError,
        match=r"cover 10\.1000,45\.0000,10\.2000,45\.1000 "
        r"in EPSG:4326; other\.tif covers 11\.0000,46\.0000",
    ):
        check_overlap(labels, images[1:])
    with pytest.raises(LabelsError, match=r"no images to check labels\.gpkg against"):
        check_overlap(labels, [])


def test_geometries_are_clipped_to_the_raster() -> None:
    huge = shapely.box(0, 0, 1_000_000, 10_000_000)  # all of UTM 33N's false-easting half
    raster = labels_of([huge]).for_raster(UTM, GRID, 100, 100, name="scene.tif")
    left, bottom, right, top = raster.geometries.total_bounds
    assert (left, bottom, right, top) == (499_999.0, 4_999_999.0, 500_101.0, 5_000_101.0)
    assert raster.rasterize(Window(0, 0, 100, 100)).all()


def test_reprojection_is_cached_per_crs() -> None:
    labels = labels_of([px_box(10, 10, 20, 20)])
    labels.for_raster("EPSG:4326", from_origin(15, 45.2, 1e-5, 1e-5), 10, 10, name="a")
    labels.for_raster("EPSG:4326", from_origin(16, 45.2, 1e-5, 1e-5), 10, 10, name="b")
    labels.for_raster(UTM, GRID, 10, 10, name="c")
    assert len(labels._projected) == 2


# --- windows --------------------------------------------------------------------------------


def test_features_in_and_centroids_px() -> None:
    geoms = [px_box(10, 20, 20, 30), px_box(70, 70, 80, 80), px_geom(shapely.Point(50.5, 5.5))]
    raster = labels_of(geoms).for_raster(UTM, GRID, 100, 100, name="scene.tif")
    assert raster.features_in(Window(0, 0, 50, 50)) == [0, 2]  # the point's buffer reaches col 48.5
    assert raster.features_in(Window(60, 60, 40, 40)) == [1]
    assert raster.features_in(Window(30, 30, 10, 10)) == []
    rc = raster.centroids_px()
    assert rc.shape == (3, 2) and rc.dtype == np.float64
    assert 20 <= rc[0, 0] <= 30 and 10 <= rc[0, 1] <= 20
    assert 70 <= rc[1, 0] <= 80 and 70 <= rc[1, 1] <= 80
    assert np.allclose(rc[2], [5.5, 50.5], atol=2)


def test_centroids_stay_inside_the_raster() -> None:
    big = px_box(-500, -500, 10, 10)  # mostly outside; its visible part is the corner
    rc = labels_of([big]).for_raster(UTM, GRID, 100, 100, name="s").centroids_px()
    assert (0 <= rc).all() and (rc <= 10).all()


def test_rasterize_window_uses_the_window_transform() -> None:
    raster = labels_of([px_box(40, 30, 50, 35)]).for_raster(UTM, GRID, 100, 100, name="s")
    whole = raster.rasterize(Window(0, 0, 100, 100))
    part = raster.rasterize(Window(32, 25, 16, 8))
    assert part.shape == (8, 16) and part.dtype == np.uint8
    assert (part == whole[25:33, 32:48]).all() and part.sum() == 8 * 3


def test_rasterize_pads_beyond_the_raster() -> None:
    raster = labels_of([px_box(-20, -20, 120, 120)]).for_raster(UTM, GRID, 100, 100, name="s")
    edge = raster.rasterize(Window(80, 90, 20, 10), out_shape=(16, 32))
    assert edge.shape == (16, 32)
    assert edge[:10, :20].all() and not edge[10:].any() and not edge[:, 20:].any()
    overhang = raster.rasterize(Window(-4, -2, 8, 8))
    assert not overhang[:2].any() and not overhang[:, :4].any() and overhang[2:, 4:].all()


def test_raster_labels_can_be_built_directly() -> None:
    geoms = gpd.GeoSeries([px_box(0, 0, 10, 10)], crs=UTM)
    raster = RasterLabels(geoms, [3], transform=GRID, width=100, height=100, name="s")
    assert raster.rasterize(Window(0, 0, 20, 20)).max() == 3
    with pytest.raises(LabelsError, match="1 geometries but 2 class ids"):
        RasterLabels(geoms, [1, 2], transform=GRID, width=100, height=100, name="s")
    with pytest.raises(LabelsError, match=r"class ids must be 1\.\.254 \(0 is background\), got 0"):
        RasterLabels(geoms, [0], transform=GRID, width=100, height=100, name="s")


def test_rasterizing_a_window_of_10000_features_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    cols, rows = rng.uniform(0, 5_000, n), rng.uniform(0, 5_000, n)
    x0, y0 = GRID * (cols, rows)
    polys = shapely.box(x0, y0 - 8, x0 + 8, y0)
    lines = shapely.linestrings(
        np.stack([np.stack([x0, y0], 1), np.stack([x0 + 30, y0 - 5], 1)], 1)
    )
    geoms = np.where(np.arange(n) % 2 == 0, polys, lines)
    labels = labels_of(list(geoms), LabelSpec(class_field="k"), k=(np.arange(n) % 3).tolist())
    start = time.perf_counter()
    raster = labels.for_raster(UTM, GRID, 5_000, 5_000, name="big.tif")
    assert time.perf_counter() - start < 3.0
    assert len(raster) == n or len(raster) > 0.99 * n
    windows = [Window(int(c), int(r), 256, 256) for c, r in rng.uniform(0, 4_700, (20, 2))]
    raster.rasterize(windows[0])  # warm up
    start = time.perf_counter()
    masks = [raster.rasterize(w) for w in windows]
    per_window = (time.perf_counter() - start) / len(windows)
    assert per_window < 0.02, f"{per_window * 1000:.1f} ms per 256x256 window"
    assert all(m.shape == (256, 256) for m in masks) and max(m.max() for m in masks) == 3


# --- real data ------------------------------------------------------------------------------


@requires_shared_data
def test_spacenet_buildings_cover_4_percent() -> None:
    scene = open_scene(SHARED_DATA / "buildings_pan.tif")
    labels = read_labels(SHARED_DATA / "buildings.geojson", LabelSpec(classes=("building",)))
    assert len(labels) == 43 and labels.class_names == ["building"]
    assert check_overlap(labels, [(scene.name, scene.crs, scene.bounds)]) == [scene.name]
    raster = labels.for_scene(scene)
    mask = raster.rasterize(Window(0, 0, scene.width, scene.height))
    assert 0.040 < mask.mean() < 0.044
    # Windows agree with the whole-scene mask.
    assert (raster.rasterize(Window(300, 500, 256, 256)) == mask[500:756, 300:556]).all()
    rc = raster.centroids_px().astype(int)
    assert mask[rc[:, 0], rc[:, 1]].all()


@requires_shared_data
def test_spacenet_roads_are_buffered_in_metres_on_a_geographic_raster() -> None:
    scene = open_scene(SHARED_DATA / "roads_pan.tif")
    assert scene.crs.is_geographic
    labels = read_labels(SHARED_DATA / "roads.geojson", LabelSpec(line_width_m=4))
    mask = labels.for_scene(scene).rasterize(Window(0, 0, scene.width, scene.height))
    # 9 centrelines, 1030 m of them inside the scene, 4 m wide over ~0.24 m x 0.30 m pixels:
    # 1030 * 4 / (1300 * 1300 * 0.0727) = 3.4 % (less where roads cross).
    assert 0.030 < mask.mean() < 0.036
    # A north-south road (lon -115.23172): ~4 m / 0.243 m = 16-17 pixels across.
    col = round((-115.231722 - scene.transform.c) / scene.transform.a)
    row = 1000  # the road runs from row ~722 to the bottom edge
    across = mask[row, col - 40 : col + 40]
    assert 15 <= across.sum() <= 18


@requires_shared_data
def test_spacenet_roads_do_not_overlap_the_buildings_scene() -> None:
    scene = open_scene(SHARED_DATA / "buildings_pan.tif")
    labels = read_labels(SHARED_DATA / "roads.geojson")
    with pytest.raises(
        LabelsOutsideRasterError,
        match=r"roads\.geojson does not overlap any image"
        r": labels \(EPSG:4326, reprojected\) cover .* in EPSG:32616; "
        r"buildings_pan\.tif covers 733601\.0,3724689\.0,734051\.0,3725139\.0",
    ):
        check_overlap(labels, [(scene.name, scene.crs, scene.bounds)])
    assert labels.for_scene(scene).empty
