"""STAC in and out: scenes from STAC Items, ItemCollections, Catalogs and Collections, and a
static STAC catalog of a batch's results.

Reading: :func:`read_stac_scenes` turns a STAC JSON (a local file or an http(s) URL) into one
:class:`StacScene` per item, walking catalogs and collections recursively. Each item gives one
raster asset: the one named by ``asset``, or else the first GeoTIFF asset with role ``data`` or
``visual``. Relative hrefs are resolved against the JSON that holds them, so a static catalog can
be moved or served as a whole. A broken item (unreadable JSON, no fitting asset, an href to a
missing file) becomes a scene with an ``error`` instead of stopping the walk.

Writing: :func:`write_results_catalog` writes a self-contained static catalog (relative links,
``catalog.json`` at the top, ``ID/ID.json`` per item) with one item per segmented scene: its
footprint in EPSG:4326, the source item's datetime (else the processing time), the vector file,
mask and probabilities as assets, the model's name and SHA-256 in ``geounet:`` properties and a
``derived_from`` link to the source item. The catalog is built in a temporary folder and renamed
into place, so the destination holds either the previous catalog or the new one, never a part.

pystac is optional (``pip install 'geounet[stac]'``) and imported only when STAC is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from geounet import __version__
from geounet.errors import GeounetError, OutputError, OutputExistsError
from geounet.raster import gdal_options, gdal_path, is_remote

logger = logging.getLogger(__name__)

#: Asset roles that mark the raster to segment when no asset key is given.
DEFAULT_ROLES = ("data", "visual")

#: Seconds to wait for an http(s) STAC document.
HTTP_TIMEOUT_S = 60

#: The media type of a Cloud-Optimized GeoTIFF (masks and probabilities are written as COGs).
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

#: File name of the results catalog's root.
CATALOG_NAME = "catalog.json"

#: Id of the results catalog's root; also the mark that lets a later run replace it.
RESULTS_CATALOG_ID = "geounet-results"

_MEDIA_TYPES = {
    ".gpkg": "application/geopackage+sqlite3",
    ".geojson": "application/geo+json",
    ".fgb": "application/vnd.flatgeobuf",
    ".parquet": "application/vnd.apache.parquet",
    ".tif": COG_MEDIA_TYPE,
}
_ASSET_TITLES = {"vectors": "Polygons", "mask": "Class mask", "probabilities": "Class probabilities"}
#: Segments per side of a scene's outline in the results catalog.
_FOOTPRINT_STEPS = 5
_URL_SCHEMES = ("http", "https")
# Remote hrefs the batch reads through GDAL (/vsicurl/, /vsis3/...): kept as they are.
_GDAL_SCHEMES = ("http", "https", "s3", "gs", "az")


@dataclass(frozen=True, slots=True)
class StacScene:
    """One STAC item as a batch scene.

    Attributes:
        item_id: The item's id (for an unreadable item, its file name without suffix).
        source: The STAC JSON the item was found through (as given).
        item_href: The item's own JSON (absolute path or URL); None for an item that lives
            inside an ItemCollection.
        asset_key: The chosen asset, if any.
        href: The asset's raster: an absolute local path or a URL GDAL reads (``https://``,
            ``s3://``...); None when no asset fits.
        datetime: The item's ``datetime`` (ISO 8601), if any.
        start_datetime: The item's ``start_datetime``, if any.
        end_datetime: The item's ``end_datetime``, if any.
        error: Why the item cannot be segmented (one line); None for a usable item.
    """

    item_id: str
    source: str
    item_href: str | None
    asset_key: str | None
    href: str | None
    datetime: str | None = None
    start_datetime: str | None = None
    end_datetime: str | None = None
    error: str | None = None

    @property
    def input(self) -> str:
        """The scene's key in a batch: the raster's href, else where the item was found."""
        if self.href is not None:
            return self.href
        return self.item_href or f"{self.source}#{self.item_id}"


@dataclass(frozen=True, slots=True)
class ResultItem:
    """One segmented scene, for :func:`write_results_catalog`.

    Attributes:
        id: Item id (the batch's output name of the scene, unique in the batch).
        scene: The input raster (absolute local path or URL).
        assets: Output files by kind (``vectors``, ``mask``, ``probabilities``), absolute.
        created: When the scene was segmented (ISO 8601, UTC).
        features: Polygons written.
        params: The parameters the outputs were made with.
        source: The STAC item the scene came from, if any.
    """

    id: str
    scene: str
    assets: dict[str, Path]
    created: str
    features: int | None = None
    params: dict[str, Any] | None = None
    source: StacScene | None = None


def _import_pystac() -> Any:
    try:
        import pystac
    except ImportError:
        raise GeounetError(
            "STAC inputs and --stac-out need pystac: pip install 'geounet[stac]'"
        ) from None
    return pystac


# --------------------------------------------------------------------------------------------
# Reading


def is_stac_source(text: str | os.PathLike[str]) -> bool:
    """Whether an input names a STAC JSON (a ``.json`` path or URL) rather than a raster."""
    value = str(text)
    path = urlsplit(value).path if "://" in value else value
    return path.lower().endswith(".json")


def _stac_io(pystac: Any) -> Any:
    """A pystac StacIO whose http(s) reads time out and raise OSError (pystac's wait forever)."""

    class _TimeoutStacIO(pystac.stac_io.DefaultStacIO):  # type: ignore[misc]
        def read_text_from_href(self, href: str) -> str:
            if urlsplit(href).scheme not in _URL_SCHEMES:
                return str(super().read_text_from_href(href))
            from urllib.request import Request, urlopen

            request = Request(href, headers={"User-Agent": f"geounet/{__version__}"})
            with urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return str(response.read().decode("utf-8"))

    return _TimeoutStacIO()


def read_stac_scenes(source: str | os.PathLike[str], *, asset: str | None = None) -> list[StacScene]:
    """The scenes of a STAC Item, ItemCollection, Catalog or Collection.

    Catalogs and collections are walked recursively (``child`` and ``item`` links, each read
    once). Relative hrefs are resolved against the JSON that holds them.

    Args:
        source: A local STAC JSON file or an http(s) URL.
        asset: The asset key to segment; None takes each item's first GeoTIFF asset
            (``image/tiff; application=geotiff`` media type, or a ``.tif``/``.tiff`` href when
            the media type says nothing more) with role ``data`` or ``visual``.

    Returns:
        One scene per item, in link order; broken items carry an ``error``.

    Raises:
        GeounetError: pystac is missing, or ``source`` cannot be read, is not JSON or is not STAC.
    """
    pystac = _import_pystac()
    text = str(source)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme not in ("", "file", *_URL_SCHEMES):
        raise GeounetError(
            f"{text}: STAC is read from local files and http(s) URLs, not {scheme}://; "
            f"download it or give its https URL"
        )
    href = text if scheme else os.path.abspath(os.path.expanduser(text))
    io = _stac_io(pystac)
    try:
        data = json.loads(io.read_text(href))
    except (OSError, UnicodeDecodeError) as exc:
        raise GeounetError(f"cannot read STAC {text}: {_reason(exc)}; check the path or URL") from exc
    except ValueError as exc:
        raise GeounetError(f"{text} is not JSON ({_reason(exc)}); give a STAC catalog or item") from exc
    kinds = ("Feature", "FeatureCollection", "Catalog", "Collection")
    if not isinstance(data, dict) or data.get("type") not in kinds:
        raise GeounetError(
            f"{text} is not a STAC Item, ItemCollection, Catalog or Collection (its 'type' is "
            f"{data.get('type') if isinstance(data, dict) else type(data).__name__!r})"
        )
    try:
        if data["type"] == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            scenes = [
                _item_scene(item, base=item.get_self_href() or href, source=text, asset=asset)
                for item in collection
            ]
        else:
            obj = pystac.read_dict(data, href=href, stac_io=io)
            scenes = list(_walk(obj, io, source=text, asset=asset, seen={href}))
    except (KeyError, TypeError, ValueError, pystac.STACError, pystac.STACTypeError) as exc:
        raise GeounetError(f"{text} is not valid STAC ({_reason(exc)})") from exc
    if not scenes:
        raise GeounetError(f"{text} holds no STAC items; give a catalog, collection or item with items")
    return scenes


def _walk(obj: Any, io: Any, *, source: str, asset: str | None, seen: set[str]) -> Iterator[StacScene]:
    """The scenes of an item, or of every item below a catalog (depth first, in link order).

    Children are read here, through ``io``, rather than by pystac's link resolution, which reads
    with its default StacIO (no timeout) and caches every object in the root.
    """
    import pystac

    if isinstance(obj, pystac.Item):
        yield _item_scene(obj, base=obj.get_self_href(), source=source, asset=asset)
        return
    if not isinstance(obj, pystac.Catalog):  # Collections are Catalogs
        return
    for link in list(obj.links):
        if link.rel not in ("child", "item"):
            continue
        href = link.get_absolute_href()
        if href is None or href in seen:  # a cycle, or an item linked twice
            continue
        seen.add(href)
        try:
            target = pystac.read_dict(json.loads(io.read_text(href)), href=href, stac_io=io)
        except Exception as exc:  # noqa: BLE001 (one broken link fails its items, not the walk)
            what = "item" if link.rel == "item" else "catalog"
            yield StacScene(
                item_id=_href_stem(href),
                source=source,
                item_href=href,
                asset_key=None,
                href=None,
                error=f"cannot read STAC {what} {href}: {_reason(exc)}",
            )
            continue
        yield from _walk(target, io, source=source, asset=asset, seen=seen)


def _item_scene(item: Any, *, base: str | None, source: str, asset: str | None) -> StacScene:
    props = item.properties
    times = {k: props.get(k) for k in ("datetime", "start_datetime", "end_datetime")}
    common: dict[str, Any] = {
        "item_id": item.id,
        "source": source,
        "item_href": item.get_self_href(),
        **{k: v if isinstance(v, str) else None for k, v in times.items()},
    }
    chosen = _choose_asset(item, asset)
    if isinstance(chosen, str):
        return StacScene(asset_key=None, href=None, error=chosen, **common)
    key, raw = chosen
    href = _resolve_href(raw, base)
    if href is None:
        error = f"item {item.id}: asset {key!r} has href {raw!r}, which geounet cannot read; use a path or an http(s), s3, gs or az URL"
    elif not is_remote(href) and not os.path.isfile(href):
        error = f"item {item.id}: asset {key!r} points to {href}, which does not exist"
    else:
        return StacScene(asset_key=key, href=href, **common)
    return StacScene(asset_key=key, href=None, error=error, **common)


def _is_geotiff(asset: Any) -> bool:
    media = (asset.media_type or "").lower().replace(" ", "")
    if media:
        if not media.startswith("image/tiff"):
            return False
        if "application=geotiff" in media:
            return True
    href = str(asset.href)
    path = urlsplit(href).path if "://" in href else href
    return path.lower().endswith((".tif", ".tiff"))


def _choose_asset(item: Any, key: str | None) -> tuple[str, str] | str:
    """(asset key, raw href) of the raster to segment, or why there is none."""
    assets = dict(item.assets)
    listed = ", ".join(assets) or "none"
    if key is not None:
        if key in assets:
            return key, assets[key].href
        return f"item {item.id} has no asset {key!r} (its assets: {listed}); pass another --asset"
    for name, candidate in assets.items():
        if _is_geotiff(candidate) and set(candidate.roles or ()) & set(DEFAULT_ROLES):
            return name, candidate.href
    return (
        f"item {item.id} has no GeoTIFF asset with role {' or '.join(DEFAULT_ROLES)} "
        f"(its assets: {listed}); choose one with --asset KEY"
    )


def _resolve_href(href: str, base: str | None) -> str | None:
    """An asset href as a local path or a URL GDAL reads; None for one it cannot read."""
    from pystac.utils import is_absolute_href, make_absolute_href

    if not is_absolute_href(href, base):
        if base is None:
            return None
        href = make_absolute_href(href, base)
    parts = urlsplit(href)
    if href.startswith("/vsi") or (len(parts.scheme) <= 1 and not parts.netloc):  # a path (C:)
        path = href
    elif parts.scheme == "file":
        path = parts.path
    else:
        return href if parts.scheme in _GDAL_SCHEMES else None
    # hrefs are URIs: "my%20scene.tif" names "my scene.tif"
    return path if os.path.exists(path) or not os.path.exists(unquote(path)) else unquote(path)


def _href_stem(href: str) -> str:
    path = urlsplit(href).path if "://" in href else href
    return PurePosixPath(path.replace("\\", "/")).stem or "item"


def _reason(exc: BaseException) -> str:
    """An exception as a short line; for an I/O error that pystac wrapped, the I/O error's own
    (``No such file or directory``, ``HTTP Error 404: Not Found``, ``timed out``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):
            exc = cause
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Writing


def check_catalog_dest(dest: str | os.PathLike[str], *, outputs: str | os.PathLike[str]) -> Path:
    """Check a results catalog folder before a batch runs; return it absolute.

    Raises:
        GeounetError: pystac is missing.
        OutputError: The folder is, or holds, the batch's output folder, or is not a folder.
        OutputExistsError: The folder holds files other than an earlier results catalog.
    """
    _import_pystac()
    folder = Path(dest).expanduser().resolve()
    out = Path(outputs).expanduser().resolve()
    if folder == out or folder in out.parents:
        raise OutputError(
            f"--stac-out {dest} holds the output folder {out}; give the catalog a folder of its "
            f"own, e.g. {out / 'stac'}"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--stac-out {dest} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and not _is_results_catalog(folder):
        raise OutputExistsError(
            f"--stac-out {folder} is not empty and holds no geounet results catalog; choose a new "
            f"or empty folder"
        )
    return folder


def _is_results_catalog(folder: Path) -> bool:
    try:
        data = json.loads((folder / CATALOG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("id") == RESULTS_CATALOG_ID


def write_results_catalog(
    dest: str | os.PathLike[str],
    items: Sequence[ResultItem],
    *,
    model: str,
    model_hash: str,
) -> Path:
    """Write a self-contained static STAC catalog of segmented scenes; return its ``catalog.json``.

    Layout: ``DEST/catalog.json`` and ``DEST/ID/ID.json`` per item, all links and asset hrefs
    relative (the outputs are referred to where they are, not copied). An earlier results catalog
    in ``DEST`` is replaced as a whole.

    Args:
        dest: The catalog folder.
        items: The scenes.
        model: The model's name (``geounet:model``).
        model_hash: SHA-256 of the model file (``geounet:model_sha256``).

    Returns:
        The path of ``catalog.json``.

    Raises:
        GeounetError: pystac is missing.
        OutputError: The catalog cannot be written.
        OutputExistsError: ``dest`` holds something other than a results catalog.
    """
    pystac = _import_pystac()
    folder = Path(dest).expanduser().resolve()
    catalog = pystac.Catalog(
        id=RESULTS_CATALOG_ID,
        title="geounet results",
        description=(
            f"Segmentation of {len(items)} scene{'s' if len(items) != 1 else ''} by geounet "
            f"{__version__} with the model {model} (SHA-256 {model_hash})."
        ),
    )
    for entry in items:
        catalog.add_item(_result_item(pystac, entry, model=model, model_hash=model_hash))
    catalog.normalize_hrefs(str(folder))
    catalog.make_all_asset_hrefs_relative()
    for item in catalog.get_items():  # links to local source items: relative, like the rest
        for link in item.links:
            if link.rel == "derived_from" and os.path.isabs(link.href) and not is_remote(link.href):
                link.target = os.path.relpath(link.href, os.path.dirname(item.get_self_href()))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder.parent}: {exc.strerror or exc}") from exc
    tmp = folder.parent / f".{folder.name}.geounet-{uuid.uuid4().hex[:8]}.tmp"
    try:
        catalog.save(pystac.CatalogType.SELF_CONTAINED, dest_href=str(tmp))
        _swap_folder(tmp, folder)
    except OSError as exc:
        raise OutputError(f"cannot write the STAC catalog {folder}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / CATALOG_NAME


def _swap_folder(tmp: Path, folder: Path) -> None:
    """Put ``tmp`` in the place of ``folder`` (new, empty, or an earlier results catalog)."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    if not _is_results_catalog(folder):
        if any(folder.iterdir()):
            raise OutputExistsError(
                f"{folder} is not empty and holds no geounet results catalog; choose a new or "
                f"empty --stac-out folder"
            )
        folder.rmdir()
        os.rename(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.geounet-{uuid.uuid4().hex[:8]}.old"
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _result_item(pystac: Any, entry: ResultItem, *, model: str, model_hash: str) -> Any:
    from pystac.utils import str_to_datetime

    geometry, bbox = scene_footprint(entry.scene)
    source = entry.source
    properties: dict[str, Any] = {
        "created": entry.created,
        "geounet:model": model,
        "geounet:model_sha256": model_hash,
        "geounet:version": __version__,
        "geounet:input": entry.scene,
    }
    when: datetime | None = None
    if source is not None and source.datetime:
        when = str_to_datetime(source.datetime)
    elif source is not None and source.start_datetime and source.end_datetime:
        properties["start_datetime"] = source.start_datetime
        properties["end_datetime"] = source.end_datetime
    else:
        when = str_to_datetime(entry.created) if entry.created else datetime.now(timezone.utc)
    if source is not None:
        properties["geounet:item_id"] = source.item_id
        properties["geounet:asset"] = source.asset_key
    if entry.features is not None:
        properties["geounet:features"] = entry.features
    if entry.params is not None:
        properties["geounet:params"] = entry.params
    item = pystac.Item(
        id=entry.id, geometry=geometry, bbox=bbox, datetime=when, properties=properties
    )
    for kind, path in entry.assets.items():
        item.add_asset(
            kind,
            pystac.Asset(
                href=str(path),
                media_type=_MEDIA_TYPES.get(path.suffix.lower()),
                title=_ASSET_TITLES.get(kind, kind),
                roles=["data"],
            ),
        )
    if source is not None and source.item_href is not None:
        item.add_link(pystac.Link("derived_from", source.item_href, media_type="application/geo+json"))
    return item


def scene_footprint(scene: str) -> tuple[dict[str, Any] | None, list[float] | None]:
    """A scene's outline and bounding box in EPSG:4326 (GeoJSON polygon, [west, south, east,
    north]); (None, None) for a scene that cannot be opened or has no CRS.

    Each side of the scene's bounds is cut into :data:`_FOOTPRINT_STEPS` segments before
    reprojection, so the outline follows the curved edges of a projected scene in longitude and
    latitude.
    """
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform

    try:
        with rasterio.Env(**gdal_options(scene)), rasterio.open(gdal_path(scene)) as src:
            crs, (left, bottom, right, top) = src.crs, src.bounds
    except (RasterioError, OSError) as exc:
        logger.warning("no footprint for %s: %s", scene, _reason(exc))
        return None, None
    if crs is None:
        return None, None
    n = _FOOTPRINT_STEPS
    steps = [i / n for i in range(n)]
    # Counter-clockwise from the south-west corner (GeoJSON's exterior ring orientation).
    xs = [left + (right - left) * t for t in steps] + [right] * n
    ys = [bottom] * n + [bottom + (top - bottom) * t for t in steps]
    xs += [right - (right - left) * t for t in steps] + [left] * n
    ys += [top] * n + [top - (top - bottom) * t for t in steps]
    lons, lats = transform(crs, "EPSG:4326", xs, ys)
    ring = [[round(x, 9), round(y, 9)] for x, y in zip(lons, lats, strict=True)]
    ring.append(ring[0])
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 9) for v in bbox]


__all__ = [
    "CATALOG_NAME",
    "COG_MEDIA_TYPE",
    "DEFAULT_ROLES",
    "ResultItem",
    "StacScene",
    "check_catalog_dest",
    "is_stac_source",
    "read_stac_scenes",
    "scene_footprint",
    "write_results_catalog",
]
