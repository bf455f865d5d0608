"""Predict many scenes into one directory: resumable, in this process or on a Dask cluster.

:func:`run_batch` expands the inputs (paths, recursive globs, ``@list`` files, URLs, and STAC
catalogs, collections and items through :mod:`geounet.archive.stac`), gives each scene an output name, and runs :class:`~geounet.prediction.predictor.Predictor` over the scenes that are not
done yet. Outputs go straight into the output directory as ``NAME.<format>``,
``NAME.mask.tif`` and ``NAME.probabilities.tif``, each written atomically (a temporary beside it,
then a rename), so nothing half-written ever carries a final name.

The manifest ``DIR/manifest.jsonl`` is the record of the run: one JSON line per finished scene
(input, output files, model hash, parameters, status, error, timings, feature count), appended by
the coordinating process only, under an exclusive lock, flushed and fsync'd. It is read back as
"the last record for an input wins". A scene is recorded done only after its outputs were renamed
into place, so a killed run is resumed by running the same command again: scenes done with the
same input (path, and size and mtime for local files), model hash and parameters whose outputs
still exist are skipped; failed, changed, missing and never-finished scenes are (re)done.
A scene from a STAC item is keyed on the item (its JSON's path or URL) and records the asset's key
and href; it is named after the item. It keeps its key, and so its name, when it fails, when it is
fixed and when its asset's href changes (which redoes it into the same files).

A scene that fails (corrupt file, no CRS, wrong bands, or an unexpected exception) is recorded as
failed with a one-line error and has no outputs in the directory; the others go on.

Parallelism uses Dask's distributed scheduler: ``workers=N`` starts N local worker processes,
``scheduler=ADDRESS`` submits to a running cluster. Each worker loads the model once and keeps it.
Workers write the outputs directly (a file system shared with the coordinating process is
assumed); the coordinating process writes the manifest as results come in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, get_args
from urllib.parse import urlsplit

from geounet.archive.stac import (
    ResultItem,
    StacScene,
    check_catalog_dest,
    is_stac_source,
    read_stac_scenes,
    write_results_catalog,
)
from geounet.errors import GeounetError, OutputError, OutputExistsError
from geounet.geodata.raster import expand_rasters, is_remote
from geounet.geodata.tiling import check_tile_size
from geounet.network.backends import load_onnx
from geounet.network.checkpoint import file_hash, is_onnx, load_model, read_meta
from geounet.prediction.config import Backend, Precision, PredictConfig
from geounet.prediction.predictor import Predictor

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the manifest is still written by one process
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

VectorFormat = Literal["gpkg", "geojson", "fgb", "parquet"]
Status = Literal["done", "failed"]
OutputKind = Literal["vectors", "probabilities", "mask"]

#: The manifest's file name inside the output directory.
MANIFEST_NAME = "manifest.jsonl"

_VSI_PREFIX = re.compile(r"^(/vsi[a-z0-9_]+(?=/))+/*")
_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f/\\:*?"<>|]')
# Temporaries of geounet.geodata.raster.AtomicOutputs: ".{final name}.geounet-{hex}.tmp".
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.geounet-[0-9a-f]+\.tmp$")


@dataclass(frozen=True, slots=True)
class SceneRecord:
    """One manifest line: what became of one scene.

    Attributes:
        input: The scene as expanded (absolute path for local files, URL or ``/vsi`` path); for
            a scene from a STAC item, the item (:attr:`geounet.archive.stac.StacScene.input`).
        name: The output name stem (outputs are ``NAME.<format>``, ``NAME.mask.tif``...).
        status: ``done`` or ``failed``.
        item_id: The STAC item the scene came from (left out of the line for other scenes).
        asset_key: The STAC asset's key (left out likewise).
        asset_href: The STAC asset's href as resolved (the raster read; left out likewise).
        outputs: File names inside the output directory, by kind (``vectors``,
            ``probabilities``, ``mask``).
        model: The model file.
        model_hash: SHA-256 of the model file.
        params: The parameters that shape the outputs (format, outputs, tiling, threshold...).
        input_size: Bytes of a local input when it was processed (None for remote inputs).
        input_mtime_ns: Modification time of a local input (None for remote inputs).
        error: One-line error of a failed scene.
        features: Polygons written (done scenes).
        tiles: Tiles predicted (done scenes).
        seconds: Wall time of the scene on its worker.
        timings: Seconds per pipeline stage (read_wait, model, stitch, write, vectorize...).
        device: Where the model ran (``cpu``, ``cuda:0``...).
        worker: ``host:pid`` of the process that ran the scene.
        finished: When the scene finished (ISO 8601, UTC).
    """

    input: str
    name: str
    status: Status
    item_id: str | None = None
    asset_key: str | None = None
    asset_href: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    model: str = ""
    model_hash: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    input_mtime_ns: int | None = None
    error: str | None = None
    features: int | None = None
    tiles: int | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    worker: str = ""
    finished: str = ""

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        data = dataclasses.asdict(self)
        for key in ("item_id", "asset_key", "asset_href"):  # only scenes from STAC have them
            if data[key] is None:
                del data[key]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> SceneRecord | None:
        """Parse a manifest line; None for a line that is not a record (e.g. cut off by a kill)."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        if not isinstance(data.get("input"), str) or data.get("status") not in get_args(Status):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a batch did.

    Attributes:
        done: Records of the scenes predicted in this run.
        skipped: Earlier records of the scenes skipped because they were already done.
        failed: Records of the scenes that failed in this run.
        manifest: The manifest file.
        catalog: The results catalog's ``catalog.json``, if one was asked for.
    """

    done: list[SceneRecord]
    skipped: list[SceneRecord]
    failed: list[SceneRecord]
    manifest: Path
    catalog: Path | None = None

    def describe(self) -> str:
        """One line, e.g. ``12 done, 3 skipped (already done), 1 failed; see out/manifest.jsonl``."""
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed; see {self.manifest}"
        )


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A progress report passed to the ``progress`` callback of :func:`run_batch`.

    Sent once at the start (``scene`` None; ``scenes_done`` counts the skipped scenes), after
    every tile of the running scene in single-process runs (``tiles_done``/``tiles_total``), and
    when a scene finishes (``record`` set).

    Attributes:
        scenes_done: Scenes finished so far, skipped ones included.
        scenes_total: Scenes in the batch.
        scene: The input the report is about, if any.
        tiles_done: Tiles of ``scene`` done (single-process runs only, else 0).
        tiles_total: Tiles of ``scene`` (single-process runs only, else 0).
        record: The manifest record of the scene that just finished.
    """

    scenes_done: int
    scenes_total: int
    scene: str | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    record: SceneRecord | None = None


