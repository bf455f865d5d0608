"""Training windows: images plus rasterized labels, spatially split, sampled and augmented per epoch.

**Split.** Validation areas never overlap training windows in map coordinates (two images of the
same place, or adjacent chips of one mosaic, cannot leak), and a gap keeps training windows
further away where the data allows. :class:`SpatialSplit` tries, in order, and keeps the first
split whose training windows can still reach at least half of the training images' positions:

1. whole images (when there are at least three, a seeded ``val_fraction`` of them), gap one tile;
2. square blocks of ``4 * tile`` pixels (halved down to one tile while there are fewer than five),
   a seeded share taken as a few contiguous runs (bands), gap one tile;
3. the same blocks with a quarter-tile gap;
4. an edge band of ``val_fraction`` of each image (across its longer side), quarter-tile gap;
5. the edge band without a gap.

It refuses only when no split leaves a training window (an image smaller than a tile). With
``val_images``, those whole images are the validation set. :meth:`SpatialSplit.summary` says
what was chosen.

**Plan.** Every epoch has a plan: windows drawn with a generator seeded by ``(seed, epoch)``, a
share ``positive_fraction`` centred (with jitter) on labelled features, each with its dihedral
transform, ground pixel size and photometric seed. Since the plan depends only on the seed and
the epoch, an interrupted run resumes with exactly the windows it would have seen.

**Scale.** Windows are resampled to the model's ground pixel size (``gsd``): an image at 0.5 m
feeding a 0.3 m model is read as a 154 px window and upsampled to 256 px (bilinear; labels
nearest), and scale jitter draws each window's pixel size log-uniformly within
``[gsd / a, gsd * a]``.

**Augmentation** (:class:`Augment`), applied in stretched units (see :mod:`geounet.geodata.normalize`):
the 8 flips/rotations of the square, scale jitter, colour (brightness, contrast, gamma,
saturation and per-band shifts), and blur or noise on a share of windows. Each moves the image
and the labels together (geometric ones) or the image alone (photometric ones).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from scipy import ndimage
from torch.utils.data import Dataset

from geounet.errors import GeounetError, LabelsOutsideRasterError
from geounet.geodata import normalize
from geounet.geodata.raster import Scene, gdal_path, read_window
from geounet.labels.rasterize import RasterLabels
from geounet.labels.sets import LabelSet
from geounet.labels.vector import Labels

logger = logging.getLogger(__name__)

#: Target value for pixels excluded from the loss (nodata, padding).
IGNORE_INDEX = 255
#: Target value of background pixels that lie between two label objects closer than the
#: separation distance (:func:`mark_contacts`): background that the loss weighs more, so that
#: touching buildings come out apart. Everything but the loss reads it as background.
CONTACT_INDEX = 254
#: Target value of foreground pixels outside their object's core (:func:`mark_borders`):
#: foreground for the mask, background for the core channel of a model that has one.
BORDER_INDEX = 253


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned rectangle in map coordinates (left, bottom, right, top)."""

    left: float
    bottom: float
    right: float
    top: float

    def expand(self, d: float) -> Rect:
        """Grown by ``d`` on every side."""
        return Rect(self.left - d, self.bottom - d, self.right + d, self.top + d)

    def intersects(self, other: Rect) -> bool:
        """Whether the interiors overlap."""
        return (
            self.left < other.right
            and other.left < self.right
            and self.bottom < other.top
            and other.bottom < self.top
        )


@dataclass
class ImageEntry:
    """One training image with its labels in its own CRS.

    Attributes:
        scale: Source pixels per model pixel (``model gsd / image gsd``; 1 = read as is).
        contact_px: Separation distance in this image's pixels (:func:`mark_contacts`); 0 = off.
        core_px: How far each object's core lies inside its outline, in this image's pixels
            (:func:`mark_borders`); 0 = no core target.
        lo, hi: Per-band stretch of this image (raw values mapped to 0 and 1); the defaults
            leave values as they are.
    """

    scene: Scene
    bands: tuple[int, ...]
    labels: RasterLabels
    val_blocks: list[Window]
    all_val: bool = False
    all_train: bool = False
    scale: float = 1.0
    lo: npt.NDArray[np.float64] | None = None
    hi: npt.NDArray[np.float64] | None = None
    contact_px: int = 0
    core_px: int = 0

    def window_rect(self, row: int, col: int, size: int, width: int | None = None) -> Rect:
        """Map rectangle of a window of ``size`` rows and ``width`` (default ``size``) columns."""
        t = self.scene.transform
        x0, y0 = t * (col, row)
        x1, y1 = t * (col + (size if width is None else width), row + size)
        return Rect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def source_size(self, tile_size: int) -> int:
        """Source pixels read for one window of ``tile_size`` model pixels (no jitter)."""
        return max(1, round(tile_size * self.scale))


