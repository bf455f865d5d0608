"""Training windows: images plus rasterized vector labels, spatially split, sampled per epoch.

The split is spatial. Each image is cut into square blocks of ``4 * tile_size`` pixels (halved,
down to one tile, while there are fewer than five blocks in all); a seeded share ``val_fraction``
of all blocks, taken as a few contiguous runs of row-major blocks (bands), is validation.
A training window must lie at least ``gap`` pixels (default: one tile) away, in map coordinates,
from every validation block of every image in the same CRS, so overlapping windows and adjacent
chips of one mosaic never leak into validation. With ``val_images``, whole images are the
validation set instead.

Every epoch has a plan: a list of windows drawn with a generator seeded by ``(seed, epoch)``,
a share ``positive_fraction`` of them centred (with jitter) on labelled features so that sparse
classes are seen, each with its own flip/rotation. Since the plan depends only on the seed and
the epoch, an interrupted run resumes with exactly the windows it would have seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch.utils.data import Dataset

from geounet.errors import GeounetError, LabelsOutsideRasterError
from geounet.labels import Labels, RasterLabels
from geounet.raster import Scene, gdal_path, read_window

logger = logging.getLogger(__name__)

#: Target value for pixels excluded from the loss (nodata, padding).
IGNORE_INDEX = 255


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
    """One training image with its labels in its own CRS."""

    scene: Scene
    bands: tuple[int, ...]
    labels: RasterLabels
    val_blocks: list[Window]
    all_val: bool = False
    all_train: bool = False

    def window_rect(self, row: int, col: int, size: int) -> Rect:
        """Map rectangle of a window."""
        t = self.scene.transform
        x0, y0 = t * (col, row)
        x1, y1 = t * (col + size, row + size)
        return Rect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@dataclass(frozen=True, slots=True)
class Sample:
    """One planned window: image index, top-left pixel, rotation (0-3) and flip."""

    image: int
    row: int
    col: int
    rot: int = 0
    flip: bool = False


def _blocks(height: int, width: int, block: int) -> list[Window]:
    rows = range(0, height, block)
    cols = range(0, width, block)
    return [
        Window(c, r, min(block, width - c), min(block, height - r)) for r in rows for c in cols
    ]


class SpatialSplit:
    """Validation blocks and the map-space exclusion zones around them.

    Args:
        entries: The images (their ``val_blocks`` are filled in here).
        tile_size: Window size in pixels.
        val_fraction: Share of blocks (or images) used for validation.
        seed: Seed of the block choice.
        gap: Pixels between any training window and any validation block (default: a tile).
        val_images: Indexes of images that are wholly validation (disables block splitting).
    """

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
        self.gap = tile_size if gap is None else gap
        self.entries = entries
        if val_images:
            for i, e in enumerate(entries):
                if i in val_images:
                    e.all_val = True
                    e.val_blocks = [Window(0, 0, e.scene.width, e.scene.height)]
                else:
                    e.all_train = True
        elif val_fraction > 0:
            # Blocks of 4 tiles; halved (down to one tile) until there are a few to choose from.
            block = 4 * tile_size
            while True:
                candidates = [
                    (i, w)
                    for i, e in enumerate(entries)
                    for w in _blocks(e.scene.height, e.scene.width, block)
                    if w.width >= tile_size // 2 and w.height >= tile_size // 2
                ]
                if len(candidates) >= 5 or block <= tile_size:
                    break
                block = max(tile_size, block // 2)
            self.block = block
            rng = np.random.default_rng([seed, 7919])
            n_val = max(1, round(val_fraction * len(candidates)))
            if len(candidates) < 2:
                raise GeounetError(
                    f"cannot split {entries[0].scene.name} into training and validation with "
                    f"--tile-size {tile_size}; use a smaller --tile-size, more images, or --val-images"
                )
            n_val = min(n_val, len(candidates) - 1)
            # Validation blocks come in a few contiguous runs of row-major blocks (bands), not
            # scattered: each scattered block would cost a one-tile gap all around it.
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
            for k in sorted(chosen):
                i, w = candidates[k]
                entries[i].val_blocks.append(w)
        self._val_rects: dict[str, list[Rect]] = {}
        for e in entries:
            for w in e.val_blocks:
                t = e.scene.transform
                x0, y0 = t * (w.col_off, w.row_off)
                x1, y1 = t * (w.col_off + w.width, w.row_off + w.height)
                rect = Rect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
                self._val_rects.setdefault(e.scene.crs.to_string(), []).append(rect)

    def is_train(self, image: int, row: int, col: int) -> bool:
        """Whether a window is at least ``gap`` away from every validation block."""
        e = self.entries[image]
        if e.all_val:
            return False
        if e.all_train and not self._val_rects:
            return True
        rect = e.window_rect(row, col, self.tile_size)
        margin = self.gap * max(e.scene.res)
        grown = rect.expand(margin * 0.999)
        return not any(grown.intersects(v) for v in self._val_rects.get(e.scene.crs.to_string(), []))

    def val_windows(self, max_windows: int, seed: int) -> list[Sample]:
        """A fixed grid of windows inside the validation blocks (a seeded subset if too many)."""
        ts = self.tile_size
        out: list[Sample] = []
        for i, e in enumerate(self.entries):
            for w in e.val_blocks:
                h, wd = int(w.height), int(w.width)
                rows = _starts(h, ts)
                cols = _starts(wd, ts)
                for r in rows:
                    for c in cols:
                        out.append(Sample(i, int(w.row_off) + r, int(w.col_off) + c))
        if len(out) > max_windows:
            rng = np.random.default_rng([seed, 104729])
            keep = sorted(rng.choice(len(out), size=max_windows, replace=False))
            out = [out[int(k)] for k in keep]
        return out


def _starts(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    n = length // tile
    return [k * tile for k in range(n)]


def plan_epoch(
    split: SpatialSplit,
    *,
    samples: int,
    epoch: int,
    seed: int,
    positive_fraction: float = 0.5,
    augment: bool = True,
) -> list[Sample]:
    """The training windows of one epoch (deterministic in ``seed`` and ``epoch``).

    Raises:
        GeounetError: When no training window fits outside the validation blocks.
    """
    rng = np.random.default_rng([seed, epoch, 31337])
    ts = split.tile_size
    entries = split.entries
    weights = np.array(
        [0.0 if e.all_val else float(e.scene.width * e.scene.height) for e in entries]
    )
    if weights.sum() == 0:
        raise GeounetError("no training images left after the validation split; lower --val-fraction")
    weights /= weights.sum()
    positives = [
        e.labels.centroids_px() if not e.all_val else np.zeros((0, 2)) for e in entries
    ]
    out: list[Sample] = []
    tries = 0
    max_tries = samples * 200
    while len(out) < samples:
        tries += 1
        if tries > max_tries:
            raise GeounetError(
                f"could not place training windows of {ts} px outside the validation blocks; "
                f"use a smaller --tile-size or --val-fraction"
            )
        want_pos = rng.random() < positive_fraction
        i = int(rng.choice(len(entries), p=weights))
        e = entries[i]
        h, w = e.scene.height, e.scene.width
        if want_pos and len(positives[i]):
            cy, cx = positives[i][rng.integers(len(positives[i]))]
            r = int(round(cy - ts / 2 + rng.uniform(-ts / 4, ts / 4)))
            c = int(round(cx - ts / 2 + rng.uniform(-ts / 4, ts / 4)))
        else:
            r = int(rng.integers(0, max(1, h - ts + 1)))
            c = int(rng.integers(0, max(1, w - ts + 1)))
        r = min(max(r, 0), max(0, h - ts))
        c = min(max(c, 0), max(0, w - ts))
        if not split.is_train(i, r, c):
            continue
        rot = int(rng.integers(4)) if augment else 0
        flip = bool(rng.integers(2)) if augment else False
        out.append(Sample(i, r, c, rot, flip))
    return out


def band_statistics(
    entries: Sequence[ImageEntry], *, max_pixels: int = 2_000_000
) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of valid pixels, from decimated reads.

    Returns:
        (mean, std) in raw units, one value per band (std floored at a small epsilon).
    """
    n_bands = len(entries[0].bands)
    total = np.zeros(n_bands)
    total_sq = np.zeros(n_bands)
    count = 0
    per_image = max(10_000, max_pixels // max(1, len(entries)))
    for e in entries:
        s = e.scene
        k = max(1, math.ceil(math.sqrt(s.width * s.height / per_image)))
        shape = (max(1, s.height // k), max(1, s.width // k))
        with rasterio.open(gdal_path(s.path)) as src:
            data = src.read(list(e.bands), out_shape=(len(e.bands), *shape), resampling=Resampling.nearest)
            valid = (
                src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
                if s.has_mask
                else np.ones(shape, dtype=bool)
            )
        data = data.astype(np.float64)
        valid &= np.isfinite(data).all(axis=0)
        px = data[:, valid]
        total += px.sum(axis=1)
        total_sq += (px**2).sum(axis=1)
        count += px.shape[1]
    if count == 0:
        raise GeounetError("the training images have no valid pixels (all nodata)")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    return [float(m) for m in mean], [float(max(v, 1e-3)) for v in std]


class WindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, target) windows of a plan: normalized float32 (bands, T, T), int64 (T, T).

    Nodata and padding pixels get target :data:`IGNORE_INDEX`. Files are opened lazily, once per
    worker process.
    """

    def __init__(
        self,
        entries: Sequence[ImageEntry],
        plan: Sequence[Sample],
        *,
        tile_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.entries = list(entries)
        self.plan = list(plan)
        self.tile_size = tile_size
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
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
        """Raw window (normalized image, target) before augmentation."""
        e = self.entries[s.image]
        ts = self.tile_size
        h = min(ts, e.scene.height - s.row)
        w = min(ts, e.scene.width - s.col)
        window = Window(s.col, s.row, w, h)
        raw, valid = read_window(self._src(s.image), e.scene, e.bands, window)
        target_small = e.labels.rasterize(window)
        img = np.zeros((len(e.bands), ts, ts), dtype=np.float32)
        target = np.full((ts, ts), IGNORE_INDEX, dtype=np.uint8)
        img[:, :h, :w] = (raw - self.mean) / self.std * valid
        target[:h, :w] = np.where(valid, target_small, IGNORE_INDEX)
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


def check_labels_hit(entries: Sequence[ImageEntry], labels: Labels) -> None:
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
