"""Hostile and broken input: the real CLI over a matrix of bad scenes, labels, models and outputs.

For every failing case: exit status non-zero, one line on stderr naming the file and saying how
to fix it, no traceback, no output or temporary file left, and no other file touched. Some
inputs are odd but valid (1x1 scene, all-nodata scene, alpha band, labels in another CRS): those
must succeed with valid output.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from click.testing import CliRunner
from conftest import MakeRaster, default_sigint, meta_for, threshold_unet
from rasterio.transform import Affine, from_origin
from safetensors.torch import save_file

from geounet.cli.main import cli
from geounet.network.checkpoint import create_model, save_model
from geounet.network.contract import FORMAT_VERSION, META_KEY

T = from_origin(500000, 5000000, 0.5, 0.5)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def assert_clean_failure(
    result: Any, root: Path, before: dict[str, tuple[int, int]], *must_mention: str
) -> None:
    assert result.exit_code != 0, result.stdout
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    assert err.startswith("Error: "), err
    for word in must_mention:
        assert word in err, (word, err)
    assert snapshot(root) == before, "files were created, changed or left behind"
    assert not list(root.rglob("*.geounet-*.tmp"))


@pytest.fixture
def work(tmp_path: Path, make_raster: MakeRaster) -> dict[str, Path]:
    data = np.zeros((3, 96, 96), dtype=np.uint8)
    data[0, 10:40, 20:60] = 255
    scene = make_raster("scene.tif", data=data)
    net = threshold_unet(3)
    model = tmp_path / "model.safetensors"
    save_model(net, meta_for(net, tile_size=64, overlap=16), model)
    out = tmp_path / "out"
    out.mkdir()
    return {"root": tmp_path, "scene": scene, "model": model, "out": out}


# --- scenes -------------------------------------------------------------------------------------


def _missing(w: dict[str, Path], mk: MakeRaster) -> Path:
    return w["root"] / "missing.tif"


def _directory(w: dict[str, Path], mk: MakeRaster) -> Path:
    d = w["root"] / "adir.tif"
    d.mkdir()
    return d


def _zero_bytes(w: dict[str, Path], mk: MakeRaster) -> Path:
    p = w["root"] / "zero.tif"
    p.write_bytes(b"")
    return p


def _text(w: dict[str, Path], mk: MakeRaster) -> Path:
    p = w["root"] / "text.tif"
    p.write_text("this is not a GeoTIFF\n")
    return p


def _truncated(w: dict[str, Path], mk: MakeRaster) -> Path:
    rng = np.random.default_rng(0)
    full = mk(
        "full.tif",
        data=rng.integers(0, 255, (3, 300, 300)).astype(np.uint8),
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )
    p = w["root"] / "half.tif"
    raw = full.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    full.unlink()
    return p


def _no_crs(w: dict[str, Path], mk: MakeRaster) -> Path:
    return mk("nocrs.tif", crs=None)


def _no_geotransform(w: dict[str, Path], mk: MakeRaster) -> Path:
    with pytest.warns(Warning):
        return mk("nogt.tif", transform=Affine.identity())


def _rotated(w: dict[str, Path], mk: MakeRaster) -> Path:
    return mk("rotated.tif", transform=Affine(0.5, 0.1, 500000, 0.1, -0.5, 5000000))


def _one_band(w: dict[str, Path], mk: MakeRaster) -> Path:
    return mk("oneband.tif", count=1)


def _uint16(w: dict[str, Path], mk: MakeRaster) -> Path:
    return mk("u16.tif", dtype="uint16")


def _float32(w: dict[str, Path], mk: MakeRaster) -> Path:
    return mk("f32.tif", dtype="float32")


BAD_SCENES: dict[str, tuple[Callable[..., Path], tuple[str, ...]]] = {
    "missing path": (_missing, ("missing.tif", "check the path")),
    "directory": (_directory, ("adir.tif", "is a directory")),
    "0-byte file": (_zero_bytes, ("zero.tif", "empty")),
    "text file named .tif": (_text, ("text.tif", "not a readable raster")),
    "truncated GeoTIFF": (_truncated, ("half.tif", "truncated")),
    "no CRS": (_no_crs, ("nocrs.tif", "gdal_edit.py -a_srs")),
    "no geotransform": (_no_geotransform, ("nogt.tif", "no geotransform")),
    "rotated geotransform": (_rotated, ("rotated.tif", "gdalwarp")),
    "1 band, model wants 3": (
        _one_band,
        ("oneband.tif", "model expects 3 bands", "use a model trained"),
    ),
    "uint16 for a uint8 model": (_uint16, ("u16.tif", "uint16", "gdal_translate")),
    "float32 for a uint8 model": (_float32, ("f32.tif", "float32", "gdal_translate")),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENES))
def test_bad_scene(case: str, work: dict[str, Path], make_raster: MakeRaster) -> None:
    build, words = BAD_SCENES[case]
    scene = build(work, make_raster)
    before = snapshot(work["root"])
    out = work["out"]
    r = invoke(
        [
            "predict",
            str(scene),
            "-o",
            str(out / "b.gpkg"),
            "-m",
            str(work["model"]),
            "--mask",
            str(out / "m.tif"),
            "--probabilities",
            str(out / "p.tif"),
        ]
    )
    assert_clean_failure(r, work["root"], before, *words)


def test_one_pixel_scene_works(work: dict[str, Path], make_raster: MakeRaster) -> None:
    scene = make_raster("px.tif", data=np.full((3, 1, 1), 255, np.uint8))
    r = invoke(
        [
            "predict",
            str(scene),
            "-o",
            str(work["out"] / "b.geojson"),
            "-m",
            str(work["model"]),
            "--mask",
            str(work["out"] / "m.tif"),
        ]
    )
    assert r.exit_code == 0, r.stderr
    frame = gpd.read_file(work["out"] / "b.geojson")
    assert len(frame) == 1 and frame.area.iloc[0] == pytest.approx(0.25)


def test_all_nodata_scene_gives_empty_valid_outputs(
    work: dict[str, Path], make_raster: MakeRaster
) -> None:
    scene = make_raster("nodata.tif", data=np.zeros((3, 100, 100), np.uint8), nodata=0)
    out = work["out"]
    for suffix in (".gpkg", ".geojson", ".fgb", ".shp", ".parquet"):
        r = invoke(
            [
                "predict",
                str(scene),
                "-o",
                str(out / f"b{suffix}"),
                "-m",
                str(work["model"]),
                "--overwrite",
            ]
        )
        assert r.exit_code == 0, r.stderr
        assert "0 polygons" in r.stderr and "all-nodata skipped" in r.stderr
        frame = (
            gpd.read_parquet(out / f"b{suffix}")
            if suffix == ".parquet"
            else gpd.read_file(out / f"b{suffix}")
        )
        assert len(frame) == 0 and frame.crs.to_epsg() == 32633
    r = invoke(["predict", str(scene), "--mask", str(out / "m.tif"), "-m", str(work["model"])])
    with rasterio.open(out / "m.tif") as src:
        assert (src.read(1) == 255).all() and src.nodata == 255


def test_alpha_band_is_used_as_the_mask(work: dict[str, Path], make_raster: MakeRaster) -> None:
    data = np.zeros((4, 64, 64), np.uint8)
    data[0] = 255
    data[3, :, 32:] = 255  # left half transparent
    scene = make_raster("rgba.tif", data=data, photometric="RGB", alpha="YES")
    r = invoke(["predict", str(scene), "-o", str(work["out"] / "b.gpkg"), "-m", str(work["model"])])
    assert r.exit_code == 0, r.stderr
    frame = gpd.read_file(work["out"] / "b.gpkg")
    assert len(frame) == 1
    assert frame.total_bounds[0] == pytest.approx(500000 + 32 * 0.5)


# --- models -------------------------------------------------------------------------------------


def _model_missing(root: Path) -> Path:
    return root / "nomodel.safetensors"


def _model_corrupt(root: Path) -> Path:
    p = root / "corrupt.safetensors"
    p.write_bytes(os.urandom(300))
    return p


def _model_truncated(root: Path) -> Path:
    net, meta = create_model(bands=3, classes=1, width=4, depth=2)
    p = root / "cut.safetensors"
    save_model(net, meta, p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 200])
    return p


def _model_plain(root: Path) -> Path:
    p = root / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    return p


def _model_future(root: Path) -> Path:
    net, meta = create_model(bands=3, classes=1, width=4, depth=2)
    data = json.loads(meta.to_json())
    data["format_version"] = FORMAT_VERSION + 1
    p = root / "future.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(p),
        metadata={META_KEY: json.dumps(data)},
    )
    return p


class _Exploit:
    marker = ""

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _model_pickle(root: Path) -> Path:
    _Exploit.marker = str(root / "PWNED")
    p = root / "evil.pt"
    torch.save({"state_dict": _Exploit()}, p)  # a torch checkpoint that runs code when unpickled
    return p


BAD_MODELS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing": (_model_missing, ("nomodel.safetensors", "not found")),
    "corrupt": (_model_corrupt, ("corrupt.safetensors", "not a safetensors model file")),
    "truncated": (_model_truncated, ("cut.safetensors",)),
    "safetensors without geounet metadata": (
        _model_plain,
        ("plain.safetensors", "no geounet metadata"),
    ),
    "metadata from a future version": (_model_future, ("future.safetensors", "upgrade geounet")),
    "pickle crafted to run code": (_model_pickle, ("evil.pt", "never loads pickled")),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
@pytest.mark.parametrize("command", ["predict", "info", "train-init"])
def test_bad_model(case: str, command: str, work: dict[str, Path], tmp_path: Path) -> None:
    build, words = BAD_MODELS[case]
    model = build(work["root"])
    before = snapshot(work["root"])
    if command == "predict":
        args = ["predict", str(work["scene"]), "-o", str(work["out"] / "b.gpkg"), "-m", str(model)]
    elif command == "info":
        args = ["model", "info", str(model)]
    else:
        labels = work["root"] / "labels.geojson"
        gpd.GeoDataFrame(
            geometry=[shapely.box(500010, 4999980, 500030, 4999995)], crs=32633
        ).to_file(labels)
        before = snapshot(work["root"])
        args = [
            "train",
            "--images",
            str(work["scene"]),
            "--labels",
            str(labels),
            "--init",
            str(model),
            "-o",
            str(work["out"] / "m.safetensors"),
            "--tile-size",
            "32",
            "--epochs",
            "1",
        ]
    r = invoke(args)
    assert_clean_failure(r, work["root"], before, *words)
    assert not (work["root"] / "PWNED").exists()


# --- labels -------------------------------------------------------------------------------------


def _write(frame: gpd.GeoDataFrame, path: Path, **kw: Any) -> Path:
    frame.to_file(path, **kw)
    return path


@pytest.fixture
def train_args(
    work: dict[str, Path], make_raster: MakeRaster
) -> Callable[[Path, list[str]], list[str]]:
    data = np.zeros((3, 256, 256), dtype=np.uint8)
    data[0, 10:40, 20:60] = 255
    scene = make_raster("train_scene.tif", data=data)

    def make(labels: Path, extra: list[str]) -> list[str]:
        return [
            "train",
            "--images",
            str(scene),
            "--labels",
            str(labels),
            "-o",
            str(work["out"] / "m.safetensors"),
            "--tile-size",
            "32",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--samples-per-epoch",
            "4",
            "--width",
            "4",
            "--depth",
            "2",
            "--device",
            "cpu",
            *extra,
        ]

    return make


BOX = shapely.box(500010, 4999980, 500030, 4999995)


def test_labels_missing(work: dict[str, Path], train_args: Any) -> None:
    before = snapshot(work["root"])
    r = invoke(train_args(work["root"] / "nolabels.gpkg", []))
    assert_clean_failure(r, work["root"], before, "nolabels.gpkg")


def test_labels_empty(work: dict[str, Path], train_args: Any) -> None:
    p = _write(gpd.GeoDataFrame({"c": []}, geometry=[], crs=32633), work["root"] / "empty.gpkg")
    before = snapshot(work["root"])
    assert_clean_failure(
        invoke(train_args(p, [])), work["root"], before, "empty.gpkg", "no features"
    )


def test_labels_no_overlap(work: dict[str, Path], train_args: Any) -> None:
    p = _write(
        gpd.GeoDataFrame(geometry=[shapely.box(10, 10, 10.01, 10.01)], crs=4326),
        work["root"] / "far.geojson",
    )
    before = snapshot(work["root"])
    assert_clean_failure(
        invoke(train_args(p, [])), work["root"], before, "far.geojson", "does not overlap"
    )


def test_labels_missing_class_field(work: dict[str, Path], train_args: Any) -> None:
    p = _write(
        gpd.GeoDataFrame({"kind": ["a"]}, geometry=[BOX], crs=32633), work["root"] / "l.gpkg"
    )
    before = snapshot(work["root"])
    assert_clean_failure(
        invoke(train_args(p, ["--class-field", "klass"])),
        work["root"],
        before,
        "l.gpkg",
        "klass",
        "kind",
    )


@pytest.mark.parametrize(
    "name",
    [
        "wrong CRS but overlapping",
        "invalid self-intersecting polygons",
        "mixed geometry types",
        "non-UTF-8 attribute values",
    ],
)
def test_odd_but_usable_labels_train(name: str, work: dict[str, Path], train_args: Any) -> None:
    root = work["root"]
    extra: list[str] = []
    if name == "wrong CRS but overlapping":
        p = _write(gpd.GeoDataFrame(geometry=[BOX], crs=32633).to_crs(3857), root / "l.geojson")
    elif name == "invalid self-intersecting polygons":
        bowtie = shapely.Polygon(
            [(500010, 4999980), (500030, 4999995), (500030, 4999980), (500010, 4999995)]
        )
        assert not bowtie.is_valid
        p = _write(gpd.GeoDataFrame(geometry=[bowtie, BOX], crs=32633), root / "l.gpkg")
    elif name == "mixed geometry types":
        geoms = [
            BOX,
            shapely.LineString([(500000, 4999970), (500040, 4999970)]),
            shapely.Point(500040, 4999990),
            shapely.GeometryCollection([BOX.buffer(-2)]),
        ]
        p = _write(gpd.GeoDataFrame(geometry=geoms, crs=32633), root / "l.gpkg")
    else:
        p = _write(
            gpd.GeoDataFrame(
                {"kind": ["caf\xe9", "na\xefve"]}, geometry=[BOX, BOX.buffer(-3)], crs=32633
            ),
            root / "l.shp",
            encoding="latin1",
        )
        # Declare it UTF-8 while the bytes are latin-1, as broken exports do.
        (root / "l.cpg").write_text("UTF-8")
        extra = ["--class-field", "kind"]
    r = invoke(train_args(p, extra))
    assert r.exit_code == 0, r.stderr
    assert (work["out"] / "m.safetensors").exists()


# --- outputs ------------------------------------------------------------------------------------


def test_existing_output_without_overwrite(work: dict[str, Path]) -> None:
    target = work["out"] / "b.gpkg"
    target.write_text("precious")
    before = snapshot(work["root"])
    r = invoke(["predict", str(work["scene"]), "-o", str(target), "-m", str(work["model"])])
    assert_clean_failure(r, work["root"], before, "b.gpkg", "--overwrite")


def test_existing_mask_without_overwrite_writes_nothing_else(work: dict[str, Path]) -> None:
    (work["out"] / "m.tif").write_text("precious")
    before = snapshot(work["root"])
    r = invoke(
        [
            "predict",
            str(work["scene"]),
            "-o",
            str(work["out"] / "b.gpkg"),
            "--mask",
            str(work["out"] / "m.tif"),
            "-m",
            str(work["model"]),
        ]
    )
    assert_clean_failure(r, work["root"], before, "m.tif", "--overwrite")


def test_read_only_directory(work: dict[str, Path]) -> None:
    if os.geteuid() == 0:
        target = Path("/sys/b.gpkg")  # not writable, even for root
    else:
        ro = work["root"] / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "b.gpkg"
    before = snapshot(work["root"])
    r = invoke(["predict", str(work["scene"]), "-o", str(target), "-m", str(work["model"])])
    assert_clean_failure(r, work["root"], before, "b.gpkg", "writable")


def test_unknown_suffix(work: dict[str, Path]) -> None:
    before = snapshot(work["root"])
    r = invoke(
        ["predict", str(work["scene"]), "-o", str(work["out"] / "b.kml"), "-m", str(work["model"])]
    )
    assert_clean_failure(r, work["root"], before, "b.kml", ".gpkg")


def _limit_file_size() -> None:
    # A disk that fills up: writes past 200 kB fail with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_disk_full_midway(work: dict[str, Path], make_raster: MakeRaster) -> None:
    rng = np.random.default_rng(0)
    scene = make_raster("noisy.tif", data=rng.integers(0, 255, (3, 400, 400)).astype(np.uint8))
    before = snapshot(work["root"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geounet",
            "predict",
            str(scene),
            "-o",
            str(work["out"] / "b.gpkg"),
            "-m",
            str(work["model"]),
            "--probabilities",
            str(work["out"] / "p.tif"),
        ],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("Error: ") and "Traceback" not in err, err
    assert "p.tif" in err or "b.gpkg" in err
    assert snapshot(work["root"]) == before
    assert not list(work["root"].rglob("*.geounet-*.tmp"))


# --- interrupted training -----------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_training_leaves_no_partial_output_and_resumes(
    tmp_path: Path, sig: int, code: int
) -> None:
    from geounet.synthetic import make_scene

    info = make_scene(
        tmp_path / "s.tif", width=256, height=256, labels_path=tmp_path / "b.geojson", seed=5
    )
    out = tmp_path / "m.safetensors"
    args = [
        sys.executable,
        "-m",
        "geounet",
        "train",
        "--images",
        str(info.path),
        "--labels",
        str(tmp_path / "b.geojson"),
        "-o",
        str(out),
        "--tile-size",
        "64",
        "--batch-size",
        "2",
        "--epochs",
        "4",
        "--samples-per-epoch",
        "24",
        "--width",
        "8",
        "--depth",
        "3",
        "--device",
        "cpu",
        "--val-fraction",
        "0.25",
    ]
    # the child must take Ctrl-C; preexec_fn is the only way to restore SIGINT before exec
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509
    )
    resume = tmp_path / "m.resume.safetensors"
    deadline = time.monotonic() + 120
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resume.exists(), "no epoch finished in time"
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".*geounet-*.tmp"))
    # What exists is complete: the best model so far and the checkpoint of the last whole epoch.
    from geounet.network.checkpoint import read_meta

    assert read_meta(out).provenance["epochs"] >= 1
    done = len((tmp_path / "m.metrics.jsonl").read_text().splitlines())
    assert done >= 1
    proc2 = subprocess.run(
        [*args, "--resume", str(resume)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc2.returncode == 0, proc2.stderr
    lines = [json.loads(x) for x in (tmp_path / "m.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