@dataclass(frozen=True, slots=True)
class Sample:
    """One planned window.

    Attributes:
        image: Index of the image.
        row, col: Top-left source pixel.
        rot: Quarter turns (0-3).
        flip: Mirror left-right after rotating.
        size: Source window size in pixels (0: the tile size), resampled to the tile size.
        aug: Seed of the photometric augmentation (0: none).
    """

    image: int
    row: int
    col: int
    rot: int = 0
    flip: bool = False
    size: int = 0
    aug: int = 0


@dataclass(frozen=True)
class Augment:
    """Training augmentations; each can be switched off.

    Attributes:
        flips: The 8 rotations/flips of the square.
        scale: Ground pixel size jitter factor ``a``: each window's pixel size is drawn
            log-uniformly in ``[gsd / a, gsd * a]`` (1 = off).
        colour: Brightness, contrast, gamma, saturation and per-band shifts.
        noise: Gaussian blur on a fifth of windows and Gaussian noise on another fifth.
    """

    flips: bool = True
    scale: float = 1.25
    colour: bool = True
    noise: bool = True

    NAMES = ("flip", "scale", "colour", "noise")

    @classmethod
    def parse(cls, text: str, scale: float = 1.25) -> Augment:
        """From a comma-separated list of :attr:`NAMES` (``none`` or empty: no augmentation)."""
        words = {w.strip().lower().replace("color", "colour") for w in text.split(",") if w.strip()}
        words.discard("none")
        unknown = words - set(cls.NAMES)
        if unknown:
            raise GeounetError(
                f"unknown augmentation {', '.join(sorted(unknown))}; choose from {', '.join(cls.NAMES)} or none"
            )
        return cls(
            flips="flip" in words,
            scale=scale if "scale" in words else 1.0,
            colour="colour" in words,
            noise="noise" in words,
        )

    @property
    def names(self) -> list[str]:
        """The switched-on augmentations, as :meth:`parse` reads them."""
        on = [self.flips, self.scale > 1, self.colour, self.noise]
        return [n for n, o in zip(self.NAMES, on, strict=True) if o]

    @property
    def photometric(self) -> bool:
        """Whether any augmentation changes pixel values."""
        return self.colour or self.noise


NO_AUGMENT = Augment(flips=False, scale=1.0, colour=False, noise=False)


def _blocks(height: int, width: int, block: int) -> list[Window]:
    rows = range(0, height, block)
    cols = range(0, width, block)
    return [Window(c, r, min(block, width - c), min(block, height - r)) for r in rows for c in cols]


@dataclass
class _Option:
    kind: str
    gap: int
    blocks: dict[int, list[Window]] = field(default_factory=dict)
    all_val: set[int] = field(default_factory=set)
    detail: str = ""