BatchProgressCallback = Callable[[BatchProgress], None]


@dataclass(frozen=True, slots=True)
class SceneTask:
    """Everything a worker needs to predict one scene (picklable, sent to Dask workers).

    Attributes:
        input: The scene's key (absolute local path, URL or ``/vsi`` path; for a STAC item, the
            item).
        name: Output name stem.
        out_dir: Absolute output directory.
        outputs: Output file names inside ``out_dir``, by kind.
        model: Absolute model path (workers must see it).
        model_hash: SHA-256 the model file must have.
        config: Prediction options.
        params: The parameters recorded in the manifest.
        input_size: Bytes of a local input (None for remote).
        input_mtime_ns: Modification time of a local input (None for remote).
        item_id: The STAC item of the scene, if any.
        asset_key: The STAC asset's key, if any.
        asset_href: The STAC asset's href (the raster read), if any.
    """

    input: str
    name: str
    out_dir: str
    outputs: dict[str, str]
    model: str
    model_hash: str
    config: PredictConfig
    params: dict[str, Any]
    input_size: int | None
    input_mtime_ns: int | None
    item_id: str | None = None
    asset_key: str | None = None
    asset_href: str | None = None

    @property
    def raster(self) -> str:
        """The raster to read: the STAC asset's href, else the input itself."""
        return self.asset_href or self.input


# --------------------------------------------------------------------------------------------
# Inputs and names


def scene_stem(scene: str) -> str:
    """The file name of a scene without its suffix, safe as a file name (``a/b/x.tif`` -> ``x``).

    URLs lose their query string; ``/vsi`` prefixes are looked through.
    """
    text = scene
    if is_remote(text):
        text = _VSI_PREFIX.sub("", text)  # /vsicurl/https://h/x.tif, /vsizip//vsis3/b/a.zip/x.tif
        if "://" in text:
            text = urlsplit(text).path
    return safe_name(PurePosixPath(text.replace("\\", "/")).stem)


def item_stem(item_id: str) -> str:
    """A STAC item id as an output name stem: ids that are file names (``rio stac`` gives the
    raster's, ``scene.tif``) lose their raster suffix, so outputs read ``scene.gpkg``."""
    for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
        if item_id.endswith(suffix) and len(item_id) > len(suffix):
            return item_id[: -len(suffix)]
    return item_id


