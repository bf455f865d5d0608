"""geounet: segment large geospatial rasters with a U-Net.

The public API, importable from here (loaded on first use, so ``import geounet`` stays light:
no torch until a name that needs it is touched):

Prediction
    :func:`predict_raster`, :class:`Predictor`, :class:`PredictConfig`, :class:`PredictResult`
Training and evaluation
    :func:`train_model`, :class:`TrainConfig`, :class:`TrainResult`, :func:`evaluate`
Archives
    :func:`run_batch`, :class:`BatchSummary`
Models
    :func:`load_model`, :func:`read_meta`, :func:`create_model`, :func:`save_model`,
    :class:`ModelMeta`, :class:`UNet`, :func:`export_onnx`, :func:`bundled_models`
Data
    :func:`make_scene` (synthetic scenes with labels), :func:`read_labels`
Errors
    :class:`GeounetError` and its subclasses.

The package tree follows the pipeline, bottom up: :mod:`geounet.geodata` (reading and writing
rasters, tiling, normalization, styles), :mod:`geounet.labels` (vector and mask labels),
:mod:`geounet.vectors` (masks to polygons and centerlines), :mod:`geounet.network` (the U-Net,
its files, ONNX export and runtimes), :mod:`geounet.prediction` (tiled, blended, streaming
prediction), :mod:`geounet.training` (training and evaluation), :mod:`geounet.archive`
(many scenes, STAC) and :mod:`geounet.cli` (the ``geounet`` command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "predict_raster": "geounet.prediction.predictor",
    "Predictor": "geounet.prediction.predictor",
    "PredictConfig": "geounet.prediction.config",
    "PredictResult": "geounet.prediction.config",
    "train_model": "geounet.training.train",
    "TrainConfig": "geounet.training.config",
    "TrainResult": "geounet.training.config",
    "evaluate": "geounet.training.evaluate",
    "run_batch": "geounet.archive.batch",
    "BatchSummary": "geounet.archive.batch",
    "load_model": "geounet.network.checkpoint",
    "read_meta": "geounet.network.checkpoint",
    "create_model": "geounet.network.checkpoint",
    "save_model": "geounet.network.checkpoint",
    "bundled_models": "geounet.network.checkpoint",
    "ModelMeta": "geounet.network.contract",
    "UNet": "geounet.network.unet",
    "export_onnx": "geounet.network.export",
    "make_scene": "geounet.synthetic",
    "read_labels": "geounet.labels.vector",
}

if TYPE_CHECKING:
    from geounet.archive.batch import BatchSummary, run_batch
    from geounet.labels.vector import read_labels
    from geounet.network.checkpoint import (
        bundled_models,
        create_model,
        load_model,
        read_meta,
        save_model,
    )
    from geounet.network.contract import ModelMeta
    from geounet.network.export import export_onnx
    from geounet.network.unet import UNet
    from geounet.prediction.config import PredictConfig, PredictResult
    from geounet.prediction.predictor import Predictor, predict_raster
    from geounet.synthetic import make_scene
    from geounet.training.config import TrainConfig, TrainResult
    from geounet.training.evaluate import evaluate
    from geounet.training.train import train_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geounet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BandMismatchError",
    "BatchSummary",
    "CheckpointError",
    "GeounetError",
    "InterruptedRunError",
    "LabelsError",
    "LabelsOutsideRasterError",
    "MissingCRSError",
    "ModelMeta",
    "OutputError",
    "OutputExistsError",
    "PredictConfig",
    "PredictResult",
    "Predictor",
    "RasterReadError",
    "TilingError",
    "TrainConfig",
    "TrainResult",
    "UNet",
    "__version__",
    "bundled_models",
    "create_model",
    "evaluate",
    "export_onnx",
    "load_model",
    "make_scene",
    "predict_raster",
    "read_labels",
    "read_meta",
    "run_batch",
    "save_model",
    "train_model",
]
