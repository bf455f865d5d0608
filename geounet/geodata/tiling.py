"""Window maths: an edge-complete grid of overlapping tiles.

Pure functions over a frozen value type; no I/O and no torch.

Along one axis of ``length`` pixels, with ``tile`` pixels per window and ``stride = tile - overlap``,
the window starts are ``0, stride, 2*stride, ...`` while ``start + tile < length``, and then one
last window snapped to the edge at ``length - tile``. So the count is
``ceil((length - tile) / stride) + 1`` for ``length > tile``, and ``1`` otherwise. No window
overhangs the raster and no pixel is missed. A raster shorter than a tile gets one window of its
own length; the reader pads it to ``tile`` and masks the padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window

from geounet.errors import TilingError


@dataclass(frozen=True, slots=True)
class Tile:
    """One window of the grid, in pixels of the scene.

    Attributes:
        row_off: First row of the window in the scene.
        col_off: First column of the window in the scene.
        height: Rows of real data in the window (``<= tile_size``).
        width: Columns of real data in the window (``<= tile_size``).
        row: Index of the tile row in the grid (tiles of one row share ``row_off``).
        col: Index of the tile column in the grid.
        top, bottom, left, right: Whether that side lies on the scene edge; blending does not
            taper there, because no neighbour shares those pixels.
    """

    row_off: int
    col_off: int
    height: int
    width: int
    row: int
    col: int
    top: bool
    bottom: bool
    left: bool
    right: bool

    @property
    def window(self) -> Window:
        """The rasterio window of the real data."""
        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def row_end(self) -> int:
        """One past the last scene row the tile covers."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last scene column the tile covers."""
        return self.col_off + self.width


def check_tile_size(tile_size: int, overlap: int, *, multiple: int = 1) -> None:
    """Reject a tile size or overlap that cannot work.

    Args:
        tile_size: Window size in pixels.
        overlap: Pixels shared by neighbouring windows.
        multiple: The tile size must be divisible by this (``2**depth`` for a U-Net).

    Raises:
        TilingError: With the nearest sizes that work.
    """
    if tile_size < 1:
        raise TilingError(f"tile size must be positive, got {tile_size}")
    if multiple > 1 and tile_size % multiple:
        lower = max(multiple, tile_size // multiple * multiple)
        upper = (tile_size // multiple + 1) * multiple
        raise TilingError(
            f"tile size {tile_size} is not divisible by {multiple} (2**depth of the U-Net); "
            f"use {lower} or {upper}"
        )
    if overlap < 0 or overlap * 2 > tile_size:
        raise TilingError(
            f"overlap {overlap} must be between 0 and half the tile size ({tile_size // 2})"
        )


def fit_tile(tile_size: int, overlap: int, extent: int, *, multiple: int = 1) -> tuple[int, int]:
    """A tile no larger than a raster needs: ``(tile_size, overlap)`` as given when the raster's
    longer side ``extent`` reaches ``tile_size``, else the smallest multiple of ``multiple`` that
    covers ``extent`` (with the overlap cut to half of it).

    A raster smaller than a tile fits one window; the rest of a full-size tile would be padding
    that the network reads as a black frame around the scene, and pays for.
    """
    if extent >= tile_size:
        return tile_size, overlap
    fitted = max(multiple, -(-extent // multiple) * multiple)
    return fitted, min(overlap, fitted // 2)


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis, the last one snapped to the edge.

    Args:
        length: Pixels along the axis (>= 1).
        tile: Window length in pixels.
        stride: Step between window starts (>= 1).

    Returns:
        Increasing starts; every pixel ``0..length-1`` lies in at least one window
        ``[start, start + min(tile, length))``.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """The edge-complete grid of overlapping tiles of a raster, row-major.

    Args:
        height: Raster rows.
        width: Raster columns.
        tile_size: Window size in pixels.
        overlap: Pixels shared by neighbouring windows (stride = tile_size - overlap).

    Returns:
        Tiles in row-major order; tiles of one grid row share ``row_off``.

    Raises:
        TilingError: For an empty raster or a bad tile size/overlap.
    """
    if height < 1 or width < 1:
        raise TilingError(f"raster has no pixels ({width}x{height})")
    check_tile_size(tile_size, overlap)
    stride = tile_size - overlap
    rows = axis_starts(height, tile_size, stride)
    cols = axis_starts(width, tile_size, stride)
    tile_h = min(tile_size, height)
    tile_w = min(tile_size, width)
    return [
        Tile(
            row_off=r0,
            col_off=c0,
            height=tile_h,
            width=tile_w,
            row=i,
            col=j,
            top=i == 0,
            bottom=i == len(rows) - 1,
            left=j == 0,
            right=j == len(cols) - 1,
        )
        for i, r0 in enumerate(rows)
        for j, c0 in enumerate(cols)
    ]


def tile_rows(tiles: list[Tile]) -> Iterator[list[Tile]]:
    """Group row-major tiles into grid rows."""
    current: list[Tile] = []
    for tile in tiles:
        if current and tile.row != current[0].row:
            yield current
            current = []
        current.append(tile)
    if current:
        yield current