def safe_name(text: str) -> str:
    """``text`` as a file name stem: no path separators, control or reserved characters."""
    stem = _UNSAFE_NAME_CHARS.sub("_", text).lstrip(".").strip()
    return stem or "scene"


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def assign_names(
    scenes: Sequence[str],
    previous: Mapping[str, SceneRecord] | None = None,
    *,
    stems: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A unique output name per scene: its stem, plus a short hash of the input when stems clash.

    Names are compared case-insensitively (case-insensitive file systems). A scene keeps the
    name an earlier run gave it (from the manifest), and names the manifest gives to other
    inputs are not reused, so adding inputs never renames or overwrites earlier outputs.

    Args:
        scenes: Expanded inputs.
        previous: Last manifest record per input.
        stems: Stems to use instead of the file names (STAC item ids), by input.

    Returns:
        Name stem by input.
    """
    previous = previous or {}
    claimed = {rec.name.casefold(): inp for inp, rec in previous.items() if rec.name}
    names: dict[str, str] = {}
    used: set[str] = set()
    for scene in scenes:
        rec = previous.get(scene)
        if rec is not None and rec.name and rec.name.casefold() not in used:
            names[scene] = rec.name
            used.add(rec.name.casefold())
    given = stems or {}
    wanted = {
        s: safe_name(given[s]) if s in given else scene_stem(s) for s in scenes if s not in names
    }
    counts = Counter(stem.casefold() for stem in wanted.values())
    for scene, stem in wanted.items():
        key = stem.casefold()
        taken = key in used or claimed.get(key, scene) != scene
        name = f"{stem}-{_short_hash(scene)}" if counts[key] > 1 or taken else stem
        length = 8
        while name.casefold() in used or claimed.get(name.casefold(), scene) != scene:
            length += 4  # a clash of hashes (or a file really named like one): lengthen it
            name = f"{stem}-{_short_hash(scene, length)}"
        names[scene] = name
        used.add(name.casefold())
    return names


def output_names(
    name: str, *, fmt: VectorFormat, probabilities: bool, mask: bool
) -> dict[str, str]:
    """The output file names of one scene, by kind."""
    names = {"vectors": f"{name}.{fmt}"}
    if probabilities:
        names["probabilities"] = f"{name}.probabilities.tif"
    if mask:
        names["mask"] = f"{name}.mask.tif"
    return names


def batch_params(
    config: PredictConfig, *, fmt: VectorFormat, probabilities: bool, mask: bool
) -> dict[str, Any]:
    """The parameters that shape a scene's outputs (a change redoes the scene).

    Device, batch size, reader threads and ``overwrite`` are left out: they change how fast, not
    what (up to floating-point rounding). ``tta`` is recorded only when on, so that manifests
    written before it existed still match runs without it; turning it on or off redoes a scene.
    ``resample``, ``regularize``, ``split_m`` and ``split_seeds`` likewise, only when not their defaults.
    ``precision`` is recorded when it is ``int8``, which runs another file (the model's int8
    copy) and changes about 0.3 % of the pixels; float32 and bf16 differ only by rounding.
    """
    params: dict[str, Any] = {
        "format": fmt,
        "probabilities": probabilities,
        "mask": mask,
        "tile_size": config.tile_size,
        "overlap": config.overlap,
        "threshold": config.threshold,
        "bands": list(config.bands) if config.bands else None,
        "min_area_m2": config.min_area_m2,
        "simplify": config.simplify,
        "to_crs": config.to_crs,
    }
    if probabilities:
        params["prob_dtype"] = config.prob_dtype
    if config.tta:
        params["tta"] = True
    if config.precision == "int8":
        params["precision"] = "int8"
    if config.resample != "auto":
        params["resample"] = config.resample
    if config.regularize is not None:
        params["regularize"] = config.regularize
    if config.split_m is not None:
        params["split_m"] = config.split_m
    if config.split_seeds is not None:
        params["split_seeds"] = config.split_seeds
    # Round-trip through JSON so that values compare equal to those read from the manifest.
    normal: dict[str, Any] = json.loads(json.dumps(params))
    return normal


# --------------------------------------------------------------------------------------------
# The manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, SceneRecord]:
    """The last record per input of a manifest (an empty dict when it does not exist).

    Lines that are not records (e.g. one cut off by a kill) are skipped with a warning.
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        with open(p, encoding="utf-8") as f:
            return _parse_manifest(f, p)
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"cannot read {p} ({exc}); move it away to start afresh") from exc


def _parse_manifest(
    lines: Iterable[str], path: Path, *, done: dict[str, SceneRecord] | None = None
) -> dict[str, SceneRecord]:
    """The last record per input; ``done`` (if given) gets the last ``done`` record per input."""
    records: dict[str, SceneRecord] = {}
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        rec = SceneRecord.from_json(line)
        if rec is None:
            bad += 1
            continue
        records.pop(rec.input, None)  # keep the order of the latest records
        records[rec.input] = rec
        if done is not None and rec.status == "done":
            done.pop(rec.input, None)
            done[rec.input] = rec
    if bad:
        logger.warning("%s: ignored %d unreadable line(s)", path, bad)
    return records


