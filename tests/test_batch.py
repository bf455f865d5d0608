"""geounet batch: input expansion, output names, resume, failures, Dask, remote (HTTP) scenes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import meta_for, one_torch_thread_for, roofs_model, threshold_unet

from geounet.archive.batch import (
    MANIFEST_NAME,
    BatchProgress,
    SceneRecord,
    VectorFormat,
    assign_names,
    batch_params,
    read_manifest,
    run_batch,
    scene_stem,
)
from geounet.cli.batch import FORMATS
from geounet.cli.main import cli
from geounet.errors import CheckpointError, GeounetError, OutputError, OutputExistsError
from geounet.geodata.raster import expand_rasters
from geounet.network.checkpoint import save_model
from geounet.prediction.config import PredictConfig
from geounet.synthetic import make_scene

TEMPORARY = re.compile(r"^\..*\.geounet-.*\.tmp$")


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from one_torch_thread_for(monkeypatch)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return roofs_model(tmp_path_factory.mktemp("model") / "roofs.safetensors")


def make_scenes(
    folder: Path, count: int, *, size: int = 128, names: str = "scene{i}.tif"
) -> list[Path]:
    return [
        make_scene(
            folder / names.format(i=i), width=size, height=size, seed=i, building_density=3.0
        ).path
        for i in range(count)
    ]


def records(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines() if line.strip()
    ]


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST_NAME}


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def read_vectors(path: Path) -> gpd.GeoDataFrame:
    """The polygons of a vector output (a GeoPackage also holds a layer_styles table)."""
    return gpd.read_file(path, layer=path.stem) if path.suffix == ".gpkg" else gpd.read_file(path)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Inputs and names


def test_expand_inputs_paths_globs_lists_and_urls(tmp_path: Path) -> None:
    for rel in ("a/one.tif", "a/deep/two.tif", "b/three.tif", "a/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listing = tmp_path / "lists" / "scenes.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# archive\n\n../b/three.tif\n  https://example.com/cog.tif?sig=1  \n"
        f"{tmp_path}/a/one.tif\n../a/**/*.tif\n"
    )
    got = expand_rasters([str(tmp_path / "a/**/*.tif"), f"@{listing}", "/vsicurl/http://h/x.tif"])
    assert got == [
        str(tmp_path / "a/deep/two.tif"),
        str(tmp_path / "a/one.tif"),
        str(tmp_path / "b/three.tif"),
        "https://example.com/cog.tif?sig=1",
        "/vsicurl/http://h/x.tif",
    ]
    # Folders (as train takes them): every raster below, sorted; other files ignored.
    assert expand_rasters([tmp_path / "a", tmp_path / "b/three.tif"], folders=True) == [
        str(tmp_path / "a/deep/two.tif"),
        str(tmp_path / "a/one.tif"),
        str(tmp_path / "b/three.tif"),
    ]
    (tmp_path / "c").mkdir()
    with pytest.raises(GeounetError, match="no rasters"):
        expand_rasters([tmp_path / "c"], folders=True)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("{tmp}/nothing/**/*.tif", "matches no files; check the pattern"),
        ("{tmp}/missing.tif", "missing.tif: no such file"),
        ("{tmp}", "is a directory; pass a glob such as"),
        ("@{tmp}/missing.txt", "no such list file"),
        ("@{tmp}/empty.txt", "lists no scenes"),
    ],
)
def test_expand_inputs_errors(tmp_path: Path, arg: str, message: str) -> None:
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    with pytest.raises(GeounetError, match=re.escape(message)):
        expand_rasters([arg.format(tmp=tmp_path)])


def test_names_are_unique_and_stable() -> None:
    assert scene_stem("/vsicurl/https://h/a/b.v2.tif?sig=x") == "b.v2"
    assert scene_stem("s3://bucket/k/Y.TIF") == "Y"
    assert scene_stem("/vsizip//vsis3/b/a.zip/z.tif") == "z"
    a, b, c = "/data/x/scene.tif", "/data/y/scene.tif", "/data/z/other.tif"
    names = assign_names([a, b, c])
    assert names[c] == "other"
    assert re.fullmatch(r"scene-[0-9a-f]{8}", names[a]) and re.fullmatch(
        r"scene-[0-9a-f]{8}", names[b]
    )
    assert names[a] != names[b]
    # A name from an earlier run sticks, and is not handed to a new input with the same stem.
    previous = {a: SceneRecord(input=a, name="scene", status="done")}
    later = assign_names([a, b], previous)
    assert later[a] == "scene" and later[b].startswith("scene-")
    assert assign_names([b], previous)[b].startswith("scene-")


def test_cli_formats_match_library() -> None:
    assert FORMATS == get_args(VectorFormat)


# --------------------------------------------------------------------------------------------
# Resume


def test_resume_skips_done_and_redoes_changed(tmp_path: Path, model_file: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 3)
    out = tmp_path / "in" / "out"  # inside the archive: its masks must not become inputs
    events: list[BatchProgress] = []

    def run(threshold: float = 0.5, **kw: Any) -> Any:
        config = PredictConfig(threshold=threshold, tile_size=96, overlap=16)  # 4 tiles a scene
        return run_batch(
            [str(tmp_path / "in" / "**" / "*.tif")],
            out,
            model=model_file,
            config=config,
            mask=True,
            **kw,
        )

    first = run(progress=events.append)
    assert (len(first.done), len(first.skipped), len(first.failed)) == (3, 0, 0)
    assert (
        first.describe() == f"3 done, 0 skipped (already done), 0 failed; see {out / MANIFEST_NAME}"
    )
    assert events[0] == BatchProgress(scenes_done=0, scenes_total=3)
    assert any(e.tiles_total == 4 for e in events) and events[-1].scenes_done == 3
    for rec in first.done:
        assert rec.outputs == {"vectors": f"{rec.name}.gpkg", "mask": f"{rec.name}.mask.tif"}
        assert rec.features == len(read_vectors(out / rec.outputs["vectors"])) > 0
    before = mtimes(out)

    again = run()
    assert (len(again.done), len(again.skipped)) == (0, 3)
    assert mtimes(out) == before

    other = run(0.7)  # a parameter changed: redo everything
    assert (len(other.done), len(other.skipped)) == (3, 0)
    assert all(mtimes(out)[name] != before[name] for name in before)
    assert len(run(0.7).skipped) == 3

    (out / "scene1.mask.tif").unlink()  # a missing output: redo that scene only
    os.utime(scenes[2], ns=(1, 1))  # a changed input (mtime): redo it too
    redo = run(0.7)
    assert sorted(r.name for r in redo.done) == ["scene1", "scene2"] and len(redo.skipped) == 1
    assert (out / "scene1.mask.tif").exists()
    lines = records(out)
    assert len(lines) == 3 + 3 + 2  # one line per finished scene, appended
    last = read_manifest(out / MANIFEST_NAME)
    assert sorted(Path(k).name for k in last) == ["scene0.tif", "scene1.tif", "scene2.tif"]
    assert {r.params["threshold"] for r in last.values()} == {0.7}


def test_polygon_options_are_parameters_only_when_given() -> None:
    # Manifests written before an option existed still match runs that leave it unset.
    base = batch_params(PredictConfig(), fmt="gpkg", probabilities=False, mask=False)
    assert not {"split_m", "split_seeds", "regularize"} & set(base)
    given = batch_params(
        PredictConfig(split_seeds=0.7, split_m=0.0), fmt="gpkg", probabilities=False, mask=False
    )
    assert given["split_seeds"] == 0.7 and given["split_m"] == 0.0
    assert {k: v for k, v in given.items() if k not in ("split_seeds", "split_m")} == base
    # int8 runs another file and changes pixels: a parameter; fp32 and bf16 only round apart
    for precision in ("fp32", "bf16"):
        same = batch_params(
            PredictConfig(precision=precision), fmt="gpkg", probabilities=False, mask=False
        )
        assert same == base
    int8 = batch_params(
        PredictConfig(precision="int8"), fmt="gpkg", probabilities=False, mask=False
    )
    assert int8 == {**base, "precision": "int8"}


def test_tta_is_a_parameter_turning_it_on_or_off_redoes_scenes(
    tmp_path: Path, model_file: Path
) -> None:
    make_scenes(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = (
        "batch",
        str(tmp_path / "in" / "*.tif"),
        "-o",
        str(out),
        "-m",
        str(model_file),
        "--mask",
        "--tile-size",
        "96",
    )

    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert all(
        "tta" not in rec["params"] for rec in records(out)
    )  # manifests from before --tta still match
    plain = {name: read_mask(out / f"{name}.mask.tif") for name in ("scene0", "scene1")}
    r = invoke(*args, "--tta")
    assert r.exit_code == 0, r.stderr
    assert "2 done, 0 skipped" in r.stderr
    last = read_manifest(out / MANIFEST_NAME)
    assert [rec.params["tta"] for rec in last.values()] == [True, True]
    for name, mask in plain.items():  # the roof model is D4-equivariant: TTA gives the same masks
        np.testing.assert_array_equal(read_mask(out / f"{name}.mask.tif"), mask)
        assert (mask == 1).any()
    assert "0 done, 2 skipped" in invoke(*args, "--tta").stderr
    assert "2 done, 0 skipped" in invoke(*args).stderr  # and off again
    assert all("tta" not in rec.params for rec in read_manifest(out / MANIFEST_NAME).values())


def test_failed_scenes_are_recorded_and_the_batch_goes_on(tmp_path: Path, model_file: Path) -> None:
    good = make_scenes(tmp_path / "in", 2)
    truncated = tmp_path / "in" / "truncated.tif"
    truncated.write_bytes(good[0].read_bytes()[:3000])
    (tmp_path / "in" / "text.tif").write_text("this is not a GeoTIFF\n")
    out = tmp_path / "out"
    args = (
        "batch",
        str(tmp_path / "in" / "*.tif"),
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
    assert r.stdout.strip() == str(out / MANIFEST_NAME)
    assert f"2 done, 0 skipped (already done), 2 failed; see {out / MANIFEST_NAME}" in r.stderr
    assert re.search(r"failed: .*truncated\.tif", r.stderr) and re.search(
        r"failed: .*text\.tif", r.stderr
    )
    by_name = {Path(rec["input"]).name: rec for rec in records(out)}
    for name in ("truncated.tif", "text.tif"):
        assert by_name[name]["status"] == "failed" and name in by_name[name]["error"]
        assert "\n" not in by_name[name]["error"]
    assert by_name["scene0.tif"]["status"] == by_name["scene1.tif"]["status"] == "done"
    names = {p.name for p in out.iterdir()}
    assert {"scene0.gpkg", "scene0.mask.tif", "scene1.gpkg", "scene1.mask.tif"} <= names
    assert not [n for n in names if n.startswith(("truncated", "text"))]

    r = invoke(*args)  # failed scenes are tried again, done ones skipped
    assert r.exit_code == 1
    assert "0 done, 2 skipped (already done), 2 failed" in r.stderr


def test_errors_stop_the_batch_before_any_scene(tmp_path: Path, model_file: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 1)
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_text("not a model")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="is not a safetensors model file"):
        run_batch([scenes[0]], out, model=bad_model)
    assert not out.exists()
    mismatched = tmp_path / "mismatched.safetensors"
    save_model(threshold_unet(3, width=4), meta_for(threshold_unet(3, width=8)), mismatched)
    with pytest.raises(CheckpointError, match="weights do not match"):
        run_batch([scenes[0]], out, model=mismatched)
    assert list(out.iterdir()) == []  # no manifest either
    with pytest.raises(OutputError, match="cannot create output directory"):
        run_batch([scenes[0]], scenes[0] / "out", model=model_file)
    with pytest.raises(GeounetError, match="not both"):
        run_batch([scenes[0]], out, model=model_file, workers=2, scheduler="tcp://127.0.0.1:1")
    out.mkdir(exist_ok=True)
    (out / "scene0.gpkg").write_text("someone else's file")
    with pytest.raises(OutputExistsError, match=r"has no manifest\.jsonl; pass --overwrite"):
        run_batch([scenes[0]], out, model=model_file)
    assert sorted(p.name for p in out.iterdir()) == ["scene0.gpkg"]  # left as it was
    fcntl = pytest.importorskip("fcntl")
    with open(out / MANIFEST_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running batch does
        with pytest.raises(OutputError, match="another geounet batch is writing to"):
            run_batch([scenes[0]], out, model=model_file)
    r = invoke("batch", str(tmp_path / "in" / "*.gif"), "-o", str(out), "-m", str(model_file))
    assert r.exit_code == 1 and "Error: " in r.stderr and "matches no files" in r.stderr
    assert "Traceback" not in r.stderr


def test_killed_batch_resumes_without_recomputing(tmp_path: Path, model_file: Path) -> None:
    # Two small scenes first (processed in name order), then bigger ones to kill the run in.
    make_scenes(tmp_path / "in", 2, names="a{i}.tif")
    make_scenes(tmp_path / "in", 4, size=384, names="b{i}.tif")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "geounet",
        "batch",
        str(tmp_path / "in" / "*.tif"),
        "-o",
        str(out),
        "-m",
        str(model_file),
        "--mask",
        "--probabilities",
        "--prob-dtype",
        "uint8",
    ]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        done: list[dict[str, Any]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / MANIFEST_NAME).exists():
                done = [r for r in records(out) if r["status"] == "done"]
                if len(done) >= 2:
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        log.close()
    done = [r for r in records(out) if r["status"] == "done"]
    assert 2 <= len(done) < 6, (tmp_path / "first.log").read_text()
    finished = {name: t for name, t in mtimes(out).items() if not TEMPORARY.match(name)}
    assert len(finished) >= 3 * len(done)
    # A kill can leave temporaries behind; plant one for sure.
    (out / ".b3.mask.tif.geounet-0badc0de.tmp").mkdir(exist_ok=True)

    rerun = invoke(*cmd[3:])  # the same command, in this process
    assert rerun.exit_code == 0, rerun.stderr
    assert f"{6 - len(done)} done, {len(done)} skipped (already done), 0 failed" in rerun.stderr
    now = mtimes(out)
    for rec in done:  # not recomputed
        for name in rec["outputs"].values():
            assert now[name] == finished[name]
    assert not [p.name for p in out.iterdir() if TEMPORARY.match(p.name)]
    last = read_manifest(out / MANIFEST_NAME)
    assert len(last) == 6 and all(r.status == "done" for r in last.values())
    for rec in last.values():
        assert len(read_vectors(out / rec.outputs["vectors"])) == rec.features
        for kind in ("mask", "probabilities"):
            with rasterio.open(out / rec.outputs[kind]) as src:
                assert src.read().shape[1:] == (src.height, src.width)


# --------------------------------------------------------------------------------------------
# Dask


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (dask worker -> nanny -> worker), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture
def dask_scheduler(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two single-threaded workers on 127.0.0.1, as separate processes."""
    distributed = pytest.importorskip("distributed")
    dask_cmd = Path(sys.executable).with_name("dask")
    if not dask_cmd.exists():
        pytest.skip(f"{dask_cmd} not found (install dask[distributed] into this environment)")
    scheduler_file = tmp_path / "scheduler.json"
    logs = (tmp_path / "dask.log").open("w")
    common: dict[str, Any] = {
        "stdout": logs,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
    }
    procs = [
        subprocess.Popen(
            [
                str(dask_cmd),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **common,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(dask_cmd),
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                        "--local-directory",
                        str(tmp_path / "dask-workers"),
                    ],
                    **common,
                )
            )
        with distributed.Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        logs.close()


