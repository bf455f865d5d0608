"""The output stage: each finished strip to probability and mask GeoTIFFs, polygons and centerlines.

:class:`StripSinks` turns a strip's logits into probabilities and classes (cutting touching
objects apart along probability valleys), writes the rasters, vectorizes the classes strip by
strip, and finishes every output with its QGIS style.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geounet.errors import GeounetError
from geounet.geodata.cog import StripWriter
from geounet.geodata.raster import Scene, pixel_size_m
from geounet.geodata.style import (
    line_qml,
    mask_qml,
    probability_qml,
    vector_qml,
    write_category_names,
    write_sidecar_qml,
)
from geounet.network.contract import ModelMeta
from geounet.prediction.blend import Strip
from geounet.prediction.config import PolygonOptions, PredictConfig, ProbDtype
from geounet.prediction.stages import StripWorker
from geounet.vectors.centerline import CenterlineOptions, StripCenterliner
from geounet.vectors.separate import split_at_valleys
from geounet.vectors.strips import MASK_NODATA, StripVectorizer, band_rows
from geounet.vectors.writer import (
    WRITE_BATCH,
    VectorWriter,
    import_vector_libraries,
    vector_driver,
)

logger = logging.getLogger(__name__)


#: Cores smaller than this (m²) do not start a basin of their own (see ``split_seeds``).
SEED_MIN_M2 = 4.0


class StripSinks:
    """The output stage: each finished strip to probabilities, class mask and polygons.

    :meth:`handle` turns a strip's logits into probabilities and classes and passes them to
    the probability and mask GeoTIFF writers and to the strip vectorizer (whichever were
    asked for). :meth:`close` finishes them: the COG copies run on the strip thread beside the
    vector file's writing; :meth:`abort` drops them after a failure.

    Args:
        meta: The model's contract (classes, colours, defaults of the polygon options).
        cfg: The run's options.
        scene: The scene (grid, CRS).
        vectors, probabilities, mask: Temporary paths of the outputs asked for, or None.
        timings: ``postprocess``, ``write``, ``vectorize`` and ``imports`` add up here.
        vector_style: Write the vector layer's QGIS style (see :func:`style_clash`).
    """

    def __init__(
        self,
        meta: ModelMeta,
        cfg: PredictConfig,
        scene: Scene,
        *,
        vectors: Path | None,
        probabilities: Path | None,
        mask: Path | None,
        timings: dict[str, float],
        vector_style: bool = True,
        lines: tuple[Path, str | None] | None = None,
    ) -> None:
        self.meta = meta
        self.cfg = cfg
        self.timings = timings
        self.names = meta.mask_classes
        self.counts = np.zeros(256, dtype=np.int64)
        self.features = 0
        self._prob_path, self._mask_path = probabilities, mask
        n_out = meta.class_channels  # a core channel is not written
        self.probabilities: StripWriter | None = None
        self.mask: StripWriter | None = None
        self.vectorizer: StripVectorizer | None = None
        self.vector_writer: VectorWriter | None = None
        if probabilities is not None:
            self.probabilities = StripWriter(
                probabilities,
                scene,
                count=n_out,
                dtype=cfg.prob_dtype,
                nodata=float("nan") if cfg.prob_dtype == "float32" else 255,
                descriptions=[f"probability of {c}" for c in meta.classes],
            )
            if cfg.prob_dtype == "uint8":
                self.probabilities.dataset.scales = [1 / 254] * n_out
        if mask is not None:
            self.mask = StripWriter(
                mask,
                scene,
                count=1,
                dtype="uint8",
                nodata=MASK_NODATA,
                descriptions=["class"],
                overview_resampling="nearest",
            )
            self.mask.dataset.write_colormap(1, _colormap(meta))
            self.mask.dataset.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(self.names)})
        # Line classes go to the centerliner only (see line_output for where their file is).
        self._line_ids = np.asarray(meta.line_class_ids, dtype=np.uint8)
        polygon_options = PolygonOptions.resolve(cfg, meta)
        # Touching objects cut along probability valleys (binary models; mask and polygons).
        self.seeds = polygon_options.split_seeds if meta.binary else 0.0
        if cfg.split_seeds and not meta.binary:
            logger.warning(
                "--split-seeds applies to binary models only; this model has %d classes",
                len(meta.classes),
            )
        self.seed_px = max(4, round(SEED_MIN_M2 / (pixel_size_m(scene) or 1.0) ** 2))
        self.centerliner: StripCenterliner | None = None
        self.line_writer: VectorWriter | None = None
        self.line_features = 0
        if vectors is not None and meta.polygon_class_ids:
            self.vectorizer = polygon_options.vectorizer(scene, self.names)
            style = vector_qml(self.names[1:], _class_colours(meta)) if vector_style else None
            self.vector_writer = VectorWriter(vectors, style=style)
        if lines is not None:
            options = CenterlineOptions(
                line_width_m=meta.line_width_m or 4.0, simplify=cfg.simplify or 1.0
            )
            self.centerliner = StripCenterliner(
                scene.transform, scene.crs, self.names, meta.line_class_ids, options
            )
            colours = {value: colour for value, _, colour in _mask_entries(meta)}
            style = (
                line_qml(
                    [self.names[i] for i in meta.line_class_ids],
                    [colours[i] for i in meta.line_class_ids],
                    meta.line_width_m,
                )
                if vector_style
                else None
            )
            self.line_writer = VectorWriter(lines[0], style=style, layer=lines[1], lines=True)

    @property
    def writers(self) -> list[StripWriter]:
        """The raster writers in use."""
        return [w for w in (self.probabilities, self.mask) if w is not None]

    def handle(self, strip: Strip) -> None:
        """Post-process one strip and hand it to every output."""
        t0 = time.perf_counter()
        cls, score, probs = _postprocess(strip, self.meta, self.cfg.threshold)
        if self.seeds > 0:
            # A model with a core channel grows its objects from the cores it predicts; others
            # from the cores of their own probability.
            core = probs[self.meta.class_channels] if self.meta.core_m > 0 else None
            cls = split_at_valleys(cls, score, self.seeds, self.seed_px, core=core)
        # Band by band: bincount widens uint8 to int64, 8 bytes a pixel of a wide strip at once.
        step = band_rows(cls.shape[1])
        for r0 in range(0, cls.shape[0], step):
            self.counts += np.bincount(cls[r0 : r0 + step].ravel(), minlength=256)[:256]
        t1 = time.perf_counter()
        if self.probabilities is not None:
            self.probabilities.write(
                strip.row_off,
                _prob_array(probs[: self.meta.class_channels], strip.valid, self.cfg.prob_dtype),
            )
        if self.mask is not None:
            self.mask.write(strip.row_off, cls[None])
        t2 = time.perf_counter()
        self.timings["postprocess"] += t1 - t0
        self.timings["write"] += t2 - t1
        if self.centerliner is not None:
            t0 = time.perf_counter()
            self.centerliner.add(strip.row_off, cls, score)
            self.timings["vectorize"] += time.perf_counter() - t0
            if self.centerliner.ready >= WRITE_BATCH:
                self._write_lines()
        if self.vectorizer is not None:
            if len(self._line_ids):
                cls = np.where(np.isin(cls, self._line_ids), 0, cls).astype(np.uint8)
            # Band by band, writing finished polygons between bands: what waits for the file
            # stays near one batch, even when a wide strip holds hundreds of thousands.
            step = band_rows(strip.logits.shape[-1])
            for r0 in range(0, strip.height, step):
                t0 = time.perf_counter()
                self.vectorizer.add(strip.row_off + r0, cls[r0 : r0 + step], score[r0 : r0 + step])
                self.timings["vectorize"] += time.perf_counter() - t0
                if self.vectorizer.ready >= WRITE_BATCH:
                    self._write_polygons()

    def _write_polygons(self, *, final: bool = False) -> None:
        """Finished polygons to the vector file, in batches of :data:`WRITE_BATCH` (all of them
        with ``final``, after the last strip)."""
        assert self.vectorizer is not None and self.vector_writer is not None
        self._drain(self.vectorizer, self.vector_writer, final=final)

    def _write_lines(self, *, final: bool = False) -> None:
        """Finished centerlines to their file, in batches (all of them with ``final``)."""
        assert self.centerliner is not None and self.line_writer is not None
        self._drain(self.centerliner, self.line_writer, final=final)

    def _drain(
        self, source: StripVectorizer | StripCenterliner, writer: VectorWriter, *, final: bool
    ) -> None:
        """What ``source`` has finished to ``writer``, a batch at a time (``--to-crs`` applied);
        with ``final``, everything, and an empty file with its columns if nothing came."""
        self.timings["imports"] += import_vector_libraries()
        while True:
            t0 = time.perf_counter()
            frame = source.take(WRITE_BATCH, final=final)
            t1 = time.perf_counter()
            self.timings["vectorize"] += t1 - t0
            if frame is None:
                if final and writer.features == 0:
                    writer.write(source.finish())
                return
            if self.cfg.to_crs:
                frame = _reproject(frame, self.cfg.to_crs)
            writer.write(frame)
            self.timings["write"] += time.perf_counter() - t1

    def close(self, worker: StripWorker) -> None:
        """Finish every output (after the last strip): COG copies on ``worker``'s thread beside
        the vector file, then the QGIS styles."""
        timings = self.timings
        closing = [
            worker.call(functools.partial(_timed, w.close, timings, "write")) for w in self.writers
        ]
        if self.vector_writer is not None:
            self._write_polygons(final=True)
            t0 = time.perf_counter()
            self.features = self.vector_writer.close()
            timings["write"] += time.perf_counter() - t0
        if self.line_writer is not None:
            self._write_lines(final=True)
            t0 = time.perf_counter()
            self.line_features = self.line_writer.close()
            self.features += self.line_features
            timings["write"] += time.perf_counter() - t0
        for fut in closing:
            fut.result()
        if self._prob_path is not None:
            write_sidecar_qml(
                self._prob_path, probability_qml(254 if self.cfg.prob_dtype == "uint8" else 1.0)
            )
        if self._mask_path is not None:
            write_sidecar_qml(self._mask_path, mask_qml(_mask_entries(self.meta)))
            write_category_names(self._mask_path, self.names)

    def abort(self) -> None:
        """Drop the writers after a failure (the temporary files go with AtomicOutputs)."""
        for w in self.writers:
            w.abort()
        if self.vector_writer is not None:
            self.vector_writer.abort()
        if self.line_writer is not None:
            self.line_writer.abort()

    def class_counts(self) -> dict[str, int]:
        """Pixels of each foreground class so far, by name."""
        return {
            name: int(self.counts[i])
            for i, name in enumerate(self.names)
            if i > 0 and self.counts[i]
        }


def style_clash(
    out: str | os.PathLike[str] | None, *rasters: str | os.PathLike[str] | None
) -> bool:
    """Whether a non-GeoPackage vector output's style file (its ``.qml`` beside it) is the name
    that a raster output of the same stem needs for its own style."""
    if out is None or vector_driver(out) == "GPKG":
        return False
    return Path(out).with_suffix(".qml") in {Path(p).with_suffix(".qml") for p in rasters if p}


def _timed(fn: Callable[[], None], timings: dict[str, float], key: str) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        timings[key] += time.perf_counter() - t0


def _reproject(frame: Any, to_crs: str) -> Any:
    try:
        return frame.to_crs(to_crs)
    except Exception as exc:  # pyproj.CRSError and friends
        raise GeounetError(f"cannot reproject to {to_crs!r}: {str(exc).splitlines()[0]}") from exc


def _postprocess(
    strip: Strip, meta: ModelMeta, threshold: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Logits -> (class mask with nodata 255, score, probabilities).

    The score is the probability of each pixel's class; for a binary model, the foreground
    probability everywhere (the probabilities' own band: only foreground pixels are scored).

    Works in place on the strip's logits (they become the probabilities), a few strip-sized
    arrays in all.
    """
    logits = strip.logits
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative logits: p = 0
        if meta.binary:
            probs = np.negative(logits, out=logits)
            np.exp(probs, out=probs)
            probs += 1.0
            np.reciprocal(probs, out=probs)
            fg = probs[0] >= threshold
            # Only foreground is vectorized, so the foreground probability is the score that
            # matters (no strip-sized copy with 1 - p in the background).
            score = probs[0]
            cls = fg.view(np.uint8)
        else:
            probs = np.subtract(logits, logits.max(axis=0, keepdims=True), out=logits)
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=0, keepdims=True)
            cls = probs.argmax(axis=0).astype(np.uint8)
            score = probs.max(axis=0)
    if not strip.valid.all():
        cls[~strip.valid] = MASK_NODATA
    return cls, score.astype(np.float32, copy=False), probs.astype(np.float32, copy=False)


