"""What an epoch leaves on disk: the kept weights with their provenance, the metrics, the plot.

:func:`prepare_outputs` checks before any work that the model file may be written and names the
files beside it (:class:`RunFiles`); :func:`finish_epoch` writes them after each epoch on the
main rank: ``MODEL.safetensors`` when the chooser keeps the epoch, ``MODEL.metrics.jsonl``,
``MODEL.metrics.png`` (:func:`plot_history`) and the resume checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geounet import __version__
from geounet.errors import GeounetError, OutputExistsError
from geounet.geodata.raster import AtomicOutputs
from geounet.network.checkpoint import save_model
from geounet.training.config import KEEP_CHOICES, TrainConfig
from geounet.training.distributed import Dist
from geounet.training.epoch import EpochChooser
from geounet.training.plan import TrainPlan
from geounet.training.resume import write_resume
from geounet.training.step import TrainStep

logger = logging.getLogger(__name__)


def _resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.safetensors")


def _metrics_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.jsonl")


def _plot_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.png")


@dataclass
class RunFiles:
    """The files a run writes: the model and, beside it, its resume checkpoint, metrics and plot."""

    model: Path
    resume: Path
    metrics: Path
    plot: Path

    @classmethod
    def beside(cls, out: Path) -> RunFiles:
        return cls(out, _resume_path(out), _metrics_path(out), _plot_path(out))


def prepare_outputs(cfg: TrainConfig, dist: Dist) -> RunFiles:
    """Check, before any work, that the run may write its model file; name the files it writes.

    Raises:
        GeounetError: An unknown ``keep``.
        OutputExistsError: The model file exists, without ``overwrite`` or ``resume``.
    """
    out = Path(cfg.out)
    files = RunFiles.beside(out)
    if cfg.keep not in KEEP_CHOICES:
        raise GeounetError(f"keep={cfg.keep!r}: use auto, best or last")
    if out.exists() and not (cfg.overwrite or cfg.resume):
        raise OutputExistsError(
            f"{out} exists; pass --overwrite to replace it (or --resume to continue)"
        )
    if dist.main:  # fail early on an unwritable directory (only the writing rank checks)
        probe = AtomicOutputs()
        probe.reserve(out, overwrite=True)
        probe.cleanup()
    return files


def provenance_base(cfg: TrainConfig, plan: TrainPlan, use_amp: bool) -> dict[str, Any]:
    """What the model file records of how it was trained (the epoch's figures join it)."""
    return {
        "images": [str(p) for p in plan.train_paths],
        "val_images": [str(p) for p in plan.val_paths],
        "labels": list(plan.labels.sources),
        "class_field": cfg.class_field,
        "crs": plan.entries[0].scene.crs.to_string(),
        "tile_size": cfg.tile_size,
        "batch_size": cfg.batch_size,
        "samples_per_epoch": plan.samples,
        "lr": cfg.lr,
        "schedule": cfg.schedule,
        "augment": plan.augment.names,
        "scale_jitter": plan.augment.scale,
        "separation_m": plan.separation_m,
        "contact_weight": cfg.contact_weight,
        "core_m": plan.core_m,
        **({"core_only": True} if cfg.core_only else {}),
        "ema": cfg.ema,
        "normalization": cfg.normalization if not cfg.init else "from --init",
        "precision": "bf16" if use_amp else "fp32",
        "split": plan.split.summary(),
        "seed": cfg.seed,
        "init": cfg.init,
        "world_size": plan.world,
        "geounet": __version__,
        "trained": True,
    }


def finish_epoch(
    files: RunFiles,
    cfg: TrainConfig,
    plan: TrainPlan,
    step: TrainStep,
    chooser: EpochChooser,
    history: list[dict[str, Any]],
    *,
    kept: bool,
    provenance: dict[str, Any],
    resume_config: dict[str, Any],
) -> None:
    """Write what the last epoch of ``history`` leaves (main rank only): the model file when
    the chooser ``kept`` it, the metrics, the plot and the resume checkpoint."""
    record = history[-1]
    epoch = record["epoch"]
    meta = plan.meta
    if kept:
        meta.provenance = {
            **provenance,
            "epochs": epoch,
            "epochs_planned": cfg.epochs,
            "kept": cfg.keep,
            "best_epoch": chooser.best_epoch,
            "metrics": {
                k: v for k, v in record.items() if k.startswith("val_") or k == "train_loss"
            },
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with AtomicOutputs() as outputs:
            save_model(step.kept, meta, outputs.reserve(files.model, overwrite=True))
    with files.metrics.open("w") as f:
        for r in history:
            f.write(json.dumps(r) + "\n")
    if cfg.plot:
        plot_history(history, files.plot, kept=chooser.kept_epoch)
    write_resume(files.resume, epoch, step, chooser, history, plan, resume_config)


def plot_history(history: Sequence[dict[str, Any]], path: Path, kept: int = 0) -> bool:
    """Draw the training curves (loss; validation IoU with its standard error, F1, precision,
    recall; a line at the ``kept`` epoch) to a PNG.

    Written atomically. Needs matplotlib (a dependency of geounet); returns False and writes
    nothing when it cannot be imported.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib not installed: no %s", path.name)
        return False
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in history], dtype=float)

    for key, style in (
        ("val_iou", "o-"),
        ("val_f1", "s-"),
        ("val_precision", ":"),
        ("val_recall", "--"),
    ):
        (line,) = ax2.plot(epochs, series(key), style, label=key[4:])
        se = series("val_iou_se")
        if key == "val_iou" and np.isfinite(se).any():
            iou = series(key)
            ax2.fill_between(
                epochs,
                iou - se,
                iou + se,
                color=line.get_color(),
                alpha=0.2,
                lw=0,
                label="iou ± 1 s.e.",
            )
    if kept:
        ax2.axvline(kept, color="0.35", ls="-.", lw=1, label=f"kept: epoch {kept}")
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation (foreground)")
    ax2.legend(loc="best", fontsize="small", framealpha=0.6)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    with AtomicOutputs() as outputs:
        fig.savefig(outputs.reserve(path, overwrite=True), format="png")
    return True
