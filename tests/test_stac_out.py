"""STAC out: the results catalog (collection, label/classification/projection/processing items)
and the model item (MLM), each document validated offline against the core schema and the
schema of every extension it lists."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
from click.testing import CliRunner
from conftest import one_torch_thread_for, roofs_model

from geounet.archive.batch import read_manifest, run_batch
from geounet.archive.stac import EXTENSIONS
from geounet.archive.stac_model import MLM_EXTENSION, data_license, model_item, write_model_item
from geounet.cli.main import cli
from geounet.errors import OutputExistsError
from geounet.network.checkpoint import file_hash, read_meta
from geounet.prediction.config import PredictConfig
from geounet.synthetic import make_scene

pystac = pytest.importorskip("pystac")
jsonschema = pytest.importorskip(
    "jsonschema", reason="validation needs jsonschema (pip install 'geounet[dev]')"
)
referencing = pytest.importorskip(
    "referencing", reason="validation needs referencing (pip install 'geounet[dev]')"
)

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stac-extension-schemas"
requires_schemas = pytest.mark.skipif(
    not (SCHEMAS / "README.md").is_file(),
    reason=f"{SCHEMAS} not found (the offline STAC extension schemas live in ../shared/data)",
)
pytestmark = requires_schemas

CONFIG = PredictConfig(tile_size=96, overlap=16)
EXTENSION_URL = "https://stac-extensions.github.io/"


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from one_torch_thread_for(monkeypatch)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return roofs_model(tmp_path_factory.mktemp("model") / "roofs.safetensors")


# --------------------------------------------------------------------------------------------
# The offline validator: jsonschema + a referencing Registry of local files, no network


class Validator:
    """Validates a STAC document against its core schema (pystac's copies) and the schema of
    each extension it lists (../shared/data copies); any other URL is an error, not a fetch."""

    def __init__(self) -> None:
        from pystac.validation.local_validator import get_local_schema_cache
        from referencing import Registry, Resource

        resources = dict(get_local_schema_cache())
        for path in SCHEMAS.glob("*/v*/schema.json"):
            name, version = path.parts[-3], path.parts[-2]
            resources[f"{EXTENSION_URL}{name}/{version}/schema.json"] = json.loads(path.read_text())
        self.schemas = resources

        def retrieve(uri: str) -> Any:
            raise LookupError(f"{uri} is not available offline")

        self.registry = Registry(retrieve=retrieve).with_resources(
            (url, Resource.from_contents(schema)) for url, schema in resources.items()
        )

    def core_url(self, doc: dict[str, Any]) -> str:
        kind = {"Feature": "item", "Catalog": "catalog", "Collection": "collection"}[doc["type"]]
        assert doc["stac_version"] == "1.1.0"
        return f"https://schemas.stacspec.org/v1.1.0/{kind}-spec/json-schema/{kind}.json"

    def __call__(self, doc: dict[str, Any]) -> list[str]:
        """Validate; return the schema URLs checked. Raises jsonschema's ValidationError."""
        urls = [self.core_url(doc), *doc.get("stac_extensions", [])]
        for url in urls:
            assert url in self.schemas, (
                f"{url} has no offline schema: use the versions in {SCHEMAS}"
            )
            cls = jsonschema.validators.validator_for(self.schemas[url])
            cls(self.schemas[url], registry=self.registry).validate(doc)
        return urls


@pytest.fixture(scope="module")
def validate() -> Validator:
    return Validator()


def documents(folder: Path) -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


def test_validator_catches_a_broken_extension_field(validate: Validator, model_file: Path) -> None:
    """The validator does reject: bad MLM and projection fields, and an unknown extension."""
    item = model_item(model_file)
    validate(item)

    def broken(change: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(item))
        change(copy)
        return copy

    for bad in (
        broken(lambda d: d["properties"].update({"mlm:tasks": ["guessing"]})),
        broken(lambda d: d["assets"]["model"].pop("mlm:artifact_type")),
        broken(lambda d: d["properties"].pop("mlm:input")),
        broken(
            lambda d: (
                d["stac_extensions"].append(EXTENSIONS["projection"]),
                d["properties"].update({"proj:shape": [1, 2, 3]}),
            )
        ),
        broken(lambda d: d["properties"].update({"license": "not a licence"})),  # the core schema
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)
    with pytest.raises(AssertionError, match="no offline schema"):
        validate(
            broken(lambda d: d["stac_extensions"].append(f"{EXTENSION_URL}eo/v1.1.0/schema.json"))
        )


# --------------------------------------------------------------------------------------------
# The results catalog


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def archive(root: Path, count: int = 2) -> tuple[Path, list[Path]]:
    """``count`` scenes and a static catalog over them: catalog -> collection -> items, each
    item with a ``collection`` link, hrefs relative."""
    scenes = [
        make_scene(
            root / "scenes" / f"scene{i}.tif", width=128, height=128, seed=i, building_density=3.0
        ).path
        for i in range(count)
    ]
    write_json(
        root / "stac" / "catalog.json",
        {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "archive",
            "description": "archive",
            "links": [{"rel": "child", "href": "./col/collection.json"}],
        },
    )
    write_json(
        root / "stac" / "col" / "collection.json",
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
            "links": [{"rel": "item", "href": f"./item{i}/item{i}.json"} for i in range(count)],
        },
    )
    for i in range(count):
        write_json(
            root / "stac" / "col" / f"item{i}" / f"item{i}.json",
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"item{i}",
                "geometry": None,
                "properties": {"datetime": f"2023-0{i + 1}-01T10:00:00Z"},
                "collection": "col",
                "links": [{"rel": "collection", "href": "../collection.json"}],
                "assets": {
                    "image": {
                        "href": f"../../../scenes/scene{i}.tif",
                        "type": "image/tiff; application=geotiff",
                        "roles": ["data"],
                    }
                },
            },
        )
    return root / "stac" / "catalog.json", scenes


