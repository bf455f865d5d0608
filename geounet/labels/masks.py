"""Mask-raster labels (:class:`MaskLabels`): the masks, their class names, and which mask
belongs to an image.

A mask holds one band of class ids: 0 background, 1..N classes, the nodata value (and
:data:`geounet.labels.spec.IGNORE_VALUE`, 255) meaning "ignore". An image's mask is the one
named like it (``masks/x.tif`` for ``images/x.tif``), else the first that overlaps it;
:class:`geounet.labels.mask_windows.RasterMaskLabels` reads it window by window in the image's
grid, with the interface of :class:`geounet.labels.rasterize.RasterLabels`. Pixels that no mask
reaches are ignored, not background.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyproj

from geounet.errors import LabelsError
from geounet.geodata.raster import Scene, is_remote
from geounet.labels.crs import CRSInput, as_crs
from geounet.labels.mask_file import MaskFile, open_mask, scan_mask_values
from geounet.labels.mask_windows import RasterMaskLabels
from geounet.labels.rasterize import RasterLabels
from geounet.labels.spec import BINARY_CLASS_NAME, IGNORE_VALUE, MAX_CLASSES, MAX_LISTED, LabelSpec

logger = logging.getLogger(__name__)


class MaskLabels:
    """Labels given as mask rasters whose pixel values are class ids.

    A mask holds 0 for background, 1..N for the classes, and an ignore value (its nodata value,
    and :data:`IGNORE_VALUE` or the ``ignore_value`` given) for pixels excluded from training.
    Masks are matched to images by :meth:`match`; :meth:`for_scene` gives an image's labels,
    read window by window in the image's grid (reprojected with nearest resampling when the
    grids differ). Thread-safe.

    Args:
        paths: Mask rasters (see :func:`open_mask`), in priority order.
        spec: Only ``spec.classes`` is used: the names of values 1..N.
        ignore_value: Mask value meaning "ignore" besides the nodata value.
        class_names: Names to use when ``spec.classes`` is not given (e.g. those of vector
            labels trained together with the masks); values above their count are an error.
        names_from: Where ``class_names`` come from, for messages.

    Attributes:
        files: The masks.
        class_names: Names of values 1..N: ``spec.classes``, else ``class_names``, else the
            binary default for a 0/1 mask, else ``class1..classN`` for the largest value N found
            in a decimated read of every mask.
        ignore_value: As given.

    Raises:
        LabelsError: No masks, an unreadable mask, a negative, fractional or too large class id,
            or an ignore value that is also a class id.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        spec: LabelSpec | None = None,
        *,
        ignore_value: int = IGNORE_VALUE,
        class_names: Sequence[str] | None = None,
        names_from: str = "",
    ) -> None:
        spec = spec if spec is not None else LabelSpec()
        if not paths:
            raise LabelsError("no mask rasters given; give mask files, a folder or a glob")
        if isinstance(ignore_value, bool) or not isinstance(ignore_value, int | np.integer):
            raise LabelsError(f"ignore_value must be an integer, got {ignore_value!r}")
        self.spec = spec
        self.ignore_value = int(ignore_value)
        self.files = [open_mask(p) for p in dict.fromkeys(os.fspath(p) for p in paths)]
        self._by_stem: dict[str, list[int]] = {}
        for i, f in enumerate(self.files):
            self._by_stem.setdefault(f.stem, []).append(i)
        if spec.classes is not None:
            names, source = list(spec.classes), "LabelSpec.classes"
        elif class_names:
            names, source = list(class_names), names_from or "the other labels"
        else:
            names, source = [], ""
        top, top_file = 0, self.files[0]
        for f in self.files:
            values = scan_mask_values(f, self.ignore_value)
            if values.size and int(values[-1]) > top:
                top, top_file = int(values[-1]), f
        if top > MAX_CLASSES:
            raise LabelsError(
                f"{top_file.name} holds class id {top}; at most {MAX_CLASSES} classes fit a uint8 "
                "mask (0 is background, 255 is ignore)"
            )
        if not names:
            names = [BINARY_CLASS_NAME] if top <= 1 else [f"class{i}" for i in range(1, top + 1)]
        elif top > len(names):
            raise LabelsError(
                f"{top_file.name} holds class id {top}, but {source} names {len(names)} "
                f"class(es) ({', '.join(names[:MAX_LISTED])}); a mask holds 0 (background), "
                f"1..{len(names)} and {self.ignore_value} (ignore): list every class "
                "(LabelSpec.classes, --classes) or fix the mask"
            )
        if 0 <= self.ignore_value <= len(names):
            raise LabelsError(
                f"ignore value {self.ignore_value} is also a class id (0 background, "
                f"1..{len(names)} classes); pick another, e.g. {IGNORE_VALUE}"
            )
        self.class_names = names
        self._boxes: dict[str, npt.NDArray[np.float64]] = {}
        self._lock = threading.Lock()

    @property
    def binary(self) -> bool:
        """Whether there is one foreground class."""
        return len(self.class_names) == 1

    @property
    def paths(self) -> list[str]:
        """The masks' paths, in priority order."""
        return [f.path for f in self.files]

    def __len__(self) -> int:
        """Number of masks."""
        return len(self.files)

    def __repr__(self) -> str:
        return f"MaskLabels({len(self)} masks, classes={self.class_names})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def boxes(self, crs: CRSInput) -> npt.NDArray[np.float64]:
        """Bounds of every mask in another CRS (cached per CRS).

        Args:
            crs: The target CRS.

        Returns:
            float64 (n, 4) left, bottom, right, top; NaN for a mask that is not georeferenced or
            cannot be reprojected to ``crs``.
        """
        dst = as_crs(crs)
        key = dst.to_wkt()
        with self._lock:
            hit = self._boxes.get(key)
            if hit is None:
                hit = np.full((len(self.files), 4), np.nan)
                for i, f in enumerate(self.files):
                    if f.crs is not None:
                        hit[i] = _reproject_bounds(f.bounds, as_crs(f.crs), dst)
                self._boxes[key] = hit
            return hit

    def match(self, scene: Scene) -> MaskFile | None:
        """The mask of one image.

        The first mask whose file stem equals the image's (``masks/x.tif`` for ``images/x.tif``)
        and that overlaps it, or, when it is not georeferenced, has the image's size (it then
        takes the image's grid); else the first georeferenced mask that overlaps the image by
        at least half a pixel each way.

        Args:
            scene: The image.

        Returns:
            The mask, or None when no mask belongs to the image.

        Raises:
            LabelsError: A mask matched by name that is not georeferenced and has another size.
        """
        boxes = self.boxes(scene.crs)
        left, bottom, right, top = scene.bounds
        px, py = scene.res
        w = np.minimum(boxes[:, 2], right) - np.maximum(boxes[:, 0], left)
        h = np.minimum(boxes[:, 3], top) - np.maximum(boxes[:, 1], bottom)
        overlaps = (w > px / 2) & (h > py / 2)  # NaN compares False
        itself = _same_file(scene.path)
        for i in self._by_stem.get(Path(scene.name).stem, []):
            f = self.files[i]
            if _same_file(f.path) == itself:
                continue
            if f.crs is None:
                if (f.width, f.height) != (scene.width, scene.height):
                    raise LabelsError(
                        f"{f.name} is not georeferenced and is {f.width}x{f.height} px but "
                        f"{scene.name} is {scene.width}x{scene.height}; a mask without a CRS "
                        "must have its image's size (or georeference it)"
                    )
                return f
            if overlaps[i]:
                return f
            logger.warning(
                "%s has the name of %s but does not overlap it; looking for a mask that does",
                f.name,
                scene.name,
            )
        hits = np.flatnonzero(overlaps)
        return self.files[int(hits[0])] if hits.size else None

    def for_scene(self, scene: Scene, *, overlay: RasterLabels | None = None) -> RasterMaskLabels:
        """The labels of one image: its mask (see :meth:`match`), in the image's grid.

        Args:
            scene: The image.
            overlay: Vector features of the image, burnt over the mask.

        Returns:
            The image's labels; ``.empty`` when no mask belongs to it (and ``overlay`` is empty).
        """
        return RasterMaskLabels(
            self.match(scene),
            crs=scene.crs,
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            name=scene.name,
            class_names=self.class_names,
            ignore_value=self.ignore_value,
            overlay=overlay,
        )


def _same_file(path: str) -> str:
    return path if is_remote(path) else os.path.realpath(path)


def _reproject_bounds(
    bounds: tuple[float, float, float, float], src: pyproj.CRS, dst: pyproj.CRS
) -> tuple[float, float, float, float]:
    """Bounds in another CRS (densified edges); NaNs when they cannot be reprojected."""
    if src.equals(dst, ignore_axis_order=True):
        return bounds
    try:
        transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)
        out = transformer.transform_bounds(*bounds, densify_pts=21)
    except pyproj.exceptions.ProjError:
        return (math.nan, math.nan, math.nan, math.nan)
    if not np.isfinite(out).all():
        return (math.nan, math.nan, math.nan, math.nan)
    return (float(out[0]), float(out[1]), float(out[2]), float(out[3]))


__all__ = ["MaskLabels"]
