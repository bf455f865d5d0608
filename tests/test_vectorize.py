from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import from_origin

from geounet.errors import OutputError
from geounet.vectors.strips import vectorize_mask
from geounet.vectors.writer import VECTOR_FORMATS, write_vectors

UTM = CRS.from_epsg(32633)
T = from_origin(500000, 5000000, 0.5, 0.5)
NAMES = ["background", "building", "road"]


def seam_mask() -> np.ndarray:
    """Shapes crossing strip seams: a ring with a hole, a U, a diagonal-touching pair, stripes."""
    m = np.zeros((120, 90), dtype=np.uint8)
    m[5:60, 5:40] = 1
    m[20:40, 15:30] = 0  # hole crossing the seam at row 32
    m[30:100, 50:55] = 1  # U: two legs joined at the bottom
    m[30:100, 70:75] = 1
    m[95:100, 50:75] = 1
    m[63, 10] = 1  # diagonal neighbours across a seam: separate under 4-connectivity
    m[64, 11] = 1
    m[70:118, 2:20] = 2  # another class touching class 1 polygons
    m[70:118, 20:30] = 1
    m[100:120, 80:90] = 255  # nodata
    return m


def reference(mask: np.ndarray) -> list[tuple[int, shapely.Geometry]]:
    """Whole-mask rasterio.features.shapes, the independent reference."""
    out = []
    for geom, value in shapes(mask, mask=(mask > 0) & (mask != 255), connectivity=4, transform=T):
        out.append((int(value), shapely.geometry.shape(geom)))
    return out


def same_polygons(frame: gpd.GeoDataFrame, ref: list[tuple[int, shapely.Geometry]]) -> None:
    assert len(frame) == len(ref)
    unmatched = list(ref)
    for cls, geom in zip(frame["class_id"], frame.geometry, strict=True):
        hit = [i for i, (c, g) in enumerate(unmatched) if c == cls and g.equals(geom)]
        assert hit, f"no reference polygon equals {geom.wkt[:80]}"
        unmatched.pop(hit[0])
    assert not unmatched


@pytest.mark.parametrize("strip", [1, 7, 32, 33, 64, None])
def test_strip_vectorization_equals_whole_mask(strip: int | None) -> None:
    mask = seam_mask()
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=strip)
    same_polygons(frame, reference(mask))
    assert frame.geometry.is_valid.all()
    assert set(frame.geom_type) <= {"Polygon", "MultiPolygon"}


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    strip=st.integers(1, 40),
    density=st.floats(0.2, 0.8),
)
def test_strip_vectorization_property(seed: int, strip: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    mask = (rng.random((40, 30)) < density).astype(np.uint8) * rng.integers(
        1, 3, size=(40, 30)
    ).astype(np.uint8)
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=strip)
    same_polygons(frame, reference(mask))


def test_nodata_never_becomes_a_polygon() -> None:
    mask = np.full((50, 50), 255, dtype=np.uint8)
    mask[10:20, 10:20] = 1
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=8)
    assert len(frame) == 1
    assert frame.geometry.iloc[0].area == pytest.approx(100 * 0.25)


def test_attributes_score_area_and_class() -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[0:10, 0:20] = 1
    mask[20:30, 20:30] = 2
    score = np.where(mask == 1, 0.8, 0.6).astype(np.float32)
    frame = vectorize_mask(mask, T, UTM, NAMES, score=score, strip_height=3)
    by_class = frame.set_index("class")
    assert by_class.loc["building", "area_m2"] == pytest.approx(200 * 0.25)
    assert by_class.loc["building", "score"] == pytest.approx(0.8)
    assert by_class.loc["road", "score"] == pytest.approx(0.6)
    assert by_class.loc["road", "class_id"] == 2


def test_min_area_and_simplify() -> None:
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[2:4, 2:4] = 1  # 4 px = 1 m2
    yy, xx = np.mgrid[0:60, 0:60]
    mask[((yy - 35) ** 2 + (xx - 35) ** 2) < 200] = 1  # a pixelated disc
    full = vectorize_mask(mask, T, UTM, NAMES)
    assert len(full) == 2
    kept = vectorize_mask(mask, T, UTM, NAMES, min_area_m2=2.0)
    assert len(kept) == 1
    simple = vectorize_mask(mask, T, UTM, NAMES, simplify=1.0, min_area_m2=2.0)
    assert shapely.get_num_coordinates(simple.geometry.iloc[0]) < shapely.get_num_coordinates(
        kept.geometry.iloc[0]
    )
    assert simple.geometry.iloc[0].is_valid
    assert simple.area.iloc[0] == pytest.approx(kept.area.iloc[0], rel=0.05)


