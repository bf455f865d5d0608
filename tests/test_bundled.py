"""The bundled building model: installed with the package, used without -m, honest figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from click.testing import CliRunner
from conftest import BUILDINGS_RGB, requires_buildings_rgb

import geounet
from geounet.cli.main import cli
from geounet.network.checkpoint import (
    DEFAULT_MODEL,
    bundled_models,
    load_model,
    read_meta,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rio_55.tif"


def test_the_bundled_model_ships_inside_the_package() -> None:
    models = bundled_models()
    assert DEFAULT_MODEL in models
    path = models[DEFAULT_MODEL]
    assert path.parent == Path(geounet.__file__).resolve().parent / "models"
    assert path.stat().st_size < 15e6
    assert resolve_model(None) == path and resolve_model("buildings") == path
    net, meta = load_model(None)
    assert meta.bands == 3 and meta.dtype == "uint8" and meta.classes == ["building"]
    assert meta.gsd and 0.2 <= meta.gsd <= 0.6
    assert meta.normalization["mode"] == "scene"
    prov = meta.provenance
    assert {"data", "command", "commit", "validation"} <= set(prov)
    assert any("CC BY-SA" in d["licence"] for d in prov["data"])
    assert {"rio", "austin", "chicago", "all"} <= set(prov["validation"])
    assert all(
        p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in net.parameters()
    )  # widened on load


def test_model_list_and_info_show_it() -> None:
    r = CliRunner().invoke(cli, ["model", "list"], catch_exceptions=False)
    assert r.exit_code == 0 and "buildings (default): building; 3 bands uint8" in r.stdout
    assert "held-out rio" in r.stdout and "object F1" in r.stdout
    r = CliRunner().invoke(cli, ["model", "list", "--json"], catch_exceptions=False)
    assert json.loads(r.stdout)[0]["name"] == "buildings"
    assert json.loads(r.stdout)[0]["int8"] is True  # buildings-int8.onnx ships beside it
    r = CliRunner().invoke(cli, ["model", "info", "buildings"], catch_exceptions=False)
    assert (
        r.exit_code == 0
        and "each scene's 2-98 percentile stretch" in r.stdout
        and "CC BY-SA" in r.stdout
    )


def test_predict_without_a_model_uses_the_bundled_one(tmp_path: Path) -> None:
    out = tmp_path / "buildings.geojson"
    r = CliRunner().invoke(cli, ["predict", str(EXAMPLE), "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Using the bundled model 'buildings'" in r.stderr
    frame = gpd.read_file(out)
    with rasterio.open(EXAMPLE) as src:
        assert frame.crs == src.crs
        left, bottom, right, top = src.bounds
    assert len(frame) >= 10 and frame.is_valid.all()
    minx, miny, maxx, maxy = frame.total_bounds
    assert left <= minx and maxx <= right and bottom <= miny and maxy <= top
    assert {"class", "score", "area_m2"} <= set(frame.columns) and (
        frame["class"] == "building"
    ).all()


def test_a_missing_model_name_lists_the_bundled_ones(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli, ["predict", str(EXAMPLE), "-o", str(tmp_path / "x.geojson"), "-m", "nosuchmodel"]
    )
    assert (
        r.exit_code == 1
        and "bundled models: buildings" in r.stderr
        and not (tmp_path / "x.geojson").exists()
    )


@requires_buildings_rgb
def test_recorded_validation_figures_are_reproduced_by_evaluate() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import buildings  # benchmarks/buildings.py: the held-out images and the per-source sums

    meta = read_meta(None)
    _, val = buildings.held_out(BUILDINGS_RGB)
    assert sorted(p.name for p in val) == sorted(meta.provenance["val_images"])
    got = buildings.score(resolve_model(None), val, BUILDINGS_RGB)
    # Pixel figures are sums over hundreds of thousands of pixels: numerics move them by far less
    # than 0.002. Object figures move by whole buildings: a match at IoU ~0.5 can flip with the last
    # bits of the arithmetic on another CPU, so each count may differ by a couple of objects (one
    # object alone is worth 0.011 of Chicago's object F1).
    for source in ("rio", "austin", "chicago", "all"):
        recorded = meta.provenance["validation"][source]
        for key in ("pixel_iou", "pixel_f1"):
            assert got[source][key] == pytest.approx(recorded[key], abs=0.002), (source, key)
        for key in ("tp", "fp", "fn"):
            slack = 4 if source == "all" else 2
            assert abs(got[source]["objects"][key] - recorded["objects"][key]) <= slack, (
                source,
                key,
            )
