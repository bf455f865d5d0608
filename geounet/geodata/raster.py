"""Open and check scenes, read padded windows, and write outputs atomically.

rasterio only; no torch.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from geounet.errors import (
    BandMismatchError,
    GeounetError,
    MissingCRSError,
    OutputError,
    OutputExistsError,
    RasterReadError,
)
from geounet.geodata.tiling import Tile

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

REMOTE_PREFIXES = ("/vsi", "http://", "https://", "s3://", "gs://", "az://")

#: GDAL options for rasters read over the network, applied unless set in the environment: no
#: directory listing on open (one request instead of many), merged range requests, and retries.
REMOTE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


def gdal_options(path: str | os.PathLike[str]) -> dict[str, Any]:
    """GDAL options for reading ``path``: the remote ones for network paths, none otherwise."""
    if not is_remote(path):
        return {}
    return {k: v for k, v in REMOTE_GDAL_OPTIONS.items() if k not in os.environ}


#: File suffixes taken as rasters when a folder is expanded.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")

_GLOB_CHARS = re.compile(r"[*?[]")


def expand_rasters(inputs: Iterable[str | os.PathLike[str]], *, folders: bool = False) -> list[str]:
    """Expand paths, globs, ``@list`` files and URLs into a list of scenes.

    - ``path/scene.tif``: a local file; it must exist.
    - ``archive/**/*.tif``: a glob (``**`` recurses); it must match at least one file.
    - ``@scenes.txt``: a text file with one path, glob or URL per line; blank lines and lines
      starting with ``#`` are ignored, relative paths are relative to the list file's folder.
      Listed paths are not checked here: a missing one fails as a scene.
    - ``https://``, ``s3://``, ``/vsicurl/...``: rasters GDAL reads over the network, kept as
      they are (read window by window, never downloaded whole).
    - ``images/``: a folder, with ``folders=True``: every raster below it
      (:data:`RASTER_SUFFIXES`), sorted; without, an error that suggests a glob.

    Local paths come back absolute; duplicates are dropped, the first occurrence keeps its place.

    Args:
        inputs: What the user gave.
        folders: Expand folders (``train``) instead of refusing them (``batch``).

    Returns:
        The scenes, in order.

    Raises:
        GeounetError: A missing path or list file, a directory, a glob that matches nothing, or
            no scenes at all.
    """
    scenes: list[str] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            scenes.extend(_read_list(Path(text[1:]).expanduser(), folders))
        else:
            scenes.extend(_expand_one(text, base=None, source=None, folders=folders))
    unique = list(dict.fromkeys(scenes))
    if not unique:
        raise GeounetError(
            "no input scenes given; pass paths, globs such as 'archive/**/*.tif', URLs or @list.txt"
        )
    return unique


def _read_list(path: Path, folders: bool) -> list[str]:
    if not path.is_file():
        raise GeounetError(
            f"@{path}: no such list file; @FILE takes a text file with one path or URL per line"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GeounetError(f"@{path}: cannot read the list file ({exc})") from exc
    scenes: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        scenes.extend(
            _expand_one(line, base=path.parent, source=f"{path}:{number}", folders=folders)
        )
    if not scenes:
        raise GeounetError(f"@{path} lists no scenes; write one path or URL per line")
    return scenes


def _expand_one(text: str, *, base: Path | None, source: str | None, folders: bool) -> list[str]:
    if is_remote(text):
        return [text]
    path = os.path.expanduser(text)
    if base is not None and not os.path.isabs(path):
        path = os.path.join(base, path)
    where = f" ({source})" if source else ""
    if _GLOB_CHARS.search(path) and not os.path.exists(path):
        matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not matches:
            raise GeounetError(
                f"{text}{where} matches no files; check the pattern (quote it so that the shell "
                f"leaves it alone, and use ** to search subfolders)"
            )
        return [os.path.abspath(p) for p in matches]
    if folders and os.path.isdir(path):
        found = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()
        )
        if not found:
            raise GeounetError(
                f"{text}{where}: no rasters ({', '.join(RASTER_SUFFIXES)}) in this folder"
            )
        return [os.path.abspath(p) for p in found]
    if source is None:  # given on the command line: a typo should stop the batch
        if not os.path.exists(path):
            raise GeounetError(f"{text}: no such file; check the path")
        if os.path.isdir(path):
            raise GeounetError(
                f"{text} is a directory; pass a glob such as '{text.rstrip('/')}/**/*.tif'"
            )
    return [os.path.abspath(path)]


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether GDAL reads the path through a virtual file system rather than the local disk."""
    return str(path).startswith(REMOTE_PREFIXES)


