"""The exception hierarchy of geounet.

Every error the library raises on bad input derives from :class:`GeounetError`. Messages are one
line: what happened, which file or value, and how to fix it. The command line prints them as
``Error: <message>`` and exits 1 without a traceback.
"""

from __future__ import annotations


class GeounetError(Exception):
    """Root of all geounet errors."""


class TilingError(GeounetError, ValueError):
    """A tile size or overlap that cannot work (e.g. not divisible by the U-Net's 2**depth)."""


class RasterReadError(GeounetError, OSError):
    """A scene is missing, unreadable or corrupt."""


class MissingCRSError(GeounetError, ValueError):
    """A scene has no CRS or no geotransform."""


class BandMismatchError(GeounetError, ValueError):
    """A scene's bands (count, dtype, selection) do not fit the model's input contract."""


class CheckpointError(GeounetError, ValueError):
    """A model file is missing, corrupt, not a geounet model, or from a newer version."""


class OutputExistsError(GeounetError, FileExistsError):
    """An output exists and ``overwrite`` was not given."""


class OutputError(GeounetError, OSError):
    """An output cannot be written (unwritable directory, unknown format, disk full)."""


class LabelsError(GeounetError, ValueError):
    """Vector labels are missing, empty, unreadable or lack the requested class field."""


class LabelsOutsideRasterError(LabelsError):
    """Vector labels do not overlap any of the rasters."""


class InterruptedRunError(GeounetError):
    """A run was interrupted (SIGINT/SIGTERM); outputs were removed."""


__all__ = [
    "BandMismatchError",
    "CheckpointError",
    "GeounetError",
    "InterruptedRunError",
    "LabelsError",
    "LabelsOutsideRasterError",
    "MissingCRSError",
    "OutputError",
    "OutputExistsError",
    "RasterReadError",
    "TilingError",
]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove partial outputs."""
