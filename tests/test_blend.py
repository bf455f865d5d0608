from __future__ import annotations

import numpy as np
import pytest

from geounet.geodata.tiling import tile_rows, tile_windows
from geounet.prediction.blend import Stitcher, blend_weights, taper_1d


def stitch(height: int, width: int, tile: int, overlap: int, value_fn, channels: int = 1):
    """Run every tile through the stitcher, flushing row by row like predict does."""
    tiles = tile_windows(height, width, tile, overlap)
    rows = list(tile_rows(tiles))
    st = Stitcher(height, width, channels, overlap)
    out = np.full((channels, height, width), np.nan, dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
    peak = 0
    for i, row in enumerate(rows):
        for t in row:
            st.add(t, value_fn(t))
        peak = max(peak, st.rows_held)
        until = rows[i + 1][0].row_off if i + 1 < len(rows) else height
        strip = st.flush(until)
        assert strip is not None
        out[:, strip.row_off : strip.row_off + strip.height] = strip.logits
        valid[strip.row_off : strip.row_off + strip.height] = strip.valid
    return out, valid, peak


def test_taper_is_smooth_positive_and_complementary() -> None:
    w = taper_1d(64, 16, start=True, end=True)
    assert w.min() > 0 and w.max() == 1
    assert np.allclose(w[:16] + w[:16][::-1], 1.0)  # sin^2 + cos^2
    assert np.all(np.diff(w[:16]) > 0)
    assert np.all(taper_1d(64, 16, start=False, end=False) == 1)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (63, 65), (200, 300), (129, 64)])
def test_weights_are_a_partition_of_unity(height: int, width: int) -> None:
    # Accumulating the normalized weights themselves gives 1 everywhere.
    tiles = tile_windows(height, width, 64, 16)
    wsum = np.zeros((height, width))
    for t in tiles:
        wsum[t.row_off : t.row_end, t.col_off : t.col_end] += blend_weights(t, 16)
    total = np.zeros((height, width))
    for t in tiles:
        w = blend_weights(t, 16)
        total[t.row_off : t.row_end, t.col_off : t.col_end] += (
            w / wsum[t.row_off : t.row_end, t.col_off : t.col_end]
        )
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (63, 65), (200, 300), (500, 77)])
def test_constant_model_stitches_to_the_constant(height: int, width: int) -> None:
    out, valid, _ = stitch(
        height,
        width,
        64,
        16,
        lambda t: np.full((2, t.height, t.width), 3.25, np.float32),
        channels=2,
    )
    assert valid.all()
    np.testing.assert_allclose(out, 3.25, rtol=1e-6)


def test_stitch_of_a_global_field_reproduces_it() -> None:
    # Each tile reports the true value of a smooth global field: blending must give it back.
    yy, xx = np.mgrid[0:300, 0:260]
    field = np.sin(yy / 17.0) + np.cos(xx / 23.0)
    out, _valid, _ = stitch(
        300,
        260,
        64,
        16,
        lambda t: field[None, t.row_off : t.row_end, t.col_off : t.col_end].astype(np.float32),
    )
    np.testing.assert_allclose(out[0], field, atol=1e-5)


def test_memory_is_bounded_by_a_strip_not_the_scene() -> None:
    _, _, peak_short = stitch(
        200, 100, 64, 16, lambda t: np.zeros((1, t.height, t.width), np.float32)
    )
    _, _, peak_tall = stitch(
        3200, 100, 64, 16, lambda t: np.zeros((1, t.height, t.width), np.float32)
    )
    assert peak_tall == peak_short <= 64


def test_nodata_pixels_get_no_weight() -> None:
    tiles = tile_windows(64, 64, 64, 16)
    st = Stitcher(64, 64, 1, 16)
    valid = np.ones((64, 64), bool)
    valid[:10] = False
    st.add(tiles[0], np.ones((1, 64, 64), np.float32), valid)
    strip = st.flush(64)
    assert strip is not None
    assert not strip.valid[:10].any() and strip.valid[10:].all()
    assert (strip.logits[0, :10] == 0).all()


def test_tile_above_flushed_rows_is_an_error() -> None:
    tiles = tile_windows(128, 64, 64, 16)
    st = Stitcher(128, 64, 1, 16)
    st.flush(100)
    with pytest.raises(ValueError, match="above flushed row"):
        st.add(tiles[0], np.zeros((1, 64, 64), np.float32))