class SpatialSplit:
    """Validation areas and the map-space exclusion zones around them (see the module doc).

    Args:
        entries: The images (their ``val_blocks``, ``all_val`` and ``all_train`` are set here).
        tile_size: Window size in model pixels.
        val_fraction: Share of images, blocks or rows used for validation.
        seed: Seed of the choice.
        gap: Model pixels between any training window and any validation area (default: chosen
            as described in the module doc).
        val_images: Indexes of images that are wholly validation.

    Attributes:
        kind: ``images``, ``val-images``, ``blocks``, ``band`` or ``none``.
        gap: The gap in model pixels.
        description: One line saying what was chosen.

    Raises:
        GeounetError: When no split leaves room for a training window.
    """

    #: Share of training positions a split must leave reachable to be chosen.
    MIN_COVERAGE = 0.5

    def __init__(
        self,
        entries: list[ImageEntry],
        *,
        tile_size: int,
        val_fraction: float,
        seed: int,
        gap: int | None = None,
        val_images: Sequence[int] = (),
    ) -> None:
        self.tile_size = tile_size
        self.entries = entries
        self.block = 0
        self._val_rects: dict[str, list[Rect]] = {}
        if val_images:
            option = _Option(
                "val-images", tile_size if gap is None else gap, all_val=set(val_images)
            )
            self._apply(option)
            if self.coverage() == 0:
                raise GeounetError(
                    "no training window fits outside the --val-images (the training images lie "
                    "inside them); give training images of other places"
                )
        elif val_fraction <= 0:
            self._apply(_Option("none", 0))
        else:
            chosen = None
            for option in self._options(val_fraction, seed, gap):
                self._apply(option)
                cov = self.coverage()
                if cov >= self.MIN_COVERAGE or (
                    option.kind == "band" and option.gap == 0 and cov > 0
                ):
                    chosen = option
                    break
                logger.debug(
                    "split %s (gap %d) leaves %.0f %% of positions; next",
                    option.kind,
                    option.gap,
                    100 * cov,
                )
            if chosen is None:
                small = min(entries, key=lambda e: e.scene.width * e.scene.height).scene
                raise GeounetError(
                    f"cannot split the images into training and validation with --tile-size "
                    f"{tile_size} ({small.name} is {small.width} x {small.height} px); use a "
                    f"smaller --tile-size, more images, or --val-images"
                )
        self.description = self._describe()

    # -- choosing --------------------------------------------------------------------------

    def _options(self, val_fraction: float, seed: int, gap: int | None) -> list[_Option]:
        ts = self.tile_size
        entries = self.entries

        def g(default: int) -> int:
            return default if gap is None else gap

        out: list[_Option] = []
        n = len(entries)
        n_val = round(val_fraction * n)
        if n >= 3 and n_val >= 1:
            rng = np.random.default_rng([seed, 7907])
            picked = {int(i) for i in rng.permutation(n)[: min(n_val, n - 1)]}
            out.append(_Option("images", g(ts), all_val=picked))
        blocks, size = self._choose_blocks(val_fraction, seed)
        if blocks:
            detail = f"{sum(len(v) for v in blocks.values())} blocks of {size} px"
            out.append(_Option("blocks", g(ts), blocks=blocks, detail=detail))
            out.append(_Option("blocks", g(ts // 4), blocks=blocks, detail=detail))
        bands: dict[int, list[Window]] = {}
        for i, e in enumerate(entries):
            h, w = e.scene.height, e.scene.width
            if h >= w:
                k = min(h - 1, max(1, round(val_fraction * h)))
                bands[i] = [Window(0, h - k, w, k)]
            else:
                k = min(w - 1, max(1, round(val_fraction * w)))
                bands[i] = [Window(w - k, 0, k, h)]
        if all(e.scene.height > 1 or e.scene.width > 1 for e in entries):
            detail = f"an edge band of {100 * val_fraction:.0f} % of each image"
            out.append(_Option("band", g(ts // 4), blocks=bands, detail=detail))
            out.append(_Option("band", 0 if gap is None else gap, blocks=bands, detail=detail))
        return out

    def _choose_blocks(self, val_fraction: float, seed: int) -> tuple[dict[int, list[Window]], int]:
        """Blocks of 4 tiles (halved while there are fewer than five), runs of them chosen."""
        entries = self.entries
        block = 4 * self.tile_size
        while True:
            candidates = [
                (i, w)
                for i, e in enumerate(entries)
                for w in _blocks(e.scene.height, e.scene.width, e.source_size(block))
                if w.width >= e.source_size(self.tile_size) // 2
                and w.height >= e.source_size(self.tile_size) // 2
            ]
            if len(candidates) >= 5 or block <= self.tile_size:
                break
            block = max(self.tile_size, block // 2)
        self.block = block
        if len(candidates) < 2:
            return {}, block
        rng = np.random.default_rng([seed, 7919])
        n_val = min(max(1, round(val_fraction * len(candidates))), len(candidates) - 1)
        # Validation blocks come in a few contiguous runs of row-major blocks (bands), not
        # scattered: each scattered block would cost a gap all around it.
        runs = max(1, min(4, len(candidates) // 25, n_val))
        chosen: set[int] = set()
        for r in range(runs):
            size = n_val // runs + (1 if r < n_val % runs else 0)
            start = int(rng.integers(len(candidates)))
            k = 0
            while size and k < len(candidates):
                idx = (start + k) % len(candidates)
                if idx not in chosen:
                    chosen.add(idx)
                    size -= 1
                k += 1
        out: dict[int, list[Window]] = {}
        for k in sorted(chosen):
            i, w = candidates[k]
            out.setdefault(i, []).append(w)
        return out, block

    def _apply(self, option: _Option) -> None:
        self.kind = option.kind
        self.gap = option.gap
        self._option = option
        self._val_rects = {}
        for i, e in enumerate(self.entries):
            e.all_val = i in option.all_val
            e.all_train = bool(option.all_val) and not e.all_val
            if e.all_val:
                e.val_blocks = [Window(0, 0, e.scene.width, e.scene.height)]
            else:
                e.val_blocks = list(option.blocks.get(i, []))
            for w in e.val_blocks:
                rect = e.window_rect(int(w.row_off), int(w.col_off), int(w.height), int(w.width))
                self._val_rects.setdefault(e.scene.crs.to_string(), []).append(rect)

    def coverage(self) -> float:
        """Share of window positions (a grid, stride 1/8 tile) of the training images that are allowed."""
        allowed = total = 0
        for i, e in enumerate(self.entries):
            if e.all_val:
                continue
            size = e.source_size(self.tile_size)
            step = max(1, size // 8)
            rows = np.arange(0, max(1, e.scene.height - size + 1), step)
            cols = np.arange(0, max(1, e.scene.width - size + 1), step)
            ok = self._allowed_grid(i, rows, cols, size)
            allowed += int(ok.sum())
            total += ok.size
        return allowed / total if total else 0.0

    def _allowed_grid(
        self, image: int, rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], size: int
    ) -> npt.NDArray[np.bool_]:
        e = self.entries[image]
        ok = np.ones((rows.size, cols.size), dtype=bool)
        rects = self._val_rects.get(e.scene.crs.to_string(), [])
        if not rects:
            return ok
        t = e.scene.transform
        margin = self._margin(e)
        xa, xb = t.c + cols * t.a, t.c + (cols + size) * t.a
        ya, yb = t.f + rows * t.e, t.f + (rows + size) * t.e
        left, right = np.minimum(xa, xb) - margin, np.maximum(xa, xb) + margin
        bottom, top = np.minimum(ya, yb) - margin, np.maximum(ya, yb) + margin
        for v in rects:
            hit_c = (left < v.right) & (v.left < right)
            hit_r = (bottom < v.top) & (v.bottom < top)
            ok &= ~(hit_r[:, None] & hit_c[None, :])
        return ok

    def _margin(self, e: ImageEntry) -> float:
        return self.gap * e.scale * max(e.scene.res) * 0.999

    def _describe(self) -> str:
        n = len(self.entries)
        if self.kind == "none":
            return "no validation (--val-fraction 0)"
        gap = f"gap {self.gap} px" if self.gap else "no gap"
        if self.kind in ("images", "val-images"):
            names = [e.scene.name for e in self.entries if e.all_val]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            how = "given with --val-images" if self.kind == "val-images" else "whole images"
            return f"validation: {len(names)} of {n} images ({how}: {shown}), {gap}"
        share = self.val_share()
        return f"validation: {self._option.detail} ({100 * share:.0f} % of the area), {gap}"

    def val_share(self) -> float:
        """Share of all pixels in validation areas."""
        total = sum(e.scene.width * e.scene.height for e in self.entries)
        val = sum(int(w.width) * int(w.height) for e in self.entries for w in e.val_blocks)
        return val / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        """What was chosen, for the metrics file."""
        return {
            "kind": self.kind,
            "gap_px": self.gap,
            "val_share": round(self.val_share(), 4),
            "val_images": [e.scene.name for e in self.entries if e.all_val],
            "description": self.description,
        }

    # -- using -----------------------------------------------------------------------------

    def is_train(self, image: int, row: int, col: int, size: int | None = None) -> bool:
        """Whether a window (``size`` source pixels, default one tile) keeps the gap to every validation area."""
        e = self.entries[image]
        if e.all_val:
            return False
        rects = self._val_rects.get(e.scene.crs.to_string(), [])
        if not rects:
            return True
        rect = e.window_rect(row, col, size if size else e.source_size(self.tile_size))
        grown = rect.expand(self._margin(e))
        return not any(grown.intersects(v) for v in rects)

    def val_windows(self, max_windows: int, seed: int) -> list[Sample]:
        """A fixed grid of windows inside the validation areas (a seeded subset if too many)."""
        out: list[Sample] = []
        for i, e in enumerate(self.entries):
            size = e.source_size(self.tile_size)
            for w in e.val_blocks:
                for r in _starts(int(w.height), size):
                    for c in _starts(int(w.width), size):
                        out.append(Sample(i, int(w.row_off) + r, int(w.col_off) + c, size=size))
        if len(out) > max_windows:
            rng = np.random.default_rng([seed, 104729])
            keep = sorted(rng.choice(len(out), size=max_windows, replace=False))
            out = [out[int(k)] for k in keep]
        return out


def _starts(length: int, tile: int) -> list[int]:
    """Window starts covering ``length`` (the last one snapped to the end)."""
    if length <= tile:
        return [0]
    n = math.ceil(length / tile)
    return sorted({min(k * tile, length - tile) for k in range(n)})


def plan_epoch(
    split: SpatialSplit,
    *,
    samples: int,
    epoch: int,
    seed: int,
    positive_fraction: float = 0.5,
    augment: Augment | bool = True,
) -> list[Sample]:
    """The training windows of one epoch (deterministic in ``seed`` and ``epoch``).

    Raises:
        GeounetError: When no training window fits outside the validation areas.
    """
    aug = (Augment() if augment else NO_AUGMENT) if isinstance(augment, bool) else augment
    rng = np.random.default_rng([seed, epoch, 31337])
    ts = split.tile_size
    entries = split.entries
    # Images weigh by their area in model pixels.
    weights = np.array(
        [0.0 if e.all_val else e.scene.width * e.scene.height / e.scale**2 for e in entries]
    )
    if weights.sum() == 0:
        raise GeounetError(
            "no training images left after the validation split; lower --val-fraction"
        )
    weights /= weights.sum()
    positives = [e.labels.centroids_px() if not e.all_val else np.zeros((0, 2)) for e in entries]
    log_a = math.log(aug.scale) if aug.scale > 1 else 0.0
    out: list[Sample] = []
    tries = 0
    max_tries = samples * 200
    while len(out) < samples:
        tries += 1
        if tries > max_tries:
            raise GeounetError(
                f"could not place training windows of {ts} px outside the validation areas "
                f"({split.description}); use a smaller --tile-size or --val-fraction"
            )
        want_pos = rng.random() < positive_fraction
        i = int(rng.choice(len(entries), p=weights))
        e = entries[i]
        jitter = math.exp(rng.uniform(-log_a, log_a)) if log_a else 1.0
        # Late tries drop the jitter, so a tight split still fills its plan.
        size = max(1, round(ts * e.scale * (jitter if tries < max_tries // 2 else 1.0)))
        h, w = e.scene.height, e.scene.width
        if want_pos and len(positives[i]):
            cy, cx = positives[i][rng.integers(len(positives[i]))]
            # int(): a Python int whatever round() of a NumPy scalar gives
            r = int(round(cy - size / 2 + rng.uniform(-size / 4, size / 4)))  # noqa: RUF046
            c = int(round(cx - size / 2 + rng.uniform(-size / 4, size / 4)))  # noqa: RUF046
        else:
            r = int(rng.integers(0, max(1, h - size + 1)))
            c = int(rng.integers(0, max(1, w - size + 1)))
        r = min(max(r, 0), max(0, h - size))
        c = min(max(c, 0), max(0, w - size))
        if not split.is_train(i, r, c, size):
            continue
        rot = int(rng.integers(4)) if aug.flips else 0
        flip = bool(rng.integers(2)) if aug.flips else False
        seed_aug = int(rng.integers(1, 2**31)) if aug.photometric else 0
        out.append(Sample(i, r, c, rot, flip, size if size != ts else 0, seed_aug))
    return out


def fit_normalization(
    entries: Sequence[ImageEntry], mode: str, low: float, high: float
) -> tuple[dict[str, Any], list[float], list[float]]:
    """Fit a model's normalization on its training images and set each entry's stretch.

    Returns:
        (record, mean, std): the record for the model file (see :mod:`geounet.geodata.normalize`) and the
        per-band mean and standard deviation of the stretched training pixels.

    Raises:
        GeounetError: Unknown mode, or no valid pixel in any training image.
    """
    if mode not in normalize.MODES:
        raise GeounetError(f"unknown normalization {mode!r}; choose {' or '.join(normalize.MODES)}")
    samples = []
    for e in entries:
        with rasterio.open(gdal_path(e.scene.path)) as src:
            values = normalize.sample_pixels(src, e.scene, e.bands)
        # At most 20,000 pixels an image, so that big images do not drown small ones.
        if values.shape[1] > 20_000:
            pick = np.random.default_rng(0).choice(values.shape[1], 20_000, replace=False)
            values = values[:, np.sort(pick)]
        samples.append(values)
    pooled = np.concatenate(samples, axis=1)
    if pooled.shape[1] == 0:
        raise GeounetError("the training images have no valid pixels (all nodata)")
    record: dict[str, Any] = {"mode": mode, "low": low, "high": high}
    if mode == "dataset":
        lo, hi = normalize.stretch_bounds(pooled, low, high)
        record["lo"], record["hi"] = [float(v) for v in lo], [float(v) for v in hi]
    stretched = []
    for e, values in zip(entries, samples, strict=True):
        if mode == "dataset":
            e.lo, e.hi = lo, hi
        else:
            e.lo, e.hi = (
                normalize.stretch_bounds(values, low, high) if values.shape[1] else (None, None)
            )
        if values.shape[1] and e.lo is not None and e.hi is not None:
            stretched.append((values - e.lo[:, None]) / (e.hi - e.lo)[:, None])
    allv = np.concatenate(stretched, axis=1)
    mean = allv.mean(axis=1)
    std = np.maximum(allv.std(axis=1), 1e-3)
    return record, [float(m) for m in mean], [float(s) for s in std]


def set_stretch(entries: Sequence[ImageEntry], record: dict[str, Any]) -> None:
    """Give entries the stretch of an existing model's normalization record (fine-tuning)."""
    for e in entries:
        if not record:
            e.lo = e.hi = None
            continue
        with rasterio.open(gdal_path(e.scene.path)) as src:
            e.lo, e.hi = normalize.stretch_for(record, src, e.scene, e.bands)


class WindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, target) windows of a plan: normalized float32 (bands, T, T), int64 (T, T).

    Each window is read at its source size, stretched with its image's ``lo``/``hi``,
    photometrically augmented (its sample's ``aug`` seed), standardized with ``mean``/``std``,
    resampled to the tile size and rotated/flipped. Nodata and padding pixels get target
    :data:`IGNORE_INDEX` and value 0. Files are opened lazily, once per worker process.
    """

    def __init__(
        self,
        entries: Sequence[ImageEntry],
        plan: Sequence[Sample],
        *,
        tile_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment = NO_AUGMENT,
    ) -> None:
        self.entries = list(entries)
        self.plan = list(plan)
        self.tile_size = tile_size
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.augment = augment
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.plan)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _src(self, i: int) -> Any:
        src = self._handles.get(i)
        if src is None:
            src = self._handles[i] = rasterio.open(gdal_path(self.entries[i].scene.path))
        return src

    def read(self, s: Sample) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
        """Window (normalized image, target) at the tile size, before rotation and flip."""
        e = self.entries[s.image]
        size = s.size or self.tile_size
        h = max(0, min(size, e.scene.height - s.row))
        w = max(0, min(size, e.scene.width - s.col))
        window = Window(s.col, s.row, w, h)
        raw, valid = read_window(self._src(s.image), e.scene, e.bands, window)
        target_small = e.labels.rasterize(window)
        if e.contact_px or e.core_px:
            r = max(e.contact_px, e.core_px)
            ids = e.labels.instances(Window(s.col - r, s.row - r, w + 2 * r, h + 2 * r))
            if e.core_px:
                target_small = mark_borders(target_small, _inner(ids, r - e.core_px), e.core_px)
            if e.contact_px:
                target_small = mark_contacts(
                    target_small, _inner(ids, r - e.contact_px), e.contact_px
                )
        if e.lo is not None and e.hi is not None:
            lo = e.lo[:, None, None].astype(np.float32)
            span = (e.hi - e.lo)[:, None, None].astype(np.float32)
            raw = (raw - lo) / span
        if s.aug:
            raw = photometric(raw, np.random.default_rng(s.aug), self.augment)
        img = np.zeros((len(e.bands), size, size), dtype=np.float32)
        target = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
        img[:, :h, :w] = (raw - self.mean) / self.std * valid
        target[:h, :w] = np.where(valid, target_small, IGNORE_INDEX)
        if size != self.tile_size:
            img, target = resample_window(img, target, self.tile_size)
        return img, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.plan[index]
        img, target = self.read(s)
        if s.rot:
            img = np.rot90(img, s.rot, axes=(1, 2))
            target = np.rot90(target, s.rot)
        if s.flip:
            img = img[:, :, ::-1]
            target = target[:, ::-1]
        return (
            torch.from_numpy(np.ascontiguousarray(img)),
            torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)),
        )


def _inner(a: npt.NDArray[Any], d: int) -> npt.NDArray[Any]:
    """``a`` without its outer ``d`` rows and columns on every side."""
    return a[d : a.shape[0] - d, d : a.shape[1] - d] if d > 0 else a


def _disc(r: int) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    # r + 1/4 squared, rounded: a round disc even for r = 1
    disc: npt.NDArray[np.bool_] = yy**2 + xx**2 <= r * r + r
    return disc


def mark_borders(
    target: npt.NDArray[np.uint8], ids: npt.NDArray[np.int32], radius: int
) -> npt.NDArray[np.uint8]:
    """Mark the foreground outside each object's core: :data:`BORDER_INDEX` where a foreground
    pixel has background or another object within ``radius`` pixels (a disc).

    What is left at 1 is every object shrunk by ``radius`` on its own, so that objects that
    touch (or nearly) keep cores ``2 * radius`` apart: the seeds that part them when
    predicting (:func:`geounet.vectors.separate.split_at_valleys` with the core channel).

    Args:
        target: uint8 (H, W) class ids of a window (binary: 1 is the foreground).
        ids: int32 (H + 2r, W + 2r) object ids of the same window grown by ``radius`` on every
            side, 0 = no object.
        radius: Pixels.

    Returns:
        A copy of ``target`` with the border pixels marked (the same array when none is).
    """
    r = int(radius)
    h, w = target.shape
    fg = target == 1
    if r <= 0 or not fg.any():
        return target
    disc = _disc(r)
    hi = ndimage.maximum_filter(ids, footprint=disc, mode="constant", cval=0)[r : r + h, r : r + w]
    lo = ndimage.minimum_filter(ids, footprint=disc, mode="constant", cval=0)[r : r + h, r : r + w]
    core = (lo == hi) & (lo > 0)
    border = fg & ~core
    if not border.any():
        return target
    out = target.copy()
    out[border] = BORDER_INDEX
    return out


def mark_contacts(
    target: npt.NDArray[np.uint8], ids: npt.NDArray[np.int32], radius: int
) -> npt.NDArray[np.uint8]:
    """Mark the background between close objects: :data:`CONTACT_INDEX` where a background
    pixel has two different objects within ``radius`` pixels (a disc), and along the edge
    where two objects touch (the pixels of the one with the lower id that have the other
    among their 8 neighbours: a one-pixel gap).

    Args:
        target: uint8 (H, W) class ids of a window.
        ids: int32 (H + 2r, W + 2r) object ids of the same window grown by ``radius`` on every
            side (so that objects just outside the window count), 0 = no object.
        radius: Pixels.

    Returns:
        A copy of ``target`` with the contact pixels marked (the same array when none is).
    """
    r = int(radius)
    h, w = target.shape
    if r <= 0 or h == 0 or w == 0 or not ids.any():
        return target
    disc = _disc(r)
    big = np.iinfo(np.int32).max
    hi = ndimage.maximum_filter(ids, footprint=disc, mode="constant", cval=0)[r : r + h, r : r + w]
    lo = ndimage.minimum_filter(
        np.where(ids > 0, ids, big), footprint=disc, mode="constant", cval=big
    )
    lo = lo[r : r + h, r : r + w]
    contact = (target == 0) & (hi > 0) & (lo < big) & (lo != hi)
    # Objects that touch (no background between them): the lower id's pixels along the
    # shared edge become a one-pixel gap, so that the labels part them too.
    own = ids[r : r + h, r : r + w]
    beside = ndimage.maximum_filter(ids, size=3, mode="constant", cval=0)[r : r + h, r : r + w]
    contact |= (own > 0) & (beside > own) & (target > 0) & (target != IGNORE_INDEX)
    if not contact.any():
        return target
    out = target.copy()
    out[contact] = CONTACT_INDEX
    return out


def resample_window(
    img: npt.NDArray[np.float32], target: npt.NDArray[np.uint8], size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Resample a square window to ``size``: the image bilinear (antialiased when shrinking),
    the target nearest (pixel centres), so both stay aligned on the same ground extent."""
    src = img.shape[-1]
    x = torch.from_numpy(np.ascontiguousarray(img))[None]
    out = F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < src
    )
    # Nearest by pixel centres: output pixel k covers source (k + 0.5) * src / size.
    idx = np.minimum(((np.arange(size) + 0.5) * src / size).astype(np.int64), src - 1)
    return out[0].numpy(), target[np.ix_(idx, idx)]


#: Share of training windows that get the colour jitter.
COLOUR_SHARE = 0.5


def photometric(
    x: npt.NDArray[np.float32], rng: np.random.Generator, augment: Augment
) -> npt.NDArray[np.float32]:
    """Colour and noise augmentation of a stretched window (values about 0..1), shape (bands, H, W).

    Colour, on half the windows (:data:`COLOUR_SHARE`; the other half show the network the
    scene as it is, which it must also fit): contrast ``x 0.75..1.33`` about 0.5, brightness
    +-0.1, per-band shifts +-0.04, gamma ``0.78..1.28``, and for 3 bands saturation
    ``x 0.7..1.3``. Noise: a fifth of the windows are blurred (sigma 0.3..1.2 px), another fifth
    get Gaussian noise (sigma up to 0.03).
    """
    x = x.astype(np.float32, copy=True)
    if augment.colour and rng.random() < COLOUR_SHARE:
        contrast = math.exp(rng.uniform(-0.29, 0.29))
        shift = rng.uniform(-0.1, 0.1) + rng.uniform(-0.04, 0.04, size=(x.shape[0], 1, 1))
        gamma = math.exp(rng.uniform(-0.25, 0.25))
        x = (x - 0.5) * contrast + 0.5 + shift.astype(np.float32)
        np.maximum(x, 0, out=x)
        x **= np.float32(gamma)
        if x.shape[0] == 3:
            grey = x.mean(axis=0, keepdims=True)
            x = grey + (x - grey) * np.float32(math.exp(rng.uniform(-0.36, 0.26)))
    if augment.noise:
        u = rng.random()
        if u < 0.2:
            sigma = rng.uniform(0.3, 1.2)
            x = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest")
        elif u < 0.4:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), size=x.shape).astype(np.float32)
    return x.astype(np.float32, copy=False)


def check_labels_hit(entries: Sequence[ImageEntry], labels: Labels | LabelSet) -> None:
    """Refuse labels that touch none of the images.

    Raises:
        LabelsOutsideRasterError: Naming the label file and the images' extent.
    """
    if all(e.labels.empty for e in entries):
        first = entries[0].scene
        b = first.bounds
        raise LabelsOutsideRasterError(
            f"{labels.path} does not overlap any image: no label falls inside {first.name} "
            f"({first.crs.to_string()}: {b[0]:.6g},{b[1]:.6g},{b[2]:.6g},{b[3]:.6g}) or the other "
            f"{len(entries) - 1} image(s); check the label file's CRS and extent"
        )
