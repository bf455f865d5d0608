"""Blending weights and the strip-bounded logit accumulator.

Each tile's logits are multiplied by a separable weight window ``w(y, x) = wy(y) * wx(x)`` and
accumulated with the weights themselves; a finished row is the weighted sum divided by the weight
sum, so the result is an exact weighted mean (a partition of unity, whatever the overlaps).

Along an axis, a side that another tile overlaps is tapered over ``overlap`` pixels with
``w(i) = sin^2(pi/2 * (i + 0.5) / overlap)``, ``i = 0..overlap-1``; the neighbour's mirrored ramp is
``cos^2`` of the same argument, so two tiles meeting with exactly ``overlap`` shared pixels sum to 1
before any division. Sides on the scene edge are not tapered (nothing else covers them), and
every weight is positive, so every pixel of a tile counts. Nodata pixels get weight 0.

Only numpy: no torch and no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geounet.geodata.tiling import Tile


def taper_1d(length: int, overlap: int, *, start: bool, end: bool) -> npt.NDArray[np.float32]:
    """One axis of the weight window.

    Args:
        length: Pixels along the axis.
        overlap: Taper length in pixels (0 disables tapering).
        start: Taper the start (a neighbour overlaps it).
        end: Taper the end.

    Returns:
        float32 (length,) weights in (0, 1].
    """
    w = np.ones(length, dtype=np.float32)
    n = min(overlap, length // 2)
    if n > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2
        if start:
            w[:n] = ramp
        if end:
            w[length - n :] = np.minimum(w[length - n :], ramp[::-1])
    return w


def blend_weights(tile: Tile, overlap: int) -> npt.NDArray[np.float32]:
    """The 2-D weight window of a tile: tapered where a neighbour overlaps, flat at scene edges.

    Returns:
        float32 (tile.height, tile.width).
    """
    wy = taper_1d(tile.height, overlap, start=not tile.top, end=not tile.bottom)
    wx = taper_1d(tile.width, overlap, start=not tile.left, end=not tile.right)
    return np.outer(wy, wx)


@dataclass(frozen=True, slots=True)
class Strip:
    """Finished rows of the blended result.

    Attributes:
        row_off: First scene row of the strip.
        logits: float32 (channels, rows, width): weighted mean logits (0 where not covered).
        valid: bool (rows, width): pixels covered by at least one valid (non-nodata) tile pixel.
    """

    row_off: int
    logits: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]

    @property
    def height(self) -> int:
        """Rows in the strip."""
        return int(self.valid.shape[0])


class Stitcher:
    """Accumulates weighted tile logits over a rolling strip of rows.

    Memory is ``(channels + 1) * rows_held * width`` float32, where ``rows_held`` is at most the
    rows between the first unflushed row and the bottom of the last tile added: about one tile row
    when rows are flushed as they finish, whatever the scene height.

    Args:
        height: Scene rows.
        width: Scene columns.
        channels: Logit channels.
        overlap: Taper length in pixels.
    """

    def __init__(self, height: int, width: int, channels: int, overlap: int) -> None:
        self.height = height
        self.width = width
        self.channels = channels
        self.overlap = overlap
        self.top = 0  # scene row of buffer row 0; rows above it are flushed
        self._acc = np.zeros((channels, 0, width), dtype=np.float32)
        self._wsum = np.zeros((0, width), dtype=np.float32)
        self._weights: dict[tuple[int, int, bool, bool, bool, bool], npt.NDArray[np.float32]] = {}

    @property
    def rows_held(self) -> int:
        """Rows currently allocated in the buffer."""
        return int(self._wsum.shape[0])

    def _weight(self, tile: Tile) -> npt.NDArray[np.float32]:
        key = (tile.height, tile.width, tile.top, tile.bottom, tile.left, tile.right)
        w = self._weights.get(key)
        if w is None:
            w = self._weights[key] = blend_weights(tile, self.overlap)
        return w

    def _reserve(self, rows: int) -> None:
        if rows <= self.rows_held:
            return
        extra = rows - self.rows_held
        self._acc = np.concatenate(
            [self._acc, np.zeros((self.channels, extra, self.width), np.float32)], axis=1
        )
        self._wsum = np.concatenate([self._wsum, np.zeros((extra, self.width), np.float32)])

    def add(
        self,
        tile: Tile,
        logits: npt.NDArray[np.floating],
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Accumulate one tile.

        Args:
            tile: Where the logits go.
            logits: (channels, tile.height, tile.width) logits of the tile's real pixels.
            valid: Optional bool (tile.height, tile.width); False pixels (nodata) get weight 0.

        Raises:
            ValueError: If the tile starts above rows already flushed (a programming error).
        """
        if tile.row_off < self.top:
            raise ValueError(f"tile at row {tile.row_off} is above flushed row {self.top}")
        w = self._weight(tile)
        if valid is not None and not valid.all():
            w = w * valid
        r0 = tile.row_off - self.top
        r1 = r0 + tile.height
        self._reserve(r1)
        cols = slice(tile.col_off, tile.col_end)
        acc = self._acc[:, r0:r1, cols]
        for c in range(self.channels):  # one temporary of one channel, not of all
            acc[c] += logits[c] * w
        self._wsum[r0:r1, cols] += w

    def release(self) -> None:
        """Free the buffer (after the last flush); adding again starts from an empty one."""
        self._acc = np.zeros((self.channels, 0, self.width), dtype=np.float32)
        self._wsum = np.zeros((0, self.width), dtype=np.float32)

    def flush(self, until_row: int) -> Strip | None:
        """Finish and release rows ``[top, until_row)``: no later tile may touch them.

        Returns:
            The finished strip, or None if there is nothing to flush.
        """
        until_row = min(until_row, self.height)
        n = until_row - self.top
        if n <= 0:
            return None
        self._reserve(n)
        wsum = self._wsum[:n]
        valid = wsum > 0
        logits = np.divide(
            self._acc[:, :n],
            wsum,
            out=np.zeros((self.channels, n, self.width), np.float32),
            where=valid,
        )
        # Shift the rest of the buffer up (numpy handles the overlapping copy).
        rest = self.rows_held - n
        self._acc[:, :rest] = self._acc[:, n:]
        self._wsum[:rest] = self._wsum[n:]
        self._acc[:, rest:] = 0
        self._wsum[rest:] = 0
        strip = Strip(self.top, logits, valid)
        self.top = until_row
        return strip