def test_dask_cluster_gives_the_same_outputs(
    tmp_path: Path, model_file: Path, dask_scheduler: str
) -> None:
    make_scenes(tmp_path / "in", 4)
    glob = str(tmp_path / "in" / "*.tif")
    local, remote = tmp_path / "local", tmp_path / "remote"
    r = invoke("batch", glob, "-o", str(local), "-m", str(model_file), "--mask", "--format", "fgb")
    assert r.exit_code == 0, r.stderr
    r = invoke(
        "batch",
        glob,
        "-o",
        str(remote),
        "-m",
        str(model_file),
        "--mask",
        "--format",
        "fgb",
        "--scheduler",
        dask_scheduler,
    )
    assert r.exit_code == 0, r.stderr
    assert "4 done, 0 skipped (already done), 0 failed" in r.stderr
    a, b = read_manifest(local / MANIFEST_NAME), read_manifest(remote / MANIFEST_NAME)
    assert a.keys() == b.keys()
    assert all(rec.worker.split(":")[1] != str(os.getpid()) for rec in b.values())  # ran elsewhere
    for scene, rec in a.items():
        other = b[scene]
        assert other.status == "done" and other.features == rec.features
        assert len(read_vectors(remote / other.outputs["vectors"])) == rec.features
        np.testing.assert_array_equal(
            read_mask(local / rec.outputs["mask"]), read_mask(remote / other.outputs["mask"])
        )
    r = invoke(
        "batch",
        glob,
        "-o",
        str(remote),
        "-m",
        str(model_file),
        "--mask",
        "--format",
        "fgb",
        "--scheduler",
        dask_scheduler,
    )
    assert r.exit_code == 0 and "0 done, 4 skipped (already done)" in r.stderr


