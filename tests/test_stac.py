"""STAC in and out: catalogs, collections and items as batch inputs; the results catalog."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import one_torch_thread_for, roofs_model
from rasterio.warp import transform_bounds

from geounet.archive.batch import MANIFEST_NAME, read_manifest, run_batch
from geounet.archive.stac import COG_MEDIA_TYPE, is_stac_source, read_stac_scenes
from geounet.cli.main import cli
from geounet.errors import GeounetError, OutputError, OutputExistsError
from geounet.prediction.config import PredictConfig
from geounet.synthetic import make_scene

pystac = pytest.importorskip("pystac")

#: Four 96-pixel tiles per 128-pixel scene: quick on a CPU.
CONFIG = PredictConfig(tile_size=96, overlap=16)
GEOTIFF = "image/tiff; application=geotiff"
TIMES = ["2023-05-01T10:00:00Z", "2023-06-01T10:00:00Z", "2023-07-01T10:00:00Z"]
STAC_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stac-extension-schemas"


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from one_torch_thread_for(monkeypatch)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return roofs_model(tmp_path_factory.mktemp("model") / "roofs.safetensors")


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def stac_item(
    item_id: str, assets: dict[str, dict[str, Any]], *, when: str | None = TIMES[0]
) -> dict[str, Any]:
    """A STAC 1.0 item with these assets (hrefs as given, relative to the item's JSON)."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": when},
        "links": [],
        "assets": assets,
    }


def visual(href: str) -> dict[str, Any]:
    """A Cloud-Optimized GeoTIFF asset with role visual (as Sentinel-2 catalogs have)."""
    return {"href": href, "type": f"{GEOTIFF}; profile=cloud-optimized", "roles": ["visual"]}


def make_archive(root: Path, count: int = 3) -> tuple[Path, list[Path]]:
    """Scenes in ``root/scenes`` and a static catalog over them in ``root/stac``: catalog.json ->
    col/collection.json -> col/itemN/itemN.json, every href relative.

    Each item also has a thumbnail and a metadata asset before its GeoTIFF, which the default
    asset choice must pass over.
    """
    scenes = [
        make_scene(
            root / "scenes" / f"scene{i}.tif", width=128, height=128, seed=i, building_density=3.0
        ).path
        for i in range(count)
    ]
    stac = root / "stac"
    write_json(
        stac / "catalog.json",
        {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "archive",
            "description": "test archive",
            "links": [
                {"rel": "root", "href": "./catalog.json"},
                {"rel": "child", "href": "./col/collection.json"},
            ],
        },
    )
    write_json(
        stac / "col" / "collection.json",
        {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": "col",
            "description": "scenes",
            "license": "CC0-1.0",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [
                {"rel": "root", "href": "../catalog.json"},
                {"rel": "parent", "href": "../catalog.json"},
            ]
            + [{"rel": "item", "href": f"./item{i}/item{i}.json"} for i in range(count)],
        },
    )
    for i in range(count):
        item = stac_item(
            f"item{i}",
            {
                "thumbnail": {"href": "./thumb.png", "type": "image/png", "roles": ["thumbnail"]},
                "metadata": {
                    "href": "./meta.xml",
                    "type": "application/xml",
                    "roles": ["metadata"],
                },
                "visual": visual(f"../../../scenes/scene{i}.tif"),
            },
            when=TIMES[i % len(TIMES)],
        )
        item["links"] = [
            {"rel": "root", "href": "../../catalog.json"},
            {"rel": "parent", "href": "../collection.json"},
        ]
        write_json(stac / "col" / f"item{i}" / f"item{i}.json", item)
    return stac / "catalog.json", scenes


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Reading STAC


def test_read_catalog_walks_collections_and_resolves_relative_hrefs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, scenes = make_archive(tmp_path, count=2)
    got = read_stac_scenes(catalog)

    def found(source: Path | str) -> list[tuple[str, str | None, str | None, str | None]]:
        return [(s.item_id, s.asset_key, s.href, s.item_href) for s in read_stac_scenes(source)]

    assert [s.item_id for s in got] == ["item0", "item1"]
    assert [s.href for s in got] == [str(p) for p in scenes]
    assert all(s.asset_key == "visual" and s.error is None for s in got)
    assert got[1].item_href == str(tmp_path / "stac" / "col" / "item1" / "item1.json")
    assert got[1].datetime == TIMES[1]
    # Starting from the collection, or from one item, gives the same scenes.
    assert found(tmp_path / "stac" / "col" / "collection.json") == found(catalog)
    assert found(tmp_path / "stac" / "col" / "item1" / "item1.json") == found(catalog)[1:]
    # A relative path to the catalog works like an absolute one.
    monkeypatch.chdir(tmp_path)
    assert found("stac/catalog.json") == found(catalog)


