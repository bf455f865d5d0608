"""The stages of a training run, each alone: the plan, one step, one epoch, the finish.

``train_model`` chains them (see :mod:`geounet.training.train`); these tests drive each on a
small synthetic scene (the one of tests/test_train.py) without the others' loop around it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train import small_config, synthetic_scene

from geounet.network.checkpoint import read_meta
from geounet.training.config import TrainConfig
from geounet.training.distributed import Dist
from geounet.training.epoch import EpochChooser, run_epoch
from geounet.training.finish import (
    RunFiles,
    finish_epoch,
    prepare_outputs,
    provenance_base,
)
from geounet.training.plan import TrainPlan, plan_training
from geounet.training.resume import RESUME_KEY, restore, resume_config
from geounet.training.step import TrainStep

KW: dict[str, object] = {
    "classes": ["building"],
    "epochs": 2,
    "samples_per_epoch": 16,
    "width": 4,
    "depth": 2,
    "tile_size": 32,
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stages")
    img, lab = synthetic_scene(d / "a.tif", d / "a.gpkg", seed=1, size=192)
    return {"a": img, "la": lab, "dir": d}


def config(scene: dict[str, Path], out: Path, **kw: object) -> TrainConfig:
    return small_config(scene, out, **{**KW, **kw})


def plan_of(cfg: TrainConfig, lines: list[str] | None = None) -> TrainPlan:
    return plan_training(cfg, Dist(), (lines if lines is not None else []).append)


def step_of(cfg: TrainConfig, plan: TrainPlan) -> TrainStep:
    step = TrainStep(
        plan.net, cfg, device=plan.device, binary=plan.binary, total_steps=plan.total_steps
    )
    step.launch(Dist(), cfg.precision)
    return step


def test_the_plan_splits_sizes_and_builds_the_network(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    lines: list[str] = []
    cfg = config(scene, tmp_path / "m.safetensors")
    plan = plan_of(cfg, lines)
    assert plan.binary and plan.class_names == ["building"] and plan.n_out == 1
    assert plan.mask_names == ["background", "building"] and plan.foreground == ["building"]
    # One image, split by blocks: validation windows exist, and the training side is left.
    assert len(plan.entries) == 1 and plan.val_plan
    assert not plan.entries[0].all_val and plan.entries[0].val_blocks
    assert plan.split.description in lines
    assert plan.gsd == 1.0 and plan.entries[0].scale == 1.0  # the scene's 1 m pixels
    assert any(line.startswith("model pixel size 1 m") for line in lines)
    assert plan.separation_m == 1.0 and plan.entries[0].contact_px == 1  # one class: 1 m seams
    assert plan.samples == 16 and plan.steps_per_epoch == 2 and plan.total_steps == 4
    meta = plan.meta
    assert meta.arch_args == {"in_channels": 3, "classes": 1, "width": 4, "depth": 2}
    assert meta.classes == ["building"] and len(meta.mean) == 3 and meta.dtype == "uint8"
    assert meta.tile_size == 256 and meta.overlap == 32
    x = torch.zeros((2, 3, 32, 32))
    with torch.no_grad():
        assert plan.net.eval()(x).shape == (2, 1, 32, 32)
    # The network is seeded: a second plan builds the same weights.
    again = plan_of(cfg)
    for a, b in zip(plan.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_plan_of_several_classes_and_a_coarser_model(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(scene, tmp_path / "m.safetensors", classes=["building", "road"], gsd=2.0)
    plan = plan_of(cfg)
    assert not plan.binary and plan.n_out == 3 and plan.separation_m == 0.0
    assert plan.gsd == 2.0 and plan.entries[0].scale == 2.0
    assert plan.meta.classes == ["background", "building", "road"]
    assert plan.meta.class_geometry == {"road": "line"}  # labelled with lines only
    with torch.no_grad():
        assert plan.net.eval()(torch.zeros((1, 3, 32, 32))).shape == (1, 3, 32, 32)


def test_fine_tuning_keeps_the_init_models_class_name_and_pixel_size(
    scene: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--init`` a one-class model with labels that name no class: the class keeps the init
    model's name (not "foreground"); a --gsd that differs from the init model's says it is ignored."""
    from geounet.network.checkpoint import create_model, save_model

    net, meta = create_model(bands=3, classes=["roof"], width=4, depth=2)
    meta.gsd = 1.0
    init = tmp_path / "roofs.safetensors"
    save_model(net, meta, init)
    import geopandas as gpd

    labels = gpd.read_file(scene["la"])
    roofs = tmp_path / "roofs.gpkg"
    labels[labels["kind"] == "building"][["geometry"]].to_file(roofs)  # no class attribute
    cfg = config(
        scene,
        tmp_path / "m.safetensors",
        labels=str(roofs),
        class_field=None,
        classes=None,
        init=str(init),
        gsd=2.0,
    )
    with caplog.at_level("WARNING"):
        plan = plan_of(cfg)
    assert plan.class_names == ["roof"] and plan.meta.classes == ["roof"]
    assert plan.gsd == 1.0 and "--gsd 2 is ignored" in caplog.text


