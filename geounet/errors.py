"""The exception hierarchy of geounet.

Every error the library raises on bad input derives from :class:`GeounetError`. Messages are one
line: what happened, which file or value, and how to fix it. The command line prints them as
``Error: <message>`` and exits 1 without a traceback.
"""

from __future__ import annotations


class GeounetError(Exception):
    """Root of all geounet errors: catch it to handle any bad input.

    The message is one line: what happened, which file or value, and how to fix it (the command
    line prints it as ``Error: <message>`` and exits 1). When one is raised, no partial output
    is left behind.
    """


class TilingError(GeounetError, ValueError):
    """A tile size or overlap that cannot work (e.g. not divisible by the U-Net's 2**depth);
    the message names the nearest sizes that work."""


class RasterReadError(GeounetError, OSError):
    """A scene is missing, empty, unreadable or corrupt, or a remote one cannot be read by
    windows (a server without HTTP range requests)."""


class MissingCRSError(GeounetError, ValueError):
    """A scene has no CRS, no geotransform, only ground control points, or a rotated grid; the
    message gives the GDAL command that fixes it."""


class BandMismatchError(GeounetError, ValueError):
    """A scene's bands (count, dtype, selection) do not fit the model's input contract; the
    message says which ``--bands`` to pass or how to rescale."""


class CheckpointError(GeounetError, ValueError):
    """A model file is missing, corrupt, not a geounet model, or from a newer version."""


class OutputExistsError(GeounetError, FileExistsError):
    """An output exists and ``overwrite`` was not given; nothing was written."""


class OutputError(GeounetError, OSError):
    """An output cannot be written (unwritable directory, unknown format, disk full)."""


class LabelsError(GeounetError, ValueError):
    """Vector labels are missing, empty, unreadable or lack the requested class field."""


class LabelsOutsideRasterError(LabelsError):
    """Vector labels do not overlap any of the rasters."""


class InterruptedRunError(GeounetError):
    """A run was interrupted (SIGINT/SIGTERM); outputs were removed.

    geounet's own functions do not raise it at present: an interrupted run lets
    ``KeyboardInterrupt`` propagate, after removing its partial outputs, and the command line
    exits 130 (143 for SIGTERM).
    """


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
