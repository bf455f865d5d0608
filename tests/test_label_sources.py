"""Tests for mask-raster labels and several label sources (geounet.labels.masks, .sets)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import SHARED_DATA
from rasterio.features import rasterize
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import Scene, open_scene
from geounet.labels.mask_windows import RasterMaskLabels
from geounet.labels.masks import MaskLabels
from geounet.labels.rasterize import RasterLabels
from geounet.labels.sets import LabelSet, expand_label_sources, read_label_sources
from geounet.labels.spec import BINARY_CLASS_NAME, IGNORE_VALUE, LabelSpec
from geounet.labels.vector import Labels
from geounet.training.dataset import IGNORE_INDEX

BUILDINGS = SHARED_DATA.parent / "buildings-rgb"
requires_buildings_data = pytest.mark.skipif(
    not (BUILDINGS / "rio").is_dir() or not (BUILDINGS / "inria").is_dir(),
    reason=f"{BUILDINGS} not found (the real building images and masks live in ../shared/data)",
)

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_100.0  # top-left of the test grids in UTM 33N
GRID = from_origin(X0, Y0, 1.0, 1.0)  # 1 m pixels
SIZE = 64


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM,
    transform: Affine | None = GRID,
    nodata: float | None = None,
) -> Path:
    """A GeoTIFF from a (rows, cols) or (bands, rows, cols) array; parent folders are made."""
    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "nodata": nodata,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def image(path: Path, *, size: int = SIZE, crs: str = UTM, transform: Affine = GRID) -> Scene:
    """A 3-band image (random pixels) and its Scene."""
    data = np.random.default_rng(0).integers(0, 200, (3, size, size)).astype(np.uint8)
    return open_scene(write_raster(path, data, crs=crs, transform=transform))


def px_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A box given in pixel coordinates of GRID, in map coordinates (UTM 33N)."""
    x0, y0 = GRID * (col0, row1)
    x1, y1 = GRID * (col1, row0)
    return shapely.box(x0, y0, x1, y1)


def whole(labels: RasterLabels, scene: Scene) -> np.ndarray:
    return labels.rasterize(Window(0, 0, scene.width, scene.height))


def class_mask() -> np.ndarray:
    """64 x 64 uint8: class 1 at rows 5..15 cols 5..25, class 2 at rows 30..50 cols 40..60."""
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[5:15, 5:25] = 1
    m[30:50, 40:60] = 2
    return m


def test_ignore_value_is_the_dataset_ignore_index() -> None:
    assert IGNORE_VALUE == IGNORE_INDEX == 255


# --- one mask -------------------------------------------------------------------------------