class _Manifest:
    """The manifest, locked for the whole run; every append is flushed and fsync'd.

    The exclusive lock also stops a second batch from writing into the same directory (it would
    delete the first one's temporaries).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existed = path.exists()
        self.appended = 0
        self.started = False  # set once scenes run: their outputs may appear even if none finishes
        try:
            self._file: IO[str] = open(path, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {exc.strerror or exc}; choose a writable --out-dir"
            ) from exc
        try:
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputError(
                f"another geounet batch is writing to {path.parent} ({path.name} is locked); "
                f"wait for it to finish or choose another --out-dir"
            ) from None
        except OSError as exc:  # e.g. a network file system without locks
            logger.warning("cannot lock %s (%s); do not run two batches into one folder", path, exc)
        try:
            self._file.seek(0)
            text = self._file.read()
        except (OSError, UnicodeDecodeError) as exc:
            self._file.close()
            raise OutputError(f"cannot read {path} ({exc}); move it away to start afresh") from exc
        #: The last done record per input (the results catalog lists a scene done before
        #: whose item broke since).
        self.done: dict[str, SceneRecord] = {}
        self.records = _parse_manifest(text.splitlines(), path, done=self.done)
        if text and not text.endswith("\n"):  # a line cut off by a kill: end it first
            self._write("\n")

    def append(self, record: SceneRecord) -> None:
        """Add one record."""
        self._write(record.to_json() + "\n")
        self.appended += 1
        self.records.pop(record.input, None)
        self.records[record.input] = record
        if record.status == "done":
            self.done.pop(record.input, None)
            self.done[record.input] = record

    def _write(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Release the lock; a manifest this run created and never wrote to is removed.

        (So that a batch stopped by an error before any scene ran, e.g. refused outputs, leaves
        the folder as it found it; once scenes ran, the manifest marks the folder as the batch's.)
        """
        if not self.existed and not self.appended and not self.started:
            self.path.unlink(missing_ok=True)
        self._file.close()


# --------------------------------------------------------------------------------------------
# Running one scene (in this process or on a worker)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def process_scene(
    task: SceneTask,
    predictor: Predictor | Callable[[], Predictor],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SceneRecord:
    """Predict one scene into its output directory; never raises for a bad scene.

    Args:
        task: The scene and its outputs.
        predictor: A loaded predictor, or a function returning one (called here, so that a
            model that fails to load on a worker is recorded as a failed scene).
        progress: ``progress(done, total)`` over the scene's tiles.

    Returns:
        A ``done`` record, or a ``failed`` one with a one-line error (stale outputs of the scene
        are then removed, so the directory only holds outputs of done scenes). The error of a
        scene from a STAC item names the item and the asset.
    """
    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    out = Path(task.out_dir)
    paths = {kind: out / name for kind, name in task.outputs.items()}
    device: str | None = None
    try:
        pred = predictor if isinstance(predictor, Predictor) else predictor()
        device = str(pred.device)
        # The batch owns its outputs: a redone scene replaces the previous ones.
        config = dataclasses.replace(task.config, overwrite=True)
        result = pred.run(  # remote inputs get their GDAL options in Predictor.run
            task.raster,
            paths["vectors"],
            probabilities=paths.get("probabilities"),
            mask=paths.get("mask"),
            config=config,
            progress=progress,
        )
    except GeounetError as exc:
        error = _one_line(exc)
    except Exception as exc:  # noqa: BLE001 (the batch goes on; the traceback goes to the debug log)
        logger.debug("scene %s failed:\n%s", task.input, traceback.format_exc())
        error = f"internal error: {type(exc).__name__}: {_one_line(exc)}"
    else:
        return _record(
            task,
            "done",
            worker=worker,
            features=result.features,
            tiles=result.tiles,
            seconds=round(time.perf_counter() - t0, 3),
            timings={k: round(v, 3) for k, v in result.timings.items()},
            device=device,
        )
    if task.asset_key is not None:  # the raster's name alone does not say which asset it was
        error = f"item {task.item_id}, asset {task.asset_key!r}: {error}"
    for path in paths.values():
        for stale in (path, *_sidecars(path)):
            try:
                stale.unlink(missing_ok=True)
            except OSError:
                pass
    return _record(
        task,
        "failed",
        worker=worker,
        error=error,
        seconds=round(time.perf_counter() - t0, 3),
        device=device,
    )


def _sidecars(path: Path) -> tuple[Path, ...]:
    """Files that belong to an output: its QGIS style (``X.qml``) and GDAL metadata (``X.aux.xml``)."""
    return (path.with_suffix(".qml"), path.with_name(path.name + ".aux.xml"))


def _record(task: SceneTask, status: Status, **fields: Any) -> SceneRecord:
    """A manifest record of a task, finished now."""
    return SceneRecord(
        input=task.input,
        name=task.name,
        status=status,
        item_id=task.item_id,
        asset_key=task.asset_key,
        asset_href=task.asset_href,
        outputs=dict(task.outputs),
        model=task.model,
        model_hash=task.model_hash,
        params=task.params,
        input_size=task.input_size,
        input_mtime_ns=task.input_mtime_ns,
        finished=_now(),
        **fields,
    )


