"""STAC in and out: scenes from STAC Items, ItemCollections, Catalogs and Collections, and a
static STAC catalog of a batch's results.

Reading: :func:`read_stac_scenes` turns a STAC JSON (a local file or an http(s) URL) into one
:class:`StacScene` per item, walking catalogs and collections recursively. Each item gives one
raster asset: the first of the keys given in ``asset`` that it has, or else the GeoTIFF asset a
user would pick (:func:`choose_asset`: never a ``labels``, ``thumbnail``, ``overview`` or
``metadata`` one; one whose band count fits the model; ``visual``, then ``data``; a lone raster
asset with no roles, as ``rio stac`` writes, as it is). Relative hrefs are resolved against the
JSON that holds them, so a static catalog can be moved or served as a whole. A broken item
(unreadable JSON, no fitting asset, an href to a missing file) becomes a scene with an ``error``
instead of stopping the walk.

Writing: :func:`write_results_catalog` writes a self-contained static catalog that a STAC API
(pgstac, stac-fastapi) loads and STAC Browser shows: ``catalog.json`` at the top, a Collection of
the results (extent, the model's training-data licence, providers, summaries, item assets) with
one item per segmented scene, and the model's item (MLM extension, :mod:`geounet.archive.stac_model`).
Each result item has its footprint in EPSG:4326, the source item's datetime (else the processing
time), the scene's grid (projection extension), the polygons as labels (label extension), the
mask's classes (classification extension), how it was made (processing extension), and links to
its source and the model (``source``, ``derived_from``). The catalog is built in a temporary
folder and renamed into place, so the destination holds either the previous catalog or the new
one, never a part.

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
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from geounet import __version__
from geounet.errors import GeounetError, OutputError, OutputExistsError
from geounet.geodata.raster import gdal_options, gdal_path, is_remote

if TYPE_CHECKING:
    from geounet.network.contract import ModelMeta

logger = logging.getLogger(__name__)

#: Asset roles preferred, in this order, when no asset key is given.
DEFAULT_ROLES = ("visual", "data")

#: Asset roles that are never segmented unless named with ``asset`` (masks, previews, documents).
SKIPPED_ROLES = ("labels", "thumbnail", "overview", "metadata")

#: Asset fields that list an asset's bands (STAC 1.1 common ``bands``, eo and raster extensions).
_BAND_FIELDS = ("bands", "eo:bands", "raster:bands")

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
_ASSET_TITLES = {
    "vectors": "Polygons",
    "mask": "Class mask",
    "probabilities": "Class probabilities",
}
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
        """The scene's key in a batch: the item itself, whatever its asset.

        The item's own JSON (absolute path or URL), or for an item inside an ItemCollection, the
        collection's ``#`` the item's id. An item keeps this key when it fails, when it is fixed
        and when its asset's href changes, so a batch keeps its output name across runs.
        """
        if self.item_href is not None:
            return self.item_href
        source = (
            self.source
            if "://" in self.source
            else os.path.abspath(os.path.expanduser(self.source))
        )
        return f"{source}#{self.item_id}"


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


def read_stac_scenes(
    source: str | os.PathLike[str],
    *,
    asset: str | Sequence[str] | None = None,
    bands: int | None = None,
    band_indexes: Sequence[int] | None = None,
) -> list[StacScene]:
    """The scenes of a STAC Item, ItemCollection, Catalog or Collection.

    Catalogs and collections are walked recursively (``child`` and ``item`` links, each read
    once). Relative hrefs are resolved against the JSON that holds them.

    Args:
        source: A local STAC JSON file or an http(s) URL.
        asset: Asset keys in order of preference (one key, or several); each item gives the
            first it has, whatever its type or roles. None: :func:`choose_asset` picks one.
        bands: The number of bands the model reads, so that the default choice prefers an
            asset with as many (None: band counts play no part).
        band_indexes: The 1-based bands the model reads (``--bands``); an asset then fits when
            it has the highest of them.

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
        raise GeounetError(
            f"cannot read STAC {text}: {_reason(exc)}; check the path or URL"
        ) from exc
    except ValueError as exc:
        raise GeounetError(
            f"{text} is not JSON ({_reason(exc)}); give a STAC catalog or item"
        ) from exc
    kinds = ("Feature", "FeatureCollection", "Catalog", "Collection")
    if not isinstance(data, dict) or data.get("type") not in kinds:
        raise GeounetError(
            f"{text} is not a STAC Item, ItemCollection, Catalog or Collection (its 'type' is "
            f"{data.get('type') if isinstance(data, dict) else type(data).__name__!r})"
        )
    choice = _Choice(
        keys=(asset,) if isinstance(asset, str) else tuple(asset or ()),
        bands=max(band_indexes) if band_indexes else bands,
        exact=not band_indexes,
    )
    try:
        if data["type"] == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            scenes = [
                _item_scene(item, base=item.get_self_href() or href, source=text, choice=choice)
                for item in collection
            ]
        else:
            obj = pystac.read_dict(data, href=href, stac_io=io)
            scenes = list(_walk(obj, io, source=text, choice=choice, seen={href}))
    except (KeyError, TypeError, ValueError, pystac.STACError, pystac.STACTypeError) as exc:
        raise GeounetError(f"{text} is not valid STAC ({_reason(exc)})") from exc
    if not scenes:
        raise GeounetError(
            f"{text} holds no STAC items; give a catalog, collection or item with items"
        )
    return scenes