def test_item_collection_and_the_default_asset_choice(tmp_path: Path) -> None:
    """ItemCollection hrefs resolve against its file; a GeoTIFF that is no label or preview."""
    tif = make_scene(tmp_path / "data" / "s.tif", width=64, height=64).path
    features = [
        stac_item(
            "cog-data",
            {  # JPEG 2000 data and a PNG come first; the COG is taken
                "B01": {"href": "data/s.jp2", "type": "image/jp2", "roles": ["data"]},
                "preview": {"href": "data/s.tif", "type": "image/png", "roles": ["visual"]},
                "cog": {
                    "href": "data/s.tif",
                    "type": f"{GEOTIFF}; profile=cloud-optimized",
                    "roles": ["data", "reflectance"],
                },
            },
        ),
        stac_item(
            "untyped",
            {  # no media type: a .tif href will do
                "overview": {"href": "data/s.tif", "roles": ["overview"]},
                "image": {"href": "./data/s.TIF", "roles": ["visual"]},
            },
        ),
        stac_item("no-role", {"image": {"href": "data/s.tif", "type": GEOTIFF}}),
        stac_item(
            "labels-only",
            {
                "mask": {"href": "data/s.tif", "type": GEOTIFF, "roles": ["data", "labels"]},
                "thumbnail": {"href": "data/s.png", "type": "image/png"},
            },
        ),
        stac_item(
            "absolute-file-url",
            {"image": {"href": tif.as_uri(), "type": GEOTIFF, "roles": ["data"]}},
        ),
        stac_item(
            "remote",
            {"image": {"href": "https://example.com/a/b.tif", "type": GEOTIFF, "roles": ["data"]}},
        ),
        stac_item(
            "odd-scheme",
            {"image": {"href": "ftp://example.com/b.tif", "type": GEOTIFF, "roles": ["data"]}},
        ),
    ]
    (tmp_path / "data" / "s.TIF").write_bytes(tif.read_bytes())
    path = write_json(tmp_path / "search.json", {"type": "FeatureCollection", "features": features})
    got = {s.item_id: s for s in read_stac_scenes(path)}
    assert (got["cog-data"].asset_key, got["cog-data"].href) == ("cog", str(tif))
    assert (got["untyped"].asset_key, got["untyped"].href) == (
        "image",
        str(tmp_path / "data" / "s.TIF"),
    )
    assert got["absolute-file-url"].href == str(tif)
    assert got["remote"].href == "https://example.com/a/b.tif" and got["remote"].error is None
    # A lone GeoTIFF asset without roles is taken as it is.
    assert (got["no-role"].asset_key, got["no-role"].href, got["no-role"].error) == (
        "image",
        str(tif),
        None,
    )
    assert got["no-role"].input == f"{path}#no-role"  # the item's key: its ItemCollection and id
    labels_only = got["labels-only"]
    assert labels_only.href is None and labels_only.input == f"{path}#labels-only"
    assert labels_only.error == (
        "item labels-only has no GeoTIFF asset to segment (its assets: mask, thumbnail; assets with role "
        "labels, thumbnail, overview, metadata are passed over); choose one with --asset KEY"
    )
    assert got["odd-scheme"].href is None and "ftp://example.com/b.tif" in (
        got["odd-scheme"].error or ""
    )
    # --asset names the asset, whatever its type or role.
    named = {s.item_id: s for s in read_stac_scenes(path, asset="image")}
    assert named["no-role"].href == str(tif) and named["no-role"].error is None
    assert (
        named["cog-data"].error
        == "item cog-data has no asset 'image' (its assets: B01, preview, cog); pass another --asset"
    )
    assert (
        named["labels-only"].error
        == "item labels-only has no asset 'image' (its assets: mask, thumbnail); pass another --asset"
    )
    # Several keys: the first each item has.
    ranked = {
        s.item_id: s.asset_key
        for s in read_stac_scenes(path, asset=["nothing", "mask", "image", "cog"])
    }
    assert (
        ranked["labels-only"] == "mask"
        and ranked["no-role"] == "image"
        and ranked["cog-data"] == "cog"
    )
    lost = {s.item_id: s.error for s in read_stac_scenes(path, asset=("red", "nir"))}
    assert (
        lost["no-role"]
        == "item no-role has none of the assets 'red', 'nir' (its assets: image); pass others with --asset"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ('{"type": "FeatureCollection", "features": []}', "holds no STAC items"),
        ('{"type": "Topology"}', "is not a STAC Item, ItemCollection, Catalog or Collection"),
        ("[1, 2]", "is not a STAC Item, ItemCollection, Catalog or Collection"),
        ('{"type": "Feature", "id": "x"}', "is not valid STAC"),
    ],
)
def test_unreadable_stac_stops_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(GeounetError, match=re.escape(message)) as info:
        read_stac_scenes(path)
    assert "\n" not in str(info.value)
    with pytest.raises(GeounetError, match=r"cannot read STAC .*missing\.json"):
        read_stac_scenes(tmp_path / "missing.json")
    with pytest.raises(GeounetError, match=r"not s3://"):
        read_stac_scenes("s3://bucket/catalog.json")


def test_stac_inputs_are_told_by_their_suffix() -> None:
    assert is_stac_source("stac/catalog.json") and is_stac_source("https://h/c/ITEM.JSON?token=1")
    assert not is_stac_source("scene.tif") and not is_stac_source("https://h/json/scene.tif")