# One loaded model per worker process, kept between tasks: {(path, hash, device): predictor}.
_PREDICTORS: dict[tuple[str, str, str, str, str], Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def worker_predictor(
    model: str,
    model_hash: str,
    device: str,
    precision: Precision = "auto",
    backend: Backend = "auto",
) -> Predictor:
    """The predictor of this worker process for a model, loaded on first use and then kept.

    Only one model is kept: asking for another one releases the previous (and its GPU memory).

    Raises:
        CheckpointError: The model file does not load, or is not the one the batch started with.
    """
    key = (model, model_hash, device, precision, backend)
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            from geounet.errors import CheckpointError

            if file_hash(model) != model_hash:
                raise CheckpointError(
                    f"{model} changed since the batch started (or differs on this worker); "
                    f"re-run the batch"
                )
            _PREDICTORS.clear()
            predictor = Predictor(
                model, device=_worker_device(device), precision=precision, backend=backend
            )
            _PREDICTORS[key] = predictor
        return predictor


def _worker_device(device: str) -> str:
    """Spread numbered Dask workers over the GPUs they can see (one per worker)."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    # LocalCluster numbers its workers 0..N-1; other clusters (dask-cuda) pin a GPU per worker
    # through CUDA_VISIBLE_DEVICES, where the default device is the right one.
    return f"cuda:{name % count}" if isinstance(name, int) else device


def run_task(task: SceneTask) -> SceneRecord:
    """The Dask task: predict one scene with this worker's cached predictor."""
    return process_scene(
        task,
        lambda: worker_predictor(
            task.model,
            task.model_hash,
            task.config.device,
            task.config.precision,
            task.config.backend,
        ),
    )


# --------------------------------------------------------------------------------------------
# The batch


def run_batch(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    config: PredictConfig | None = None,
    fmt: VectorFormat = "gpkg",
    probabilities: bool = False,
    mask: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    progress: BatchProgressCallback | None = None,
    asset: str | Sequence[str] | None = None,
    stac_out: str | os.PathLike[str] | None = None,
) -> BatchSummary:
    """Predict every scene of an archive into ``out_dir``, skipping those already done.

    Args:
        inputs: Paths, globs, ``@list`` files and URLs (see `expand_rasters`),
            and STAC JSON files or http(s) URLs (``.json``: an Item, ItemCollection, Catalog or
            Collection, one scene per item, see `read_stac_scenes`).
        out_dir: Output directory (created if missing). Per scene: ``NAME.<fmt>`` (polygons),
            ``NAME.probabilities.tif`` and ``NAME.mask.tif`` if asked for, where ``NAME`` is the
            scene's file name without suffix (plus ``-<hash of the input>`` when two inputs
            share it); and ``manifest.jsonl``.
        model: Model file; Dask workers must be able to read it at the same path.
        config: Prediction options; ``overwrite`` allows replacing files that already sit in a
            new output directory (one without a manifest).
        fmt: Vector format.
        probabilities: Also write probability GeoTIFFs.
        mask: Also write class-mask GeoTIFFs.
        workers: Run this many local Dask worker processes (0: one scene after another in this
            process).
        scheduler: Address (``tcp://host:8786``) or scheduler file of a running Dask cluster to
            submit the scenes to.
        progress: Called with a `BatchProgress` at the start, per tile (single-process
            runs) and per finished scene.
        asset: The asset key of STAC items to segment, or several in order of preference
            (each item gives the first it has; an item with none of them is recorded as
            failed). Default: the asset `choose_asset` picks, which prefers
            one with as many bands as the model (or as ``config.bands`` needs).
        stac_out: Also write a static STAC catalog of the done scenes into this folder (see
            `write_results_catalog`), after the scenes ran: every scene of
            this batch whose last ``done`` record (with this model) still has its outputs, also
            one that failed in this run without touching them (a STAC item gone broken).

    Returns:
        The done, skipped and failed scenes, the manifest path and the catalog path. Scene
        failures do not raise; nor do broken STAC items (recorded as failed scenes).

    Raises:
        GeounetError: Inputs that match nothing, an unreadable STAC input, bad options, or no
            Dask (pystac) when asked for.
        CheckpointError: A bad model file (before any scene runs).
        TilingError: A tile size or overlap that cannot work with the model.
        OutputError: An unwritable output directory, or another batch writing into it.
        OutputExistsError: Outputs already in a new output directory (without ``overwrite``).
    """
    cfg = config or PredictConfig()
    if fmt not in get_args(VectorFormat):
        raise OutputError(
            f"unknown vector format {fmt!r}; use one of {', '.join(get_args(VectorFormat))}"
        )
    if workers < 0:
        raise GeounetError(f"workers must be 0 or more, got {workers}")
    if workers and scheduler:
        raise GeounetError("give either workers (a local cluster) or a scheduler address, not both")
    if fmt == "parquet":
        _require_pyarrow()
    out_path = Path(out_dir).expanduser().resolve()
    model_path = Path(model).expanduser().resolve()
    meta = read_meta(model_path)  # its band count steers the choice of STAC assets
    expanded, sources = _expand_inputs(
        inputs, asset=asset, bands=meta.bands, band_indexes=cfg.bands
    )
    scenes = _drop_own_outputs(expanded, out_path)
    stac_dest = check_catalog_dest(stac_out, outputs=out_path) if stac_out is not None else None

    tile_size = cfg.tile_size or meta.tile_size
    overlap = meta.overlap if cfg.overlap is None else cfg.overlap
    check_tile_size(tile_size, overlap, multiple=2**meta.depth)
    model_hash = file_hash(model_path)
    # Defaults resolved, so that spelling out the model's tile size does not redo every scene.
    resolved = dataclasses.replace(cfg, tile_size=tile_size, overlap=overlap)
    params = batch_params(resolved, fmt=fmt, probabilities=probabilities, mask=mask)

    out = _make_out_dir(out_path)
    manifest = _Manifest(out / MANIFEST_NAME)
    try:
        stems = {scene: item_stem(source.item_id) for scene, source in sources.items()}
        previous = _previous_records(manifest.records, sources)
        names = assign_names(scenes, previous, stems=stems)
        tasks = [
            _make_task(
                scene,
                names[scene],
                out,
                model_path,
                model_hash,
                cfg,
                params,
                fmt,
                probabilities,
                mask,
                sources.get(scene),
            )
            for scene in scenes
        ]
        skipped: list[SceneRecord] = []
        todo: list[SceneTask] = []
        broken: list[tuple[SceneTask, str]] = []  # STAC items without a usable asset
        for task in tasks:
            source = sources.get(task.input)
            if source is not None and source.error is not None:
                broken.append((task, source.error))
                continue
            rec = previous.get(task.input)
            if rec is not None and _is_done(rec, task, out):
                skipped.append(rec)
            else:
                todo.append(task)
        if not manifest.existed and not cfg.overwrite:
            _refuse_foreign_outputs(todo, out)
        _remove_temporaries(out, {name for t in tasks for name in t.outputs.values()})
        total = len(tasks)
        if progress is not None:
            progress(BatchProgress(scenes_done=len(skipped), scenes_total=total))
        logger.info("%d scenes: %d already done, %d to do", total, len(skipped), len(todo))
        done: list[SceneRecord] = []
        failed: list[SceneRecord] = []

        def finish(record: SceneRecord) -> None:
            manifest.append(record)
            (done if record.status == "done" else failed).append(record)
            if record.status == "failed":
                logger.warning("%s failed: %s", record.input, record.error)
            else:
                logger.info(
                    "%s: %s features in %.1f s", record.input, record.features, record.seconds
                )
            if progress is not None:
                progress(
                    BatchProgress(
                        scenes_done=len(skipped) + len(done) + len(failed),
                        scenes_total=total,
                        scene=record.input,
                        record=record,
                    )
                )

        for task, error in broken:
            finish(_record(task, "failed", error=error))
        if todo:
            # Model errors (bad weights, no CUDA) stop the batch here, not once per scene.
            if workers or scheduler:
                if is_onnx(model_path):
                    load_onnx(model_path)
                else:
                    load_model(model_path)

                def started() -> None:
                    manifest.started = True

                _run_dask(todo, finish, started, workers=workers, scheduler=scheduler)
            else:
                predictor = Predictor(
                    model_path,
                    device=cfg.device,
                    compile=cfg.compile,
                    precision=cfg.precision,
                    backend=cfg.backend,
                )
                manifest.started = True
                _run_local(todo, finish, predictor, len(skipped), total, progress)
        catalog = None
        if stac_dest is not None:
            finished = _previous_records(manifest.done, sources)
            catalog = _write_catalog(
                stac_dest, tasks, finished, sources, out, model_path, model_hash
            )
    finally:
        manifest.close()
    return BatchSummary(
        done=done, skipped=skipped, failed=failed, manifest=manifest.path, catalog=catalog
    )


def _expand_inputs(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    asset: str | Sequence[str] | None,
    bands: int | None = None,
    band_indexes: Sequence[int] | None = None,
) -> tuple[list[str], dict[str, StacScene]]:
    """The scenes of the inputs, and the STAC item of each scene that came from one (by key).

    A raster reached twice (a path also listed as a STAC asset, one asset in two items), or an
    item reached twice, is kept once, where it first appears.
    """
    scenes: list[str] = []
    sources: dict[str, StacScene] = {}
    seen: set[str] = set()
    stac_given = False
    for entry in expand_rasters(inputs):
        if not is_stac_source(entry):
            if entry not in seen:
                seen.add(entry)
                scenes.append(entry)
            continue
        stac_given = True
        for item in read_stac_scenes(entry, asset=asset, bands=bands, band_indexes=band_indexes):
            twice = item.input if item.input in seen else item.href if item.href in seen else None
            if twice is not None:
                logger.warning(
                    "%s (item %s) is already an input; segmenting it once", twice, item.item_id
                )
                continue
            seen.update(k for k in (item.input, item.href) if k is not None)
            sources[item.input] = item
            scenes.append(item.input)
    if asset is not None and not stac_given:
        keys = asset if isinstance(asset, str) else ",".join(asset)
        raise GeounetError(
            f"--asset {keys} picks an asset of STAC items, but no input is a STAC JSON (.json "
            f"catalog, collection or item); leave it out"
        )
    return scenes, sources


def _previous_records(
    records: Mapping[str, SceneRecord], sources: Mapping[str, StacScene]
) -> dict[str, SceneRecord]:
    """Manifest records by input, with those of STAC items moved to the items' keys.

    Manifests written before scenes from STAC items were keyed on the item have a done item
    under its asset's href; such a record (same item id and href) counts as the item's, so an
    upgrade neither redoes nor renames it.
    """
    found = dict(records)
    old_keys = {
        (rec.item_id, rec.input): key
        for key, rec in records.items()
        if rec.item_id is not None and rec.input == rec.asset_href
    }
    for key, source in sources.items():
        old = old_keys.get((source.item_id, source.href or ""))
        if old is None or old == key:
            continue
        rec = found.pop(old)
        found.setdefault(key, rec)
    return found


def _write_catalog(
    dest: Path,
    tasks: Sequence[SceneTask],
    finished: Mapping[str, SceneRecord],
    sources: Mapping[str, StacScene],
    out: Path,
    model: Path,
    model_hash: str,
) -> Path:
    """The results catalog of every result in ``out`` made with this model: each scene's last
    ``done`` record (``finished``, by input) whose outputs are all still there, this batch's
    scenes first in input order, then those of earlier runs over other inputs in manifest order.

    A scene that failed after it was done keeps its place while its outputs stay: a STAC item
    that broke (its asset gone) is recorded as failed without touching them, while a scene that
    failed to segment has its outputs removed.
    """
    items: list[ResultItem] = []
    inputs = [task.input for task in tasks]
    given = set(inputs)
    inputs += [key for key in finished if key not in given]
    for key in inputs:
        rec = finished.get(key)
        if rec is None or rec.model_hash != model_hash:
            continue
        if not all((out / name).is_file() for name in rec.outputs.values()):
            continue
        source = sources.get(key)
        if source is None and rec.item_id is not None:  # an item of an earlier run's input
            source = _record_source(rec)
        if source is not None and (source.error is not None or source.href != rec.asset_href):
            # Describe the asset the outputs were made from, not what the item holds now.
            source = dataclasses.replace(
                source, asset_key=rec.asset_key or source.asset_key, href=rec.asset_href, error=None
            )
        items.append(
            ResultItem(
                id=rec.name,
                scene=rec.asset_href or rec.input,
                assets={kind: out / name for kind, name in rec.outputs.items()},
                created=rec.finished,
                features=rec.features,
                params=rec.params,
                source=source,
            )
        )
    catalog = write_results_catalog(
        dest, items, model=model, model_hash=model_hash, meta=read_meta(model)
    )
    logger.info("STAC catalog of %d scenes: %s", len(items), catalog)
    return catalog


def _record_source(rec: SceneRecord) -> StacScene:
    """The STAC item a done record came from, as far as the manifest tells (no datetime)."""
    item_id = rec.item_id or rec.name
    suffix = f"#{item_id}"
    if rec.input.endswith(suffix):  # an item of an ItemCollection: no JSON of its own
        source, item_href = rec.input[: -len(suffix)], None
    else:
        source, item_href = rec.input, rec.input
    return StacScene(
        item_id=item_id,
        source=source,
        item_href=item_href,
        asset_key=rec.asset_key,
        href=rec.asset_href,
    )


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise OutputError(
            "--format parquet needs pyarrow: pip install 'geounet[parquet]', or use gpkg"
        ) from None


def _drop_own_outputs(scenes: list[str], out: Path) -> list[str]:
    """Leave out masks and probability rasters of this output folder (``archive/**/*.tif`` with
    ``--out-dir archive/out`` would otherwise feed them back in on the next run)."""
    kept = []
    for scene in scenes:
        own = scene.endswith((".mask.tif", ".probabilities.tif")) and not is_remote(scene)
        if own and Path(scene).resolve().parent == out:
            logger.info("leaving out %s: an output of this batch", scene)
            continue
        kept.append(scene)
    if not kept:
        raise GeounetError(
            f"the inputs are all outputs of this batch in {out}; pass the scenes instead"
        )
    return kept


def _make_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output directory {out}: {exc.strerror or exc}; choose a writable --out-dir"
        ) from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {out} is not writable; choose another --out-dir")
    return out.resolve()