@dataclass(frozen=True, slots=True)
class _Choice:
    """How to choose each item's asset: keys named by the user, else by bands and roles."""

    keys: tuple[str, ...] = ()
    bands: int | None = None  # the bands an asset needs (None: any)
    exact: bool = True  # exactly ``bands`` (the model's count), or at least (``--bands``)


def _walk(
    obj: Any, io: Any, *, source: str, choice: _Choice, seen: set[str]
) -> Iterator[StacScene]:
    """The scenes of an item, or of every item below a catalog (depth first, in link order).

    Children are read here, through ``io``, rather than by pystac's link resolution, which reads
    with its default StacIO (no timeout) and caches every object in the root.
    """
    import pystac

    if isinstance(obj, pystac.Item):
        yield _item_scene(obj, base=obj.get_self_href(), source=source, choice=choice)
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
        yield from _walk(target, io, source=source, choice=choice, seen=seen)


def _item_scene(item: Any, *, base: str | None, source: str, choice: _Choice) -> StacScene:
    props = item.properties
    times = {k: props.get(k) for k in ("datetime", "start_datetime", "end_datetime")}
    common: dict[str, Any] = {
        "item_id": item.id,
        "source": source,
        "item_href": item.get_self_href(),
        **{k: v if isinstance(v, str) else None for k, v in times.items()},
    }
    chosen = choose_asset(item, choice.keys, bands=choice.bands, exact=choice.exact)
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


def _media_type(asset: Any) -> str:
    return str(asset.media_type or "").lower().replace(" ", "")


def _is_geotiff(asset: Any) -> bool:
    media = _media_type(asset)
    if media:
        if not media.startswith("image/tiff"):
            return False
        if "application=geotiff" in media:
            return True
    href = str(asset.href)
    path = urlsplit(href).path if "://" in href else href
    return path.lower().endswith((".tif", ".tiff"))


def asset_band_count(asset: Any) -> int | None:
    """The bands an asset lists (``bands``, ``eo:bands`` or ``raster:bands``); None if none does."""
    fields = asset.extra_fields
    for name in _BAND_FIELDS:
        listed = fields.get(name)
        if isinstance(listed, list) and listed:
            return len(listed)
    return None