def test_results_catalog_is_valid_stac_with_its_extensions(
    tmp_path: Path, model_file: Path, validate: Validator
) -> None:
    catalog, _ = archive(tmp_path / "archive")
    loose = make_scene(
        tmp_path / "loose" / "extra.tif", width=128, height=128, seed=7, building_density=3.0
    ).path
    out = tmp_path / "out"
    summary = run_batch(
        [catalog, loose],
        out,
        model=model_file,
        config=CONFIG,
        mask=True,
        probabilities=True,
        fmt="geojson",
        stac_out=out / "stac",
    )
    assert summary.catalog == out / "stac" / "catalog.json"
    docs = documents(out / "stac")
    checked = {p.relative_to(out / "stac").as_posix(): validate(doc) for p, doc in docs.items()}
    # Every document written was checked against core + each extension it lists.
    assert sorted(checked) == [
        "catalog.json",
        "geounet-results-roofs/collection.json",
        "geounet-results-roofs/extra/extra.json",
        "geounet-results-roofs/item0/item0.json",
        "geounet-results-roofs/item1/item1.json",
        "roofs/roofs.json",
    ]
    assert checked["roofs/roofs.json"][1:] == [MLM_EXTENSION]
    for name in ("item0", "extra"):
        assert set(checked[f"geounet-results-roofs/{name}/{name}.json"][1:]) == set(
            EXTENSIONS.values()
        )

    records = {rec.name: rec for rec in read_manifest(out / "manifest.jsonl").values()}
    meta = read_meta(model_file)
    root = pystac.read_file(str(summary.catalog))
    (collection,) = root.get_children()
    model = pystac.read_file(str(out / "stac" / "roofs" / "roofs.json"))
    assert [i.id for i in root.get_items()] == ["roofs"]
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == ["extra", "item0", "item1"]
    for name, item in items.items():
        rec = records[name]
        assert item.collection_id == collection.id
        props = item.properties
        # Projection: the scene's grid.
        with rasterio.open(rec.asset_href or rec.input) as src:
            assert props["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
            assert props["proj:shape"] == [src.height, src.width]
            assert props["proj:transform"] == list(src.transform)[:6]
            assert props["proj:bbox"] == pytest.approx(list(src.bounds))
        # Label: vector polygons with a class attribute; the count of polygons.
        assert props["label:type"] == "vector" and props["label:properties"] == ["class"]
        assert props["label:classes"] == [{"name": "class", "classes": ["building"]}]
        assert props["label:tasks"] == ["segmentation"] and props["label:methods"] == ["automated"]
        assert props["label:overviews"][0]["counts"] == [
            {"name": "building", "count": rec.features}
        ]
        assert props["processing:software"]["geounet"]
        assert file_hash(model_file) in props["processing:lineage"]
        assert props["processing:expression"]["expression"] == rec.params
        assert not [k for k in props if k.startswith("geounet:")]
        # Roles and the classification of the mask.
        assets = item.assets
        assert {k: a.roles for k, a in assets.items()} == {
            "vectors": ["data", "labels"],
            "mask": ["data", "classification"],
            "probabilities": ["data", "probability"],
        }
        classes = assets["mask"].extra_fields["classification:classes"]
        assert [(c["value"], c["name"]) for c in classes] == [
            (0, "background"),
            (1, "building"),
            (255, "nodata"),
        ]
        assert classes[1]["color_hint"] == meta.colours[0].lstrip("#")
        with rasterio.open(assets["mask"].get_absolute_href()) as src:
            assert assets["mask"].extra_fields["raster:bands"] == [
                {"data_type": "uint8", "nodata": src.nodata}
            ]
            assert set(src.read(1).ravel().tolist()) <= {c["value"] for c in classes}
        # GeoJSON in a projected CRS is not typed as RFC 7946 GeoJSON.
        assert assets["vectors"].media_type == "application/json"
        assert assets["vectors"].extra_fields["proj:code"] == props["proj:code"] != "EPSG:4326"
        # The label's source and the model.
        derived = [link.get_absolute_href() for link in item.get_links("derived_from")]
        assert model.get_self_href() in derived
        (source,) = item.get_links("source")
        href = source.get_href(
            transform_href=False
        )  # as written: absolute (pystac shows it relative)
        if name == "extra":
            assert href == str(loose) and len(derived) == 1
        else:
            assert href == str(tmp_path / "archive" / "stac" / "col" / name / f"{name}.json")
            assert source.extra_fields["label:assets"] == ["image"]
            assert href in derived
    # The collection: extent over the items, licence and providers, summaries, source collection.
    assert collection.extent.spatial.bboxes[0] == pytest.approx(
        [
            min(i.bbox[0] for i in items.values()),
            min(i.bbox[1] for i in items.values()),
            max(i.bbox[2] for i in items.values()),
            max(i.bbox[3] for i in items.values()),
        ]
    )
    assert (
        collection.license == data_license(meta)[0] == "other"
    )  # an untrained model names no data
    assert [p.name for p in collection.providers] == ["geounet"]
    assert collection.summaries.get_list("label:type") == ["vector"]
    (col_link,) = collection.get_links("derived_from")
    assert col_link.get_href(transform_href=False) == str(
        tmp_path / "archive" / "stac" / "col" / "collection.json"
    )


def test_results_move_with_relative_links_and_keep_absolute_sources(
    tmp_path: Path, model_file: Path
) -> None:
    """derived_from into the results (the model item) is relative; to sources outside, absolute."""
    catalog, _ = archive(tmp_path / "archive", count=1)
    out = tmp_path / "out"
    run_batch([catalog], out, model=model_file, config=CONFIG, stac_out=out / "stac")
    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    shutil.move(out, moved)
    item_path = moved / "stac" / "geounet-results-roofs" / "item0" / "item0.json"
    raw = json.loads(item_path.read_text())
    hrefs = {link["href"] for link in raw["links"] if link["rel"] == "derived_from"}
    source = str(tmp_path / "archive" / "stac" / "col" / "item0" / "item0.json")
    assert hrefs == {"../../roofs/roofs.json", source}
    item = pystac.read_file(str(item_path))
    for link in item.get_links("derived_from"):
        assert Path(link.get_absolute_href()).is_file(), link.href
        assert link.resolve_stac_object().target.id in ("roofs", "item0")
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).is_file(), key


