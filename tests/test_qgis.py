"""geounet's outputs in a real QGIS (Debian's python3-qgis, headless), driven from the system Python.

Skipped with a reason where QGIS is absent; .ci/run installs python3-qgis so it runs in CI.
Set GEOUNET_QGIS_SCREENSHOT=path.png to keep the rendered map (docs/qgis.png is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from conftest import meta_for, threshold_unet

from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import predict_raster
from geounet.synthetic import make_scene

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin")


def _qgis_available() -> bool:
    if not SYSTEM_PYTHON:
        return False
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"],
        capture_output=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        check=False,
    )
    return proc.returncode == 0


pytestmark = pytest.mark.skipif(
    not _qgis_available(),
    reason="QGIS (Debian's python3-qgis) is not installed for /usr/bin/python3",
)

VECTOR_SUFFIXES = [".gpkg", ".geojson", ".fgb", ".shp", ".parquet"]


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_outputs_open_in_qgis_with_style_crs_and_extent(tmp_path: Path, crs: str) -> None:
    if crs == "EPSG:4326":
        info = make_scene(
            tmp_path / "scene.tif",
            width=384,
            height=320,
            crs=crs,
            origin=(-115.3, 36.2),
            pixel_size=5e-6,
            seed=4,
        )
    else:
        info = make_scene(tmp_path / "scene.tif", width=384, height=320, seed=4)
    net = threshold_unet(3, band=0)
    meta = meta_for(net, tile_size=128, overlap=32)
    model = (net, meta)
    counts = {}
    for i, suffix in enumerate(VECTOR_SUFFIXES):
        extra = (
            {"mask": tmp_path / "mask.tif", "probabilities": tmp_path / "probs.tif"}
            if i == 0
            else {}
        )
        r = predict_raster(
            info.path,
            tmp_path / f"pred{suffix}",
            model=model,
            config=PredictConfig(prob_dtype="uint8", device="cpu"),
            **extra,
        )
        counts[suffix] = r.features
    assert len(set(counts.values())) == 1 and counts[".gpkg"] > 0
    predict_raster(
        info.path,
        probabilities=tmp_path / "probs32.tif",
        model=model,
        config=PredictConfig(device="cpu"),
    )

    # The probability rasters are COGs with overviews; the mask carries a colour table and names.
    for name in ("probs.tif", "probs32.tif", "mask.tif"):
        with rasterio.open(tmp_path / name) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", name
            assert src.dtypes[0] != "float16"
    with rasterio.open(tmp_path / "mask.tif") as src:
        assert src.colormap(1)[1][:3] == (0xE4, 0x1A, 0x1C)
        assert src.tags(1)["CLASS_1"] == "building"

    png = os.environ.get("GEOUNET_QGIS_SCREENSHOT") if crs == "EPSG:32633" else None
    spec = {
        "scene": str(info.path),
        "rasters": [str(tmp_path / n) for n in ("probs.tif", "probs32.tif", "mask.tif")],
        "vectors": [str(tmp_path / f"pred{s}") for s in VECTOR_SUFFIXES],
        "png": str(Path(png).resolve()) if png else str(tmp_path / "map.png"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [
            SYSTEM_PYTHON,
            str(Path(__file__).with_name("qgis_check.py")),
            str(tmp_path / "spec.json"),
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())

    scene = result["scene"]
    assert scene["valid"] and scene["crs"] == crs
    sx0, sy0, sx1, sy1 = scene["extent"]
    tol = 1e-9 * max(abs(sx0), abs(sy0), 1)

    def inside(ext: list[float]) -> bool:
        x0, y0, x1, y1 = ext
        return x0 >= sx0 - tol and y0 >= sy0 - tol and x1 <= sx1 + tol and y1 <= sy1 + tol

    by_name = {Path(r["path"]).name: r for r in result["rasters"]}
    for name, r in by_name.items():
        assert r["valid"] and r["crs"] == crs, name
        assert r["extent"] == pytest.approx(scene["extent"]), name
    assert by_name["probs.tif"]["renderer"] == "singlebandpseudocolor" and by_name["probs.tif"][
        "ramp"
    ][:2] == [0, 254]
    assert by_name["probs32.tif"]["renderer"] == "singlebandpseudocolor" and by_name["probs32.tif"][
        "ramp"
    ][:2] == [0, 1]
    assert by_name["mask.tif"]["renderer"] == "paletted"
    assert by_name["mask.tif"]["classes"] == [[1, "building", "#e41a1c"]]

    for v in result["vectors"]:
        name = Path(v["path"]).name
        if name.endswith(".parquet") and not v["valid"]:
            # Debian bookworm's QGIS 3.22 uses GDAL 3.6 without the (Arrow) Parquet driver.
            continue
        assert v["valid"], name
        assert v["crs"] == crs, name
        assert v["features"] == counts[Path(name).suffix], name
        assert inside(v["extent"]), (name, v["extent"], scene["extent"])
        assert {"class", "score", "area_m2"} <= set(v["fields"]), name
        assert v["renderer"] == "categorizedSymbol" and v["attr"] == "class", name
        assert v["categories"] == [["building", "#e41a1c"]], name
        frame = (
            gpd.read_file(v["path"], layer="pred")
            if name.endswith(".gpkg")
            else gpd.read_file(v["path"])
        )
        assert frame.crs.to_string() == crs
    assert Path(result["png"]).stat().st_size > 10_000


def road_grid(path: Path) -> None:
    """Bright crossing roads (4 m) on dark noisy ground, 0.5 m pixels, EPSG:32633."""
    import numpy as np
    from rasterio.transform import from_origin

    rng = np.random.default_rng(3)
    img = (40 + rng.normal(0, 5, (3, 256, 240))).astype(np.float32)
    img[:, 100:108, :] = 200
    img[:, :, 60:68] = 200
    img[:, :, 170:178] = 200
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=240,
        height=256,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
    ) as dst:
        dst.write(np.clip(img, 1, 255).astype("uint8"))


@pytest.mark.parametrize("to_crs", [None, "EPSG:4326"])
def test_centerlines_open_in_qgis_as_styled_line_layers(tmp_path: Path, to_crs: str | None) -> None:
    road_grid(tmp_path / "scene.tif")
    net = threshold_unet(3, band=0)
    meta = meta_for(net, classes=["road"], tile_size=128, overlap=32)
    meta.class_geometry, meta.line_width_m, meta.colours = {"road": "line"}, 4.0, ["#ff7f00"]
    suffixes = [".gpkg", ".geojson", ".shp"]
    counts = {}
    for suffix in suffixes:
        r = predict_raster(
            tmp_path / "scene.tif",
            tmp_path / f"roads{suffix}",
            model=(net, meta),
            config=PredictConfig(device="cpu", to_crs=to_crs),
        )
        assert r.lines == tmp_path / f"roads{suffix}"
        counts[suffix] = r.line_features
    # A horizontal road crossed by two vertical ones: seven edges between junctions and ends.
    assert set(counts.values()) == {7}
    spec = {
        "scene": str(tmp_path / "scene.tif"),
        "vectors": [
            f"{tmp_path / 'roads.gpkg'}|layername=roads",
            str(tmp_path / "roads.geojson"),
            str(tmp_path / "roads.shp"),
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [
            SYSTEM_PYTHON,
            str(Path(__file__).with_name("qgis_check.py")),
            str(tmp_path / "spec.json"),
            str(tmp_path / "result.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    crs = to_crs or "EPSG:32633"
    frame = gpd.read_file(tmp_path / "roads.geojson")
    for v, suffix in zip(result["vectors"], suffixes, strict=True):
        assert v["valid"], v["path"]
        # QGIS reads every shapefile line layer as MultiLineString (the format cannot tell them apart).
        assert v["geometry"] == 1 and v["wkb"] == (
            "MultiLineString" if suffix == ".shp" else "LineString"
        ), (v["path"], v["wkb"])
        assert v["crs"] == crs and v["features"] == counts[suffix], v["path"]
        assert v["extent"] == pytest.approx(
            list(frame.total_bounds), abs=1e-6 if to_crs else 1e-2
        ), v["path"]
        assert {"class", "class_id", "score"} <= set(v["fields"]), v["path"]
        assert v["renderer"] == "categorizedSymbol" and v["attr"] == "class", v["path"]
        assert v["categories"] == [["road", "#ff7f00"]], v["path"]
        # Drawn as wide as the model was trained on, in metres on the ground whatever the CRS.
        assert v["line_widths"] == [[4.0, "RenderMetersInMapUnits"]], v["path"]