def choose_asset(
    item: Any, keys: Sequence[str] = (), *, bands: int | None = None, exact: bool = True
) -> tuple[str, str] | str:
    """The asset of a STAC item to segment, as (key, raw href), or why there is none (one line).

    With ``keys``, the first of them the item has, whatever its type or roles. Without, as a user
    would choose: among the GeoTIFF assets (a GeoTIFF media type, or a ``.tif``/``.tiff`` href
    when the media type says nothing more) that have none of the :data:`SKIPPED_ROLES`, the
    first by

    1. band count: one that fits the model, or lists no bands, before one that lists other
       counts (a 1-band ``aot`` or ``mask`` asset for an RGB model);
    2. role: ``visual``, then ``data``, then the rest;
    3. the item's order.

    An item with a single asset that has no media type (or a TIFF or JPEG 2000 one) and no
    skipped role gives that asset as it is, whatever its href.

    Args:
        item: A pystac Item.
        keys: Asset keys in order of preference (``--asset visual,image``).
        bands: The bands an asset needs (None: band counts play no part).
        exact: Whether an asset fits with exactly ``bands`` (the model's count) or at least
            (``--bands`` picks some of them).
    """
    assets = dict(item.assets)
    listed = ", ".join(assets) or "none"
    if keys:
        for key in keys:
            if key in assets:
                return key, str(assets[key].href)
        if len(keys) == 1:
            return f"item {item.id} has no asset {keys[0]!r} (its assets: {listed}); pass another --asset"
        named = ", ".join(repr(k) for k in keys)
        return f"item {item.id} has none of the assets {named} (its assets: {listed}); pass others with --asset"

    def usable(asset: Any) -> bool:
        return not set(asset.roles or ()) & set(SKIPPED_ROLES)

    candidates = [(key, a) for key, a in assets.items() if usable(a) and _is_geotiff(a)]
    if not candidates and len(assets) == 1:
        ((key, lone),) = assets.items()
        media = _media_type(lone)
        if usable(lone) and (not media or media.startswith(("image/tiff", "image/jp2"))):
            return key, str(lone.href)
    if not candidates:
        return (
            f"item {item.id} has no GeoTIFF asset to segment (its assets: {listed}; assets with "
            f"role {', '.join(SKIPPED_ROLES)} are passed over); choose one with --asset KEY"
        )

    def rank(entry: tuple[int, tuple[str, Any]]) -> tuple[int, int, int]:
        order, (_, asset) = entry
        count = asset_band_count(asset)
        misfit = (
            bands is not None and count is not None and (count != bands if exact else count < bands)
        )
        roles = set(asset.roles or ())
        role = next((i for i, r in enumerate(DEFAULT_ROLES) if r in roles), len(DEFAULT_ROLES))
        return int(misfit), role, order

    _, (key, chosen) = min(enumerate(candidates), key=rank)
    return key, str(chosen.href)


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


#: Schemas of the STAC extensions the results catalog uses.
EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "label": "https://stac-extensions.github.io/label/v1.0.1/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
}


