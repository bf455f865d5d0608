from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.errors import TilingError
from geounet.geodata.tiling import axis_starts, check_tile_size, fit_tile, tile_rows, tile_windows


def coverage(height: int, width: int, tile: int, overlap: int) -> np.ndarray:
    hits = np.zeros((height, width), dtype=np.int32)
    for t in tile_windows(height, width, tile, overlap):
        assert 0 <= t.row_off and t.row_end <= height, t
        assert 0 <= t.col_off and t.col_end <= width, t
        assert t.height == min(tile, height) and t.width == min(tile, width)
        hits[t.row_off : t.row_end, t.col_off : t.col_end] += 1
    return hits


@pytest.mark.parametrize(
    ("height", "width"),
    [(1, 1), (63, 65), (64, 64), (65, 64), (100, 37), (129, 257), (449, 450), (1000, 3)],
)
def test_windows_cover_every_pixel_and_stay_inside(height: int, width: int) -> None:
    hits = coverage(height, width, 64, 16)
    assert hits.min() >= 1


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    tile=st.sampled_from([16, 32, 48, 64, 128]),
    frac=st.floats(0, 0.5),
)
def test_windows_cover_property(height: int, width: int, tile: int, frac: float) -> None:
    overlap = int(tile * frac)
    hits = coverage(height, width, tile, overlap)
    assert hits.min() >= 1
    # Interior windows step exactly by the stride; only the last is snapped to the edge.
    starts = axis_starts(width, tile, tile - overlap)
    assert all(b - a == tile - overlap for a, b in itertools.pairwise(starts[:-1]))
    assert starts == sorted(set(starts))


def test_edge_flags_and_rows() -> None:
    tiles = tile_windows(130, 100, 64, 16)
    rows = list(tile_rows(tiles))
    assert [len(r) for r in rows] == [2, 2, 2]
    assert [r[0].row_off for r in rows] == [0, 48, 66]
    assert all(t.top for t in rows[0]) and all(t.bottom for t in rows[-1])
    assert [t.left for t in rows[0]] == [True, False] and [t.right for t in rows[0]] == [
        False,
        True,
    ]


def test_small_scene_gets_one_window_of_its_size() -> None:
    (t,) = tile_windows(10, 20, 64, 16)
    assert (t.row_off, t.col_off, t.height, t.width) == (0, 0, 10, 20)
    assert t.top and t.bottom and t.left and t.right


def test_tile_size_not_divisible_names_sizes_that_work() -> None:
    with pytest.raises(TilingError, match=r"not divisible by 16.*use 496 or 512"):
        check_tile_size(500, 64, multiple=16)


def test_bad_overlap_rejected() -> None:
    with pytest.raises(TilingError, match="overlap 40 must be between 0 and half"):
        check_tile_size(64, 40)
    with pytest.raises(TilingError, match="no pixels"):
        tile_windows(0, 10, 64, 0)


def test_fit_tile_shrinks_only_tiles_larger_than_the_raster() -> None:
    assert fit_tile(512, 64, 512, multiple=16) == (512, 64)
    assert fit_tile(512, 64, 3000, multiple=16) == (512, 64)
    assert fit_tile(512, 64, 256, multiple=16) == (256, 64)
    assert fit_tile(512, 64, 201, multiple=16) == (208, 64)
    assert fit_tile(512, 64, 100, multiple=16) == (112, 56)
    assert fit_tile(512, 64, 1, multiple=16) == (16, 8)
    for extent in range(1, 600, 7):
        tile, overlap = fit_tile(512, 64, extent, multiple=16)
        check_tile_size(tile, overlap, multiple=16)
        assert tile >= min(extent, 512) and tile % 16 == 0