def test_geodesic_area_for_geographic_crs() -> None:
    # 100 x 100 pixels of 1e-5 deg at the equator: about 1.113 m x 1.106 m each.
    mask = np.ones((100, 100), dtype=np.uint8)
    frame = vectorize_mask(mask, from_origin(0.0, 0.0005, 1e-5, 1e-5), CRS.from_epsg(4326), NAMES)
    assert frame["area_m2"].iloc[0] == pytest.approx(1.1132 * 1.1057 * 1e4, rel=0.01)


@pytest.mark.parametrize("suffix", sorted(VECTOR_FORMATS))
@pytest.mark.parametrize("empty", [False, True])
def test_every_format_reopens_with_the_crs(tmp_path: Path, suffix: str, empty: bool) -> None:
    mask = np.zeros((20, 20), dtype=np.uint8) if empty else seam_mask()
    frame = vectorize_mask(mask, T, UTM, NAMES)
    path = tmp_path / f"out{suffix}"
    write_vectors(frame, path)
    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
    assert back.crs == UTM
    assert len(back) == len(frame)
    if suffix != ".parquet":
        info = pyogrio.read_info(path, force_feature_count=True)
        assert info["features"] == len(frame)
    if not empty:
        assert set(back.geom_type) <= {"Polygon", "MultiPolygon"}
        assert (
            back.geometry.union_all().symmetric_difference(frame.geometry.union_all()).area < 1e-6
        )


def test_unknown_suffix(tmp_path: Path) -> None:
    frame = vectorize_mask(np.zeros((4, 4), np.uint8), T, UTM, NAMES)
    with pytest.raises(OutputError, match=r"unknown vector format '\.kml'; use one of"):
        write_vectors(frame, tmp_path / "out.kml")


def test_known_answer_boxes_in_map_coordinates() -> None:
    boxes = [
        shapely.box(500010, 4999950, 500030, 4999980),
        shapely.box(500040.5, 4999990, 500044, 4999995.5),
    ]
    mask = rasterize([(b, 1) for b in boxes], out_shape=(120, 120), transform=T, dtype="uint8")
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=16)
    assert len(frame) == 2
    for box in boxes:
        match = frame[frame.intersects(box)]
        assert len(match) == 1
        assert match.geometry.iloc[0].hausdorff_distance(box) <= 0.5 + 1e-9  # within one pixel


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), strip=st.integers(1, 12), density=st.floats(0.3, 0.9))
def test_joined_polygons_are_valid_without_repair(
    seed: int, strip: int, density: float, monkeypatch
) -> None:
    # Dense noise joins pieces over many seams, with holes, and pixels of one polygon that touch
    # at a corner (inside a strip and on a seam): the joined rings must come out OGC-valid as
    # built, equal to the whole-mask polygons.
    def no_repair(*_a, **_k):
        raise AssertionError("a polygon needed make_valid")

    monkeypatch.setattr(shapely, "make_valid", no_repair)
    rng = np.random.default_rng(seed)
    mask = ((rng.random((36, 28)) < density) * rng.integers(1, 3, size=(36, 28))).astype(np.uint8)
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=strip)
    monkeypatch.undo()
    same_polygons(frame, reference(mask))


def test_finished_polygons_are_ready_before_the_end() -> None:
    from geounet.vectors.strips import StripVectorizer

    mask = np.zeros((30, 20), dtype=np.uint8)
    mask[2:5, 2:5] = 1  # inside strip 1
    mask[8:14, 3:6] = 1  # crosses the seam at row 10, finished in strip 2
    mask[18:30, 10:12] = 1  # reaches the last row: open until finish
    vec = StripVectorizer(T, UTM, NAMES)
    vec.add(0, mask[:10], None)
    assert vec.ready == 1 and vec.open_groups == 1
    first = vec.take()
    assert first is not None and len(first) == 1 and vec.ready == 0
    vec.add(10, mask[10:20], None)
    assert vec.ready == 1 and vec.open_groups == 1
    second = vec.take()
    assert second is not None and second["area_m2"].tolist() == [18 * 0.25]
    vec.add(20, mask[20:], None)
    assert vec.ready == 0 and vec.open_groups == 1
    rest = vec.take(final=True)
    assert rest is not None and rest["area_m2"].tolist() == [24 * 0.25] and vec.open_groups == 0
    assert vec.take() is None