@pytest.mark.slow
def test_local_worker_processes_give_the_same_outputs(tmp_path: Path, model_file: Path) -> None:
    pytest.importorskip("distributed")
    make_scenes(tmp_path / "in", 3)
    glob = str(tmp_path / "in" / "*.tif")
    one = run_batch([glob], tmp_path / "one", model=model_file, mask=True)
    many = run_batch([glob], tmp_path / "many", model=model_file, mask=True, workers=2)
    assert len(many.done) == 3 and not many.failed
    assert {r.worker for r in many.done}.isdisjoint({r.worker for r in one.done})
    pytest.importorskip("onnxruntime")
    from geounet.network.export import export_onnx

    onnx_model = export_onnx(
        model_file, tmp_path / "roofs.onnx"
    )  # workers run it through onnxruntime
    many = run_batch([glob], tmp_path / "onnx", model=onnx_model, mask=True, workers=2)
    assert len(many.done) == 3 and not many.failed
    assert sorted(r.features for r in many.done) == sorted(r.features for r in one.done)
    a = {r.input: r for r in one.done}
    for rec in many.done:
        assert rec.features == a[rec.input].features
        np.testing.assert_array_equal(
            read_mask(tmp_path / "many" / rec.outputs["mask"]),
            read_mask(tmp_path / "one" / a[rec.input].outputs["mask"]),
        )


