"""The resume checkpoint (``MODEL.resume.safetensors``): write it after an epoch, restore a run from it.

It holds the raw weights, the optimizer state, the weight average and the run's state (epoch,
global step, the chooser's figures, the history, the normalization, the options that must not
change): safetensors plus JSON metadata, never a pickle. :func:`restore` puts all of it back so
that ``resume`` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from geounet.errors import CheckpointError
from geounet.geodata.raster import AtomicOutputs
from geounet.training.config import TrainConfig
from geounet.training.epoch import EpochChooser
from geounet.training.plan import TrainPlan
from geounet.training.step import TrainStep

RESUME_KEY = "geounet_resume"


def _save_resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    average: nn.Module | None = None,
) -> None:
    module = getattr(model, "module", model)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if average is not None:
        tensors.update(
            {f"ema/{k}": v.detach().cpu().contiguous() for k, v in average.state_dict().items()}
        )
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim/{pid}/{key}"] = t.detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in opt["param_groups"]
    ]
    meta = {**state, "param_groups": groups}
    with AtomicOutputs() as outputs:
        save_file(
            tensors,
            str(outputs.reserve(path, overwrite=True)),
            metadata={RESUME_KEY: json.dumps(meta)},
        )


def _load_resume(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Raw weights, optimizer state and run state; the weight average is in ``state["ema_weights"]``
    (None when the run kept none)."""
    if not path.exists():
        raise CheckpointError(
            f"{path}: resume checkpoint not found; it is written as MODEL.resume.safetensors after each epoch"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(RESUME_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except Exception as exc:
        raise CheckpointError(
            f"{path.name} is not a geounet resume checkpoint ({str(exc).splitlines()[0][:120]})"
        ) from exc
    if raw is None:
        raise CheckpointError(
            f"{path.name} is not a geounet resume checkpoint (no {RESUME_KEY} metadata)"
        )
    state = json.loads(raw)
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    state["ema_weights"] = {
        k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")
    } or None
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, pid, key = k.split("/", 2)
            optim.setdefault(pid, {})[key] = v
    return model_state, optim, state


def resume_config(cfg: TrainConfig, plan: TrainPlan) -> dict[str, Any]:
    """The options a resumed run must share with the run that wrote the checkpoint."""
    return {
        "tile_size": cfg.tile_size,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "samples": plan.samples,
        "world_size": plan.world,
        "augment": plan.augment.names,
        "scale_jitter": plan.augment.scale,
        "gsd": plan.gsd,
        "separation_m": plan.separation_m,
        "contact_weight": cfg.contact_weight,
        "ema": cfg.ema,
        "core_m": plan.core_m,
        "core_only": cfg.core_only,
    }


def restore(
    path: Path, config: dict[str, Any], plan: TrainPlan, step: TrainStep, chooser: EpochChooser
) -> tuple[int, list[dict[str, Any]]]:
    """Put the state saved in ``path`` back into the network, the optimizer, the weight
    average, the chooser and the model's normalization; returns the epochs done and the history.

    Raises:
        CheckpointError: No such file, not a resume checkpoint, options that differ from
            ``config`` (:func:`resume_config`), or weights that do not fit the network.
    """
    model_state, optim_state, state = _load_resume(path)
    for key, value in config.items():
        saved = state.get("config", {}).get(
            key, {"ema": 0.0, "core_m": 0.0, "core_only": False}.get(key)
        )  # files from before these
        if saved != value:
            raise CheckpointError(
                f"{path.name} was trained with {key}={saved}, this run has {value}; "
                f"resume with the same options"
            )
    try:
        step.net.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path.name}: weights do not fit this model ({str(exc).splitlines()[0][:120]})"
        ) from exc
    optimizer = step.optimizer
    opt_sd = optimizer.state_dict()
    opt_sd["state"] = {int(pid): v for pid, v in optim_state.items()}
    for g, saved in zip(opt_sd["param_groups"], state["param_groups"], strict=True):
        g.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict(opt_sd)
    step.step = int(state["step"])
    chooser.best_iou, chooser.best_epoch = float(state["best_iou"]), int(state["best_epoch"])
    chooser.best_se = float(state.get("best_se", float("nan")))
    chooser.kept_epoch = int(state.get("kept_epoch", chooser.best_epoch))
    meta = plan.meta
    meta.mean, meta.std = state["mean"], state["std"]
    meta.normalization = state.get("normalization", meta.normalization)
    if step.average is not None:  # the config check above guarantees the file has the average
        step.average.net.load_state_dict(state["ema_weights"], strict=True)
    return int(state["epoch"]), list(state["history"])


def write_resume(
    path: Path,
    epoch: int,
    step: TrainStep,
    chooser: EpochChooser,
    history: list[dict[str, Any]],
    plan: TrainPlan,
    config: dict[str, Any],
) -> None:
    """Write the checkpoint of the run after ``epoch`` epochs (1-based), atomically."""
    meta = plan.meta
    _save_resume(
        path,
        step.net,
        step.optimizer,
        {
            "epoch": epoch,
            "step": step.step,
            "best_iou": chooser.best_iou,
            "best_epoch": chooser.best_epoch,
            "best_se": chooser.best_se,
            "kept_epoch": chooser.kept_epoch,
            "history": history,
            "mean": meta.mean,
            "normalization": meta.normalization,
            "std": meta.std,
            "config": config,
        },
        average=step.average.net if step.average is not None else None,
    )