def test_a_polygon_across_many_strips_keeps_its_holes() -> None:
    # A comb: a frame with 40 holes, cut into one-row strips: 60 seams.
    mask = np.ones((60, 45), dtype=np.uint8)
    for k in range(40):
        r, c = 3 + (k // 10) * 14, 3 + (k % 10) * 4
        mask[r : r + 10, c : c + 2] = 0
    frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=1)
    (geom,) = frame.geometry
    assert len(geom.interiors) == 40 and geom.is_valid
    assert geom.area == pytest.approx(float(mask.sum()) * 0.25)
    same_polygons(frame, reference(mask))


@pytest.mark.parametrize("suffix", sorted(VECTOR_FORMATS))
def test_streamed_batches_give_the_file_written_at_once(tmp_path: Path, suffix: str) -> None:
    from geounet.vectors.strips import StripVectorizer
    from geounet.vectors.writer import VectorWriter

    rng = np.random.default_rng(3)
    mask = ((rng.random((64, 50)) < 0.5) * rng.integers(1, 3, size=(64, 50))).astype(np.uint8)
    mask[:, 20] = 1  # one polygon runs the whole height: open until the end
    whole = vectorize_mask(mask, T, UTM, NAMES)
    vec = StripVectorizer(T, UTM, NAMES)
    writer = VectorWriter(tmp_path / f"s{suffix}", style="<qgis/>")
    batches = 0
    for r0 in range(0, 64, 8):
        vec.add(r0, mask[r0 : r0 + 8], None)
        while (frame := vec.take(37)) is not None:  # small batches: many appends
            writer.write(frame)
            batches += 1
    while (frame := vec.take(37, final=True)) is not None:
        writer.write(frame)
        batches += 1
    assert writer.close() == len(whole) and batches > 5
    assert not list(tmp_path.glob("*.batches.gpkg*"))  # the scratch file is gone
    back = gpd.read_parquet(writer.path) if suffix == ".parquet" else gpd.read_file(writer.path)
    assert back.crs == UTM and len(back) == len(whole)
    assert list(back.columns) == list(whole.columns)
    assert back.geometry.is_valid.all()
    assert sorted(back["area_m2"]) == sorted(whole["area_m2"])
    assert back.geometry.union_all().symmetric_difference(whole.geometry.union_all()).area < 1e-6
    if suffix == ".gpkg":
        import sqlite3

        with sqlite3.connect(writer.path) as db:
            assert db.execute("select count(*) from layer_styles").fetchone() == (1,)
    else:
        assert writer.path.with_suffix(".qml").read_text() == "<qgis/>"
    if suffix == ".parquet":
        import json

        import pyarrow.parquet as pq

        geo = json.loads(
            pq.ParquetFile(writer.path).metadata.metadata[b"geo"]
        )  # file key-value metadata
        assert geo["columns"]["geometry"]["encoding"] == "WKB"
        assert set(geo["columns"]["geometry"]["geometry_types"]) <= {"Polygon", "MultiPolygon"}
        assert np.allclose(geo["columns"]["geometry"]["bbox"], whole.total_bounds)
    elif VECTOR_FORMATS[suffix] in ("GPKG", "FlatGeobuf"):  # (a Shapefile says Polygon for both)
        layer = "s" if suffix == ".gpkg" else None
        assert pyogrio.read_info(writer.path, layer=layer)["geometry_type"] == "MultiPolygon"


def test_a_writer_with_only_empty_batches_makes_an_empty_file(tmp_path: Path) -> None:
    from geounet.vectors.writer import VectorWriter

    empty = vectorize_mask(np.zeros((4, 4), np.uint8), T, UTM, NAMES)
    for suffix in (".fgb", ".parquet", ".gpkg"):
        w = VectorWriter(tmp_path / f"e{suffix}")
        w.write(empty)
        assert w.close() == 0
        back = gpd.read_parquet(w.path) if suffix == ".parquet" else gpd.read_file(w.path)
        assert len(back) == 0 and back.crs == UTM


def test_wide_strips_are_polygonized_in_bands_with_the_same_result(monkeypatch) -> None:
    from geounet.vectors import strips

    monkeypatch.setattr(strips, "CHUNK_PIXELS", 300)  # 3 rows of 90 columns per call
    mask = seam_mask()
    frame = vectorize_mask(mask, T, UTM, NAMES)  # one strip of 120 rows, in 40 bands
    same_polygons(frame, reference(mask))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), limit=st.integers(1, 12), density=st.floats(0.2, 0.6))