# --------------------------------------------------------------------------------------------
# Remote scenes over HTTP


def test_remote_scene_over_http_is_read_by_windows(
    tmp_path: Path, model_file: Path, http_root: tuple[str, Path, list[tuple[str | None, int]]]
) -> None:
    base, root, served = http_root
    scene = make_scene(root / "scene.tif", width=512, height=512, seed=3, building_density=3.0).path
    size = scene.stat().st_size
    out = tmp_path / "out"
    inputs = [str(scene), f"/vsicurl/{base}/scene.tif", f"{base}/scene.tif", f"{base}/missing.tif"]
    config = PredictConfig(tile_size=256, overlap=16)  # fewer, bigger tiles: faster on CPU
    summary = run_batch(inputs, out, model=model_file, config=config, mask=True, fmt="geojson")
    assert len(summary.done) == 3
    assert [Path(r.input).name for r in summary.failed] == ["missing.tif"]
    assert "missing.tif" in (summary.failed[0].error or "")
    recs = {r.input: r for r in summary.done}
    local = recs[str(scene)]
    expected = read_mask(out / local.outputs["mask"])
    for url in inputs[1:3]:
        rec = recs[url]
        assert rec.input_size is None and rec.features == local.features > 0
        np.testing.assert_array_equal(read_mask(out / rec.outputs["mask"]), expected)
    # Windowed: every request asked for a byte range, none for the whole file.
    assert served and all(header is not None for header, _ in served)
    assert max(n for _, n in served) < size / 2
    again = run_batch(inputs, out, model=model_file, config=config, mask=True, fmt="geojson")
    assert len(again.skipped) == 3 and len(again.failed) == 1


