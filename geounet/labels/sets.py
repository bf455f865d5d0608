"""Label sources: files, globs and folders expanded into vector files and mask rasters, read
into a :class:`LabelSet` that gives each image its labels.

:func:`read_label_sources` takes any mix of vector files, masks, globs and folders and gives a
:class:`LabelSet`, whose :meth:`LabelSet.for_scene` unites the vector files' features and burns
them over the image's mask, if any.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from rasterio.errors import RasterioError

from geounet.errors import LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import RASTER_SUFFIXES, Scene, gdal_path, is_remote
from geounet.labels.crs import as_crs, crs_label, fmt_bounds
from geounet.labels.masks import MaskLabels
from geounet.labels.rasterize import RasterLabels
from geounet.labels.spec import IGNORE_VALUE, LabelSpec
from geounet.labels.vector import PARQUET_SUFFIXES, Labels, check_overlap, read_labels

logger = logging.getLogger(__name__)


#: Suffixes taken as vector label files by :func:`expand_label_sources`.
VECTOR_SUFFIXES = (
    ".gpkg",
    ".geojson",
    ".json",
    ".shp",
    ".fgb",
    *PARQUET_SUFFIXES,
    ".kml",
    ".gml",
    ".sqlite",
)

#: Suffixes taken as mask rasters by :func:`expand_label_sources`.
MASK_SUFFIXES = (*RASTER_SUFFIXES, ".png")

_KNOWN_SUFFIXES = (*VECTOR_SUFFIXES, *MASK_SUFFIXES)


_FOLDER_SUFFIXES = tuple(s for s in _KNOWN_SUFFIXES if s != ".json")  # .json: often not labels

_LABEL_GLOB_CHARS = re.compile(r"[*?[]")


def _label_kind(path: str) -> Literal["vector", "mask"]:
    """Whether a file holds vector labels or a mask raster: by suffix, else by opening it."""
    suffix = Path(path).suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return "vector"
    if suffix in MASK_SUFFIXES:
        return "mask"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if len(pyogrio.list_layers(gdal_path(path))):
                return "vector"
        except (RuntimeError, OSError, ValueError):  # pyogrio's errors are RuntimeErrors
            pass
        try:
            with rasterio.open(gdal_path(path)):
                return "mask"
        except RasterioError:
            pass
    name = Path(path).name or path
    raise LabelsError(
        f"{name} is neither a vector file nor a raster GDAL reads; give vector labels "
        "(.gpkg, .geojson, .shp, .fgb, .parquet) or mask rasters (.tif)"
    )


def expand_label_sources(
    sources: Sequence[str | os.PathLike[str]],
) -> tuple[list[str], list[str]]:
    """Expand label sources into vector files and mask rasters.

    - ``buildings.gpkg``, ``masks/x.tif``: a file (or URL); a suffix in :data:`VECTOR_SUFFIXES`
      makes it vector labels, one in :data:`MASK_SUFFIXES` a mask, any other is opened to tell.
    - ``labels/*.geojson``, ``masks/**/*.tif``: a glob (``**`` recurses); it must match at least
      one file with one of those suffixes.
    - ``masks/``: a folder: every vector file (``.json`` excepted) and raster below it, sorted.

    Local paths come back absolute; duplicates are dropped, the first keeps its place.

    Args:
        sources: What the user gave.

    Returns:
        (vector files, mask rasters), each in the given order.

    Raises:
        LabelsError: A missing path, a glob or folder without label files, or a file that is
            neither vector nor raster.
    """
    vectors: list[str] = []
    masks: list[str] = []
    for item in sources:
        text = os.fspath(item)
        if is_remote(text):
            found = [text]
        else:
            path = os.path.expanduser(text)
            if _LABEL_GLOB_CHARS.search(path) and not os.path.exists(path):
                found = [
                    os.path.abspath(p)
                    for p in sorted(glob.glob(path, recursive=True))
                    if os.path.isfile(p) and Path(p).suffix.lower() in _KNOWN_SUFFIXES
                ]
                if not found:
                    raise LabelsError(
                        f"{text} matches no label files ({', '.join(_KNOWN_SUFFIXES)}); check "
                        "the pattern (quote it, and use ** to search subfolders)"
                    )
            elif os.path.isdir(path):
                found = sorted(
                    os.path.abspath(p)
                    for p in Path(path).rglob("*")
                    if p.suffix.lower() in _FOLDER_SUFFIXES and p.is_file()
                )
                if not found:
                    raise LabelsError(
                        f"{text}: no vector files or rasters ({', '.join(_FOLDER_SUFFIXES)}) "
                        "in this folder"
                    )
            elif os.path.exists(path):
                found = [os.path.abspath(path)]
            else:
                raise LabelsError(f"{text}: no such file or folder; check the labels path")
        for p in found:
            (vectors if _label_kind(p) == "vector" else masks).append(p)
    return list(dict.fromkeys(vectors)), list(dict.fromkeys(masks))


def read_label_sources(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    spec: LabelSpec | None = None,
    *,
    ignore_value: int = IGNORE_VALUE,
) -> LabelSet:
    """Read labels from any mix of vector files, mask rasters, globs and folders.

    Each vector file is read with :func:`read_labels` (in its own CRS); masks are described
    with :class:`MaskLabels`. See :func:`expand_label_sources` for what a source may be.

    Args:
        sources: One source or several.
        spec: Class field, class names and buffer sizes; default a binary task.
        ignore_value: Mask value meaning "ignore" besides each mask's nodata value.

    Returns:
        The labels, ready for :meth:`LabelSet.for_scene`.

    Raises:
        LabelsError: No sources, a bad source (see :func:`read_labels`, :class:`MaskLabels`),
            or sources whose classes differ (the message names the file).
    """
    spec = spec if spec is not None else LabelSpec()
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    if not items:
        raise LabelsError("no labels given; pass vector files, mask rasters, globs or folders")
    vector_paths, mask_paths = expand_label_sources(items)
    vectors = [read_labels(p, spec) for p in vector_paths]
    for v in vectors[1:]:
        if v.class_names != vectors[0].class_names:
            raise LabelsError(
                f"{v.name} has classes {v.class_names} but {vectors[0].name} has "
                f"{vectors[0].class_names}; list the classes (LabelSpec.classes, --classes) so "
                "that every label file uses the same"
            )
    masks = None
    if mask_paths:
        masks = MaskLabels(
            mask_paths,
            spec,
            ignore_value=ignore_value,
            class_names=vectors[0].class_names if vectors else None,
            names_from=vectors[0].name if vectors else "",
        )
    return LabelSet(vectors, masks, sources=[os.fspath(s) for s in items])


class LabelSet:
    """Labels from several sources: vector files and mask rasters, for many images.

    Per image (:meth:`for_scene`): with vector files only, the union of their features (the
    rest is background, as with one file). When a mask belongs to the image (see
    :meth:`MaskLabels.match`), the mask is the base (ignore where it is nodata or does not
    reach) and the vector features are burnt over it, since drawn features are usually the more
    deliberate labels. An image without a mask gets the vector semantics (background around the
    features) when there are vector files, and is all ignored when there are only masks.

    Build with :func:`read_label_sources`.

    Args:
        vectors: Vector labels, each in its own CRS, with the same class names.
        masks: Mask labels with the same class names, or None.
        sources: The sources as given, for provenance and messages.

    Attributes:
        vectors: As given.
        masks: As given.
        sources: As given.
        class_names: Foreground class names in class-id order (id 1 first).

    Raises:
        LabelsError: No vectors and no masks, or class names that differ.
    """

    def __init__(
        self,
        vectors: Sequence[Labels],
        masks: MaskLabels | None = None,
        *,
        sources: Sequence[str] = (),
    ) -> None:
        self.vectors = list(vectors)
        self.masks = masks
        self.sources = list(sources) or self.paths
        if self.vectors:
            self.class_names = list(self.vectors[0].class_names)
        elif masks is not None:
            self.class_names = list(masks.class_names)
        else:
            raise LabelsError("no labels given; pass vector files, mask rasters, globs or folders")
        for v in self.vectors:
            if v.class_names != self.class_names:
                raise LabelsError(
                    f"{v.name} has classes {v.class_names} but the other labels have "
                    f"{self.class_names}; give every source the same classes"
                )
        if masks is not None and masks.class_names != self.class_names:
            raise LabelsError(
                f"the masks ({masks.files[0].name}, ...) have classes {masks.class_names} but the "
                f"vector labels have {self.class_names}; give every source the same classes"
            )

    @property
    def binary(self) -> bool:
        """Whether there is one foreground class (a one-channel, sigmoid model)."""
        return len(self.class_names) == 1

    def class_geometry(self) -> dict[str, str]:
        """``line`` for each class that every vector file labels with lines only, else
        ``polygon`` (mask rasters say nothing: their classes are polygons)."""
        out = dict.fromkeys(self.class_names, "polygon")
        if not self.vectors or self.masks is not None:
            return out
        per_file = [v.class_geometry() for v in self.vectors]
        for name in self.class_names:
            kinds = [g[name] for g in per_file if name in g]
            if kinds and all(k == "line" for k in kinds):
                out[name] = "line"
        return out

    @property
    def paths(self) -> list[str]:
        """Every label file: the vector files, then the masks."""
        return [v.path for v in self.vectors] + (self.masks.paths if self.masks else [])

    @property
    def path(self) -> str:
        """The sources as one string, for messages."""
        shown = ", ".join(self.sources[:3])
        return shown + (f" (+{len(self.sources) - 3} more)" if len(self.sources) > 3 else "")

    def describe(self) -> str:
        """One short line for logs, e.g. ``3 vector files (965 features), 56 masks``."""
        parts = []
        if self.vectors:
            n = sum(len(v) for v in self.vectors)
            files = "file" if len(self.vectors) == 1 else "files"
            parts.append(f"{len(self.vectors)} vector {files} ({n} features)")
        if self.masks is not None:
            parts.append(f"{len(self.masks)} mask{'s' if len(self.masks) != 1 else ''}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"LabelSet({self.describe()}, classes={self.class_names})"

    def for_scene(self, scene: Scene) -> RasterLabels:
        """The labels of one image, with the interface of :class:`RasterLabels`.

        Args:
            scene: The image.

        Returns:
            A :class:`RasterLabels` (vector files only, or no mask for this image) or a
            :class:`RasterMaskLabels`; ``.empty`` when no source touches the image.
        """
        overlay = self._vectors_for(scene)
        if self.masks is None or (overlay is not None and self.masks.match(scene) is None):
            assert overlay is not None  # a LabelSet has vector files, masks or both
            return overlay
        return self.masks.for_scene(scene, overlay=overlay)

    def _vectors_for(self, scene: Scene) -> RasterLabels | None:
        """The union of the vector files' features for one image (None without vector files)."""
        if not self.vectors:
            return None
        per_file = [v.for_scene(scene) for v in self.vectors]
        if len(per_file) == 1:
            return per_file[0]
        offsets = np.cumsum([0] + [len(v._feature_class) for v in self.vectors[:-1]])
        geoms = [np.asarray(r.geometries.array, dtype=object) for r in per_file]
        return RasterLabels(
            gpd.GeoSeries(np.concatenate(geoms), crs=as_crs(scene.crs)),
            np.concatenate([r.class_ids for r in per_file]),
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            name=scene.name,
            class_names=self.class_names,
            source_ids=np.concatenate(
                [r.source_ids + off for r, off in zip(per_file, offsets, strict=True)]
            ),
            polygonal=np.concatenate([r.polygonal for r in per_file]),
        )

    def check(self, scenes: Sequence[Scene]) -> list[str]:
        """Check that some source overlaps at least one image.

        Args:
            scenes: The images.

        Returns:
            The names of the images that some source overlaps (vector features after
            buffering, or a matched mask), in the given order.

        Raises:
            LabelsOutsideRasterError: No source overlaps any image; the message gives where the
                labels are (in the first image's CRS) and where that image is.
            LabelsError: ``scenes`` is empty.
        """
        if not scenes:
            raise LabelsError(f"no images to check {self.path} against; give at least one image")
        rasters = [(s.name, s.crs, s.bounds) for s in scenes]
        found: set[str] = set()
        errors: list[LabelsOutsideRasterError] = []
        for v in self.vectors:
            try:
                found.update(check_overlap(v, rasters))
            except LabelsOutsideRasterError as exc:
                errors.append(exc)
        if self.masks is not None:
            found.update(s.name for s in scenes if self.masks.match(s) is not None)
        if not found:
            if len(self.vectors) == 1 and self.masks is None:
                raise errors[0]
            raise self._outside_error(scenes)
        names = [s.name for s in scenes if s.name in found]
        if not self.vectors and len(names) < len(scenes):
            missing = [s.name for s in scenes if s.name not in found]
            logger.warning(
                "%d of %d images have no mask, so none of their pixels is trained on: %s%s",
                len(missing),
                len(scenes),
                ", ".join(missing[:5]),
                " ..." if len(missing) > 5 else "",
            )
        return names

    def _outside_error(self, scenes: Sequence[Scene]) -> LabelsOutsideRasterError:
        first = scenes[0]
        dst = as_crs(first.crs)
        where = []
        for v in self.vectors[:3]:
            b = v._project(dst).bounds
            where.append(
                f"{v.name} covers {fmt_bounds(b)}" if b else f"{v.name} cannot be reprojected"
            )
        if len(self.vectors) > 3:
            where.append(f"{len(self.vectors) - 3} more vector files")
        if self.masks is not None:
            boxes = self.masks.boxes(dst)
            ok = np.isfinite(boxes).all(axis=1)
            if ok.any():
                b = (
                    boxes[ok, 0].min(),
                    boxes[ok, 1].min(),
                    boxes[ok, 2].max(),
                    boxes[ok, 3].max(),
                )
                where.append(f"the masks cover {fmt_bounds(b)}")
            else:
                where.append("no mask is georeferenced or named after an image")
        more = f" ({len(scenes) - 1} more images not shown)" if len(scenes) > 1 else ""
        return LabelsOutsideRasterError(
            f"none of the labels ({self.describe()}) overlaps any image: {', '.join(where)} in "
            f"{crs_label(dst)}; {first.name} covers {fmt_bounds(first.bounds)}{more}; check "
            "that the labels belong to these images (masks are matched by file name, else by "
            "location)"
        )


__all__ = [
    "MASK_SUFFIXES",
    "VECTOR_SUFFIXES",
    "LabelSet",
    "expand_label_sources",
    "read_label_sources",
]
