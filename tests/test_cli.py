from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner
from conftest import MakeRaster, default_sigint

from geounet.cli.main import cli
from geounet.network.checkpoint import save_model


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_model_create_and_info(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    r = run(
        "model",
        "create",
        "-o",
        str(out),
        "--bands",
        "3",
        "--classes",
        "1",
        "--width",
        "8",
        "--depth",
        "4",
        "--seed",
        "0",
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    r = run("model", "info", str(out))
    assert r.exit_code == 0
    assert (
        "width=8 depth=4 outputs=1 binary" in r.stdout
        and "3 (band1, band2, band3), uint8" in r.stdout
    )
    r = run("model", "info", str(out), "--json")
    assert json.loads(r.stdout)["arch_args"] == {
        "classes": 1,
        "depth": 4,
        "in_channels": 3,
        "width": 8,
    }
    r = run("model", "create", "-o", str(out), "--bands", "3")
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr


def test_model_create_rejects_bad_tile_size(tmp_path: Path) -> None:
    r = run(
        "model",
        "create",
        "-o",
        str(tmp_path / "m.safetensors"),
        "--bands",
        "3",
        "--tile-size",
        "100",
    )
    assert r.exit_code == 1
    assert "not divisible by 16" in r.stderr and "use 96 or 112" in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_predict_end_to_end(make_raster: MakeRaster, model_file: Path, tmp_path: Path) -> None:
    import numpy as np

    data = np.zeros((3, 150, 130), dtype=np.uint8)
    data[0, 20:60, 30:70] = 255
    data[0, 90:140, 10:50] = 255
    scene = make_raster(data=data)
    out, probs, mask = tmp_path / "b.geojson", tmp_path / "p.tif", tmp_path / "m.tif"
    r = run(
        "predict",
        str(scene),
        "-o",
        str(out),
        "-m",
        str(model_file),
        "--probabilities",
        str(probs),
        "--mask",
        str(mask),
        "--prob-dtype",
        "uint8",
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [str(out), str(probs), str(mask)]
    assert "2 polygons" in r.stderr
    frame = gpd.read_file(out)
    assert len(frame) == 2 and frame.crs.to_epsg() == 32633
    assert sorted(frame["area_m2"]) == [pytest.approx(400.0), pytest.approx(500.0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{missing}", "-o", "{out}", "-m", "{model}"], "no such file"),
        (["predict", "{scene}", "-o", "{out}", "-m", "{missing}"], "model file not found"),
        (
            ["predict", "{scene}", "-o", "{tmp}/x.kml", "-m", "{model}"],
            "unknown vector format '.kml'",
        ),
        (["predict", "{scene}", "-o", "{tmp}/nodir/x.gpkg", "-m", "{model}"], "does not exist"),
        (["predict", "{one}", "-o", "{out}", "-m", "{model}"], "model expects 3 bands"),
        (
            ["predict", "{scene}", "-o", "{out}", "-m", "{model}", "--tile-size", "50"],
            "not divisible by 4",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(
    make_raster: MakeRaster, model_file: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    values = {
        "missing": str(tmp_path / "missing.tif"),
        "out": str(tmp_path / "o.gpkg"),
        "model": str(model_file),
        "scene": str(make_raster()),
        "one": str(make_raster("one.tif", count=1)),
        "tmp": str(tmp_path),
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run(*[a.format(**values) for a in args])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_usage_errors_exit_2(make_raster: MakeRaster, model_file: Path) -> None:
    r = run("predict", str(make_raster()), "-m", str(model_file))
    assert r.exit_code == 2 and "give -o/--output" in r.stderr
    r = run("predict", str(make_raster()), "-m", str(model_file), "-o", "x.gpkg", "--bands", "0,1")
    assert r.exit_code == 2 and "band numbers start at 1" in r.stderr


def test_unwritable_directory(make_raster: MakeRaster, model_file: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        ro = Path("/sys")  # even root cannot create files there
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    r = run("predict", str(make_raster()), "-o", str(ro / "x.gpkg"), "-m", str(model_file))
    assert r.exit_code == 1 and "choose a writable directory" in r.stderr
    assert not (ro / "x.gpkg").exists()


def test_debug_shows_traceback(tmp_path: Path, model_file: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geounet",
            "--debug",
            "predict",
            str(tmp_path / "nope.tif"),
            "-o",
            str(tmp_path / "o.gpkg"),
            "-m",
            str(model_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RasterReadError" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geounet",
            "predict",
            str(tmp_path / "nope.tif"),
            "-o",
            str(tmp_path / "o.gpkg"),
            "-m",
            str(model_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'nope.tif'}: no such file; check the path"
    ]


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(2, 130, "Interrupted"), (15, 143, "Terminated")]
)
def test_interrupted_predict_leaves_nothing(tmp_path: Path, sig: int, code: int, word: str) -> None:
    import time

    from geounet.network.checkpoint import create_model
    from geounet.synthetic import make_scene

    scene = make_scene(tmp_path / "big.tif", width=1024, height=2048, seed=3).path
    model = tmp_path / "m.safetensors"
    net, meta = create_model(
        bands=3, classes=["building"], width=16, depth=4, tile_size=256, overlap=32
    )
    save_model(net, meta, model)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geounet",
            "predict",
            str(scene),
            "-o",
            str(outdir / "b.gpkg"),
            "-m",
            str(model),
            "--mask",
            str(outdir / "m.tif"),
            "--probabilities",
            str(outdir / "p.tif"),
            "--batch-size",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # the child must take Ctrl-C; preexec_fn is the only way to restore SIGINT before exec
        preexec_fn=default_sigint,  # noqa: PLW1509
    )
    deadline = time.monotonic() + 60
    while not any(outdir.glob(".m.tif.geounet-*.tmp/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well into the tiles
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"{word}; no output written"
    assert "Traceback" not in err
    assert list(outdir.iterdir()) == []


def test_scene_without_geotransform(
    make_raster: MakeRaster, model_file: Path, tmp_path: Path
) -> None:
    from rasterio.transform import Affine

    scene = make_raster("nogt.tif", transform=Affine.identity())
    r = run("predict", str(scene), "-o", str(tmp_path / "o.gpkg"), "-m", str(model_file))
    assert r.exit_code == 1 and "has no geotransform" in r.stderr
