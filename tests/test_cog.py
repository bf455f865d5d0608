"""The streaming COG writer: overviews built while strips arrive, equal to GDAL's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from geounet.geodata.cog import StripWriter, halve, overview_factors
from geounet.geodata.raster import Scene

NAN = float("nan")


def scene(width: int, height: int) -> Scene:
    return Scene(
        path="x.tif",
        name="x.tif",
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs=rasterio.crs.CRS.from_epsg(32633),
        transform=from_origin(500000, 5000000, 0.5, 0.5),
        nodata=None,
        alpha=None,
        data_bands=(1,),
        has_mask=False,
    )


def write_strips(path: Path, data: np.ndarray, heights: list[int], **kwargs: object) -> None:
    w = StripWriter(
        path,
        scene(data.shape[2], data.shape[1]),
        count=data.shape[0],
        dtype=data.dtype.name,
        **kwargs,
    )
    row = 0
    for h in heights:
        w.write(row, data[:, row : row + h])
        row += h
    w.close()


def strip_heights(total: int, rng: np.random.Generator) -> list[int]:
    out = []
    while total > 0:
        h = int(min(total, rng.integers(1, 700)))
        out.append(h)
        total -= h
    return out


@pytest.mark.parametrize(
    ("size", "levels"),
    [((512, 512), []), ((513, 100), [2]), ((8192, 8192), [2, 4, 8, 16]), ((3000, 700), [2, 4, 8])],
)
def test_overview_factors_stop_when_one_block_holds_the_level(
    size: tuple[int, int], levels: list[int]
) -> None:
    assert overview_factors(*size, block=512) == levels


def test_halve_averages_valid_pixels_and_keeps_odd_edges() -> None:
    a = np.array([[[1, 3, 5], [3, NAN, 7], [9, 9, NAN]]], np.float32)
    out = halve(a, "average", NAN)
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out[0], [[7 / 3, 6], [9, NAN]])
    u = np.array([[[10, 20], [255, 255]]], np.uint8)  # nodata 255 ignored, rounded
    assert halve(u, "average", 255)[0, 0, 0] == 15
    assert halve(np.full((1, 2, 2), 255, np.uint8), "average", 255)[0, 0, 0] == 255
    m = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)
    np.testing.assert_array_equal(halve(m, "nearest", 255)[0], [[0, 2, 4], [10, 12, 14]])


def test_probability_cog_matches_gdal_overviews(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    h, w = 1300, 1100
    yy, xx = np.mgrid[0:h, 0:w]
    data = ((np.sin(yy / 37.0) * np.cos(xx / 23.0) + 1) / 2).astype(np.float32)[None]
    data[0, 100:180, 200:260] = np.nan  # nodata block
    out = tmp_path / "p.tif"
    write_strips(out, data, strip_heights(h, rng), nodata=NAN)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (
        "intermediates left behind"
    )

    ref = tmp_path / "ref.tif"
    with rasterio.open(
        ref,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="float32",
        nodata=NAN,
        tiled=True,
        blockxsize=512,
        blockysize=512,
    ) as dst:
        dst.write(data)
        dst.build_overviews([2, 4], Resampling.average)
    with rasterio.open(out) as got, rasterio.open(ref) as want:
        assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert got.overviews(1) == [2, 4]
        assert got.block_shapes == [(512, 512)]
        np.testing.assert_array_equal(got.read(), data)  # lossless
        for factor in (2, 4):
            shape = (1, -(-h // factor), -(-w // factor))
            a = got.read(out_shape=shape, resampling=Resampling.nearest)
            b = want.read(out_shape=shape, resampling=Resampling.nearest)
            assert np.array_equal(np.isnan(a), np.isnan(b))
            inner = (
                slice(None),
                slice(0, shape[1] - 1),
                slice(0, shape[2] - 1),
            )  # GDAL's odd edge differs
            np.testing.assert_allclose(a[inner], b[inner], atol=0.02, equal_nan=True)


def test_mask_cog_keeps_values_nodata_and_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    h, w = 1030, 1500
    data = rng.integers(0, 3, (1, h, w)).astype(np.uint8)
    data[0, :7] = 255
    out = tmp_path / "m.tif"
    writer = StripWriter(
        out, scene(w, h), count=1, dtype="uint8", nodata=255, overview_resampling="nearest"
    )
    writer.dataset.write_colormap(1, {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 0, 255, 255)})
    writer.dataset.update_tags(1, CLASS_1="building")
    row = 0
    for height in strip_heights(h, rng):
        writer.write(row, data[:, row : row + height])
        row += height
    writer.close()
    with rasterio.open(out) as got:
        np.testing.assert_array_equal(got.read(), data)
        assert got.nodata == 255
        assert got.colormap(1)[1] == (255, 0, 0, 255)
        assert got.tags(1)["CLASS_1"] == "building"
        assert got.overviews(1) == [2, 4]
        ovr = got.read(1, out_shape=(-(-h // 2), -(-w // 2)), resampling=Resampling.nearest)
        assert set(np.unique(ovr)) <= {0, 1, 2, 255}  # nearest: no blended class values


def test_writer_refuses_gaps_and_abort_leaves_nothing(tmp_path: Path) -> None:
    data = np.zeros((1, 600, 600), np.float32)
    w = StripWriter(tmp_path / "a.tif", scene(600, 600), count=1, dtype="float32", nodata=NAN)
    w.write(0, data[:, :100])
    with pytest.raises(ValueError, match="out of order"):
        w.write(200, data[:, 200:300])
    with pytest.raises(ValueError, match="never written"):
        w.close()
    assert list(tmp_path.iterdir()) == []