def write_results_catalog(
    dest: str | os.PathLike[str],
    items: Sequence[ResultItem],
    *,
    model: str | os.PathLike[str],
    model_hash: str,
    meta: ModelMeta | None = None,
) -> Path:
    """Write a self-contained static STAC catalog of segmented scenes; return its ``catalog.json``.

    Layout: ``DEST/catalog.json`` (the root), ``DEST/COLLECTION/collection.json`` with one item
    per scene in ``DEST/COLLECTION/ID/ID.json``, and the model's item (MLM extension,
    :func:`geounet.archive.stac_model.model_item`) in ``DEST/MODEL/MODEL.json``. Hrefs into the catalog
    and the outputs are relative (the outputs are referred to where they are, not copied), so
    they stay valid when the results move together; hrefs to what lies outside (source items,
    their collections, source rasters, the model file) are absolute. An earlier results catalog
    in ``DEST`` is replaced as a whole.

    Each result item carries the projection (v2.0.0), label (v1.0.1), processing (v1.2.0)
    extensions, and on its mask asset the classification (v1.1.0) and raster (v1.1.0) ones; it
    links to its source (``source`` and ``derived_from``) and to the model item
    (``derived_from``).

    Args:
        dest: The catalog folder.
        items: The scenes.
        model: The model file (or bundled model's name) the scenes were segmented with.
        model_hash: SHA-256 of the model file.
        meta: The model's metadata (read from ``model`` when None).

    Returns:
        The path of ``catalog.json``.

    Raises:
        GeounetError: pystac is missing.
        CheckpointError: The model file cannot be read.
        OutputError: The catalog cannot be written.
        OutputExistsError: ``dest`` holds something other than a results catalog.
    """
    from geounet.archive.stac_model import data_license, mask_classes, model_item
    from geounet.network.checkpoint import read_meta, resolve_model

    pystac = _import_pystac()
    folder = Path(dest).expanduser().resolve()
    model_path = resolve_model(model).resolve()
    meta = meta if meta is not None else read_meta(model_path)
    name = model_path.stem
    model_stac = pystac.Item.from_dict(
        model_item(model_path, meta=meta, sha256=model_hash), preserve_dict=False
    )
    licence, licensors = data_license(meta)
    collection_id = f"{RESULTS_CATALOG_ID}-{_slug(name)}"
    if collection_id == model_stac.id:
        collection_id += "-results"
    results = [
        _result_item(pystac, entry, meta=meta, model=name, model_hash=model_hash) for entry in items
    ]
    described = f"by geounet {__version__} with the model {name} (SHA-256 {model_hash})"
    count = f"{len(items)} scene{'s' if len(items) != 1 else ''}"
    catalog = pystac.Catalog(
        id=RESULTS_CATALOG_ID,
        title="geounet results",
        description=f"Segmentation of {count} {described}.",
    )
    collection = pystac.Collection(
        id=collection_id,
        title=f"{name} results",
        description=(
            f"Segmentation of {count} {described}: {', '.join(meta.classes)} as polygons (label "
            f"extension) and class masks (classification extension)."
        ),
        extent=_extent(pystac, results),
        license=licence,
        providers=[
            *[pystac.Provider.from_dict(p) for p in licensors],
            pystac.Provider(
                name="geounet",
                description=f"Segmented {described}",
                roles=[pystac.ProviderRole.PROCESSOR],
                extra_fields={"processing:software": _software(model_path)},
            ),
        ],
        summaries=pystac.Summaries(_summaries(results)),
    )
    collection.stac_extensions = sorted({ext for item in results for ext in item.stac_extensions})
    collection.extra_fields["item_assets"] = _item_assets(meta, mask_classes(meta))
    for href, title in _source_collections(items):
        collection.add_link(
            pystac.Link("derived_from", href, media_type="application/json", title=title)
        )
    catalog.add_child(collection)
    catalog.add_item(model_stac)
    collection.add_items(results)
    catalog.normalize_hrefs(str(folder))
    catalog.make_all_asset_hrefs_relative()
    # Links to what lies outside the catalog are added once the hrefs are laid out, so that
    # pystac does not read them (a source raster is no STAC object; a remote item, no wait).
    kept_link = _KeptLink(pystac)
    for entry, item in zip(items, results, strict=True):
        for link in _source_links(entry):
            item.add_link(kept_link.from_dict(link))
        here = os.path.dirname(item.get_self_href())
        item.add_link(
            pystac.Link(
                "derived_from",
                os.path.relpath(model_stac.get_self_href(), here),
                media_type="application/geo+json",
                title=f"The model {name} (MLM)",
            )
        )
    _save_catalog(pystac, catalog, folder)
    return folder / CATALOG_NAME