def _prob_array(
    probs: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_], dtype: ProbDtype
) -> npt.NDArray[Any]:
    """Probabilities as written: uint8 0..254 (nodata 255), or float32 with NaN nodata (in place)."""
    if dtype == "uint8":
        out = np.rint(probs * 254).astype(np.uint8)
        out[:, ~valid] = 255
        return out
    if not valid.all():
        probs[:, ~valid] = np.nan
    return probs


def _mask_entries(meta: ModelMeta) -> list[tuple[int, str, str]]:
    """(mask value, class name, #colour) of every foreground class."""
    colours = meta.colours or []
    offset = 1 if meta.binary else 0
    out = []
    for i, name in enumerate(meta.classes):
        value = i + offset
        if value:
            out.append((value, name, colours[i] if i < len(colours) else "#ff0000"))
    return out


def _class_colours(meta: ModelMeta) -> list[str]:
    """Colours of the foreground classes, in mask-value order."""
    return [colour for _, _, colour in _mask_entries(meta)]


def _colormap(meta: ModelMeta) -> dict[int, tuple[int, int, int, int]]:
    cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for value, _, hexc in _mask_entries(meta):
        r, g, b = (int(hexc[k : k + 2], 16) for k in (1, 3, 5))
        cmap[value] = (r, g, b, 255)
    return cmap