@pytest.fixture
def plain_http_root(
    http_root: tuple[str, Path, list[tuple[str | None, int]]],
) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of Python's own ``http.server`` on 127.0.0.1 over the folder ``http_root``
    serves: it answers a Range request with the whole file, as servers without byte ranges do.

    A process of its own, so that the test serves exactly what ``python -m http.server`` does.
    """
    _, root, _ = http_root
    server = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = re.search(r"port (\d+)", server.stdout.readline())
        assert port is not None, "http.server did not say its port"
        yield f"http://127.0.0.1:{port[1]}", root
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_server_without_byte_ranges_is_named_as_such(
    make_raster: Any,
    model_file: Path,
    http_root: tuple[str, Path, list[tuple[str | None, int]]],
    plain_http_root: tuple[str, Path],
) -> None:
    from geounet.errors import RasterReadError
    from geounet.geodata.raster import gdal_options, open_scene

    ranged, root, _ = http_root
    plain, _ = plain_http_root
    make_raster("www/big.tif", width=1000, height=1000)  # 3 MB: GDAL reads smaller files whole

    def open_remote(url: str) -> Any:
        with rasterio.Env(**gdal_options(url)):  # as Predictor.run opens remote scenes
            return open_scene(url)

    assert open_remote(f"{ranged}/big.tif").width == 1000
    message = f"{plain}/big.tif: the server does not serve byte ranges (HTTP Range requests)"
    with pytest.raises(
        RasterReadError, match=re.escape(message) + ".*download the file and pass its local path"
    ) as info:
        open_remote(f"{plain}/big.tif")
    assert "complete GeoTIFF" not in str(info.value)
    summary = run_batch([f"{plain}/big.tif"], root.parent / "out", model=model_file)
    assert [r.error for r in summary.failed] == [str(info.value)]