def test_one_step_changes_the_weights_and_returns_a_finite_loss(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(scene, tmp_path / "m.safetensors")
    plan = plan_of(cfg)
    step = step_of(cfg, plan)
    before = {k: v.clone() for k, v in plan.net.state_dict().items()}
    avg_before = {k: v.clone() for k, v in step.kept.state_dict().items()}
    x = torch.rand((4, 3, 32, 32))
    y = (torch.rand((4, 32, 32)) > 0.8).to(torch.uint8)
    loss = step(x, y)
    assert loss.dim() == 0 and math.isfinite(float(loss)) and not loss.requires_grad
    assert step.step == 1
    changed = [k for k, v in plan.net.state_dict().items() if not torch.equal(v, before[k])]
    assert "head.weight" in changed
    # The kept weights are the running average, which moved towards the new weights too.
    assert step.kept is not plan.net
    assert not torch.equal(step.kept.state_dict()["head.weight"], avg_before["head.weight"])
    assert step.optimizer.param_groups[0]["lr"] > 0


def test_without_a_weight_average_the_raw_weights_are_kept(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(scene, tmp_path / "m.safetensors", ema=0.0)
    plan = plan_of(cfg)
    step = step_of(cfg, plan)
    assert step.average is None and step.kept is plan.net and step.judged is plan.net


def test_an_epoch_trains_validates_and_records(scene: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(scene, tmp_path / "m.safetensors")
    plan = plan_of(cfg)
    step = step_of(cfg, plan)
    seen: list[tuple[int, int]] = []
    result = run_epoch(0, cfg, plan, step, Dist(), lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)] and step.step == 2
    record = result.record
    assert record["epoch"] == 1 and record["split"] == plan.split.description
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert set(record["per_class"]) == {"background", "building"}
    assert record["val_iou"] == (None if math.isnan(result.iou) else round(result.iou, 6))


def test_the_finish_writes_the_model_metrics_and_resume_checkpoint(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "m.safetensors"
    cfg = config(scene, out, plot=False)
    files = prepare_outputs(cfg, Dist())
    assert files == RunFiles.beside(out) and files.resume.name == "m.resume.safetensors"
    assert not out.exists()  # the probe leaves nothing behind
    plan = plan_of(cfg)
    step = step_of(cfg, plan)
    step(torch.rand((2, 3, 32, 32)), (torch.rand((2, 32, 32)) > 0.8).to(torch.uint8))
    chooser = EpochChooser(cfg.keep)
    history = [{"epoch": 1, "train_loss": 0.5, "val_iou": 0.25, "val_f1": 0.4, "lr": 1e-3}]
    kept = chooser.offer(1, 0.25, float("nan"))
    provenance = provenance_base(cfg, plan, step.use_amp)
    config_record = resume_config(cfg, plan)
    finish_epoch(
        files,
        cfg,
        plan,
        step,
        chooser,
        history,
        kept=kept,
        provenance=provenance,
        resume_config=config_record,
    )
    meta = read_meta(out)
    prov = meta.provenance
    assert prov["epochs"] == 1 and prov["epochs_planned"] == 2 and prov["best_epoch"] == 1
    assert prov["metrics"] == {"train_loss": 0.5, "val_iou": 0.25, "val_f1": 0.4}
    assert prov["images"] == [str(scene["a"])] and prov["trained"] is True
    assert prov["samples_per_epoch"] == 16 and "finished_at" in prov
    assert [json.loads(line) for line in files.metrics.read_text().splitlines()] == history
    assert not files.plot.exists()
    with safe_open(str(files.resume), framework="pt") as f:
        state = json.loads((f.metadata() or {})[RESUME_KEY])
        names = list(f.keys())
    assert state["epoch"] == 1 and state["step"] == 1 and state["config"] == config_record
    assert any(n.startswith("ema/") for n in names) and any(n.startswith("model/") for n in names)

    # An epoch the chooser does not keep leaves the model file as it was.
    before = out.read_bytes()
    history.append({**history[0], "epoch": 2, "val_iou": 0.1})
    kept = chooser.offer(2, 0.1, float("nan"))
    assert not kept
    finish_epoch(
        files,
        cfg,
        plan,
        step,
        chooser,
        history,
        kept=kept,
        provenance=provenance,
        resume_config=config_record,
    )
    assert out.read_bytes() == before and len(files.metrics.read_text().splitlines()) == 2

    # The checkpoint restores into a fresh plan and step: the trained weights, not the seeded.
    plan2 = plan_of(cfg)
    step2 = step_of(cfg, plan2)
    assert not torch.equal(
        plan2.net.state_dict()["head.weight"], plan.net.state_dict()["head.weight"]
    )
    chooser2 = EpochChooser(cfg.keep)
    done, history2 = restore(files.resume, resume_config(cfg, plan2), plan2, step2, chooser2)
    assert done == 2 and history2 == history and chooser2.best_epoch == 1 and step2.step == 1
    for a, b in zip(plan.net.state_dict().values(), plan2.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