# --------------------------------------------------------------------------------------------
# Batches of STAC items


def test_catalog_gives_the_same_outputs_as_the_scenes_as_paths_and_resumes(
    tmp_path: Path, model_file: Path
) -> None:
    catalog, scenes = make_archive(tmp_path / "archive")
    by_stac = run_batch(
        [catalog], tmp_path / "stac-out", model=model_file, config=CONFIG, mask=True
    )
    by_path = run_batch(
        [str(p) for p in scenes], tmp_path / "path-out", model=model_file, config=CONFIG, mask=True
    )
    assert len(by_stac.done) == len(by_path.done) == 3 and not by_stac.failed
    for rec, plain in zip(by_stac.done, by_path.done, strict=True):
        assert rec.asset_href == plain.input  # the asset's raster, resolved
        assert rec.input == str(
            tmp_path / "archive" / "stac" / "col" / rec.item_id / f"{rec.item_id}.json"
        )  # keyed on the item
        assert (
            rec.item_id == rec.name == f"item{scenes.index(Path(plain.input))}"
        )  # named after the item
        assert rec.features == plain.features > 0
        np.testing.assert_array_equal(
            read_mask(tmp_path / "stac-out" / rec.outputs["mask"]),
            read_mask(tmp_path / "path-out" / plain.outputs["mask"]),
        )
    lines = [
        json.loads(line)
        for line in (tmp_path / "stac-out" / MANIFEST_NAME).read_text().splitlines()
    ]
    assert [(line["item_id"], Path(line["asset_href"]).name) for line in lines] == [
        ("item0", "scene0.tif"),
        ("item1", "scene1.tif"),
        ("item2", "scene2.tif"),
    ]
    # Scenes given as paths keep manifest lines without STAC fields.
    assert all(
        "item_id" not in line
        for line in (tmp_path / "path-out" / MANIFEST_NAME).read_text().splitlines()
    )

    # Resume: the same catalog skips every item; an item whose href changed is redone.
    again = run_batch([catalog], tmp_path / "stac-out", model=model_file, config=CONFIG, mask=True)
    assert (len(again.done), len(again.skipped), len(again.failed)) == (0, 3, 0)
    moved = tmp_path / "archive" / "scenes" / "moved.tif"
    shutil.copy(scenes[1], moved)
    item1 = tmp_path / "archive" / "stac" / "col" / "item1" / "item1.json"
    data = json.loads(item1.read_text())
    data["assets"]["visual"]["href"] = "../../../scenes/moved.tif"
    item1.write_text(json.dumps(data))
    redo = run_batch([catalog], tmp_path / "stac-out", model=model_file, config=CONFIG, mask=True)
    assert [(r.item_id, r.asset_href) for r in redo.done] == [("item1", str(moved))]
    assert len(redo.skipped) == 2
    assert redo.done[0].name == "item1"  # the same item keeps its name: its outputs are replaced
    assert {p.name.split(".")[0] for p in (tmp_path / "stac-out").iterdir()} == {
        "manifest",
        "item0",
        "item1",
        "item2",
    }


def test_catalog_served_over_http_gives_the_same_outputs(
    tmp_path: Path, model_file: Path, http_root: tuple[str, Path, list[tuple[str | None, int]]]
) -> None:
    base, root, served = http_root
    catalog, _ = make_archive(root)
    local = run_batch([catalog], tmp_path / "local", model=model_file, config=CONFIG, mask=True)
    url = f"{base}/stac/catalog.json"
    remote = run_batch([url], tmp_path / "remote", model=model_file, config=CONFIG, mask=True)
    assert len(remote.done) == 3 and not remote.failed
    assert [r.asset_href for r in remote.done] == [f"{base}/scenes/scene{i}.tif" for i in range(3)]
    assert [r.input for r in remote.done] == [
        f"{base}/stac/col/item{i}/item{i}.json" for i in range(3)
    ]
    assert [r.item_id for r in remote.done] == [r.item_id for r in local.done]
    for rec, plain in zip(remote.done, local.done, strict=True):
        assert rec.input_size is None and rec.features == plain.features
        np.testing.assert_array_equal(
            read_mask(tmp_path / "remote" / rec.outputs["mask"]),
            read_mask(tmp_path / "local" / plain.outputs["mask"]),
        )
    assert any(header is not None for header, _ in served)  # the rasters were read by ranges
    again = run_batch([url], tmp_path / "remote", model=model_file, config=CONFIG, mask=True)
    assert len(again.skipped) == 3
    with pytest.raises(
        GeounetError, match=r"cannot read STAC http://127\.0\.0\.1:\d+/stac/nothing\.json"
    ):
        run_batch(
            [f"{base}/stac/nothing.json"], tmp_path / "remote", model=model_file, config=CONFIG
        )


