"""The label spec (:class:`LabelSpec`) and the class ids it gives vector features.

A spec names the attribute that holds each feature's class, the class names (class id =
position + 1; 0 is background) and the sizes lines and points are buffered to. The class-id
constants here are shared by vector and mask labels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd

from geounet.errors import LabelsError

logger = logging.getLogger(__name__)


#: Class ids burn into uint8 masks, and 255 is the masks' nodata value.
MAX_CLASSES = 254

#: Name of the single class of a binary task when ``LabelSpec.classes`` does not name it.
BINARY_CLASS_NAME = "foreground"

#: Mask value of pixels excluded from training (mask nodata, outside every mask); equals
#: ``geounet.training.dataset.IGNORE_INDEX``.
IGNORE_VALUE = 255

#: Fields or values listed in one error message.
MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """How to turn vector features into class ids and areas.

    Attributes:
        class_field: The attribute that names each feature's class; None for a binary task in
            which every feature is foreground.
        classes: Foreground class names in order (class id = position + 1; 0 is background).
            Features whose value is not listed are dropped. None: every value found, sorted
            (numerically when all values are integers, else as strings). Values are compared as
            strings, so an integer field takes ``classes=("1", "2")``. Without ``class_field``
            it may hold one name, the name of the binary class.
        line_width_m: Full width, in metres, that LineStrings are buffered to (> 0).
        point_radius_m: Radius, in metres, that Points are buffered to (> 0).

    Raises:
        LabelsError: Empty or duplicate ``classes``, several classes without ``class_field``, or a
            width or radius that is not a positive number.
    """

    class_field: str | None = None
    classes: tuple[str, ...] | None = None
    line_width_m: float = 4.0
    point_radius_m: float = 2.0

    def __post_init__(self) -> None:
        if self.classes is not None:
            names = tuple(str(c).strip() for c in self.classes)
            object.__setattr__(self, "classes", names)
            if not names:
                raise LabelsError("classes is empty; list at least one class name or pass None")
            dupes = sorted({c for c in names if names.count(c) > 1})
            if dupes:
                raise LabelsError(f"classes lists {dupes[0]!r} twice; give each class once")
            if len(names) > MAX_CLASSES:
                raise LabelsError(
                    f"classes has {len(names)} names; at most {MAX_CLASSES} fit a uint8 mask"
                )
            if self.class_field is None and len(names) > 1:
                raise LabelsError(
                    f"classes has {len(names)} names but class_field is not set; "
                    "name the attribute that holds each feature's class"
                )
        for attr in ("line_width_m", "point_radius_m"):
            value = getattr(self, attr)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise LabelsError(f"{attr} must be a positive number of metres, got {value!r}")


def _value_text(value: Any) -> str | None:
    """A class value as a string; None for a missing value."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return None
        if float(value).is_integer():  # integer fields with nulls read as float: 2.0 -> "2"
            return str(int(value))
    text = str(value).strip()
    return text or None


def _sort_classes(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def class_ids(
    frame: gpd.GeoDataFrame, spec: LabelSpec, name: str
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Class id (1-based, 0 = dropped) of each feature, and the class names."""
    n = len(frame)
    if spec.class_field is None:
        names = list(spec.classes) if spec.classes else [BINARY_CLASS_NAME]
        return np.ones(n, dtype=np.int64), names
    field = spec.class_field
    texts = [_value_text(v) for v in frame[field].tolist()]
    found = {t for t in texts if t is not None}
    missing = texts.count(None)
    if missing:
        logger.warning("%s: %d features have no %r value and are ignored", name, missing, field)
    if not found:
        raise LabelsError(f"{name}: field {field!r} is empty in every feature; fill in the classes")
    if spec.classes is not None:
        names = list(spec.classes)
    else:
        names = _sort_classes(found)
        if len(names) > MAX_CLASSES:
            raise LabelsError(
                f"{name}: field {field!r} has {len(names)} distinct values, more than "
                f"{MAX_CLASSES} classes; pick the classes to use (LabelSpec.classes)"
            )
    lookup = {c: i for i, c in enumerate(names, start=1)}
    ids = np.array([lookup.get(t, 0) if t is not None else 0 for t in texts], dtype=np.int64)
    if not ids.any():
        values = _sort_classes(found)
        listed = ", ".join(values[:MAX_LISTED]) + (" ..." if len(values) > MAX_LISTED else "")
        raise LabelsError(
            f"{name}: no feature has a {field!r} value among classes ({', '.join(names)}); "
            f"values found: {listed}"
        )
    unused = sorted(found - set(names))
    if unused:
        logger.info(
            "%s: %d features with %r values not in classes are ignored (%s)",
            name,
            int(((ids == 0) & np.array([t is not None for t in texts])).sum()),
            field,
            ", ".join(unused[:MAX_LISTED]),
        )
    return ids, names


__all__ = ["BINARY_CLASS_NAME", "IGNORE_VALUE", "MAX_CLASSES", "LabelSpec"]