def _KeptLink(pystac: Any) -> Any:
    """pystac's Link class, but written with its href as given: pystac would make a ``source``
    link relative in a self-contained catalog (the label extension counts it as the item's own),
    and a link to a source outside the results must stay absolute to survive their moving."""

    class KeptLink(pystac.Link):  # type: ignore[misc]
        def get_href(self, transform_href: bool = True) -> str | None:
            return super().get_href(transform_href=False)  # type: ignore[no-any-return]

    return KeptLink


def _save_catalog(pystac: Any, catalog: Any, folder: Path) -> None:
    """Save a catalog into a temporary folder beside ``folder``, then swap it into place."""
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


def _result_item(
    pystac: Any, entry: ResultItem, *, meta: ModelMeta, model: str, model_hash: str
) -> Any:
    from pystac.utils import datetime_to_str, str_to_datetime

    from geounet.archive.stac_model import mask_classes

    grid = _scene_grid(entry.scene)
    geometry, bbox = _footprint(grid)
    source = entry.source
    params = entry.params or {}
    tile = (
        f", tiles of {params['tile_size']} px overlapping by {params['overlap']} px"
        if "tile_size" in params
        else ""
    )
    what = (
        f"the STAC item {source.item_id} (asset {source.asset_key})"
        if source is not None
        else entry.scene
    )
    properties: dict[str, Any] = {
        "created": entry.created,
        "label:type": "vector" if "vectors" in entry.assets else "raster",
        "label:description": f"{', '.join(meta.classes)} segmented by the geounet model {model}",
        "label:tasks": ["segmentation"],
        "label:methods": ["automated"],
        "processing:software": _software(model),
        "processing:lineage": (
            f"Segmented from {what} by geounet {__version__} with the model {model} "
            f"(SHA-256 {model_hash}){tile}; polygons traced from the class mask"
        ),
    }
    classes = mask_classes(meta)
    foreground = [c["name"] for c in classes if c["value"] > 0 and not c.get("nodata")]
    if properties["label:type"] == "vector":
        properties["label:properties"] = ["class"]
        properties["label:classes"] = [{"name": "class", "classes": foreground}]
        if entry.features is not None and len(foreground) == 1:
            counts = [{"name": foreground[0], "count": entry.features}]
            properties["label:overviews"] = [{"property_key": "class", "counts": counts}]
    else:
        properties["label:properties"] = None
        properties["label:classes"] = [
            {"name": None, "classes": [c["value"] for c in classes[1:-1]]}
        ]
    if entry.created:
        properties["processing:datetime"] = datetime_to_str(str_to_datetime(entry.created))
    if params:
        properties["processing:expression"] = {
            "format": "geounet-batch-parameters",
            "expression": params,
        }
    if grid is not None:
        properties.update(_projection(grid.crs, grid.transform, grid.height, grid.width))
    when: datetime | None = None
    if source is not None and source.datetime:
        when = str_to_datetime(source.datetime)
    elif source is not None and source.start_datetime and source.end_datetime:
        properties["start_datetime"] = source.start_datetime
        properties["end_datetime"] = source.end_datetime
    else:
        when = str_to_datetime(entry.created) if entry.created else datetime.now(timezone.utc)
    item = pystac.Item(
        id=entry.id, geometry=geometry, bbox=bbox, datetime=when, properties=properties
    )
    extensions = {EXTENSIONS["label"], EXTENSIONS["processing"]}
    if grid is not None:
        extensions.add(EXTENSIONS["projection"])
    for kind, path in entry.assets.items():
        asset, used = _result_asset(
            kind, path, meta=meta, grid=grid, params=params, classes=classes
        )
        item.add_asset(kind, pystac.Asset.from_dict(asset))
        extensions |= used
    item.stac_extensions = sorted(extensions)
    return item