def test_broken_items_are_recorded_as_failed_and_the_others_finish(
    tmp_path: Path, model_file: Path
) -> None:
    catalog, scenes = make_archive(tmp_path / "archive", count=2)
    col = tmp_path / "archive" / "stac" / "col"
    write_json(
        col / "nohref" / "nohref.json",
        stac_item("nohref", {"visual": visual("../../../scenes/gone.tif")}),
    )
    write_json(
        col / "noasset" / "noasset.json",
        stac_item("noasset", {"thumbnail": {"href": "t.png", "type": "image/png"}}),
    )
    collection = json.loads((col / "collection.json").read_text())
    collection["links"] += [
        {"rel": "item", "href": "./nohref/nohref.json"},
        {"rel": "item", "href": "./noasset/noasset.json"},
        {"rel": "item", "href": "./lost/lost.json"},  # no such file
    ]
    write_json(col / "collection.json", collection)
    out = tmp_path / "out"
    args = (
        "batch",
        str(catalog),
        "-o",
        str(out),
        "-m",
        str(model_file),
        "--mask",
        "--tile-size",
        "96",
    )

    r = invoke(*args)
    assert r.exit_code == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "2 done, 0 skipped (already done), 3 failed" in r.stderr
    last = read_manifest(out / MANIFEST_NAME)
    by_item = {rec.item_id: rec for rec in last.values()}
    assert by_item["item0"].status == by_item["item1"].status == "done"
    assert by_item["nohref"].status == "failed"
    assert (
        by_item["nohref"].error
        == f"item nohref: asset 'visual' points to {scenes[0].parent / 'gone.tif'}, which does not exist"
    )
    assert (
        by_item["noasset"].error is not None
        and "has no GeoTIFF asset to segment" in by_item["noasset"].error
    )
    assert by_item["lost"].error is not None and by_item["lost"].error == (
        f"cannot read STAC item {col / 'lost' / 'lost.json'}: No such file or directory"
    )
    for name in ("nohref", "noasset", "lost"):
        rec = by_item[name]
        assert rec.status == "failed" and "\n" not in (rec.error or "") and rec.asset_href is None
        assert f"{rec.error}\n" in r.stderr  # listed as "failed: [INPUT: ]ERROR"
    assert {p.name.split(".")[0] for p in out.iterdir()} == {"manifest", "item0", "item1"}

    # --asset: items without that asset fail, with a reason. The items are keyed on themselves,
    # so their last records are now these failures: a run without --asset redoes them, into the
    # same names.
    r = invoke(*args, "--asset", "thumbnail")
    assert r.exit_code == 1
    assert "0 done, 0 skipped (already done), 5 failed" in r.stderr  # the thumbnails are not there
    assert (
        "item nohref has no asset 'thumbnail' (its assets: visual); pass another --asset"
        in r.stderr
    )
    assert "item item0: asset 'thumbnail' points to" in r.stderr
    r = invoke(*args)
    assert r.exit_code == 1 and "2 done, 0 skipped (already done), 3 failed" in r.stderr
    assert {p.name.split(".")[0] for p in out.iterdir()} == {"manifest", "item0", "item1"}