def gdal_path(path: str | os.PathLike[str]) -> str:
    """The path as GDAL wants it: ``s3://b/k`` and ``https://...`` become ``/vsis3/``, ``/vsicurl/``."""
    p = str(path)
    if p.startswith(("http://", "https://")):
        return "/vsicurl/" + p
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if p.startswith(scheme):
            return vsi + p[len(scheme) :]
    return p


@dataclass(frozen=True, slots=True)
class Scene:
    """What geounet needs to know about an input raster.

    Attributes:
        path: The path or URL as given.
        name: The file name, for messages.
        width, height: Pixels.
        count: All bands in the file (alpha included).
        dtype: Data type of the first band.
        crs: Coordinate reference system.
        transform: Pixel-to-map affine transform (north-up).
        nodata: Nodata value, if any.
        alpha: 1-based index of an alpha band, used as the validity mask, not as data.
        data_bands: 1-based indexes of the bands that are data (all but alpha).
        has_mask: Whether pixels can be invalid (nodata, alpha or an internal mask).
        colours: Each band's colour interpretation (``red``, ``green``, ``blue``, ``nir``,
            ``alpha``, ``gray``, ``undefined``...), in band order; empty when unknown.
    """

    path: str
    name: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    alpha: int | None
    data_bands: tuple[int, ...]
    has_mask: bool
    colours: tuple[str, ...] = ()

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


#: A projected CRS whose linear scale factor at a place differs from 1 by more than this is
#: measured on the ground there (grid lengths divided by the factor); within it, on its grid, as
#: GIS tools measure (UTM and national grids stay within 0.1 %; Web Mercator is 1.64 at 52 deg N).
SCALE_TOLERANCE = 0.01