def test_mask_gives_class_ids_and_nodata_and_255_are_ignored(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    m = class_mask()
    m[0:3, :] = 9  # the mask's nodata value
    m[60:, :] = 255  # the default ignore value
    write_raster(tmp_path / "masks" / "x.tif", m, nodata=9)
    masks = MaskLabels(
        [tmp_path / "masks" / "x.tif"], LabelSpec(class_field="c", classes=("a", "b"))
    )
    labels = masks.for_scene(scene)
    assert isinstance(labels, RasterMaskLabels) and not labels.empty
    assert labels.class_names == ["a", "b"] and len(labels) == 2  # two labelled components
    out = whole(labels, scene)
    expected = class_mask()
    expected[0:3, :] = IGNORE_VALUE
    expected[60:, :] = IGNORE_VALUE
    np.testing.assert_array_equal(out, expected)
    # A window is the slice of the whole; beyond the image every pixel is ignored.
    np.testing.assert_array_equal(labels.rasterize(Window(10, 20, 16, 8)), expected[20:28, 10:26])
    over = labels.rasterize(Window(50, -4, 20, 10), out_shape=(12, 24))
    assert over.shape == (12, 24)
    # out_shape continues the window's grid (like RasterLabels): rows 10, 11 are image rows 6, 7.
    np.testing.assert_array_equal(over[4:12, 0:14], expected[0:8, 50:64])
    assert (over[:4] == IGNORE_VALUE).all() and (over[:, 14:] == IGNORE_VALUE).all()


def test_an_explicit_ignore_value_and_a_float_mask(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    m = class_mask().astype(np.float32)
    m[:, :4] = 7
    m[:, 60:] = np.nan
    write_raster(tmp_path / "x_mask.tif", m)
    labels = MaskLabels([tmp_path / "x_mask.tif"], ignore_value=7).for_scene(scene)
    out = whole(labels, scene)
    assert (out[:, :4] == IGNORE_VALUE).all() and (out[:, 60:] == IGNORE_VALUE).all()
    np.testing.assert_array_equal(out[:, 4:60], class_mask()[:, 4:60])


def test_pixels_outside_a_smaller_mask_are_ignored_not_background(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    # 20 x 30 px of class 1 and 0, placed at column 10, row 40 of the image grid.
    part = np.zeros((20, 30), dtype=np.uint8)
    part[5:10, 5:10] = 1
    write_raster(tmp_path / "m.tif", part, transform=GRID * Affine.translation(10, 40))
    out = whole(MaskLabels([tmp_path / "m.tif"]).for_scene(scene), scene)
    expected = np.full((SIZE, SIZE), IGNORE_VALUE, dtype=np.uint8)
    expected[40:60, 10:40] = part
    np.testing.assert_array_equal(out, expected)


def test_mask_on_a_coarser_unaligned_grid_takes_the_pixel_under_each_centre(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    coarse = np.random.default_rng(3).integers(0, 3, (30, 30)).astype(np.uint8)
    # 2 m pixels whose grid starts 1 m right of and 1 m below the image's.
    write_raster(tmp_path / "coarse.tif", coarse, transform=from_origin(X0 + 1, Y0 - 1, 2.0, 2.0))
    out = whole(
        MaskLabels(
            [tmp_path / "coarse.tif"], LabelSpec(class_field="c", classes=("a", "b"))
        ).for_scene(scene),
        scene,
    )
    centre = np.arange(SIZE) + 0.5  # pixel centres in image pixels = metres from the origin
    idx = np.floor((centre - 1) / 2).astype(int)  # coarse pixel under each centre
    ok = (idx >= 0) & (idx < 30)
    expected = np.full((SIZE, SIZE), IGNORE_VALUE, dtype=np.uint8)
    expected[np.ix_(ok, ok)] = coarse[np.ix_(idx[ok], idx[ok])]
    np.testing.assert_array_equal(out, expected)


def test_mask_in_lon_lat_lands_on_the_right_utm_pixels(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif", size=100)
    building = px_box(30, 20, 60, 40)  # 30 x 20 px in UTM 33N
    # Burn it on a lon/lat grid of ~0.25 m pixels around the image, ignore (255) elsewhere.
    to_ll = gpd.GeoSeries([building, shapely.box(*scene.bounds)], crs=UTM).to_crs(4326)
    west, south, east, north = to_ll.iloc[1].bounds
    step = 0.25 / 111_320
    transform = from_origin(west - 20 * step, north + 20 * step, step, step)
    shape = (int((north - south) / step) + 40, int((east - west) / step) + 40)
    ll = rasterize([(to_ll.iloc[0], 1)], out_shape=shape, transform=transform, fill=0)
    write_raster(tmp_path / "ll.tif", ll.astype(np.uint8), crs="EPSG:4326", transform=transform)
    labels = MaskLabels([tmp_path / "ll.tif"]).for_scene(scene)
    out = whole(labels, scene)
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[20:40, 30:60] = 1
    inner = np.zeros_like(truth)
    inner[21:39, 31:59] = 1
    outer = np.ones_like(truth)
    outer[19:41, 29:61] = 0
    assert (out[inner == 1] == 1).all() and (out[outer == 1] == 0).all()  # within one pixel
    assert abs(int(out.sum()) - 600) <= 30
    # Reprojected windows agree with the whole (each window is warped on its own).
    np.testing.assert_array_equal(labels.rasterize(Window(25, 15, 40, 30)), out[15:45, 25:65])
    rc = labels.centroids_px().astype(int)
    assert len(rc) == 1 and out[rc[0, 0], rc[0, 1]] == 1


def test_mask_labels_pickle(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    write_raster(tmp_path / "masks" / "x.tif", class_mask())
    labels = read_label_sources([str(tmp_path / "masks")]).for_scene(scene)
    again = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(whole(again, scene), whole(labels, scene))


# --- class names ----------------------------------------------------------------------------


def test_mask_class_names(tmp_path: Path) -> None:
    binary = np.zeros((SIZE, SIZE), dtype=np.uint8)
    binary[3:9, 3:9] = 1
    write_raster(tmp_path / "bin.tif", binary)
    three = binary * 3
    write_raster(tmp_path / "three.tif", three)
    assert MaskLabels([tmp_path / "bin.tif"]).class_names == [BINARY_CLASS_NAME]
    assert MaskLabels([tmp_path / "bin.tif"], LabelSpec(classes=("building",))).class_names == [
        "building"
    ]
    inferred = MaskLabels([tmp_path / "bin.tif", tmp_path / "three.tif"])
    assert inferred.class_names == ["class1", "class2", "class3"] and not inferred.binary
    with pytest.raises(
        LabelsError, match=r"three\.tif holds class id 3, but LabelSpec\.classes names 1 class"
    ):
        MaskLabels([tmp_path / "three.tif"], LabelSpec(classes=("building",)))
    with pytest.raises(LabelsError, match="ignore value 2 is also a class id"):
        MaskLabels([tmp_path / "three.tif"], ignore_value=2)


def test_a_value_above_the_classes_found_only_in_a_window_is_an_error(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[10:20, 10:20] = 1
    m[40, 40] = 5  # one pixel: the decimated read cannot miss it at this size, so check windows
    write_raster(tmp_path / "m.tif", m)
    with pytest.raises(
        LabelsError, match=r"m\.tif holds class id 5, but LabelSpec\.classes names 1"
    ):
        MaskLabels([tmp_path / "m.tif"], LabelSpec(classes=("building",)))
    labels = RasterMaskLabels(
        MaskLabels([tmp_path / "m.tif"]).files[0],
        crs=scene.crs,
        transform=scene.transform,
        width=SIZE,
        height=SIZE,
        name=scene.name,
        class_names=["building"],
    )
    assert labels.rasterize(Window(0, 0, 32, 32)).max() == 1
    with pytest.raises(LabelsError, match=r"m\.tif holds value 5, which is not a class id"):
        labels.rasterize(Window(32, 32, 32, 32))


def test_negative_values_are_refused(tmp_path: Path) -> None:
    m = np.zeros((SIZE, SIZE), dtype=np.int16)
    m[:8, :8] = -3
    write_raster(tmp_path / "neg.tif", m)
    with pytest.raises(LabelsError, match=r"neg\.tif holds value -3, which is not a class id"):
        MaskLabels([tmp_path / "neg.tif"])


def test_an_image_is_not_a_mask(tmp_path: Path) -> None:
    image(tmp_path / "rgb.tif")
    with pytest.raises(LabelsError, match=r"rgb\.tif has 3 bands but a mask raster has one band"):
        read_label_sources([str(tmp_path / "rgb.tif")])


# --- matching -------------------------------------------------------------------------------


@pytest.fixture
def same_place(tmp_path: Path) -> dict[str, Any]:
    """Images a, b, c on one grid; masks/a.tif (class 1 left) and masks/b.tif (class 1 right)."""
    scenes = {n: image(tmp_path / "images" / f"{n}.tif") for n in "abc"}
    left = np.zeros((SIZE, SIZE), dtype=np.uint8)
    left[:, :10] = 1
    write_raster(tmp_path / "masks" / "a.tif", left)
    write_raster(tmp_path / "masks" / "b.tif", left[:, ::-1].copy())
    (tmp_path / "masks" / "a.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar, not a mask
    return {"dir": tmp_path, "left": left, **scenes}


@pytest.mark.parametrize("source", ["masks", "masks/", "masks/*.tif", "**/masks/*.tif"])
def test_masks_are_matched_by_name_from_a_folder_or_glob(
    same_place: dict[str, Any], source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(same_place["dir"])
    labels = read_label_sources([source])
    assert labels.describe() == "2 masks" and len(labels.paths) == 2
    assert labels.sources == [source]
    left = same_place["left"]
    a = labels.for_scene(same_place["a"])
    b = labels.for_scene(same_place["b"])
    assert isinstance(a, RasterMaskLabels) and a.mask is not None and a.mask.name == "a.tif"
    assert isinstance(b, RasterMaskLabels) and b.mask is not None and b.mask.name == "b.tif"
    np.testing.assert_array_equal(whole(a, same_place["a"]), left)
    np.testing.assert_array_equal(whole(b, same_place["b"]), left[:, ::-1])
    # c has no mask of its name: the first mask that overlaps it (sorted: masks/a.tif).
    c = labels.for_scene(same_place["c"])
    assert isinstance(c, RasterMaskLabels) and c.mask is not None and c.mask.name == "a.tif"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # writing one
def test_a_mask_without_georeferencing_is_matched_by_name_and_size(tmp_path: Path) -> None:
    scene = image(tmp_path / "images" / "x.tif", transform=GRID * Affine.translation(500, 0))
    write_raster(tmp_path / "masks" / "x.tif", class_mask(), crs=None)
    write_raster(tmp_path / "small" / "x.tif", class_mask()[:32], crs=None)
    np.testing.assert_array_equal(
        whole(read_label_sources([str(tmp_path / "masks")]).for_scene(scene), scene), class_mask()
    )
    with pytest.raises(
        LabelsError, match=r"x\.tif is not georeferenced and is 64x32 px but x\.tif is 64x64"
    ):
        read_label_sources([str(tmp_path / "small")]).for_scene(scene)


def test_a_mask_named_like_an_image_elsewhere_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scene = image(tmp_path / "images" / "x.tif")
    write_raster(
        tmp_path / "masks" / "x.tif", class_mask(), transform=GRID * Affine.translation(1000, 0)
    )
    write_raster(tmp_path / "masks" / "y.tif", np.ones((SIZE, SIZE), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="geounet.labels.masks"):
        labels = read_label_sources(
            [str(tmp_path / "masks")], LabelSpec(class_field="c", classes=("a", "b"))
        )
        rl = labels.for_scene(scene)
    assert isinstance(rl, RasterMaskLabels) and rl.mask is not None and rl.mask.name == "y.tif"
    assert "x.tif has the name of x.tif but does not overlap it" in caplog.text


# --- expanding sources ----------------------------------------------------------------------


def test_expand_label_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "labels"
    write_raster(d / "m1.tif", class_mask())
    write_raster(d / "deep" / "m2.tif", class_mask())
    gpd.GeoDataFrame(geometry=[px_box(1, 1, 5, 5)], crs=UTM).to_file(d / "v.geojson")
    gpd.GeoDataFrame(geometry=[px_box(1, 1, 5, 5)], crs=UTM).to_file(d / "deep" / "w.shp")
    (d / "notes.json").write_text("{}")  # .json in a folder is not taken as labels
    vectors, masks = expand_label_sources([str(d)])
    assert [Path(p).name for p in vectors] == ["w.shp", "v.geojson"]
    assert [Path(p).name for p in masks] == ["m2.tif", "m1.tif"]
    monkeypatch.chdir(tmp_path)
    vectors, masks = expand_label_sources(["labels/**/*.tif", "labels/*.geojson", "labels/m1.tif"])
    assert [Path(p).name for p in masks] == ["m2.tif", "m1.tif"]  # duplicates dropped
    assert all(Path(p).is_absolute() for p in masks) and [Path(p).name for p in vectors] == [
        "v.geojson"
    ]
    with pytest.raises(LabelsError, match=r"labels/\*\.gpkg matches no label files"):
        expand_label_sources(["labels/*.gpkg"])
    with pytest.raises(LabelsError, match=r"nope\.gpkg: no such file or folder"):
        expand_label_sources(["nope.gpkg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelsError, match="empty: no vector files or rasters"):
        expand_label_sources(["empty"])
    with pytest.raises(LabelsError, match="no labels given"):
        read_label_sources([])


# --- several vector files -------------------------------------------------------------------


def test_vector_files_in_different_crss_combine(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif", size=100)
    boxes = {
        "utm": px_box(10, 10, 30, 30),
        "ll": px_box(50, 10, 70, 20),
        "merc": px_box(20, 60, 60, 90),
    }
    kinds = {"utm": "house", "ll": "road", "merc": "house"}
    crss = {"utm": UTM, "ll": "EPSG:4326", "merc": "EPSG:3857"}
    for key, box in boxes.items():
        gpd.GeoDataFrame({"kind": [kinds[key]]}, geometry=[box], crs=UTM).to_crs(crss[key]).to_file(
            tmp_path / f"{key}.gpkg"
        )
    spec = LabelSpec(class_field="kind", classes=("house", "road"))
    labels = read_label_sources([str(tmp_path / f"{k}.gpkg") for k in boxes], spec)
    assert labels.describe() == "3 vector files (3 features)" and labels.class_names == [
        "house",
        "road",
    ]
    assert [v.crs.to_epsg() for v in labels.vectors] == [32633, 4326, 3857]
    rl = labels.for_scene(scene)
    assert type(rl) is RasterLabels and len(rl) == 3
    assert sorted(rl.source_ids.tolist()) == [0, 1, 2]  # one row per file, offset per file
    out = whole(rl, scene)
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:30, 10:30] = 1
    truth[60:90, 20:60] = 1
    truth[10:20, 50:70] = 2
    # Reprojection through lon/lat or Web Mercator moves edges by far less than a pixel.
    assert (out != truth).sum() <= 8
    np.testing.assert_array_equal(out[12:28, 12:28], 1)
    np.testing.assert_array_equal(out[11:19, 51:69], 2)
    assert labels.check([scene]) == ["x.tif"]


def test_mismatching_class_names_across_files_is_an_error(tmp_path: Path) -> None:
    gpd.GeoDataFrame(
        {"kind": ["house", "road"]}, geometry=[px_box(0, 0, 5, 5), px_box(9, 9, 12, 12)], crs=UTM
    ).to_file(tmp_path / "a.geojson")
    gpd.GeoDataFrame({"kind": ["house"]}, geometry=[px_box(0, 0, 5, 5)], crs=UTM).to_file(
        tmp_path / "b.geojson"
    )
    paths = [str(tmp_path / "a.geojson"), str(tmp_path / "b.geojson")]
    with pytest.raises(
        LabelsError,
        match=r"b\.geojson has classes \['house'\] but a\.geojson has \['house', 'road'\]; list the classes",
    ):
        read_label_sources(paths, LabelSpec(class_field="kind"))
    # Naming the classes makes them agree.
    assert read_label_sources(
        paths, LabelSpec(class_field="kind", classes=("house", "road"))
    ).class_names == ["house", "road"]


def test_masks_with_more_classes_than_the_vector_labels_is_an_error(tmp_path: Path) -> None:
    gpd.GeoDataFrame({"kind": ["house"]}, geometry=[px_box(0, 0, 5, 5)], crs=UTM).to_file(
        tmp_path / "v.geojson"
    )
    write_raster(tmp_path / "m.tif", class_mask())  # values 0, 1, 2
    with pytest.raises(
        LabelsError, match=r"m\.tif holds class id 2, but v\.geojson names 1 class\(es\) \(house\)"
    ):
        read_label_sources(
            [str(tmp_path / "v.geojson"), str(tmp_path / "m.tif")], LabelSpec(class_field="kind")
        )
    # A 0/1 mask takes the vector labels' class name.
    write_raster(tmp_path / "bin.tif", (class_mask() == 1).astype(np.uint8))
    mixed = read_label_sources(
        [str(tmp_path / "v.geojson"), str(tmp_path / "bin.tif")], LabelSpec(class_field="kind")
    )
    assert (
        mixed.class_names == ["house"]
        and mixed.masks is not None
        and mixed.masks.class_names == ["house"]
    )
    with pytest.raises(LabelsError, match=r"the masks \(m\.tif, \.\.\.\) have classes"):
        LabelSet(mixed.vectors, MaskLabels([tmp_path / "m.tif"]))


# --- vectors and masks together -------------------------------------------------------------


def test_vector_features_are_burnt_over_the_mask(tmp_path: Path) -> None:
    scenes = [
        image(tmp_path / "images" / "x.tif"),
        image(tmp_path / "images" / "far.tif", transform=GRID * Affine.translation(1000, 0)),
    ]
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[0:20, 0:20] = 1
    m[:, 50:] = 255  # unlabelled in the mask
    write_raster(tmp_path / "masks" / "x.tif", m)
    house = px_box(10, 10, 30, 30)  # over the mask's class 1 and background
    road = px_box(55, 0, 60, 10)  # over the mask's ignored pixels
    far_house = px_box(1010, 10, 1020, 20)  # on the image without a mask
    gpd.GeoDataFrame(
        {"kind": ["road", "road", "house"]}, geometry=[house, road, far_house], crs=UTM
    ).to_file(tmp_path / "v.gpkg")
    spec = LabelSpec(class_field="kind", classes=("house", "road"))
    labels = read_label_sources([str(tmp_path / "v.gpkg"), str(tmp_path / "masks")], spec)
    assert labels.describe() == "1 vector file (3 features), 1 mask"
    rl = labels.for_scene(scenes[0])
    assert isinstance(rl, RasterMaskLabels) and len(rl.geometries) == 2
    out = whole(rl, scenes[0])
    expected = m.copy()
    expected[10:30, 10:30] = 2
    expected[0:10, 55:60] = 2
    np.testing.assert_array_equal(out, expected)
    rc = rl.centroids_px().astype(int)
    assert len(rc) == 3 and (out[rc[:, 0], rc[:, 1]] > 0).all()
    # The image without a mask: features on background, as with vector labels alone.
    far = labels.for_scene(scenes[1])
    assert type(far) is RasterLabels
    out_far = whole(far, scenes[1])
    assert set(np.unique(out_far).tolist()) == {0, 1} and out_far[10:20, 10:20].all()
    assert labels.check(scenes) == ["x.tif", "far.tif"]


def test_an_image_without_a_mask_is_ignored_when_there_are_only_masks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenes = [
        image(tmp_path / "images" / "x.tif"),
        image(tmp_path / "images" / "far.tif", transform=GRID * Affine.translation(1000, 0)),
    ]
    write_raster(tmp_path / "masks" / "x.tif", class_mask())
    labels = read_label_sources(
        [str(tmp_path / "masks")], LabelSpec(class_field="c", classes=("a", "b"))
    )
    far = labels.for_scene(scenes[1])
    assert far.empty and len(far) == 0 and far.centroids_px().shape == (0, 2)
    assert (whole(far, scenes[1]) == IGNORE_VALUE).all()
    with caplog.at_level(logging.WARNING, logger="geounet.labels.sets"):
        assert labels.check(scenes) == ["x.tif"]
    assert "1 of 2 images have no mask" in caplog.text and "far.tif" in caplog.text


def test_centroids_are_one_per_component_inside_it(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif", size=200)
    m = np.zeros((200, 200), dtype=np.uint8)
    m[10:30, 10:60] = 1
    m[10:30, 60:90] = 2  # touches the class-1 part: a component of its own class
    m[100:180, 100:110] = 1
    m[100:110, 100:180] = 1  # an L: concave, its centre of mass lies outside it
    m[190:192, 5:7] = 1
    write_raster(tmp_path / "m.tif", m)
    labels = MaskLabels(
        [tmp_path / "m.tif"], LabelSpec(class_field="c", classes=("a", "b"))
    ).for_scene(scene)
    rc = labels.centroids_px()
    assert rc.shape == (4, 2) and len(labels) == 4
    hit = m[rc[:, 0].astype(int), rc[:, 1].astype(int)]
    assert (hit > 0).all() and sorted(hit.tolist()) == [1, 1, 1, 2]
    capped = MaskLabels(
        [tmp_path / "m.tif"], LabelSpec(class_field="c", classes=("a", "b"))
    ).for_scene(scene)
    capped.max_centroids = 2
    assert capped.centroids_px().shape == (2, 2)


# --- nothing overlaps -----------------------------------------------------------------------


def test_labels_that_miss_every_image(tmp_path: Path) -> None:
    scene = image(tmp_path / "x.tif")
    far = GRID * Affine.translation(5000, 0)
    write_raster(
        tmp_path / "masks" / "other.tif", (class_mask() > 0).astype(np.uint8), transform=far
    )
    gpd.GeoDataFrame(geometry=[shapely.box(10, 10, 11, 11)], crs=4326).to_file(
        tmp_path / "far.geojson"
    )
    masks_only = read_label_sources([str(tmp_path / "masks")])
    assert masks_only.for_scene(scene).empty
    with pytest.raises(
        LabelsOutsideRasterError,
        match=r"none of the labels \(1 mask\) overlaps any image: the masks cover "
        r"505000\.00,5000036\.00,505064\.00,5000100\.00 in EPSG:32633; x\.tif covers "
        r"500000\.00,5000036\.00,500064\.00,5000100\.00; check that the labels belong",
    ):
        masks_only.check([scene])
    both = read_label_sources([str(tmp_path / "far.geojson"), str(tmp_path / "masks")])
    with pytest.raises(
        LabelsOutsideRasterError,
        match=r"none of the labels \(1 vector file \(1 features\), 1 mask\) overlaps any image: far\.geojson covers .*, the masks cover",
    ):
        both.check([scene])
    # One vector file alone keeps check_overlap's message.
    with pytest.raises(
        LabelsOutsideRasterError,
        match=r"far\.geojson does not overlap any image: labels \(EPSG:4326, reprojected\)",
    ):
        read_label_sources(str(tmp_path / "far.geojson")).check([scene])
    with pytest.raises(LabelsError, match="no images to check"):
        both.check([])


# --- training -------------------------------------------------------------------------------


def test_training_from_masks_and_vectors(tmp_path: Path) -> None:
    from geounet.network.checkpoint import read_meta
    from geounet.training.config import TrainConfig
    from geounet.training.train import train_model

    rng = np.random.default_rng(1)
    for name, shift in (("a", 0), ("b", 1000)):
        m = np.zeros((SIZE, SIZE), dtype=np.uint8)
        m[8:24, 8:40] = 1
        m[40:56, 20:50] = 1
        data = rng.integers(40, 90, (3, SIZE, SIZE)).astype(np.uint8)
        data[:, m == 1] = 200
        t = GRID * Affine.translation(shift, 0)
        write_raster(tmp_path / "images" / f"{name}.tif", data, transform=t)
        if name == "a":
            write_raster(tmp_path / "masks" / "a.tif", m, transform=t)
        else:
            boxes = [px_box(8 + shift, 8, 40 + shift, 24), px_box(20 + shift, 40, 50 + shift, 56)]
            gpd.GeoDataFrame(geometry=boxes, crs=UTM).to_file(tmp_path / "b.geojson")
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(
        images=[str(tmp_path / "images")],
        labels=[str(tmp_path / "masks"), str(tmp_path / "b.geojson")],
        out=str(out),
        tile_size=32,
        batch_size=4,
        epochs=1,
        samples_per_epoch=8,
        width=4,
        depth=2,
        device="cpu",
    )
    assert train_model(cfg).model.exists()
    meta = read_meta(out)
    assert meta.binary and meta.classes == [BINARY_CLASS_NAME]
    assert meta.provenance["labels"] == [str(tmp_path / "masks"), str(tmp_path / "b.geojson")]


# --- real data ------------------------------------------------------------------------------

BUILDING_SETS = [
    ("rio", ["buildings.geojson"]),
    ("inria", ["buildings_austin.geojson", "buildings_chicago.geojson"]),
]


@requires_buildings_data
@pytest.mark.parametrize(("folder", "files"), BUILDING_SETS)
def test_real_masks_equal_the_polygons_drawn_on_each_image(folder: str, files: list[str]) -> None:
    """The polygons were made from the masks with exact pixel outlines: every pixel agrees."""
    frames = [gpd.read_file(BUILDINGS / folder / f) for f in files]
    masks = read_label_sources([str(BUILDINGS / folder / "masks")])
    images = sorted((BUILDINGS / folder).glob("*.tif"))
    assert len(images) == len(masks.paths) and len(images) in (15, 41)
    positive = 0
    for path in images:
        scene = open_scene(path)
        own = [f[f["image"] == scene.name] for f in frames if (f["image"] == scene.name).any()]
        assert len(own) <= 1  # each image's buildings come from one file
        from_mask = masks.for_scene(scene)
        assert isinstance(from_mask, RasterMaskLabels) and from_mask.mask is not None
        assert from_mask.mask.name == scene.name
        mask_px = whole(from_mask, scene)
        if not own:  # an image without buildings: a real negative
            assert (mask_px == 0).all()
            continue
        polygons = Labels.from_frame(own[0], path=scene.name)
        from_polygons = whole(polygons.for_scene(scene), scene)
        np.testing.assert_array_equal(from_polygons, mask_px, err_msg=scene.name)
        positive += int(mask_px.sum() > 0)
    assert positive >= 0.6 * len(images)


@requires_buildings_data
def test_real_masks_and_whole_label_files_agree() -> None:
    """Through read_label_sources, whole files against masks, all 56 images.

    Inria crops are 1 km apart and agree exactly. Rio chips overlap their neighbours, and a
    neighbour's buildings (drawn on its own chip) reach into a chip whose mask leaves them out:
    every differing pixel must lie under a polygon drawn on another image.
    """
    total = agree = 0
    for folder, files in BUILDING_SETS:
        vectors = read_label_sources([str(BUILDINGS / folder / f) for f in files])
        masks = read_label_sources([str(BUILDINGS / folder / "masks" / "*.tif")])
        frames = [gpd.read_file(BUILDINGS / folder / f) for f in files]
        for path in sorted((BUILDINGS / folder).glob("*.tif")):
            scene = open_scene(path)
            a = whole(vectors.for_scene(scene), scene)
            b = whole(masks.for_scene(scene), scene)
            total += a.size
            agree += int((a == b).sum())
            if folder == "inria":
                np.testing.assert_array_equal(a, b, err_msg=scene.name)
                continue
            others = [f[f["image"] != scene.name].to_crs(scene.crs) for f in frames]
            under_others = rasterize(
                ((g, 1) for f in others for g in f.geometry),
                out_shape=(scene.height, scene.width),
                transform=scene.transform,
                fill=0,
            )
            assert (under_others[a != b] == 1).all(), scene.name
            assert (a >= b).all()  # the neighbours only add buildings
    assert agree / total >= 0.999, f"{agree / total:.5%}"
