"""geounet: segment large geospatial rasters with a U-Net.

Importing the package stays light (no torch); the stages live in their own modules:
:mod:`geounet.tiling`, :mod:`geounet.blend`, :mod:`geounet.raster`, :mod:`geounet.cog`,
:mod:`geounet.vectorize`, :mod:`geounet.model`, :mod:`geounet.checkpoint`, :mod:`geounet.predict`.
"""

from geounet.errors import (
    BandMismatchError,
    CheckpointError,
    GeounetError,
    InterruptedRunError,
    LabelsError,
    LabelsOutsideRasterError,
    MissingCRSError,
    OutputError,
    OutputExistsError,
    RasterReadError,
    TilingError,
)

__version__ = "0.1.0"

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
    "__version__",
]