def _make_task(
    scene: str,
    name: str,
    out: Path,
    model: Path,
    model_hash: str,
    config: PredictConfig,
    params: dict[str, Any],
    fmt: VectorFormat,
    probabilities: bool,
    mask: bool,
    source: StacScene | None = None,
) -> SceneTask:
    size = mtime = None
    raster = scene if source is None else source.href  # None: a STAC item without a raster
    if raster is not None and not is_remote(raster):
        try:
            st = os.stat(raster)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            pass  # reported by the scene itself ("no such file")
    return SceneTask(
        input=scene,
        name=name,
        out_dir=str(out),
        outputs=output_names(name, fmt=fmt, probabilities=probabilities, mask=mask),
        model=str(model),
        model_hash=model_hash,
        config=config,
        params=params,
        input_size=size,
        input_mtime_ns=mtime,
        item_id=source.item_id if source is not None else None,
        asset_key=source.asset_key if source is not None else None,
        asset_href=source.href if source is not None else None,
    )


def _is_done(rec: SceneRecord, task: SceneTask, out: Path) -> bool:
    return (
        rec.status == "done"
        and rec.item_id == task.item_id
        and rec.asset_href == task.asset_href
        and rec.model_hash == task.model_hash
        and rec.params == task.params
        and rec.outputs == task.outputs
        and rec.input_size == task.input_size
        and rec.input_mtime_ns == task.input_mtime_ns
        and all((out / name).is_file() for name in rec.outputs.values())
    )


