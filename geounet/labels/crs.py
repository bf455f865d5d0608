"""CRS and grid helpers of the label modules: parse and name a CRS, print bounds, the bounds of
a pixel grid, and metres in CRS units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import pyproj
from rasterio.crs import CRS
from rasterio.transform import Affine

from geounet.errors import LabelsError
from geounet.geodata.raster import short_error

#: Anything pyproj understands as a CRS: a rasterio or pyproj CRS, ``"EPSG:32633"``, 4326, WKT.
CRSInput: TypeAlias = CRS | pyproj.CRS | str | int


def as_crs(crs: CRSInput) -> pyproj.CRS:
    """A pyproj CRS; LabelsError for one pyproj does not know."""
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise LabelsError(
            f"unknown CRS {crs!r} ({short_error(exc)}); give e.g. EPSG:32633"
        ) from exc


def crs_label(crs: pyproj.CRS) -> str:
    """A CRS's authority code (``EPSG:32633``), else its name, for messages."""
    authority = crs.to_authority(min_confidence=90)
    return ":".join(authority) if authority else crs.name


def fmt_bounds(bounds: Sequence[float]) -> str:
    """Bounds rounded to about a thousandth of their extent."""
    span = max(abs(bounds[2] - bounds[0]), abs(bounds[3] - bounds[1]), 1e-9)
    digits = min(8, max(0, 3 - math.floor(math.log10(span))))
    return ",".join(f"{v:.{digits}f}" for v in bounds)


def grid_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a pixel grid."""
    xs, ys = zip(
        *(transform * (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))),
        strict=True,
    )
    return (min(xs), min(ys), max(xs), max(ys))


def metres_to_units(crs: pyproj.CRS, metres: float, *, lat: float) -> float:
    """A distance in metres in CRS units (for a geographic CRS, a generous bound in degrees)."""
    if metres == 0:
        return 0.0
    if crs.is_geographic:
        # Degrees of longitude shrink with cos(latitude); overestimate, this only widens a query.
        return 1.5 * metres / (111_320.0 * max(math.cos(math.radians(lat)), 0.01))
    axes = crs.axis_info
    factor = axes[0].unit_conversion_factor if axes and axes[0].unit_conversion_factor else 1.0
    return metres / factor