def test_stac_input_errors_are_one_line(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = make_scene(tmp_path / "scene.tif", width=64, height=64).path
    out = str(tmp_path / "out")
    r = invoke("batch", str(scene), "-o", out, "-m", str(model_file), "--asset", "visual")
    assert (
        r.exit_code == 1
        and "Error: --asset visual picks an asset of STAC items, but no input is a STAC JSON"
        in r.stderr
    )
    (tmp_path / "labels.json").write_text('{"type": "Topology"}')
    r = invoke("batch", str(tmp_path / "labels.json"), "-o", out, "-m", str(model_file))
    assert (
        r.exit_code == 1 and "is not a STAC Item, ItemCollection, Catalog or Collection" in r.stderr
    )
    r = invoke("batch", str(tmp_path / "nothing.json"), "-o", out, "-m", str(model_file))
    assert r.exit_code == 1 and "nothing.json: no such file" in r.stderr
    # Without pystac: one line naming the extra.
    catalog, _ = make_archive(tmp_path / "archive", count=1)
    monkeypatch.setitem(sys.modules, "pystac", None)
    r = invoke("batch", str(catalog), "-o", out, "-m", str(model_file))
    assert r.exit_code == 1
    assert (
        r.stderr.strip()
        == "Error: STAC inputs and --stac-out need pystac: pip install 'geounet[stac]'"
    )
    r = invoke(
        "batch", str(scene), "-o", out, "-m", str(model_file), "--stac-out", str(tmp_path / "stac")
    )
    assert r.exit_code == 1 and "pip install 'geounet[stac]'" in r.stderr
    assert not (tmp_path / "out").exists()  # stopped before any scene


# --------------------------------------------------------------------------------------------
# The results catalog


def check_results_catalog(path: Path, out: Path) -> list[Any]:
    """Read a results catalog back with pystac; every link and asset href must resolve."""
    root = pystac.read_file(str(path))
    assert isinstance(root, pystac.Catalog) and root.id == "geounet-results"
    raw = json.loads(path.read_text())
    assert all(not os.path.isabs(link["href"]) for link in raw["links"])  # self-contained
    assert not [link for link in raw["links"] if link["rel"] == "self"]
    (collection,) = root.get_children()  # the results; the model's item sits beside it
    items = list(collection.get_items())
    for item in items:
        data = json.loads(Path(item.get_self_href()).read_text())
        for asset in data["assets"].values():
            assert not os.path.isabs(asset["href"])  # relative: the catalog moves with the outputs
        for key, asset in item.assets.items():
            target = Path(asset.get_absolute_href())
            assert target.is_file(), f"{item.id}: {key} -> {target}"
            assert target.parent == out
        assert item.get_parent().id == collection.id
    return items


def test_stac_out_catalog_describes_the_results(tmp_path: Path, model_file: Path) -> None:
    catalog, _ = make_archive(tmp_path / "archive")
    extra = make_scene(
        tmp_path / "loose" / "extra.tif", width=128, height=128, seed=7, building_density=3.0
    ).path
    out, stac_dir = tmp_path / "out", tmp_path / "out" / "stac"
    args = (
        "batch",
        str(catalog),
        str(extra),
        "-o",
        str(out),
        "-m",
        str(model_file),
        "--mask",
        "--probabilities",
        "--format",
        "geojson",
        "--tile-size",
        "96",
        "--stac-out",
        str(stac_dir),
    )
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [str(out / MANIFEST_NAME), str(stac_dir / "catalog.json")]
    items = {item.id: item for item in check_results_catalog(stac_dir / "catalog.json", out)}
    assert sorted(items) == ["extra", "item0", "item1", "item2"]
    records = {rec.name: rec for rec in read_manifest(out / MANIFEST_NAME).values()}
    from geounet.network.checkpoint import file_hash

    for name, item in items.items():
        rec = records[name]
        assert {k: (a.media_type, a.roles) for k, a in item.assets.items()} == {
            "vectors": ("application/json", ["data", "labels"]),  # GeoJSON in UTM: not RFC 7946
            "mask": (COG_MEDIA_TYPE, ["data", "classification"]),
            "probabilities": (COG_MEDIA_TYPE, ["data", "probability"]),
        }
        props = item.properties
        assert (
            "the model roofs" in props["processing:lineage"]
            and file_hash(model_file) in props["processing:lineage"]
        )
        assert props["label:overviews"][0]["counts"][0]["count"] == rec.features
        (source,) = item.get_links("source")
        if name == "extra":  # a plain raster: its own path (absolute, outside the results)
            assert source.get_href(transform_href=False) == rec.input
        # The footprint: the scene's bounds in longitude and latitude.
        with rasterio.open(rec.asset_href or rec.input) as src:
            expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        np.testing.assert_allclose(item.bbox, expected, atol=1e-7)
        assert item.geometry["type"] == "Polygon" and len(item.geometry["coordinates"][0]) == 21
    for i in range(3):  # datetime and a link from the source item
        item = items[f"item{i}"]
        assert pystac.utils.datetime_to_str(item.datetime) == TIMES[i]
        targets = {link.resolve_stac_object().target.id for link in item.get_links("derived_from")}
        assert targets == {f"item{i}", "roofs"}  # the source item and the model
        assert item.get_links("source")[0].extra_fields["label:assets"] == ["visual"]
    # A plain path: processing time, and derived from the model only.
    assert [
        link.resolve_stac_object().target.id for link in items["extra"].get_links("derived_from")
    ] == ["roofs"]
    assert pystac.utils.datetime_to_str(items["extra"].datetime).startswith(
        records["extra"].finished[:10]
    )

    # A second run replaces the catalog as a whole; the folder can move with the outputs.
    (stac_dir / "stale.txt").write_text("left by the earlier catalog")
    r = invoke(*args)
    assert r.exit_code == 0 and "0 done, 4 skipped" in r.stderr
    assert not (stac_dir / "stale.txt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    shutil.move(out, tmp_path / "moved")
    assert (
        len(check_results_catalog(tmp_path / "moved" / "stac" / "catalog.json", tmp_path / "moved"))
        == 4
    )


def test_stac_out_folder_is_checked_before_any_scene(tmp_path: Path, model_file: Path) -> None:
    scene = make_scene(tmp_path / "in" / "scene.tif", width=64, height=64).path
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="holds the output folder"):
        run_batch([scene], out, model=model_file, stac_out=out)
    with pytest.raises(OutputError, match="holds the output folder"):
        run_batch([scene], out, model=model_file, stac_out=tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "catalog.json").write_text('{"type": "Catalog", "id": "someone-elses"}')
    with pytest.raises(OutputExistsError, match="holds no geounet results catalog"):
        run_batch([scene], out, model=model_file, stac_out=foreign)
    assert not out.exists()
    assert (foreign / "catalog.json").read_text() == '{"type": "Catalog", "id": "someone-elses"}'


@pytest.mark.skipif(
    not STAC_SCHEMAS.is_dir(),
    reason=f"{STAC_SCHEMAS} not found (offline STAC extension schemas live in ../shared/data)",
)
def test_results_catalog_validates_against_the_stac_schemas(
    tmp_path: Path, model_file: Path
) -> None:
    """pystac's validator, offline: its STAC 1.1 core schemas and the extension schemas of
    ../shared/data in its cache (tests/test_stac_out.py checks every document the same way)."""
    pytest.importorskip(
        "jsonschema", reason="pystac's validator needs jsonschema (pip install 'geounet[dev]')"
    )
    from pystac.validation import (
        JsonSchemaSTACValidator,
        RegisteredValidator,
        set_validator,
        validate_all_dict,
        validate_dict,
    )

    validator = JsonSchemaSTACValidator()
    for path in STAC_SCHEMAS.glob("*/v*/schema.json"):
        url = f"https://stac-extensions.github.io/{path.parts[-3]}/{path.parts[-2]}/schema.json"
        validator.schema_cache[url] = json.loads(path.read_text())
    catalog, _ = make_archive(tmp_path / "archive", count=2)
    summary = run_batch(
        [catalog],
        tmp_path / "out",
        model=model_file,
        config=CONFIG,
        mask=True,
        stac_out=tmp_path / "stac",
    )
    assert summary.catalog == tmp_path / "stac" / "catalog.json"
    previous = RegisteredValidator.get_validator()
    set_validator(validator)
    try:  # the JSON as written (pystac.read_file would migrate extensions to newer versions)
        validate_all_dict(json.loads(summary.catalog.read_text()), str(summary.catalog))
        docs = sorted((tmp_path / "stac").rglob("*.json"))
        assert len(docs) == 5  # the catalog, the collection, two results and the model
        for path in docs:
            data = json.loads(path.read_text())
            assert len(validate_dict(data, href=str(path))) == 1 + len(
                data.get("stac_extensions", [])
            )
    finally:
        set_validator(previous)


# --------------------------------------------------------------------------------------------
# Catalogs of other STAC tools, the asset a user would choose, and names kept across runs


def rio_stac_item(path: Path) -> dict[str, Any]:
    """The item ``rio stac PATH -o item.json`` writes: rio-stac's own ``create_stac_item`` called
    as its command line calls it (one asset ``asset`` without roles or media type, its href the
    raster's path, raster/eo/projection extensions, no links)."""
    rio_stac = pytest.importorskip(
        "rio_stac", reason="rio-stac writes these items (pip install 'geounet[dev]')"
    )
    item = rio_stac.create_stac_item(
        str(path), asset_media_type=None, with_proj=True, with_raster=True, with_eo=True
    )
    data: dict[str, Any] = json.loads(json.dumps(item.to_dict(), separators=(",", ":")))
    return data


def rio_stac_catalog(root: Path, scenes: list[Path]) -> Path:
    """A static catalog of ``rio stac`` items as pystac saves it (self-contained, relative links)."""
    catalog = pystac.Catalog(id="rio-stac", description="items written by rio stac")
    for scene in scenes:
        catalog.add_item(pystac.Item.from_dict(rio_stac_item(scene)))
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def write_bands(path: Path, scene: Path, count: int) -> Path:
    """The first ``count`` bands of ``scene`` as a GeoTIFF of their own (a 1-band mask, a 4-band image)."""
    with rasterio.open(scene) as src:
        data = src.read()
        profile = src.profile | {"count": count}
    data = np.concatenate([data] * (1 + count // data.shape[0]))[:count]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_rio_stac_items_run_with_no_flags(tmp_path: Path, model_file: Path) -> None:
    scenes = [
        make_scene(
            tmp_path / "tifs" / f"tile_{i}.tif", width=128, height=128, seed=i, building_density=3.0
        ).path
        for i in range(2)
    ]
    written = rio_stac_item(scenes[0])
    assert list(written["assets"]) == ["asset"] and written["assets"]["asset"]["roles"] == []
    assert (
        "type" not in written["assets"]["asset"]
        and written["links"] == []
        and written["id"] == "tile_0.tif"
    )
    (tmp_path / "tile_0.json").write_text(json.dumps(written, separators=(",", ":")))
    (only,) = read_stac_scenes(tmp_path / "tile_0.json")
    assert (only.asset_key, only.href, only.error) == ("asset", str(scenes[0]), None)

    catalog = rio_stac_catalog(tmp_path / "stac", scenes)
    r = invoke(
        "batch",
        str(catalog),
        "-o",
        str(tmp_path / "out"),
        "-m",
        str(model_file),
        "--tile-size",
        "96",
    )
    assert r.exit_code == 0, r.stderr
    assert "2 done, 0 skipped (already done), 0 failed" in r.stderr
    recs = sorted(
        read_manifest(tmp_path / "out" / MANIFEST_NAME).values(), key=lambda rec: rec.name
    )
    assert [(rec.name, rec.asset_key, rec.asset_href) for rec in recs] == [
        ("tile_0", "asset", str(scenes[0])),
        ("tile_1", "asset", str(scenes[1])),
    ]  # ids that are file names lose the raster suffix as output names: tile_0.gpkg
    assert (tmp_path / "out" / "tile_0.gpkg").is_file() and [rec.item_id for rec in recs] == [
        "tile_0.tif",
        "tile_1.tif",
    ]
    assert all(
        rec.features and rec.input == str(tmp_path / "stac" / rec.item_id / f"{rec.item_id}.json")
        for rec in recs
    )


def test_default_asset_is_the_one_a_user_would_choose(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "data" / "rgb.tif", width=64, height=64).path
    one, four = (
        write_bands(tmp_path / "data" / "one.tif", scene, 1),
        write_bands(tmp_path / "data" / "four.tif", scene, 4),
    )
    cog = f"{GEOTIFF}; profile=cloud-optimized"

    def asset(href: Path, roles: list[str], **bands: Any) -> dict[str, Any]:
        fields = {
            k.replace("_", ":"): [{"name": f"b{i}"} for i in range(n)] for k, n in bands.items()
        }
        return {"href": href.name, "type": cog, "roles": roles, **fields}

    features = [
        stac_item(
            "mask-first",
            {  # a 1-band label mask listed first, as some catalogs do
                "mask": asset(one, ["data", "labels"]),
                "visual": asset(scene, ["visual"]),
                "thumbnail": {"href": "rgb.png", "type": "image/png", "roles": ["thumbnail"]},
            },
        ),
        stac_item(
            "sentinel-2",
            {  # single-band data assets before visual; counts in three fields
                "aot": asset(one, ["data"], raster_bands=1),
                "blue": asset(one, ["data"], eo_bands=1),
                "nir": asset(one, ["data", "reflectance"], bands=1),
                "rgbn": asset(four, ["data"], eo_bands=4),
                "visual": asset(scene, ["visual"], eo_bands=3),
                "granule_metadata": {
                    "href": "meta.xml",
                    "type": "application/xml",
                    "roles": ["metadata"],
                },
            },
        ),
    ]
    for feature in features:
        feature["links"] = [
            {"rel": "self", "href": str(tmp_path / "data" / f"{feature['id']}.json")}
        ]
    path = write_json(tmp_path / "search.json", {"type": "FeatureCollection", "features": features})

    def chosen(**kw: Any) -> dict[str, str | None]:
        return {s.item_id: s.asset_key for s in read_stac_scenes(path, **kw)}

    assert chosen() == {"mask-first": "visual", "sentinel-2": "visual"}  # visual, then data
    assert chosen(bands=3) == {"mask-first": "visual", "sentinel-2": "visual"}
    assert chosen(bands=1) == {
        "mask-first": "visual",
        "sentinel-2": "aot",
    }  # fits; the mask stays a label
    assert chosen(bands=4) == {"mask-first": "visual", "sentinel-2": "rgbn"}
    assert chosen(bands=3, band_indexes=(4, 3, 2)) == {"mask-first": "visual", "sentinel-2": "rgbn"}
    assert chosen(bands=3, band_indexes=(1, 2, 3)) == {
        "mask-first": "visual",
        "sentinel-2": "visual",
    }  # both fit
    assert chosen(asset=["nir", "visual"]) == {"mask-first": "visual", "sentinel-2": "nir"}


def test_batch_picks_the_image_over_a_mask_and_names_the_asset_in_errors(
    tmp_path: Path, model_file: Path
) -> None:
    scene = make_scene(
        tmp_path / "data" / "rgb.tif", width=128, height=128, seed=2, building_density=3.0
    ).path
    write_bands(tmp_path / "data" / "mask.tif", scene, 1)
    cog = f"{GEOTIFF}; profile=cloud-optimized"
    write_json(
        tmp_path / "data" / "scene.json",
        stac_item(
            "scene",
            {
                "mask": {"href": "mask.tif", "type": cog, "roles": ["data", "labels"]},
                "visual": {"href": "rgb.tif", "type": cog, "roles": ["visual"]},
                "thumbnail": {"href": "rgb.png", "type": "image/png", "roles": ["thumbnail"]},
            },
        ),
    )
    write_json(
        tmp_path / "data" / "pan.json",
        stac_item("pan", {"pan": {"href": "mask.tif", "type": cog, "roles": ["data"]}}),
    )
    out = tmp_path / "out"
    summary = run_batch(
        [tmp_path / "data" / "scene.json", tmp_path / "data" / "pan.json"],
        out,
        model=model_file,
        config=CONFIG,
    )
    assert [(r.item_id, r.asset_key) for r in summary.done] == [("scene", "visual")]
    (failed,) = summary.failed
    assert failed.error is not None and failed.error.startswith(
        "item pan, asset 'pan': model expects 3 bands, mask.tif has 1"
    )
    # --asset takes keys in order of preference, on the command line too.
    args = (
        "batch",
        str(tmp_path / "data" / "scene.json"),
        "-o",
        str(tmp_path / "cli"),
        "-m",
        str(model_file),
        "--tile-size",
        "96",
    )
    r = invoke(*args, "--asset", "image, mask,visual")
    assert (
        r.exit_code == 1
        and "\nfailed: item scene, asset 'mask': model expects 3 bands, mask.tif has 1"
        in f"\n{r.stderr}"
    )
    r = invoke(*args, "--asset", " , ")
    assert r.exit_code == 2 and "names no asset; give asset keys separated by commas" in r.stderr


def test_stac_items_keep_their_names_across_failures_fixes_and_new_hrefs(
    tmp_path: Path, model_file: Path
) -> None:
    catalog, scenes = make_archive(tmp_path / "archive", count=2)
    item1 = tmp_path / "archive" / "stac" / "col" / "item1" / "item1.json"
    good = item1.read_text()
    out, stac_dir = tmp_path / "out", tmp_path / "stac"

    def run() -> Any:
        return run_batch(
            [catalog], out, model=model_file, config=CONFIG, mask=True, stac_out=stac_dir
        )

    def catalogued() -> dict[str, Any]:
        return {item.id: item for item in check_results_catalog(stac_dir / "catalog.json", out)}

    def names_on_disk() -> set[str]:
        return {p.name.split(".")[0] for p in out.iterdir()} - {"manifest"}

    item1.write_text(good.replace("scene1.tif", "gone.tif"))  # 1: item1's asset is missing
    first = run()
    assert [r.name for r in first.done] == ["item0"] and [r.name for r in first.failed] == ["item1"]
    assert sorted(catalogued()) == ["item0"] and names_on_disk() == {"item0"}
    item1.write_text(good)
    scenes[1].rename(scenes[1].with_suffix(".bak"))
    scenes[1].write_bytes(b"II*\0 not a GeoTIFF")  # 2: there, but broken
    second = run()
    assert [r.name for r in second.failed] == ["item1"] and len(second.skipped) == 1
    assert (second.failed[0].error or "").startswith("item item1, asset 'visual': ")
    assert names_on_disk() == {"item0"}
    scenes[1].with_suffix(".bak").replace(scenes[1])  # 3: fixed
    third = run()
    assert [(r.name, r.asset_href) for r in third.done] == [("item1", str(scenes[1]))]
    assert sorted(catalogued()) == ["item0", "item1"] and names_on_disk() == {"item0", "item1"}
    # 4: the item points elsewhere: redone into the same files.
    moved = shutil.copy(scenes[1], tmp_path / "archive" / "scenes" / "moved.tif")
    item1.write_text(good.replace("scene1.tif", "moved.tif"))
    fourth = run()
    assert [(r.name, r.asset_href) for r in fourth.done] == [("item1", str(moved))]
    assert sorted(catalogued()) == ["item0", "item1"] and names_on_disk() == {"item0", "item1"}
    # 5: item1 breaks again (no asset at all): its outputs stay, and so does its catalog item.
    broken = json.loads(good)
    del broken["assets"]["visual"]
    item1.write_text(json.dumps(broken))
    fifth = run()
    assert [r.name for r in fifth.failed] == ["item1"] and "has no GeoTIFF asset" in (
        fifth.failed[0].error or ""
    )
    items = catalogued()
    assert sorted(items) == ["item0", "item1"]
    (source,) = items["item1"].get_links("source")  # described as it was made, from asset visual
    assert source.extra_fields["label:assets"] == ["visual"] and source.get_absolute_href() == str(
        item1
    )
    assert items["item1"].assets["mask"].get_absolute_href() == str(out / "item1.mask.tif")
    last = read_manifest(out / MANIFEST_NAME)
    assert [rec.status for rec in last.values()] == ["done", "failed"] and len(last) == 2
    # 6: a later run over another input: the catalog still lists every result on disk that the
    # manifest has as done, the items of the earlier runs with their sources.
    plain = make_scene(
        tmp_path / "loose" / "plain.tif", width=96, height=96, seed=5, building_density=3.0
    ).path
    sixth = run_batch([plain], out, model=model_file, config=CONFIG, mask=True, stac_out=stac_dir)
    assert [r.name for r in sixth.done] == ["plain"]
    items = catalogued()
    assert list(items) == ["plain", "item0", "item1"]
    (source,) = items["item1"].get_links("source")
    assert source.get_absolute_href() == str(item1)


def test_manifests_keyed_on_the_asset_href_still_resume(tmp_path: Path, model_file: Path) -> None:
    """Manifests from before items were keyed on themselves: done items are neither redone nor renamed."""
    catalog, _ = make_archive(tmp_path / "archive", count=2)
    out = tmp_path / "out"
    run_batch([catalog], out, model=model_file, config=CONFIG)
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    for line in lines:
        line["input"] = line["asset_href"]
        del line["asset_key"]
    (out / MANIFEST_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    again = run_batch([catalog], out, model=model_file, config=CONFIG, stac_out=tmp_path / "stac")
    assert (len(again.done), len(again.skipped)) == (0, 2)
    assert sorted(
        item.id for item in check_results_catalog(tmp_path / "stac" / "catalog.json", out)
    ) == ["item0", "item1"]