def _result_asset(
    kind: str,
    path: Path,
    *,
    meta: ModelMeta,
    grid: _Grid | None,
    params: dict[str, Any],
    classes: list[dict[str, Any]],
) -> tuple[dict[str, Any], set[str]]:
    """One output as a STAC asset (a dict), and the extensions its fields use."""
    asset: dict[str, Any] = {"href": str(path), "title": _ASSET_TITLES.get(kind, kind)}
    used: set[str] = set()
    suffix = path.suffix.lower()
    if kind == "vectors":
        asset["roles"] = ["data", "labels"]
        crs = params.get("to_crs") or (grid.crs if grid is not None else None)
        code = _crs_code(crs) if crs is not None else None
        media = _MEDIA_TYPES.get(suffix)
        if suffix == ".geojson" and code not in _RFC7946_CODES:
            # RFC 7946 GeoJSON is in longitude and latitude only; these coordinates are not.
            media = "application/json"
            asset["description"] = (
                f"GeoJSON in {code or 'the scene CRS'} (as geounet writes it), not RFC 7946 "
                f"longitude/latitude: read the CRS from proj:code"
            )
        if media:
            asset["type"] = media
        if code is not None:
            asset["proj:code"] = code
            used.add(EXTENSIONS["projection"])
        return asset, used
    asset["type"] = _MEDIA_TYPES.get(suffix, COG_MEDIA_TYPE)
    raster = _raster_info(path)
    if raster is not None:
        bands, out_grid = raster
        asset["raster:bands"] = bands
        used.add(EXTENSIONS["raster"])
        if out_grid is not None and (grid is None or out_grid != grid):
            asset.update(
                _projection(out_grid.crs, out_grid.transform, out_grid.height, out_grid.width)
            )
            used.add(EXTENSIONS["projection"])
    if kind == "mask":
        asset["roles"] = ["data", "classification"]
        asset["classification:classes"] = classes
        used.add(EXTENSIONS["classification"])
    elif kind == "probabilities":
        asset["roles"] = ["data", "probability"]
        names = meta.classes[: meta.class_channels] if not meta.binary else meta.classes[:1]
        asset["description"] = "Probability of each class, one band each: " + ", ".join(names)
    else:
        asset["roles"] = ["data"]
    return asset, used


#: Projection codes of RFC 7946 GeoJSON (longitude, latitude on WGS 84).
_RFC7946_CODES = ("EPSG:4326", "OGC:CRS84")


@dataclass(frozen=True, slots=True)
class _Grid:
    """A raster's pixel grid: CRS, affine transform, size and bounds (left, bottom, right, top)."""

    crs: Any
    transform: Any
    height: int
    width: int
    bounds: tuple[float, float, float, float]