def test_bands_with_many_pieces_are_halved_with_the_same_result(
    seed: int, limit: int, density: float
) -> None:
    """Speckle: a band with more pieces than MAX_BAND_PIECES is vectorized in halves (down to
    single rows), which moves the seams; the polygons stay those of the whole mask."""
    from geounet.vectors import strips

    rng = np.random.default_rng(seed)
    mask = (rng.random((37, 41)) < density).astype(np.uint8) * rng.integers(
        1, 3, size=(37, 41)
    ).astype(np.uint8)
    old = strips.MAX_BAND_PIECES
    strips.MAX_BAND_PIECES = limit
    try:
        frame = vectorize_mask(mask, T, UTM, NAMES, strip_height=16)
    finally:
        strips.MAX_BAND_PIECES = old
    same_polygons(frame, reference(mask))


def test_solid_rectangles_are_built_as_shapes_lists_them() -> None:
    """Rectangular pieces inside a band skip GDAL: same vertices, same order, as ``shapes``."""
    mask = np.zeros((12, 20), dtype=np.uint8)
    mask[2, 3] = 1  # a pixel
    mask[4:7, 5:9] = 2  # a block
    mask[3, 12:18] = 1  # a run
    mask[5:9, 14] = 1  # a column (a second piece, not touching the run)
    mask[0, 0:4] = 1  # on the first row: through GDAL (could meet a strip above)
    mask[11, 10:12] = 2  # on the last row: through GDAL (open at the bottom)
    mask[8:11, 2:6] = 1
    mask[9, 3] = 0  # a block with a hole: not a rectangle
    frame = vectorize_mask(mask, T, UTM, NAMES)
    ref = reference(mask)
    same_polygons(frame, ref)
    got = {shapely.normalize(g).wkb: g for g in frame.geometry}
    top, bottom = T.f, T.f + 12 * T.e
    inside = [
        g
        for _, g in ref
        if shapely.get_num_coordinates(g) == 5 and g.bounds[3] < top and g.bounds[1] > bottom
    ]
    assert len(inside) == 4
    for geom in inside:  # vertex for vertex, ring start and direction included
        assert np.array_equal(
            shapely.get_coordinates(got[shapely.normalize(geom).wkb]), shapely.get_coordinates(geom)
        )


def test_an_interrupt_during_the_final_conversion_stops_it_as_an_interrupt(
    tmp_path: Path, monkeypatch
) -> None:
    import contextlib

    import pyogrio.raw

    from geounet.vectors.writer import VectorWriter

    frame = vectorize_mask(seam_mask(), T, UTM, NAMES)
    writer = VectorWriter(tmp_path / "i.fgb")
    writer.write(frame)
    real = pyogrio.raw.open_arrow
    pulled: list[int] = []

    @contextlib.contextmanager
    def interrupted(*args, **kwargs):
        with real(*args, **kwargs) as (meta, reader):

            class Reader:
                schema = reader.schema

                def __iter__(self):
                    for batch in reader:
                        pulled.append(len(batch))
                        yield batch
                    raise KeyboardInterrupt  # as if Ctrl-C came while GDAL wrote

            yield meta, Reader()

    monkeypatch.setattr(pyogrio.raw, "open_arrow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert pulled and not list(tmp_path.glob("*.batches.gpkg*"))


def test_a_large_flatgeobuf_is_written_without_its_in_memory_index(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """GDAL's FlatGeobuf writer holds every feature's extent to build the index: above
    FGB_INDEX_MAX_FEATURES the streamed file has none (smaller, same features) and a warning says so."""
    from geounet.vectors import writer as vector_writer
    from geounet.vectors.strips import StripVectorizer

    rng = np.random.default_rng(4)
    mask = (rng.random((64, 60)) < 0.3).astype(np.uint8)
    sizes = {}
    for limit in (10**9, 50):
        monkeypatch.setattr(vector_writer, "FGB_INDEX_MAX_FEATURES", limit)
        vec = StripVectorizer(T, UTM, NAMES)
        writer = vector_writer.VectorWriter(tmp_path / f"s{limit}.fgb")
        for r0 in range(0, 64, 8):
            vec.add(r0, mask[r0 : r0 + 8], None)
            while (frame := vec.take(40)) is not None:
                writer.write(frame)
        while (frame := vec.take(40, final=True)) is not None:
            writer.write(frame)
        n = writer.close()
        assert n > 50 and len(gpd.read_file(writer.path)) == n
        sizes[limit] = writer.path.stat().st_size
    assert sizes[50] < sizes[10**9]  # no index
    assert "without a FlatGeobuf spatial index" in caplog.text
