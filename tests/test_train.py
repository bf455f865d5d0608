from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from conftest import SHARED_DATA, requires_shared_data
from rasterio.features import rasterize
from rasterio.transform import from_origin
from safetensors.torch import load_file
from torch import nn

from geounet.errors import GeounetError, LabelsError, LabelsOutsideRasterError
from geounet.geodata.raster import open_scene
from geounet.labels.spec import LabelSpec
from geounet.labels.vector import read_labels
from geounet.network.checkpoint import load_model, read_meta
from geounet.network.unet import UNet
from geounet.prediction.config import PredictConfig
from geounet.prediction.predictor import predict_raster
from geounet.training.config import TrainConfig
from geounet.training.dataset import ImageEntry, SpatialSplit, WindowDataset, plan_epoch
from geounet.training.epoch import EpochChooser
from geounet.training.evaluate import evaluate
from geounet.training.metrics import cell_iou_sums, iou_standard_error
from geounet.training.plan import prior_bias
from geounet.training.resume import _load_resume
from geounet.training.step import WeightAverage, lr_at
from geounet.training.train import train_model

ORIGIN = (500000.0, 5000000.0)


def synthetic_scene(
    path: Path, labels_path: Path, *, seed: int, size: int = 384, crs: str = "EPSG:32633"
) -> tuple[Path, Path]:
    """Rectangles (buildings, red) and lines (roads, blue) on a noisy green-brown ground."""
    rng = np.random.default_rng(seed)
    transform = from_origin(ORIGIN[0], ORIGIN[1], 1.0, 1.0)
    feats: list[tuple[shapely.Geometry, str]] = []
    for _ in range(3):  # roads: long straight lines, 4 m wide once buffered
        if rng.random() < 0.5:
            y = ORIGIN[1] - rng.uniform(20, size - 20)
            feats.append(
                (
                    shapely.LineString(
                        [(ORIGIN[0], y), (ORIGIN[0] + size, y + rng.uniform(-30, 30))]
                    ),
                    "road",
                )
            )
        else:
            x = ORIGIN[0] + rng.uniform(20, size - 20)
            feats.append(
                (
                    shapely.LineString(
                        [(x, ORIGIN[1]), (x + rng.uniform(-30, 30), ORIGIN[1] - size)]
                    ),
                    "road",
                )
            )
    roads = shapely.union_all([g.buffer(4) for g, _ in feats])
    placed: list[shapely.Geometry] = []
    for _ in range(400):
        if len(placed) >= 25:
            break
        w, h = rng.uniform(8, 24, size=2)
        x0 = ORIGIN[0] + rng.uniform(2, size - w - 2)
        y0 = ORIGIN[1] - rng.uniform(h + 2, size - 2)
        box = shapely.box(x0, y0, x0 + w, y0 + h)
        if box.buffer(3).intersects(roads) or any(box.buffer(3).intersects(p) for p in placed):
            continue
        placed.append(box)
    feats += [(b, "building") for b in placed]
    img = np.empty((3, size, size), dtype=np.float32)
    base = rng.normal(0, 1, (3, size // 16 + 2, size // 16 + 2))
    yy, xx = np.mgrid[0:size, 0:size] / 16.0
    low = np.stack([base[c][yy.astype(int), xx.astype(int)] for c in range(3)])
    img[:] = np.array([110, 120, 70])[:, None, None] + 12 * low + rng.normal(0, 10, (3, size, size))
    road_mask = rasterize(
        [(g.buffer(2), 1) for g, k in feats if k == "road"],
        out_shape=(size, size),
        transform=transform,
    ).astype(bool)
    bld_mask = rasterize(
        [(g, 1) for g, k in feats if k == "building"], out_shape=(size, size), transform=transform
    ).astype(bool)
    for c, v in enumerate((70, 80, 170)):
        img[c][road_mask] = v + rng.normal(0, 8, road_mask.sum())
    for c, v in enumerate((200, 60, 50)):
        img[c][bld_mask] = v + rng.normal(0, 8, bld_mask.sum())
    data = np.clip(img, 1, 255).astype(np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as dst:
        dst.write(data)
    frame = gpd.GeoDataFrame(
        {"kind": [k for _, k in feats]}, geometry=[g for g, _ in feats], crs=crs
    )
    frame.to_file(labels_path)
    return path, labels_path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train")
    a, la = synthetic_scene(d / "a.tif", d / "a.gpkg", seed=1)
    b, lb = synthetic_scene(d / "b.tif", d / "b.gpkg", seed=2)
    return {"a": a, "la": la, "b": b, "lb": lb, "dir": d}


def small_config(scenes: dict[str, Path], out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "images": [str(scenes["a"])],
        "labels": str(scenes["la"]),
        "out": str(out),
        "class_field": "kind",
        "classes": ["building", "road"],
        "line_width_m": 4.0,
        "tile_size": 64,
        "batch_size": 8,
        "epochs": 8,
        "samples_per_epoch": 96,
        "width": 8,
        "depth": 3,
        "lr": 5e-3,
        "device": "cpu",
        "seed": 0,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(scenes: dict[str, Path]) -> tuple[Path, object]:
    out = scenes["dir"] / "model.safetensors"
    result = train_model(small_config(scenes, out))
    return out, result


def test_training_reaches_iou_and_records_everything(trained: tuple[Path, object]) -> None:
    out, result = trained
    assert result.best_iou > 0.8, result.history  # type: ignore[attr-defined]
    meta = read_meta(out)
    assert meta.classes == ["background", "building", "road"] and not meta.binary
    assert meta.provenance["trained"] and meta.provenance["labels"] == [str(out.parent / "a.gpkg")]
    # --keep auto: the file holds the latest epoch within one standard error of the best.
    hist = result.history  # type: ignore[attr-defined]
    kept, best = hist[result.kept_epoch - 1], hist[result.best_epoch - 1]  # type: ignore[attr-defined]
    assert result.kept_epoch >= result.best_epoch and best["val_iou"] == pytest.approx(
        result.best_iou, abs=1e-6
    )  # type: ignore[attr-defined]
    assert best["val_iou_se"] > 0 and kept["val_iou"] >= best["val_iou"] - best["val_iou_se"]
    assert meta.provenance["metrics"]["val_iou"] == pytest.approx(kept["val_iou"], abs=1e-6)
    assert meta.provenance["epochs"] == result.kept_epoch and meta.provenance["kept"] == "auto"  # type: ignore[attr-defined]
    assert meta.provenance["separation_m"] == 0  # several classes: no background seams by default
    # Each scene stretched by its own percentiles, then standardized by the training pixels' stats;
    # the typical stretch of the training images (here one) is recorded for the ONNX export.
    from geounet.geodata.normalize import image_stretch

    lo, hi = image_stretch(out.parent / "a.tif", [1, 2, 3])
    assert meta.normalization == {
        "mode": "scene",
        "low": 2.0,
        "high": 98.0,
        "typical_lo": lo.tolist(),
        "typical_hi": hi.tolist(),
    }
    assert len(meta.mean) == 3 and all(0.05 < s < 1 for s in meta.std)
    lines = [json.loads(x) for x in result.metrics_file.read_text().splitlines()]  # type: ignore[attr-defined]
    assert [r["epoch"] for r in lines] == list(range(1, 9))
    assert {"train_loss", "val_loss", "val_iou", "val_f1", "per_class"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_evaluate_on_another_scene_agrees(
    trained: tuple[Path, object], scenes: dict[str, Path], tmp_path: Path
) -> None:
    out, result = trained
    report = evaluate(
        scenes["b"],
        scenes["lb"],
        model=out,
        spec=LabelSpec(class_field="kind", classes=("building", "road"), line_width_m=4.0),
        config=PredictConfig(tile_size=128, overlap=32, device="cpu"),
    )
    ious = [report["pixel"][c]["iou"] for c in ("building", "road")]
    assert min(ious) > 0.7 and np.mean(ious) > 0.8, report["pixel"]
    assert abs(np.mean(ious) - result.best_iou) < 0.12  # type: ignore[attr-defined]
    # Buildings are polygons: object metrics; roads are lines: none.
    assert set(report["object"]) == {"building"}
    assert report["object"]["building"]["f1"] > 0.7
    # The same through a saved prediction (mask GeoTIFF), and through vectors.
    mask = tmp_path / "mask.tif"
    vec = tmp_path / "pred.gpkg"
    predict_raster(
        scenes["b"],
        vec,
        model=out,
        mask=mask,
        config=PredictConfig(tile_size=128, overlap=32, device="cpu"),
    )
    by_mask = evaluate(
        scenes["b"],
        scenes["lb"],
        prediction=mask,
        spec=LabelSpec(class_field="kind", classes=("building", "road")),
    )
    assert by_mask["pixel"]["building"]["iou"] == pytest.approx(
        report["pixel"]["building"]["iou"], abs=1e-6
    )
    by_vec = evaluate(
        scenes["b"],
        scenes["lb"],
        prediction=vec,
        spec=LabelSpec(class_field="kind", classes=("building", "road")),
    )
    assert by_vec["pixel"]["building"]["iou"] == pytest.approx(
        report["pixel"]["building"]["iou"], abs=0.02
    )


def test_spatial_split_never_leaks(scenes: dict[str, Path]) -> None:
    labels = read_labels(scenes["la"], LabelSpec(class_field="kind"))
    scene = open_scene(scenes["a"])
    entries = [ImageEntry(scene, (1, 2, 3), labels.for_scene(scene), [])]
    split = SpatialSplit(entries, tile_size=64, val_fraction=0.2, seed=0)
    val = [
        (int(w.row_off), int(w.col_off), int(w.height), int(w.width)) for w in entries[0].val_blocks
    ]
    assert val and split.kind in {"blocks", "band"} and split.gap in (64, 16, 0)
    gap = split.gap
    for epoch in range(3):
        plan = plan_epoch(split, samples=200, epoch=epoch, seed=0)
        for s in plan:
            for r0, c0, h, w in val:
                # At least the split's gap between any training window and any validation block.
                size = s.size or 64
                gap_r = max(r0 - (s.row + size), s.row - (r0 + h))
                gap_c = max(c0 - (s.col + size), s.col - (c0 + w))
                assert max(gap_r, gap_c) >= gap, (s, (r0, c0, h, w))
    assert plan_epoch(split, samples=50, epoch=1, seed=0) == plan_epoch(
        split, samples=50, epoch=1, seed=0
    )
    assert plan_epoch(split, samples=50, epoch=1, seed=0) != plan_epoch(
        split, samples=50, epoch=2, seed=0
    )
    for s in split.val_windows(100, 0):
        assert any(
            r0 <= s.row and s.row + 64 <= r0 + h and c0 <= s.col and s.col + 64 <= c0 + w
            for r0, c0, h, w in val
        )


def test_positive_sampling_sees_sparse_classes(scenes: dict[str, Path]) -> None:
    labels = read_labels(scenes["la"], LabelSpec(class_field="kind"))
    scene = open_scene(scenes["a"])
    entries = [ImageEntry(scene, (1, 2, 3), labels.for_scene(scene), [])]
    split = SpatialSplit(entries, tile_size=64, val_fraction=0.0, seed=0)
    ds_pos = WindowDataset(
        entries,
        plan_epoch(split, samples=60, epoch=0, seed=0, positive_fraction=1.0, augment=False),
        tile_size=64,
        mean=[0, 0, 0],
        std=[1, 1, 1],
    )
    ds_rand = WindowDataset(
        entries,
        plan_epoch(split, samples=60, epoch=0, seed=0, positive_fraction=0.0, augment=False),
        tile_size=64,
        mean=[0, 0, 0],
        std=[1, 1, 1],
    )
    pos = np.mean([(ds_pos[i][1] == 1).float().mean().item() for i in range(60)])
    rnd = np.mean([(ds_rand[i][1] == 1).float().mean().item() for i in range(60)])
    assert pos > 1.5 * rnd


def test_tiles_in_utm_with_labels_in_wgs84_land_on_the_right_pixels(tmp_path: Path) -> None:
    # A folder of 4 chips cut from one UTM mosaic; one label file in EPSG:4326.
    folder = tmp_path / "chips"
    folder.mkdir()
    size = 96
    boxes_utm = [
        shapely.box(500010, 4999930, 500040, 4999950),
        shapely.box(500110, 4999850, 500150, 4999900),
    ]
    for i in range(2):
        for j in range(2):
            t = from_origin(ORIGIN[0] + j * size, ORIGIN[1] - i * size, 1.0, 1.0)
            band = rasterize(
                [(b, 200) for b in boxes_utm], out_shape=(size, size), transform=t, dtype="uint8"
            )
            data = np.stack([np.maximum(band, 30), np.full_like(band, 60), np.full_like(band, 90)])
            with rasterio.open(
                folder / f"chip_{i}_{j}.tif",
                "w",
                driver="GTiff",
                width=size,
                height=size,
                count=3,
                dtype="uint8",
                crs="EPSG:32633",
                transform=t,
            ) as dst:
                dst.write(data)
    labels_path = tmp_path / "labels.geojson"
    gpd.GeoDataFrame(geometry=boxes_utm, crs="EPSG:32633").to_crs(4326).to_file(labels_path)
    labels = read_labels(labels_path)
    for chip in sorted(folder.glob("*.tif")):
        scene = open_scene(chip)
        entry = ImageEntry(scene, (1, 2, 3), labels.for_scene(scene), [])
        ds = WindowDataset([entry], [], tile_size=size, mean=[0, 0, 0], std=[1, 1, 1])
        from geounet.training.dataset import Sample

        _, target = ds.read(Sample(0, 0, 0))
        with rasterio.open(chip) as src:
            painted = src.read(1) == 200
        # Reprojection through lon/lat moves box edges by far less than a pixel.
        assert (target.astype(bool) != painted).sum() <= 0.02 * max(
            painted.sum(), 1
        ) + 2 * size**0.5
    out = tmp_path / "m.safetensors"
    result = train_model(
        TrainConfig(
            images=[str(folder)],
            labels=str(labels_path),
            out=str(out),
            tile_size=32,
            batch_size=4,
            epochs=1,
            samples_per_epoch=8,
            width=4,
            depth=2,
            device="cpu",
        )
    )
    assert result.model.exists()
    assert read_meta(out).provenance["crs"] == "EPSG:32633"
    assert len(read_meta(out).provenance["images"]) == 4


def test_resume_reaches_the_same_weights(scenes: dict[str, Path], tmp_path: Path) -> None:
    kw = {"epochs": 3, "samples_per_epoch": 16, "width": 4, "depth": 2, "tile_size": 32}
    full = tmp_path / "full.safetensors"
    train_model(small_config(scenes, full, **kw))

    part = tmp_path / "part.safetensors"

    class Stop(Exception):
        pass

    def stop_after_first(record: dict[str, object]) -> None:
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_model(small_config(scenes, part, **kw), on_epoch=stop_after_first)
    resume = part.with_name("part.resume.safetensors")
    assert resume.exists()
    train_model(small_config(scenes, part, resume=str(resume), **kw))
    a = load_file(str(full.with_name("full.resume.safetensors")))
    b = load_file(str(resume))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    hist_a = [json.loads(x) for x in full.with_name("full.metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(x) for x in part.with_name("part.metrics.jsonl").read_text().splitlines()]
    assert [h["val_iou"] for h in hist_a] == [h["val_iou"] for h in hist_b]


def test_resume_with_other_options_is_refused(scenes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    train_model(
        small_config(scenes, out, epochs=1, samples_per_epoch=8, width=4, depth=2, tile_size=32)
    )
    with pytest.raises(GeounetError, match="trained with batch_size=8, this run has 4"):
        train_model(
            small_config(
                scenes,
                out,
                epochs=1,
                samples_per_epoch=8,
                width=4,
                depth=2,
                tile_size=32,
                batch_size=4,
                resume=str(out.with_name("m.resume.safetensors")),
            )
        )


def test_fine_tune_from_init(
    trained: tuple[Path, object], scenes: dict[str, Path], tmp_path: Path
) -> None:
    out, _ = trained
    tuned = tmp_path / "tuned.safetensors"
    # At the default rate (2e-3), not small_config's from-scratch 5e-3: two steps of fresh Adam
    # moments at 5e-3 knock this trained model from IoU 0.985 to 0.58 on scene b.
    result = train_model(
        small_config(
            scenes,
            tuned,
            init=str(out),
            epochs=1,
            samples_per_epoch=16,
            images=[str(scenes["b"])],
            labels=str(scenes["lb"]),
            lr=2e-3,
        )
    )
    assert result.best_iou > 0.7
    assert read_meta(tuned).mean == read_meta(out).mean  # the contract comes from the initial model


def sixteen_bit_copy(src_path: Path, dst_path: Path) -> Path:
    """The scene as uint16, raw values x 40 + 3000 (what a 16-bit sensor delivers)."""
    with rasterio.open(src_path) as src:
        profile, data = src.profile, src.read()
    profile.update(dtype="uint16")
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data.astype(np.uint16) * 40 + 3000)
    return dst_path


def test_a_uint8_model_fine_tunes_on_uint16_images(
    trained: tuple[Path, object], scenes: dict[str, Path], tmp_path: Path
) -> None:
    # Each scene is stretched by its own percentiles (normalization "scene"), so a 16-bit copy
    # reaches the network as the 8-bit scene did: fine-tuning a uint8 model on it must work (as
    # predicting with it does) and do as well as on the 8-bit scene (test_fine_tune_from_init).
    out, _ = trained
    b16 = sixteen_bit_copy(scenes["b"], tmp_path / "b16.tif")
    tuned = tmp_path / "tuned16.safetensors"
    lines: list[str] = []
    result = train_model(
        small_config(
            scenes,
            tuned,
            init=str(out),
            epochs=1,
            samples_per_epoch=16,
            images=[str(b16)],
            labels=str(scenes["lb"]),
            lr=2e-3,
        ),
        on_info=lines.append,
    )
    assert result.best_iou > 0.7
    assert read_meta(tuned).dtype == "uint16"  # what it was tuned on
    assert any("uint16 and uint8" in line for line in lines)
    # 8- and 16-bit images together, from scratch, also train.
    mixed = tmp_path / "mixed.safetensors"
    train_model(
        small_config(
            scenes,
            mixed,
            epochs=1,
            samples_per_epoch=8,
            width=4,
            depth=2,
            tile_size=32,
            images=[str(scenes["a"]), str(b16)],
            labels=[str(scenes["la"]), str(scenes["lb"])],
        )
    )
    assert read_meta(mixed).dtype == "uint8"  # a tie: the first image's


def test_fixed_scaling_refuses_mixed_data_types(scenes: dict[str, Path], tmp_path: Path) -> None:
    # normalization "dataset" keeps raw values' meaning: an 8- and a 16-bit image cannot share it.
    b16 = sixteen_bit_copy(scenes["b"], tmp_path / "b16.tif")
    out = tmp_path / "m.safetensors"
    with pytest.raises(
        GeounetError,
        match=r"b16.tif is uint16 but the other images .* are uint8; train on images of one data type",
    ):
        train_model(
            small_config(
                scenes,
                out,
                normalization="dataset",
                images=[str(scenes["a"]), str(b16)],
                labels=[str(scenes["la"]), str(scenes["lb"])],
            )
        )
    assert not out.exists()


def test_label_errors(scenes: dict[str, Path], tmp_path: Path) -> None:
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(10, 10, 11, 11)], crs=4326).to_file(far)
    with pytest.raises(LabelsOutsideRasterError, match="does not overlap any image"):
        train_model(
            small_config(
                scenes, tmp_path / "m.safetensors", labels=str(far), class_field=None, classes=None
            )
        )
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"kind": []}, geometry=[], crs=32633).to_file(empty)
    with pytest.raises(LabelsError, match="no features"):
        train_model(small_config(scenes, tmp_path / "m.safetensors", labels=str(empty)))
    with pytest.raises(LabelsError, match="nope"):
        train_model(small_config(scenes, tmp_path / "m.safetensors", class_field="nope"))
    assert not (tmp_path / "m.safetensors").exists()


def test_lr_schedules() -> None:
    for kind in ("onecycle", "cosine"):
        lrs = [lr_at(s, 100, 1e-2, kind) for s in range(100)]  # type: ignore[arg-type]
        assert max(lrs) == pytest.approx(1e-2, rel=0.05) and lrs[-1] < 1e-3 and lrs[0] < 1e-2
    # The one-cycle warm-up is short: the peak by a tenth of the run, not a third.
    lrs = [lr_at(s, 100, 1e-2, "onecycle") for s in range(100)]
    assert int(np.argmax(lrs)) == 10 and lrs[0] == pytest.approx(1e-3)


@pytest.mark.parametrize("classes", [1, 3])
def test_prior_bias_starts_at_the_foreground_prior(classes: int) -> None:
    torch.manual_seed(0)
    net = prior_bias(UNet(3, classes, width=4, depth=2), 0.1)
    net.eval()
    with torch.no_grad():
        # Any input: the head's bias sets the output; the features only move it a little.
        head_only = net.head.bias.detach().view(1, -1, 1, 1).expand(1, classes, 2, 2)
        if classes == 1:
            fg = torch.sigmoid(head_only)[:, 0]
        else:
            fg = 1 - head_only.softmax(dim=1)[:, 0]
    assert torch.allclose(fg, torch.full_like(fg, 0.1), atol=1e-6)
    # Through the whole untrained network too: its output starts near the prior, not at 0.5.
    with torch.no_grad():
        p = net(torch.zeros(1, 3, 16, 16))
        mean_fg = (torch.sigmoid(p) if classes == 1 else 1 - p.softmax(dim=1)[:, :1]).mean()
    assert float(mean_fg) < 0.3


@pytest.mark.slow
def test_ddp_two_processes_with_gloo(scenes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "geounet",
        "-q",
        "train",
        "--images",
        str(scenes["a"]),
        "--labels",
        str(scenes["la"]),
        "--class-field",
        "kind",
        "--classes",
        "building,road",
        "--tile-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--samples-per-epoch",
        "16",
        "--width",
        "4",
        "--depth",
        "2",
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_meta(out)
    assert meta.provenance["world_size"] == 2
    lines = out.with_name("ddp.metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 wrote
    r = predict_raster(
        scenes["b"],
        tmp_path / "p.gpkg",
        model=out,
        config=PredictConfig(tile_size=64, overlap=16, device="cpu"),
    )
    assert r.tiles > 0 and (tmp_path / "p.gpkg").exists()


@requires_shared_data
def test_real_spacenet_buildings_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "vegas.safetensors"
    result = train_model(
        TrainConfig(
            images=[str(SHARED_DATA / "buildings_pan.tif")],
            labels=str(SHARED_DATA / "buildings.geojson"),
            out=str(out),
            classes=["building"],
            tile_size=128,
            batch_size=8,
            epochs=2,
            samples_per_epoch=32,
            width=8,
            depth=4,
            device="cpu",
        )
    )
    meta = read_meta(out)
    assert meta.dtype == "uint16" and meta.bands == 1 and meta.classes == ["building"]
    assert meta.gsd == pytest.approx(0.5, rel=0.01)
    assert meta.provenance["separation_m"] == 1.0  # one class (buildings): separation on
    assert len(result.history) == 2 and result.history[-1]["val_iou"] is not None
    report = evaluate(
        SHARED_DATA / "buildings_pan.tif",
        SHARED_DATA / "buildings.geojson",
        model=out,
        config=PredictConfig(device="cpu"),
    )
    assert report["pixel"]["foreground"]["tp"] + report["pixel"]["foreground"]["fn"] > 0


@requires_shared_data
def test_real_spacenet_roads_geographic(tmp_path: Path) -> None:
    out = tmp_path / "roads.safetensors"
    result = train_model(
        TrainConfig(
            images=[str(SHARED_DATA / "roads_pan.tif")],
            labels=str(SHARED_DATA / "roads.geojson"),
            out=str(out),
            classes=["road"],
            line_width_m=6.0,
            tile_size=128,
            batch_size=8,
            epochs=1,
            samples_per_epoch=16,
            width=4,
            depth=4,
            device="cpu",
        )
    )
    assert read_meta(out).provenance["crs"] == "EPSG:4326"
    assert result.history[0]["val_loss"] > 0


def test_cli_takes_several_images_and_labels_after_one_flag(
    scenes: dict[str, Path], tmp_path: Path
) -> None:
    # As a shell expands `--images *.tif`: several values after one flag, masks as labels too.
    from click.testing import CliRunner

    from geounet.cli.main import cli

    mask = tmp_path / "masks"
    mask.mkdir()
    with rasterio.open(scenes["b"]) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8"}
        labels = read_labels(scenes["lb"], LabelSpec(class_field="kind"))
        target = labels.for_scene(open_scene(scenes["b"])).rasterize(
            rasterio.windows.Window(0, 0, src.width, src.height)
        )
    with rasterio.open(mask / "b.tif", "w", **profile) as dst:
        dst.write((target == 1).astype("uint8")[None])  # buildings only, as a 0/1 mask
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(
        cli,
        [
            "train",
            "--images",
            str(scenes["a"]),
            str(scenes["b"]),
            "--labels",
            str(scenes["la"]),
            str(mask),
            "--classes",
            "building",
            "--class-field",
            "kind",
            "--tile-size",
            "64",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--samples-per-epoch",
            "8",
            "--width",
            "4",
            "--depth",
            "2",
            "--device",
            "cpu",
            "-o",
            str(out),
            "--keep",
            "last",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    from geounet.network.unet import cpu_supports_bf16

    # --precision auto: bf16 autocast on CPUs with native bf16, float32 on the others
    want = "precision: bf16 autocast on cpu" if cpu_supports_bf16() else "precision: fp32"
    assert "validation:" in r.stderr and want in r.stderr
    record = json.loads(out.with_name("cli.metrics.jsonl").read_text().splitlines()[0])
    # the epoch line gives validation IoU with its standard error
    assert (
        record["val_iou_se"] is not None
        and f"val IoU {record['val_iou']:.3f} ± {record['val_iou_se']:.3f}" in r.stderr
    )
    meta = read_meta(out)
    assert meta.provenance["kept"] == "last"
    assert meta.provenance["images"] == [str(scenes["a"]), str(scenes["b"])]
    assert str(mask) in meta.provenance["labels"] and meta.classes == ["building"]
    assert meta.provenance["split"]["kind"] in {"blocks", "band"}
    record = json.loads(out.with_name("cli.metrics.jsonl").read_text().splitlines()[0])
    assert record["split"].startswith("validation:")
    png = out.with_name("cli.metrics.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@requires_shared_data
def test_atlanta_scene_gets_a_split_and_a_stretch(tmp_path: Path) -> None:
    from geounet.training.dataset import fit_normalization

    labels = read_labels(SHARED_DATA / "buildings.geojson")
    scene = open_scene(SHARED_DATA / "buildings_pan.tif")
    entries = [ImageEntry(scene, (1,), labels.for_scene(scene), [])]
    split = SpatialSplit(entries, tile_size=256, val_fraction=0.2, seed=0)
    assert len(plan_epoch(split, samples=64, epoch=0, seed=0)) == 64
    # 16-bit with nodata 0: the stretch comes from valid pixels only, within the data's range.
    _record, mean, std = fit_normalization(entries, "scene", 2.0, 98.0)
    assert 54 <= entries[0].lo[0] < entries[0].hi[0] <= 6615
    assert 0 < mean[0] < 1 and 0 < std[0] < 1


def test_weight_average_known_answer() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    avg = WeightAverage(net, 0.5)
    before = {k: v.clone() for k, v in avg.net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(4.0)
        net[1].num_batches_tracked.fill_(7)
    avg.update(net, step=100)  # ramp over: decay 0.5
    after = avg.net.state_dict()
    torch.testing.assert_close(after["0.weight"], before["0.weight"] + 0.5)
    torch.testing.assert_close(after["1.running_mean"], (before["1.running_mean"] + 4.0) / 2)
    assert int(after["1.num_batches_tracked"]) == 7  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in avg.net.parameters())
    assert WeightAverage.decay_at(0, 0.99) == pytest.approx(0.1)  # the random start fades fast
    assert WeightAverage.decay_at(10_000, 0.99) == 0.99
    with pytest.raises(ValueError):
        WeightAverage(net, 1.0)


def test_keep_last_saves_the_end_of_the_schedule(scenes: dict[str, Path], tmp_path: Path) -> None:
    # A high learning rate on a tiny net: validation IoU peaks early and falls (epoch 1 here),
    # so "best" and "last" are different epochs and the file must hold the last one.
    out = tmp_path / "last.safetensors"
    result = train_model(
        small_config(
            scenes,
            out,
            epochs=4,
            samples_per_epoch=16,
            width=4,
            depth=2,
            tile_size=32,
            lr=5e-2,
            keep="last",
        )
    )
    ious = [h["val_iou"] for h in result.history]
    assert result.kept_epoch == 4 and result.best_epoch == 1 + int(np.argmax(ious)) < 4, ious
    saved, meta = load_model(out)
    assert meta.provenance["kept"] == "last" and meta.provenance["epochs"] == 4
    assert meta.provenance["best_epoch"] == result.best_epoch
    assert meta.provenance["metrics"]["val_iou"] == pytest.approx(ious[-1], abs=1e-6)
    _, _, state = _load_resume(out.with_name("last.resume.safetensors"))
    for k, v in state["ema_weights"].items():  # the final average, not the best epoch's
        torch.testing.assert_close(saved.state_dict()[k].float(), v.float(), msg=k)
    with pytest.raises(GeounetError, match="keep="):
        train_model(small_config(scenes, tmp_path / "x.safetensors", keep="first"))


def test_the_saved_model_is_the_weight_average(scenes: dict[str, Path], tmp_path: Path) -> None:
    kw = {"epochs": 1, "samples_per_epoch": 16, "width": 4, "depth": 2, "tile_size": 32}
    out = tmp_path / "avg.safetensors"
    train_model(small_config(scenes, out, **kw))
    weights, _, state = _load_resume(out.with_name("avg.resume.safetensors"))
    saved, meta = load_model(out)
    assert meta.provenance["ema"] == 0.99 and state["ema_weights"] is not None
    saved_sd = saved.state_dict()
    differs = 0
    for k, v in state["ema_weights"].items():
        torch.testing.assert_close(saved_sd[k].float(), v.float(), msg=k)
        differs += int(not torch.equal(v, weights[k]))
    assert differs > 0  # the average is not the last step's weights

    raw = tmp_path / "raw.safetensors"
    train_model(small_config(scenes, raw, ema=0.0, **kw))
    weights, _, state = _load_resume(raw.with_name("raw.resume.safetensors"))
    assert state["ema_weights"] is None
    for k, v in load_model(raw)[0].state_dict().items():
        torch.testing.assert_close(v.float(), weights[k].float(), msg=k)


def test_epoch_chooser_keeps_the_latest_epoch_the_validation_cannot_tell_from_the_best() -> None:
    ious = [
        0.30,
        0.28,
        0.20,
        0.26,
        0.24,
    ]  # the best first, then within 0.05 of it but for epoch 3 and 5
    chosen = {}
    for keep in ("auto", "best", "last"):
        c = EpochChooser(keep)
        saves = [c.offer(e, iou, 0.05) for e, iou in enumerate(ious, start=1)]
        chosen[keep] = (saves, c.kept_epoch, c.best_epoch)
    assert chosen["auto"] == ([True, True, False, True, False], 4, 1)
    assert chosen["best"] == ([True, False, False, False, False], 1, 1)
    assert chosen["last"] == ([True] * 5, 5, 1)
    # The error is that of the best epoch: a new best with a tight error ends the tolerance.
    c = EpochChooser("auto")
    for e, (iou, se) in enumerate([(0.30, 0.10), (0.35, 0.01), (0.33, 0.10)], start=1):
        c.offer(e, iou, se)
    assert (c.best_epoch, c.kept_epoch) == (2, 2)
    # No estimate of the error (one cell): auto is best; an undefined IoU never wins.
    c = EpochChooser("auto")
    for e, iou in enumerate([0.3, 0.29, float("nan")], start=1):
        c.offer(e, iou, float("nan"))
    assert (c.best_epoch, c.kept_epoch) == (1, 1)


def test_cell_sums_and_the_iou_standard_error_match_a_direct_count_and_a_bootstrap() -> None:
    # One 256 px window = 2 x 2 cells of 128; a labelled square in one cell, predicted shifted.
    y = torch.zeros((1, 256, 256), dtype=torch.long)
    y[0, 10:50, 10:50] = 1
    logits = torch.full((1, 1, 256, 256), -5.0)
    logits[0, 0, 20:60, 10:50] = 5.0
    logits[0, 0, 200:210, 200:210] = 5.0  # a false positive in another cell
    s = cell_iou_sums(logits, y, 2, True).numpy()
    inter, union = np.array([30 * 40, 0, 0, 0]), np.array([50 * 40, 0, 0, 100])
    assert s[1].tolist() == pytest.approx(
        [inter.sum(), union.sum(), (inter**2).sum(), (union**2).sum(), (inter * union).sum(), 4]
    )
    assert s[1, 0] / s[1, 1] == pytest.approx(1200 / 2100)

    # The delta-method error of sum(I) / sum(U) agrees with a bootstrap over the cells.
    rng = np.random.default_rng(1)
    u = rng.integers(0, 4000, size=200).astype(float)
    i = u * rng.uniform(0.2, 0.9, size=200)
    sums = np.array([[i.sum(), u.sum(), (i**2).sum(), (u**2).sum(), (i * u).sum(), len(i)]])
    se = iou_standard_error(sums)[0]
    boot = [i[k].sum() / u[k].sum() for k in rng.integers(0, len(i), size=(2000, len(i)))]
    assert se == pytest.approx(np.std(boot), rel=0.1)
    assert np.isnan(
        iou_standard_error(np.array([[5.0, 10.0, 25.0, 100.0, 50.0, 1.0]]))[0]
    )  # one cell: no estimate


def test_the_training_plot_shows_the_error_band_and_the_kept_epoch(tmp_path: Path) -> None:
    from geounet.training.finish import plot_history

    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "val_iou": 0.3 + 0.01 * e,
            "val_iou_se": 0.05,
            "val_f1": 0.4,
            "val_precision": 0.5,
            "val_recall": None,
        }
        for e in range(1, 6)
    ]
    old = [
        {k: v for k, v in r.items() if k != "val_iou_se"} for r in history
    ]  # metrics files from before the error
    assert plot_history(history, tmp_path / "a.png", kept=4) and plot_history(
        old, tmp_path / "b.png"
    )
    a, b = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a[:8] == b[:8] == b"\x89PNG\r\n\x1a\n" and a != b
