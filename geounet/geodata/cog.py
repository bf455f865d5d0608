"""Stream row strips into a Cloud-Optimized GeoTIFF with overviews, never holding the raster.

A COG stores its overviews *before* the full-resolution tiles, so it cannot be written in one
pass from the top of the scene down. :class:`StripWriter` writes the full-resolution rows to a
tiled temporary GeoTIFF as strips arrive and, at the same time, halves each strip into every
overview level (average or nearest) and writes those to their own temporaries. On
:meth:`StripWriter.close` a small VRT ties the levels together and GDAL's COG driver copies it
into the final file using those overviews (``OVERVIEWS=FORCE_USE_EXISTING``), so the only
serial work left at the end is one compressed copy. Memory: one strip per level.

rasterio only; no torch.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from geounet.errors import OutputError
from geounet.geodata.raster import Scene, short_error

logger = logging.getLogger(__name__)

#: Compression of the final COGs by kind of data. Integers (masks, uint8 probabilities): DEFLATE,
#: which every TIFF reader knows. Floating-point probabilities: ZSTD, twice as fast as DEFLATE on
#: them at the same size (they hardly compress: their low mantissa bits are noise), read by GDAL
#: >= 2.3 and so by every QGIS of the last years (closing an 8192² float32 COG and its mask:
#: 2.0 s against 3.0 s, ``benchmarks/strips.py``).
COMPRESS = {"float": "ZSTD", "int": "DEFLATE"}


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """Overview decimation factors 2, 4, ... until the smallest level fits in one block.

    The same levels GDAL's COG driver would make (none for a raster within one block).
    """
    factors = []
    factor = 2
    while max(width, height) / (factor // 2) > block:
        factors.append(factor)
        factor *= 2
    return factors


def halve(array: npt.NDArray[Any], resampling: str, nodata: float | None) -> npt.NDArray[Any]:
    """Halve (bands, rows, cols) in both directions (odd edges keep their last row/column).

    ``average`` is the mean of the valid pixels of each 2x2 block (nodata where none is valid,
    integers rounded); ``nearest`` keeps each block's top-left pixel.
    """
    if resampling == "nearest":
        return np.ascontiguousarray(array[:, ::2, ::2])
    rows, cols = array.shape[1:]
    nan_nodata = isinstance(nodata, float) and math.isnan(nodata)
    a = array.astype(np.float32, copy=False)
    if rows % 2 or cols % 2:  # pad with nodata so the odd edge averages its own pixels
        pad_value = np.float32(np.nan) if nodata is None else np.float32(nodata)
        a = np.pad(a, ((0, 0), (0, rows % 2), (0, cols % 2)), constant_values=pad_value)
        if nodata is None:
            nodata, nan_nodata = float("nan"), True
    if nodata is None or (not nan_nodata and not (a == nodata).any()):
        mean = (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) * 0.25
        if not nan_nodata or not np.isnan(mean).any():  # the common case: nothing invalid
            return _cast(mean, array.dtype)
    valid = ~np.isnan(a) if nan_nodata else a != nodata
    v = np.where(valid, a, np.float32(0))
    total = v[:, 0::2, 0::2] + v[:, 1::2, 0::2] + v[:, 0::2, 1::2] + v[:, 1::2, 1::2]
    count = (
        valid[:, 0::2, 0::2].astype(np.float32)
        + valid[:, 1::2, 0::2]
        + valid[:, 0::2, 1::2]
        + valid[:, 1::2, 1::2]
    )
    fill = np.float32(nodata)  # NaN or the nodata value
    mean = np.divide(total, count, out=np.full(total.shape, fill, np.float32), where=count > 0)
    return _cast(mean, array.dtype)


def _cast(mean: npt.NDArray[np.float32], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    if np.dtype(dtype).kind in "iu":
        return np.rint(np.nan_to_num(mean)).astype(dtype)
    return mean.astype(dtype, copy=False)


class _BlockRows:
    """A tiled GeoTIFF written top to bottom in whole rows of blocks (each block compressed once).

    Strips may have any height; rows wait until a whole row of blocks is complete.
    """

    def __init__(self, path: Path, profile: dict[str, Any], name: str) -> None:
        self.path = path
        self.name = name
        self.height = int(profile["height"])
        self.block_h = int(profile.get("blockysize", 1)) if profile.get("tiled") else 1
        try:
            self.dataset = rasterio.open(path, "w", **profile)
        except RasterioError as exc:
            raise OutputError(f"cannot create {name}: {short_error(exc)}") from exc
        self._pending: list[npt.NDArray[Any]] = []
        self.top = 0  # first row not yet written
        self.rows = 0  # rows waiting

    def write(self, array: npt.NDArray[Any]) -> None:
        """Append rows below those already given."""
        self._pending.append(array)
        self.rows += array.shape[1]
        end = self.top + self.rows
        aligned = end if end >= self.height else end // self.block_h * self.block_h
        if aligned > self.top:
            self._write_until(aligned)

    def _write_until(self, row: int) -> None:
        data = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = row - self.top
        try:
            self.dataset.write(data[:, :n], window=Window(0, self.top, data.shape[2], n))
        except RasterioError as exc:
            raise write_error(self.name, exc) from exc
        rest = data[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self.top = row
        self.rows = rest.shape[1]

    def close(self) -> None:
        """Write what is left and close."""
        try:
            if self.rows:
                self._write_until(self.top + self.rows)
            self.dataset.close()
        except RasterioError as exc:
            raise write_error(self.name, exc) from exc

    def abort(self) -> None:
        """Close after a failure, ignoring errors (the temporary is deleted anyway)."""
        if not self.dataset.closed:
            try:
                self.dataset.close()
            except Exception:  # the run already failed; keep its error
                logger.debug("closing %s after a failure", self.name, exc_info=True)


class StripWriter:
    """Writes row strips, in order, into a Cloud-Optimized GeoTIFF with overviews.

    Args:
        path: Destination (normally a temporary path from :class:`~geounet.geodata.raster.AtomicOutputs`);
            the intermediate files go beside it, named ``.{stem}.*``, and are removed.
        scene: The grid to write in.
        count: Bands.
        dtype: numpy dtype name (never float16: QGIS misrenders it).
        nodata: Nodata value.
        block: Block size in pixels (also the COG's).
        descriptions: Optional band descriptions.
        overview_resampling: ``average`` (probabilities) or ``nearest`` (class masks).

    The full-resolution intermediate is uncompressed for floating-point data (probabilities do
    not compress, and it is read once) and DEFLATE level 1 for integers (masks shrink ~40x); the
    COG is compressed as :data:`COMPRESS` says, level 1, with the matching predictor, its blocks
    compressed on every core.
    """

    def __init__(
        self,
        path: Path,
        scene: Scene,
        *,
        count: int,
        dtype: str,
        nodata: float | None,
        block: int = 512,
        descriptions: Sequence[str] | None = None,
        overview_resampling: str = "average",
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name  # the destination's name (path may be a temporary)
        self._resampling = overview_resampling
        self._float = np.dtype(dtype).kind == "f"
        self._nodata = nodata
        self._temps: list[Path] = []
        self._block = block
        tiled = scene.width >= block and scene.height >= block
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": count,
            "dtype": dtype,
            "crs": scene.crs,
            "transform": scene.transform,
            "nodata": nodata,
            "BIGTIFF": "IF_SAFER",
        }
        if not self._float:
            profile.update(compress="deflate", predictor=2, zlevel=1)
        # Floating-point rows go out as they come, uncompressed and in row strips, so nothing
        # waits for a whole row of blocks; integer rows are compressed in tiles (see _BlockRows).
        full = _layout(profile, tiled=tiled and not self._float, block=block)
        self._full = _BlockRows(self._temp("full.tif"), full, self.name)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                self._full.dataset.set_band_description(i, d)
        self._levels: list[_BlockRows] = []
        try:
            for factor in overview_factors(scene.width, scene.height, block) if tiled else []:
                w, h = -(-scene.width // factor), -(-scene.height // factor)
                level = dict(
                    profile,
                    width=w,
                    height=h,
                    transform=scene.transform * Affine.scale(scene.width / w, scene.height / h),
                )
                level = _layout(level, tiled=min(w, h) >= block, block=block)
                self._levels.append(_BlockRows(self._temp(f"ovr{factor}.tif"), level, self.name))
        except BaseException:
            self.abort()
            raise
        # Each level halves the rows of the one above; an odd row waits for its partner.
        self._carry: list[npt.NDArray[Any] | None] = [None] * len(self._levels)
        self.height = scene.height
        self._next_row = 0

    def _temp(self, suffix: str) -> Path:
        p = self.path.with_name(f".{self.path.stem}.{suffix}")
        self._temps.append(p)
        return p

    @property
    def dataset(self) -> Any:
        """The open full-resolution dataset (for colour tables, tags and scales)."""
        return self._full.dataset

    def write(self, row_off: int, array: npt.NDArray[Any]) -> None:
        """Write rows ``[row_off, row_off + rows)``; strips must arrive in order, without gaps."""
        if row_off != self._next_row:
            raise ValueError(f"strip at row {row_off} out of order")
        self._next_row += array.shape[1]
        self._full.write(array)
        last = self._next_row >= self.height
        for i, level in enumerate(self._levels):
            carry = self._carry[i]
            rows = array if carry is None else np.concatenate([carry, array], axis=1)
            even = rows.shape[1] if last else rows.shape[1] // 2 * 2
            self._carry[i] = rows[:, even:] if even < rows.shape[1] else None
            if even == 0:
                return
            array = halve(rows[:, :even], self._resampling, self._nodata)
            level.write(array)

    def abort(self) -> None:
        """Close the files after a failure and remove the intermediates."""
        for f in [self._full, *self._levels]:
            f.abort()
        self._remove_temps()

    def close(self) -> None:
        """Close the intermediates and copy them into the COG at ``path``."""
        from rasterio.shutil import copy as gdal_copy

        try:
            if self._next_row != self.height:
                raise ValueError(f"{self.name}: rows {self._next_row}..{self.height} never written")
            for f in [self._full, *self._levels]:
                f.close()
            source = self._full.path
            if self._levels:
                source = self._temp("vrt")
                gdal_copy(self._full.path, source, driver="VRT")
                _add_overviews(source, [level.path for level in self._levels])
            gdal_copy(
                source,
                self.path,
                driver="COG",
                COMPRESS=COMPRESS["float" if self._float else "int"],
                LEVEL=1,  # fast; masks compress well anyway and probabilities hardly at all
                PREDICTOR="FLOATING_POINT" if self._float else "STANDARD",
                BLOCKSIZE=self._block,
                OVERVIEWS="FORCE_USE_EXISTING" if self._levels else "NONE",
                OVERVIEW_RESAMPLING=self._resampling.upper(),
                BIGTIFF="IF_SAFER",
                NUM_THREADS="ALL_CPUS",  # compress blocks in parallel: this is a serial tail
            )
        except RasterioError as exc:
            raise write_error(self.name, exc) from exc
        finally:
            self.abort()

    def _remove_temps(self) -> None:
        for p in self._temps:
            p.unlink(missing_ok=True)
            Path(f"{p}.aux.xml").unlink(missing_ok=True)


def _layout(profile: dict[str, Any], *, tiled: bool, block: int) -> dict[str, Any]:
    """The profile laid out in ``block`` x ``block`` tiles, or in row strips."""
    out = dict(profile, tiled=tiled)
    if tiled:
        out.update(blockxsize=block, blockysize=block)
    return out


def _add_overviews(vrt: Path, levels: Sequence[Path]) -> None:
    """Declare ``levels`` (one file per overview, same bands) as the VRT bands' overviews."""
    tree = ET.parse(vrt)
    for band in tree.getroot().iter("VRTRasterBand"):
        for level in levels:
            ovr = ET.SubElement(band, "Overview")
            src = ET.SubElement(ovr, "SourceFilename", relativeToVRT="1")
            src.text = level.name
            ET.SubElement(ovr, "SourceBand").text = band.get("band", "1")
    tree.write(vrt)


def write_error(name: str, exc: BaseException) -> OutputError:
    """The error for a failed write: names the destination and the likely cause."""
    return OutputError(
        f"writing {name} failed ({short_error(exc)}); the disk may be full: free space or write elsewhere"
    )