def projection_scale(crs: Any, x: npt.ArrayLike, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The linear scale factor of projected ``crs`` (rasterio's or pyproj's) at map points
    (x, y): grid metres per ground metre (the square root of the areal scale), or 1 where it is
    within :data:`SCALE_TOLERANCE` of 1, where ``crs`` is geographic, or where PROJ cannot tell.

    Web Mercator (EPSG:3857), the CRS of imagery exported from web map tiles, stretches the
    ground by 1/cos(latitude): a 0.3 m pixel at 52 deg N spans 0.49 grid metres, and a house's
    grid area is 2.7 times its real one.
    """
    xs, ys = (
        np.atleast_1d(np.asarray(x, dtype=np.float64)),
        np.atleast_1d(np.asarray(y, dtype=np.float64)),
    )
    ones = np.ones(xs.shape, dtype=np.float64)
    if crs is None or crs.is_geographic or not xs.size:
        return ones
    proj = _projection(crs.to_wkt())
    if proj is None:
        return ones
    try:
        lon, lat = proj[0].transform(xs, ys)
        # Dimensionless: a grid in feet has the same scale factor as one in metres.
        k = np.sqrt(
            np.asarray(
                proj[1].get_factors(np.asarray(lon), np.asarray(lat), errcheck=False).areal_scale
            )
        )
    except Exception:  # noqa: BLE001 - PROJ cannot tell here: measure on the grid
        return ones
    k = np.where(np.isfinite(k) & (k > 0), k, 1.0)
    return np.where(np.abs(k - 1) > SCALE_TOLERANCE, k, 1.0)


def ground_scale(geoms: npt.NDArray[Any], crs: Any) -> npt.NDArray[np.float64] | float:
    """Grid metres per ground metre at each geometry of a projected ``crs``
    (:func:`projection_scale` at its centroid; 1 where the projection is true to
    scale within 1 %, checked once over the geometries' bounds)."""
    if not len(geoms):
        return 1.0
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if (
        projection_scale(crs, [x0, x1, x0, x1, xm, xm, x0, x1], [y0, y0, y1, y1, y0, y1, ym, ym])
        == 1
    ).all():
        return 1.0
    centres = shapely.centroid(geoms)
    return projection_scale(crs, shapely.get_x(centres), shapely.get_y(centres))


@functools.lru_cache(maxsize=16)
def _projection(wkt: str) -> tuple[Any, Any] | None:
    """(map -> lon/lat transformer, projection) of a projected CRS; None if PROJ has none."""
    try:
        import pyproj

        pcrs = pyproj.CRS.from_user_input(wkt)
        geo = pcrs.geodetic_crs
        if geo is None:
            return None
        return pyproj.Transformer.from_crs(pcrs, geo, always_xy=True), pyproj.Proj(pcrs)
    except Exception:  # noqa: BLE001 - an engineering or otherwise exotic CRS
        return None


def pixel_size_m(scene: Scene) -> float | None:
    """The scene's ground pixel size in metres (the geometric mean of x and y).

    Geographic CRSs convert degrees at the scene's centre latitude (WGS84 ellipsoid); projected
    ones use their linear unit, divided by the projection's scale factor at the scene's centre
    where it distorts (:func:`projection_scale`: Web Mercator). None when the unit is unknown.
    """
    rx, ry = scene.res
    if scene.crs.is_geographic:
        import pyproj

        left, bottom, right, top = scene.bounds
        lon, lat = (left + right) / 2, (bottom + top) / 2
        geod = pyproj.Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon - rx / 2, lat, lon + rx / 2, lat)
        _, _, dy = geod.inv(lon, lat - ry / 2, lon, lat + ry / 2)
        return float(np.sqrt(dx * dy))
    try:
        factor = float(scene.crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - no linear unit (or an exotic CRS): unknown, as documented
        return None
    left, bottom, right, top = scene.bounds
    scale = float(projection_scale(scene.crs, (left + right) / 2, (bottom + top) / 2)[0])
    return float(np.sqrt(rx * ry)) * factor / scale


def open_scene(path: str | os.PathLike[str]) -> Scene:
    """Open a raster and check that geounet can work on it.

    Args:
        path: Local path, ``/vsi...`` path or URL of a GeoTIFF (or any raster GDAL reads).

    Returns:
        The scene's facts.

    Raises:
        RasterReadError: Missing, a directory, empty, or not a readable raster.
        MissingCRSError: No CRS, no geotransform, or a rotated geotransform.
    """
    name = Path(str(path)).name or str(path)
    if not is_remote(path):
        p = Path(path)
        if not p.exists():
            raise RasterReadError(f"{path}: no such file; check the path")
        if p.is_dir():
            raise RasterReadError(f"{path} is a directory; pass a raster file (e.g. scene.tif)")
        if p.stat().st_size == 0:
            raise RasterReadError(f"{path} is empty (0 bytes); re-download or re-export it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(gdal_path(path)) as src:
                scene = _describe(src, str(path), name)
                # Read one pixel of the last block to catch truncated files early.
                src.read(1, window=Window(src.width - 1, src.height - 1, 1, 1))
    except RasterioError as exc:
        reason = short_error(exc)
        if is_remote(path) and _NO_RANGES in reason.lower():
            raise RasterReadError(
                f"{path}: the server does not serve byte ranges (HTTP Range requests), which GDAL "
                f"needs to read a remote raster by windows; download the file and pass its local "
                f"path, or serve it from a server that supports ranges"
            ) from exc
        raise RasterReadError(
            f"{path} is not a readable raster ({reason}); check that it is a complete GeoTIFF"
        ) from exc
    return scene


# GDAL's /vsicurl/ error for a server that answers a Range request with the whole file (it
# reads small files whole instead, so only larger ones fail).
_NO_RANGES = "range downloading not supported"


def short_error(exc: BaseException) -> str:
    """The first line of an error, or of its cause when GDAL says "see previous exception"."""
    seen = 0
    while "previous exception" in str(exc) and seen < 5:
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc, seen = cause, seen + 1
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _describe(src: Any, path: str, name: str) -> Scene:
    transform: Affine = src.transform
    if src.crs is None:
        raise MissingCRSError(
            f"{name} has no CRS; assign one with gdal_edit.py -a_srs EPSG:XXXX {name}"
        )
    if transform.is_identity and not src.gcps[0]:
        raise MissingCRSError(
            f"{name} has no geotransform; georeference it (gdal_edit.py -a_ullr or gdalwarp)"
        )
    if src.gcps[0] and transform.is_identity:
        raise MissingCRSError(
            f"{name} is georeferenced by GCPs only; warp it first: gdalwarp {name} warped.tif"
        )
    if transform.b != 0 or transform.d != 0:
        raise MissingCRSError(
            f"{name} has a rotated geotransform; make it north-up first: gdalwarp {name} north_up.tif"
        )
    alpha = None
    for i, ci in enumerate(src.colorinterp, start=1):
        if ci == ColorInterp.alpha:
            alpha = i
    data_bands = tuple(i for i in range(1, src.count + 1) if i != alpha)
    has_mask = (
        any(MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)
        or src.nodata is not None
        or alpha is not None
    )
    return Scene(
        path=path,
        name=name,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=src.dtypes[0],
        crs=src.crs,
        transform=transform,
        nodata=src.nodata,
        alpha=alpha,
        data_bands=data_bands,
        has_mask=has_mask,
        colours=tuple(ci.name.lower() for ci in src.colorinterp),
    )


#: Colour interpretations that name what a band holds (GDAL's), as opposed to none or a role.
COLOUR_NAMES = frozenset(
    {
        "red",
        "green",
        "blue",
        "nir",
        "rededge",
        "coastal",
        "yellow",
        "pan",
        "swir",
        "mwir",
        "lwir",
        "tir",
    }
)


def _distinct_colours(names: Sequence[str]) -> bool:
    """Whether ``names`` are colours (:data:`COLOUR_NAMES`), none twice."""
    return bool(names) and all(n in COLOUR_NAMES for n in names) and len(set(names)) == len(names)


def colour_bands(scene: Scene, names: Sequence[str]) -> tuple[int, ...] | None:
    """The scene's bands whose colour interpretation is each of ``names``, in that order, or
    None unless every name is a colour (:data:`COLOUR_NAMES`) held by exactly one band."""
    if not _distinct_colours(names):
        return None
    chosen = []
    for name in names:
        hits = [i for i, c in enumerate(scene.colours, start=1) if c == name]
        if len(hits) != 1:
            return None
        chosen.append(hits[0])
    return tuple(chosen)


def band_names(scene: Scene, bands: Sequence[int]) -> list[str]:
    """Names for a new model's bands: the colour interpretations of ``bands`` where each is a
    distinct colour (:data:`COLOUR_NAMES`), else ``band1``, ``band2``... by index."""
    colours = [scene.colours[b - 1] if b - 1 < len(scene.colours) else "" for b in bands]
    if _distinct_colours(colours):
        return colours
    return [f"band{b}" for b in bands]


def resolve_bands(
    scene: Scene, bands: Sequence[int] | None, expected: int, names: Sequence[str] = ()
) -> tuple[int, ...]:
    """The 1-based band indexes to feed the model.

    Without ``bands``, a model whose bands are colours (``red``, ``green``, ``blue``...) takes
    the scene's bands of those colour interpretations, in the model's order, wherever they are
    (a BGR file, RGB + near-infrared); a scene that does not label them takes its data bands in
    file order.

    Args:
        scene: The scene.
        bands: Bands chosen by the user (1-based), or None for all data bands (alpha excluded).
        expected: Bands the model wants.
        names: The model's band names.

    Raises:
        BandMismatchError: A band index out of range, or a count that does not fit the model.
    """
    if bands:
        bad = [b for b in bands if not 1 <= b <= scene.count]
        if bad:
            raise BandMismatchError(
                f"{scene.name} has {scene.count} bands; band {bad[0]} does not exist "
                f"(--bands takes 1-based indexes 1..{scene.count})"
            )
        chosen = tuple(bands)
    else:
        chosen = colour_bands(scene, names) or scene.data_bands
    if len(chosen) != expected:
        hint = (
            f"pass --bands with {expected} of 1..{scene.count}"
            if len(scene.data_bands) > expected
            else "use a model trained on this band count"
        )
        alpha = f" (+ alpha band {scene.alpha})" if scene.alpha else ""
        raise BandMismatchError(
            f"model expects {expected} bands, {scene.name} has {len(chosen)}{alpha}; {hint}"
        )
    return chosen


def read_window(
    src: Any, scene: Scene, bands: Sequence[int], window: Window
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Read a window of an open scene: float32 values and where they are valid.

    Valid = the dataset mask (nodata, alpha band or internal mask) and, for float data, finite
    in every band. Invalid pixels are 0 in the values.

    Raises:
        RasterReadError: When GDAL fails to read (corrupt or truncated data).
    """
    try:
        raw = src.read(list(bands), window=window, out_dtype=np.float32)
        if scene.has_mask:
            valid = src.dataset_mask(window=window) > 0
        else:
            valid = np.ones(raw.shape[1:], dtype=bool)
    except RasterioError as exc:
        raise RasterReadError(
            f"{scene.name}: cannot read window at row {int(window.row_off)}, col "
            f"{int(window.col_off)} ({short_error(exc)}); the file may be truncated or corrupt"
        ) from exc
    if np.dtype(scene.dtype).kind == "f":
        valid &= np.isfinite(raw).all(axis=0)
        np.nan_to_num(raw, copy=False)
    raw *= valid
    return raw, valid


class WindowReader:
    """Reads tiles from one scene, thread-safely (one dataset handle per thread).

    Args:
        scene: The scene.
        bands: 1-based bands to read.
        tile_size: Size of the returned arrays; smaller windows are zero-padded.
    """

    def __init__(self, scene: Scene, bands: Sequence[int], tile_size: int) -> None:
        self.scene = scene
        self.bands = list(bands)
        self.tile_size = tile_size
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    def _src(self) -> Any:
        src = getattr(self._local, "src", None)
        if src is None:
            src = rasterio.open(gdal_path(self.scene.path))
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def handle(self) -> Any:
        """This thread's open dataset of the scene."""
        return self._src()

    def read(self, tile: Tile) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Read a tile.

        Returns:
            (bands, tile_size, tile_size) float32 raw values (0 in padding and nodata) and a
            (tile_size, tile_size) bool validity mask (False in padding and nodata).

        Raises:
            RasterReadError: When GDAL fails to read (corrupt or truncated data).
        """
        ts = self.tile_size
        raw, mask = read_window(self._src(), self.scene, self.bands, tile.window)
        data = np.zeros((len(self.bands), ts, ts), dtype=np.float32)
        valid = np.zeros((ts, ts), dtype=bool)
        data[:, : tile.height, : tile.width] = raw
        valid[: tile.height, : tile.width] = mask
        return data, valid

    def close(self) -> None:
        """Close every handle opened by any thread."""
        with self._lock:
            for src in self._handles:
                src.close()
            self._handles.clear()


class ReadAhead:
    """Tiles read in background threads, handed out in order: the reader stage of prediction.

    Iterating yields ``(tile, data, valid)`` as :meth:`WindowReader.read` returns them, with up
    to ``ahead`` reads queued on ``threads`` threads, so reading overlaps the network.
    :attr:`wait` is the time the consumer spent waiting for a read. :meth:`close` (or the
    ``with`` block) cancels queued reads and waits for running ones.
    """

    def __init__(
        self, reader: WindowReader, tiles: Iterable[Tile], *, threads: int, ahead: int
    ) -> None:
        self._read = reader.read
        self._tiles = iter(tiles)
        self._ahead = max(1, ahead)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, threads), thread_name_prefix="geounet-read"
        )
        self._pending: deque[tuple[Tile, Future[tuple[Any, Any]]]] = deque()
        self.wait = 0.0

    def _fill(self) -> None:
        while len(self._pending) < self._ahead:
            tile = next(self._tiles, None)
            if tile is None:
                return
            self._pending.append((tile, self._pool.submit(self._read, tile)))

    def __iter__(self) -> Iterator[tuple[Tile, npt.NDArray[np.float32], npt.NDArray[np.bool_]]]:
        self._fill()
        while self._pending:
            tile, fut = self._pending.popleft()
            t0 = time.perf_counter()
            data, valid = fut.result()
            self.wait += time.perf_counter() - t0
            self._fill()
            yield tile, data, valid

    def close(self) -> None:
        """Cancel what is queued and wait for the reads in progress."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = _umask()


def _default_mode(path: Path) -> None:
    """Give a file that a writer made private (mode 0600, as temporary-file helpers do) the mode
    a plain ``open`` would have given it, so outputs are readable as the user's umask allows."""
    try:
        mode = path.stat().st_mode
        if path.is_file() and not mode & 0o077:
            path.chmod(0o666 & ~_UMASK)
    except OSError:
        pass


class AtomicOutputs:
    """Outputs that appear only when the whole run succeeds.

    Each reserved output is written under a temporary folder beside its destination (so the rename
    stays on one file system, and multi-file formats like Shapefile move with all their parts);
    ``commit`` renames them into place, anything else deletes them.

    Use as a context manager: an exception (or KeyboardInterrupt) inside removes every temporary.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary folder, final path)

    def reserve(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Check a destination and return the temporary path to write it to.

        Raises:
            OutputExistsError: It exists and ``overwrite`` is False.
            OutputError: Its directory is missing or not writable.
        """
        final = Path(path)
        if final.exists() and not overwrite:
            raise OutputExistsError(f"{final} exists; pass --overwrite to replace it")
        if final.is_dir():
            raise OutputError(f"{final} is a directory; give a file name")
        parent = final.parent if str(final.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"cannot write {final}: directory {parent} does not exist")
        tmp = parent / f".{final.name}.geounet-{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise OutputError(
                f"cannot write {final}: {exc.strerror or exc}; choose a writable directory"
            ) from exc
        self._pending.append((tmp, final))
        return tmp / final.name

    def commit(self) -> None:
        """Move every output into place."""
        try:
            for tmp, final in self._pending:
                parts = sorted(tmp.iterdir(), key=lambda p: p.name == final.name)
                for part in parts:  # the main file last, so it appears only when complete
                    _default_mode(part)
                    os.replace(part, final.parent / part.name)
                tmp.rmdir()
        except OSError as exc:
            raise OutputError(f"cannot move outputs into place: {exc}") from exc
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Delete every temporary (no-op after commit)."""
        for tmp, _ in self._pending:
            shutil.rmtree(tmp, ignore_errors=True)
        self._pending.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.cleanup()