def test_item_collection_without_self_links_links_its_source(
    tmp_path: Path, model_file: Path
) -> None:
    scene = make_scene(
        tmp_path / "data" / "s.tif", width=96, height=96, seed=3, building_density=3.0
    ).path
    features = [
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": "search-hit",
            "geometry": None,
            "properties": {"datetime": "2024-03-01T00:00:00Z"},
            "links": [{"rel": "collection", "href": "https://example.com/collections/scenes"}],
            "assets": {
                "image": {
                    "href": "data/s.tif",
                    "type": "image/tiff; application=geotiff",
                    "roles": ["data"],
                }
            },
        }
    ]
    found = write_json(
        tmp_path / "search.json", {"type": "FeatureCollection", "features": features}
    )
    out = tmp_path / "out"
    run_batch([found], out, model=model_file, config=CONFIG, stac_out=out / "stac")
    collection = pystac.read_file(str(out / "stac" / "geounet-results-roofs" / "collection.json"))
    (item,) = collection.get_items()
    assert item.id == "search-hit"
    (source,) = item.get_links("source")
    assert source.get_href(transform_href=False) == str(found) and source.extra_fields[
        "label:assets"
    ] == ["image"]
    assert str(found) in [
        link.get_href(transform_href=False) for link in item.get_links("derived_from")
    ]
    assert [
        link.get_href(transform_href=False) for link in collection.get_links("derived_from")
    ] == ["https://example.com/collections/scenes"]
    assert scene.is_file()


