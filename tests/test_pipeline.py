"""The stages of prediction, each on its own: reading ahead, batching, blending into strips and
the strip worker. (End to end they are covered by test_predict.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geounet.geodata.raster import ReadAhead, WindowReader, open_scene
from geounet.geodata.tiling import tile_windows
from geounet.prediction.blend import Stitcher, StripAssembler
from geounet.prediction.stages import StripWorker, TileBatcher


def _scene(tmp_path, height=70, width=90):
    path = tmp_path / "s.tif"
    data = np.arange(height * width, dtype=np.float32).reshape(1, height, width)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=1,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(0, 0, 1, 1),
    ) as ds:
        ds.write(data)
    return path, data[0]


def test_read_ahead_yields_every_tile_in_order_with_its_pixels(tmp_path) -> None:
    path, data = _scene(tmp_path)
    scene = open_scene(path)
    tiles = tile_windows(scene.height, scene.width, 32, 8)
    reader = WindowReader(scene, [1], 32)
    with ReadAhead(reader, tiles, threads=3, ahead=5) as reads:
        got = list(reads)
    reader.close()
    assert [t for t, _, _ in got] == tiles
    for t, px, valid in got:
        assert np.array_equal(
            px[0, : t.height, : t.width],
            data[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width],
        )
        assert valid[: t.height, : t.width].all() and not valid[t.height :].any()
    assert reads.wait >= 0


def test_read_ahead_stops_reading_when_closed_early(tmp_path) -> None:
    calls = []

    class Slow:
        def read(self, tile):
            calls.append(tile)
            time.sleep(0.01)
            return np.zeros((1, 2, 2), np.float32), np.ones((2, 2), bool)

    tiles = tile_windows(400, 400, 16, 0)  # 625 tiles
    reads = ReadAhead(Slow(), tiles, threads=2, ahead=4)  # type: ignore[arg-type]
    it = iter(reads)
    next(it)
    reads.close()
    assert len(calls) <= 8  # only what was queued, never the whole scene


def test_batcher_skips_empty_tiles_and_knows_what_is_handed_out() -> None:
    tiles = tile_windows(64, 64, 16, 0)
    b = TileBatcher(3)
    full = []
    for i, t in enumerate(tiles[:7]):
        valid = np.full((16, 16), i != 1)  # tile 1 is all nodata
        if b.add(i, t, np.full((1, 16, 16), i, np.float32), valid):
            full.append(i)
            batch = b.take()
            assert batch.data.shape == (3, 1, 16, 16) and len(batch.tiles) == 3
        # every tile before waiting_from is either skipped or in a batch already taken
        assert b.waiting_from == (i + 1 if not b.tiles else tiles.index(b.tiles[0]))
    assert full == [3, 6] and b.skipped == 1 and b.waiting_from == 7
    b.add(7, tiles[7], np.zeros((1, 16, 16), np.float32), np.ones((16, 16), bool))
    assert b.waiting_from == 7
    last = b.take()
    assert [t.col for t in last.tiles] == [tiles[7].col] and not b.tiles


@pytest.mark.parametrize("batch", [1, 3, 7, 100])
def test_assembler_finishes_every_row_once_and_equals_one_stitch(batch: int) -> None:
    height, width, tile, overlap = 150, 110, 48, 12
    tiles = tile_windows(height, width, tile, overlap)
    rng = np.random.default_rng(0)
    logits = {t: rng.normal(size=(2, t.height, t.width)).astype(np.float32) for t in tiles}
    asm = StripAssembler(tiles, height, width, 2, overlap)
    out = np.full((2, height, width), np.nan, np.float32)
    next_row = 0
    held = 0
    for start in range(0, len(tiles), batch):
        for t in tiles[start : start + batch]:
            asm.add(t, logits[t])
        held = max(held, asm.stitcher.rows_held)
        for strip in asm.finished(min(start + batch, len(tiles)) - 1):
            assert strip.row_off == next_row
            out[:, strip.row_off : strip.row_off + strip.height] = strip.logits
            next_row += strip.height
    assert next_row == height and not np.isnan(out).any()
    assert asm.finished(len(tiles) - 1) == []
    if batch == 1:
        assert held <= tile  # one row of tiles at a time
    # the same tiles blended at once (one strip) give the same numbers
    full = Stitcher(height, width, 2, overlap)
    for t in tiles:
        full.add(t, logits[t])
    strip = full.flush(height)
    assert np.allclose(strip.logits, out, atol=1e-6)


def test_strip_worker_keeps_order_in_the_background_and_raises_failures() -> None:
    seen: list[int] = []
    threads: set[str] = set()

    def handle(strip):
        threads.add(threading.current_thread().name)
        time.sleep(0.005)
        seen.append(strip)

    timings = {"strips": 0.0, "strips_wait": 0.0}
    w = StripWorker(handle, background=True, timings=timings)
    for i in range(10):
        w.submit(i)  # type: ignore[arg-type]
    w.drain()
    w.shutdown()
    assert seen == list(range(10)) and threads == {"geounet-strips_0"}

    inline: list[int] = []
    w = StripWorker(inline.append, background=False, timings=timings)  # type: ignore[arg-type]
    w.submit(5)  # type: ignore[arg-type]
    assert inline == [5] and timings["strips"] > 0
    w.shutdown()

    def boom(strip):
        raise RuntimeError(f"strip {strip} failed")

    w = StripWorker(boom, background=True, timings=timings)
    w.submit(1)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="strip 1 failed"):
        for i in range(2, 6):
            w.submit(i)  # type: ignore[arg-type]
        w.drain()
    w.shutdown()