def _scene_grid(scene: str) -> _Grid | None:
    """A raster's grid; None for one that cannot be opened or has no CRS."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.Env(**gdal_options(scene)), rasterio.open(gdal_path(scene)) as src:
            if src.crs is None:
                return None
            return _Grid(src.crs, src.transform, src.height, src.width, tuple(src.bounds))
    except (RasterioError, OSError) as exc:
        logger.warning("no footprint for %s: %s", scene, _reason(exc))
        return None


def _raster_info(path: Path) -> tuple[list[dict[str, Any]], _Grid | None] | None:
    """``raster:bands`` of an output GeoTIFF (data type, nodata, scale) and its grid."""
    import math

    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            bands = []
            for i in range(src.count):
                band: dict[str, Any] = {"data_type": src.dtypes[i]}
                nodata = src.nodatavals[i]
                if nodata is not None:
                    band["nodata"] = "nan" if math.isnan(nodata) else nodata
                if src.scales[i] != 1 or src.offsets[i] != 0:
                    band["scale"], band["offset"] = src.scales[i], src.offsets[i]
                bands.append(band)
            grid = (
                _Grid(src.crs, src.transform, src.height, src.width, tuple(src.bounds))
                if src.crs
                else None
            )
    except (RasterioError, OSError) as exc:
        logger.warning("cannot describe %s in the STAC catalog: %s", path, _reason(exc))
        return None
    return bands, grid


def _crs_code(crs: Any) -> str | None:
    """``AUTHORITY:CODE`` of a CRS (a rasterio CRS or any text pyproj reads), if it has one."""
    from pyproj import CRS

    try:
        found = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).to_authority(
            min_confidence=90
        )
    except Exception:  # noqa: BLE001 (pyproj raises CRSError and others for odd input)
        return None
    return f"{found[0]}:{found[1]}" if found else None


def _projection(crs: Any, transform: Any, height: int, width: int) -> dict[str, Any]:
    """Projection extension fields (v2.0.0) of a raster grid."""
    from rasterio.transform import array_bounds

    code = _crs_code(crs)
    west, south, east, north = array_bounds(height, width, transform)
    fields: dict[str, Any] = {
        "proj:code": code,
        "proj:shape": [height, width],
        "proj:transform": [
            transform.a,
            transform.b,
            transform.c,
            transform.d,
            transform.e,
            transform.f,
        ],
        "proj:bbox": [west, south, east, north],
    }
    if code is None:
        fields["proj:wkt2"] = crs.to_wkt()
    return fields


def _software(model: str | os.PathLike[str]) -> dict[str, str]:
    """``processing:software``: geounet and the runtime that ran the model."""
    from geounet.network.checkpoint import is_onnx

    software = {"geounet": __version__}
    if is_onnx(model):
        try:
            import onnxruntime

            software["onnxruntime"] = str(onnxruntime.__version__)
        except ImportError:
            pass
    else:
        import torch

        software["torch"] = str(torch.__version__)
    return software


def _source_links(entry: ResultItem) -> list[dict[str, Any]]:
    """Links to what a result was made from: its STAC item (``source`` for the label extension,
    and ``derived_from``), else the ItemCollection it came in, else the raster itself."""
    source = entry.source
    if source is None:
        href = entry.scene if is_remote(entry.scene) else os.path.abspath(entry.scene)
        return [
            {
                "rel": "source",
                "href": href,
                "type": "image/tiff; application=geotiff",
                "title": "The segmented raster",
            }
        ]
    if source.item_href is not None:
        href, title = source.item_href, f"STAC item {source.item_id}"
    else:  # an item of an ItemCollection, which has no href of its own
        href = source.source if "://" in source.source else os.path.abspath(source.source)
        title = f"STAC item {source.item_id} of this ItemCollection"
    common = {"href": href, "type": "application/geo+json", "title": title}
    source_link: dict[str, Any] = {"rel": "source", **common}
    if source.asset_key:
        source_link["label:assets"] = [source.asset_key]
    return [source_link, {"rel": "derived_from", **common}]


def _source_collections(items: Sequence[ResultItem]) -> list[tuple[str, str]]:
    """(href, title) of each STAC collection that the source items name (by a ``collection``
    link), in first-seen order. Sources that cannot be read are left out (logged)."""
    import pystac

    io = _stac_io(pystac)
    docs: dict[str, Any] = {}
    found: dict[str, str] = {}
    for entry in items:
        source = entry.source
        if source is None:
            continue
        doc_href = source.item_href or (
            source.source if "://" in source.source else os.path.abspath(source.source)
        )
        if doc_href not in docs:
            try:
                docs[doc_href] = json.loads(io.read_text(doc_href))
            except Exception as exc:  # noqa: BLE001 (a missing link, not a failed catalog)
                logger.info("no source collection for %s: %s", source.item_id, _reason(exc))
                docs[doc_href] = None
        doc = docs[doc_href]
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            doc = next(
                (
                    f
                    for f in doc.get("features", [])
                    if isinstance(f, dict) and f.get("id") == source.item_id
                ),
                None,
            )
        if not isinstance(doc, dict):
            continue
        for link in doc.get("links", []):
            if (
                isinstance(link, dict)
                and link.get("rel") == "collection"
                and isinstance(link.get("href"), str)
            ):
                href = _resolve_href(link["href"], doc_href)
                if href is not None and href not in found:
                    found[href] = f"Source collection {doc.get('collection') or _href_stem(href)}"
    return list(found.items())


def _extent(pystac: Any, items: Sequence[Any]) -> Any:
    """The union of the items' bounding boxes and times (the whole world when none has one)."""
    boxes = [item.bbox for item in items if item.bbox]
    if boxes:
        bbox = [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
    else:
        bbox = [-180.0, -90.0, 180.0, 90.0]
    times = []
    for item in items:
        for key in ("datetime", "start_datetime", "end_datetime"):
            value = item.properties.get(key) if key != "datetime" else item.datetime
            if isinstance(value, str):
                from pystac.utils import str_to_datetime

                value = str_to_datetime(value)
            if value is not None:
                times.append(value)
    interval = [min(times), max(times)] if times else [None, None]
    return pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval]))