def _refuse_foreign_outputs(tasks: Sequence[SceneTask], out: Path) -> None:
    """In a folder no batch wrote to yet, do not replace files someone else put there."""
    for task in tasks:
        for name in task.outputs.values():
            if (out / name).exists():
                raise OutputExistsError(
                    f"{out / name} exists and {out} has no {MANIFEST_NAME}; pass --overwrite to "
                    f"replace such files, or choose an empty --out-dir"
                )


def _remove_temporaries(out: Path, names: set[str]) -> None:
    """Delete temporaries of these outputs left by a killed run (AtomicOutputs' folders)."""
    try:
        entries = list(os.scandir(out))
    except OSError as exc:
        raise OutputError(f"cannot list {out}: {exc.strerror or exc}") from exc
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and m.group("name") in names:
            logger.info("removing %s, left by an interrupted run", entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


def _run_local(
    tasks: Sequence[SceneTask],
    finish: Callable[[SceneRecord], None],
    predictor: Predictor,
    skipped: int,
    total: int,
    progress: BatchProgressCallback | None,
) -> None:
    for i, task in enumerate(tasks):
        tiles: Callable[[int, int], None] | None = None
        if progress is not None:

            def tiles(
                done: int, n: int, scene: str = task.input, finished: int = skipped + i
            ) -> None:
                progress(
                    BatchProgress(finished, total, scene=scene, tiles_done=done, tiles_total=n)
                )

        finish(process_scene(task, predictor, progress=tiles))


def _run_dask(
    tasks: Sequence[SceneTask],
    finish: Callable[[SceneRecord], None],
    started: Callable[[], None],
    *,
    workers: int,
    scheduler: str | None,
) -> None:
    try:
        import distributed
    except ImportError as exc:
        raise GeounetError(
            "--workers and --scheduler need Dask: pip install 'geounet[dask]' "
            "(or 'dask[distributed]'); without them scenes run one after another"
        ) from exc
    dask: Any = distributed  # untyped
    cluster = None
    if scheduler:
        try:
            if Path(scheduler).is_file():
                client = dask.Client(scheduler_file=scheduler, timeout="20s")
            else:
                client = dask.Client(scheduler, timeout="20s")
        except (OSError, ValueError) as exc:
            raise GeounetError(
                f"cannot reach the Dask scheduler {scheduler} ({_one_line(exc) or type(exc).__name__}); "
                f"check the address (e.g. tcp://host:8786) and that `dask scheduler` runs"
            ) from exc
    else:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        cluster = dask.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
            # Dask pins each worker to one BLAS/OpenMP thread; share the cores out instead.
            env={"OMP_NUM_THREADS": str(max(1, cores // workers))},
        )
        try:
            client = dask.Client(cluster)
        except BaseException:
            cluster.close()
            raise
    token = uuid.uuid4().hex[:8]
    pending: dict[Any, SceneTask] = {}
    started()
    try:
        for task in tasks:
            future = client.submit(run_task, task, key=f"geounet-{task.name}-{token}")
            pending[future] = task
        for future in dask.as_completed(list(pending)):
            task = pending.pop(future)
            finish(_future_record(future, task))
    finally:
        if pending:
            client.cancel(list(pending))
        client.close()
        if cluster is not None:
            cluster.close()


def _future_record(future: Any, task: SceneTask) -> SceneRecord:
    """The record a finished Dask future carries, or a failed one if the task itself broke."""
    if future.status == "finished":
        try:
            record = future.result()
        except Exception as exc:  # noqa: BLE001 (e.g. the result could not be deserialized)
            error = f"internal error: {type(exc).__name__}: {_one_line(exc)}"
        else:
            if isinstance(record, SceneRecord):
                return record
            error = f"internal error: the worker returned {type(record).__name__}"
    elif future.status == "error":
        problem = future.exception()
        # KilledWorker: the worker died (out of memory?) every time it ran this scene.
        error = f"worker error: {type(problem).__name__}: {_one_line(problem)}"
    else:
        error = f"the Dask cluster gave up on the scene (status {future.status})"
    return _record(task, "failed", error=error)


__all__ = [
    "MANIFEST_NAME",
    "BatchProgress",
    "BatchSummary",
    "SceneRecord",
    "SceneTask",
    "VectorFormat",
    "assign_names",
    "batch_params",
    "output_names",
    "process_scene",
    "read_manifest",
    "run_batch",
    "run_task",
    "safe_name",
    "scene_stem",
    "worker_predictor",
]
