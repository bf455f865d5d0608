"""Train a U-Net from imagery plus vector labels.

``train_model(TrainConfig(...))`` reads the labels once, reprojects them to each image's CRS,
splits the images spatially (see :mod:`geounet.training.dataset`), computes per-band normalization from
the training images, and trains with AdamW, a one-cycle or cosine schedule, BCE+Dice (binary) or
CE+Dice (multi-class), flips and 90-degree rotations, and bf16 autocast on CUDA. After each epoch
it validates (IoU, F1, precision, recall), appends a line to ``MODEL.metrics.jsonl``, keeps the
best model by validation IoU (or the last, ``keep``) in ``MODEL.safetensors`` and writes ``MODEL.resume.safetensors``
(weights, optimizer state, epoch; safetensors + JSON, never a pickle) so ``resume`` continues
exactly where an interrupted run stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel (NCCL on CUDA,
gloo on CPU); each rank takes its share of every epoch's windows and only rank 0 writes files.

The run is a chain of stages, each in its own module and testable alone:
:func:`~geounet.training.finish.prepare_outputs` (the files), :func:`~geounet.training.plan.plan_training`
(labels, images, split, pixel size, normalization, network), :class:`~geounet.training.step.TrainStep`
(optimizer, schedule, weight average), :func:`~geounet.training.resume.restore`,
:func:`~geounet.training.epoch.run_epoch` (sampling, steps, validation) with
:class:`~geounet.training.epoch.EpochChooser`, and :func:`~geounet.training.finish.finish_epoch`
(model file, metrics, plot, resume checkpoint).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from geounet.training.config import (
    EpochCallback,
    InfoCallback,
    Progress,
    TrainConfig,
    TrainResult,
)
from geounet.training.distributed import end_distributed, init_distributed
from geounet.training.epoch import EpochChooser, run_epoch
from geounet.training.finish import finish_epoch, prepare_outputs, provenance_base
from geounet.training.plan import plan_training
from geounet.training.resume import restore, resume_config
from geounet.training.step import TrainStep

logger = logging.getLogger(__name__)


def train_model(
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    on_epoch: EpochCallback | None = None,
    on_info: InfoCallback | None = None,
) -> TrainResult:
    """Train (or fine-tune, or resume) a model and write it with its contract and provenance.

    ```python
    import geounet

    cfg = geounet.TrainConfig(
        images=["tiles/*.tif"], labels="buildings.gpkg", out="buildings.safetensors", epochs=10
    )
    result = geounet.train_model(cfg, on_info=print)
    print(result.model, result.kept_epoch, result.best_iou)
    ```

    Under ``torchrun`` each process trains its share (DistributedDataParallel); only the first
    writes files and calls the callbacks.

    Args:
        cfg: The run's options (see `TrainConfig`); ``cfg.init`` fine-tunes a model,
            ``cfg.resume`` continues an interrupted run.
        progress: Called as ``progress(done, total)`` after each training batch of an epoch.
        on_epoch: Called after each epoch with its record: ``epoch``, ``train_loss``,
            ``val_loss``, ``val_iou``, ``val_iou_se`` (its standard error), ``val_f1``,
            ``val_precision``, ``val_recall``, ``per_class``, ``lr``, ``seconds``, ``split``;
            the same record goes to ``MODEL.metrics.jsonl``.
        on_info: Called with one line for each thing the run decides (the validation split,
            the pixel size, the precision); None logs them.

    Returns:
        The files written, the best and the kept epoch, and every epoch's record.

    Raises:
        GeounetError: Bad images, labels, model files or options; nothing half-written is left.
    """
    t_start = time.perf_counter()
    dist = init_distributed(cfg.device)
    files = prepare_outputs(cfg, dist)
    info = on_info if on_info is not None and dist.main else (lambda line: logger.info("%s", line))
    plan = plan_training(cfg, dist, info)
    step = TrainStep(
        plan.net, cfg, device=plan.device, binary=plan.binary, total_steps=plan.total_steps
    )
    config = resume_config(cfg, plan)
    chooser = EpochChooser(cfg.keep)
    start_epoch, history = 0, list[dict[str, Any]]()
    if cfg.resume:
        start_epoch, history = restore(Path(cfg.resume), config, plan, step, chooser)
    step.launch(dist, cfg.precision)
    info(f"precision: {'bf16 autocast' if step.use_amp else 'fp32'} on {plan.device.type}")
    provenance = provenance_base(cfg, plan, step.use_amp)

    if dist.main and not cfg.resume and files.metrics.exists():
        files.metrics.unlink()
    for epoch in range(start_epoch, cfg.epochs):
        result = run_epoch(epoch, cfg, plan, step, dist, progress)
        history.append(result.record)
        kept = chooser.offer(epoch + 1, result.iou, result.iou_se)
        if dist.main:
            finish_epoch(
                files,
                cfg,
                plan,
                step,
                chooser,
                history,
                kept=kept,
                provenance=provenance,
                resume_config=config,
            )
        if on_epoch is not None and dist.main:
            on_epoch(result.record)
    end_distributed(dist)
    return TrainResult(
        model=files.model,
        metrics_file=files.metrics,
        resume_file=files.resume,
        best_epoch=chooser.best_epoch,
        best_iou=chooser.best_iou,
        history=history,
        seconds=time.perf_counter() - t_start,
        kept_epoch=chooser.kept_epoch,
    )