# --------------------------------------------------------------------------------------------
# The model item


def test_model_item_describes_the_model(
    tmp_path: Path, model_file: Path, validate: Validator
) -> None:
    out = tmp_path / "stac" / "roofs.json"
    out.parent.mkdir()
    r = CliRunner().invoke(
        cli, ["model", "info", str(model_file), "--stac", str(out)], catch_exceptions=False
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    doc = json.loads(out.read_text())
    assert validate(doc)[1:] == [MLM_EXTENSION]
    meta = read_meta(model_file)
    props = doc["properties"]
    assert props["mlm:framework"] == "PyTorch" and props["mlm:architecture"] == "U-Net"
    (inp,) = props["mlm:input"]
    assert inp["bands"] == meta.band_names == [b["name"] for b in props["bands"]]
    assert inp["input"]["shape"] == [-1, meta.bands, meta.tile_size, meta.tile_size]
    # Raw mean/std scaling: one z-score per band.
    assert inp["value_scaling"] == [
        {"type": "z-score", "mean": m, "stddev": s}
        for m, s in zip(meta.mean, meta.std, strict=True)
    ]
    (output,) = props["mlm:output"]
    assert [c["name"] for c in output["classification:classes"]] == ["background", "building"]
    weights = doc["assets"]["model"]
    assert "mlm:model" in weights["roles"] and Path(weights["href"]) == model_file
    assert file_hash(model_file) in weights["description"]
    # An existing file is kept unless --overwrite.
    r = CliRunner().invoke(cli, ["model", "info", str(model_file), "--stac", str(out)])
    assert r.exit_code == 1 and "exists" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_model_item(model_file, out)
    # A model beside the JSON is referred to relatively, so the two move together.
    shutil.copy(model_file, out.parent / "roofs.safetensors")
    write_model_item(out.parent / "roofs.safetensors", out, overwrite=True)
    assert json.loads(out.read_text())["assets"]["model"]["href"] == "roofs.safetensors"


def test_model_item_of_the_bundled_model_and_its_onnx_export(
    tmp_path: Path, validate: Validator
) -> None:
    """The bundled model: its per-scene stretch, its training data's licences; and as ONNX."""
    pytest.importorskip("onnx", reason="ONNX export needs pip install 'geounet[onnx]'")
    from geounet.network.export import export_onnx

    item = model_item("buildings")
    validate(item)
    props = item["properties"]
    (inp,) = props["mlm:input"]
    assert inp["value_scaling"] is None and "percentiles" in inp["description"]
    assert inp["pre_processing_function"] == {
        "format": "python",
        "expression": "geounet.geodata.normalize:scene_scaling",
    }
    assert inp["resize_type"] == "interpolation-linear" and props["gsd"] == 0.3
    assert len(props["providers"]) == 2 and props["license"] == "other"  # CC BY-SA 4.0 and another
    assert "CC BY-SA 4.0" in props["providers"][0]["description"]
    onnx_path = export_onnx("buildings", tmp_path / "buildings.onnx", fixed_size=256)
    onnx_item = model_item(onnx_path)
    validate(onnx_item)
    (inp,) = onnx_item["properties"]["mlm:input"]
    assert onnx_item["properties"]["mlm:framework"] == "ONNX"
    assert inp["input"]["shape"] == [-1, 3, 256, 256]
    assert onnx_item["properties"]["mlm:output"][0]["result"]["shape"] == [
        -1,
        1,
        256,
        256,
    ]  # no core channel
    assert onnx_item["assets"]["model"]["type"].endswith("profile=onnx")
    assert os.path.isabs(onnx_item["assets"]["model"]["href"])