def _summaries(items: Sequence[Any]) -> dict[str, Any]:
    """Collection summaries: the distinct values of a few fields over the items."""
    out: dict[str, Any] = {}
    for key in ("proj:code", "label:type", "label:tasks", "label:methods", "label:properties"):
        values: list[Any] = []
        for item in items:
            value = item.properties.get(key)
            for v in value if isinstance(value, list) else [value]:
                if v is not None and v not in values:
                    values.append(v)
        if values:
            out[key] = values
    return out


def _item_assets(meta: ModelMeta, classes: list[dict[str, Any]]) -> dict[str, Any]:
    """The collection's ``item_assets``: what each output asset of its items is."""
    return {
        "vectors": {"title": _ASSET_TITLES["vectors"], "roles": ["data", "labels"]},
        "mask": {
            "title": _ASSET_TITLES["mask"],
            "type": COG_MEDIA_TYPE,
            "roles": ["data", "classification"],
            "classification:classes": classes,
        },
        "probabilities": {
            "title": _ASSET_TITLES["probabilities"],
            "type": COG_MEDIA_TYPE,
            "roles": ["data", "probability"],
        },
    }


def _slug(text: str) -> str:
    """``text`` as a STAC id part: letters, digits, ``-`` and ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "model"


def scene_footprint(scene: str) -> tuple[dict[str, Any] | None, list[float] | None]:
    """A scene's outline and bounding box in EPSG:4326 (GeoJSON polygon, [west, south, east,
    north]); (None, None) for a scene that cannot be opened or has no CRS.

    Each side of the scene's bounds is cut into :data:`_FOOTPRINT_STEPS` segments before
    reprojection, so the outline follows the curved edges of a projected scene in longitude and
    latitude.
    """
    return _footprint(_scene_grid(scene))


def _footprint(grid: _Grid | None) -> tuple[dict[str, Any] | None, list[float] | None]:
    from rasterio.warp import transform

    if grid is None:
        return None, None
    left, bottom, right, top = grid.bounds
    n = _FOOTPRINT_STEPS
    steps = [i / n for i in range(n)]
    # Counter-clockwise from the south-west corner (GeoJSON's exterior ring orientation).
    xs = [left + (right - left) * t for t in steps] + [right] * n
    ys = [bottom] * n + [bottom + (top - bottom) * t for t in steps]
    xs += [right - (right - left) * t for t in steps] + [left] * n
    ys += [top] * n + [top - (top - bottom) * t for t in steps]
    lons, lats = transform(grid.crs, "EPSG:4326", xs, ys)
    ring = [[round(x, 9), round(y, 9)] for x, y in zip(lons, lats, strict=True)]
    ring.append(ring[0])
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 9) for v in bbox]


__all__ = [
    "CATALOG_NAME",
    "COG_MEDIA_TYPE",
    "DEFAULT_ROLES",
    "EXTENSIONS",
    "SKIPPED_ROLES",
    "ResultItem",
    "StacScene",
    "asset_band_count",
    "check_catalog_dest",
    "choose_asset",
    "is_stac_source",
    "read_stac_scenes",
    "scene_footprint",
    "write_results_catalog",
]