class StripAssembler:
    """Blends tiles, given in grid order, into strips that are finished as their rows are.

    A row of tiles is finished once every tile of it, and of the rows above, is blended; its
    scene rows down to where the next row of tiles starts can then no longer change. With
    tiles blended in batches, :meth:`finished` is told the last tile index that is blended, and
    returns the strips that it completes, so the buffer holds the rows one batch spans at most.

    Args:
        tiles: Every tile of the scene, in grid order (rows of tiles top to bottom).
        height, width, channels, overlap: As for :class:`Stitcher`.
    """

    def __init__(
        self, tiles: Sequence[Tile], height: int, width: int, channels: int, overlap: int
    ) -> None:
        self.stitcher = Stitcher(height, width, channels, overlap)
        self._height = height
        self._last = {t.row: i for i, t in enumerate(tiles)}  # index of each row's last tile
        self._start = {t.row: t.row_off for t in tiles}
        self._rows = len(self._start)
        self._next_row = 0  # first grid row not yet flushed

    def add(
        self,
        tile: Tile,
        logits: npt.NDArray[np.floating],
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Blend one tile (see :meth:`Stitcher.add`)."""
        self.stitcher.add(tile, logits, valid)

    def finished(self, last_index: int) -> list[Strip]:
        """The strips that tiles ``0..last_index`` being blended complete (oldest first)."""
        out = []
        while self._next_row < self._rows and self._last[self._next_row] <= last_index:
            row = self._next_row + 1
            until = self._start[row] if row < self._rows else self._height
            strip = self.stitcher.flush(until)
            if strip is not None:
                out.append(strip)
            self._next_row += 1
        return out
