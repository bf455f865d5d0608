"""Training in float32 against bf16 autocast: validation IoU for the same epochs, and time.

Trains the same seeded run twice (``--precision fp32`` and ``bf16``) on a synthetic scene of
buildings and roads (the test suite's, larger) and prints, per precision, the best validation IoU,
the final training loss and the seconds per epoch. bf16 is only faster where the CPU has native
bf16 (AVX512-BF16 or AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) or on CUDA; elsewhere
PyTorch emulates it and it is slower, which is why ``--precision auto`` then picks float32.

    python benchmarks/precision.py [--epochs 8] [--width 8] [--seeds 0 1 2]
    python benchmarks/precision.py --step        # one width-16 step on 8 x 256 px, fp32 vs bf16
    python benchmarks/precision.py --predict     # inference: bf16 vs fp32 masks and object F1

``--predict`` runs a model (default: the bundled building model) over the held-out images of
``../shared/data/buildings-rgb`` (those of ``benchmarks/buildings.py``) in float32 and under bf16
autocast (``Predictor(precision=...)``), and prints per image the share of pixels whose class
agrees, then pixel and object F1 of both (``geounet.training.evaluate.evaluate`` of each mask, with the
model's polygon options), and one 512 px tile's milliseconds in each. Where the CPU has no native
bf16 it is emulated: the agreement is what a native-bf16 CPU would see up to kernel rounding, the
time is not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one run per seed and precision"
    )
    ap.add_argument(
        "--step", action="store_true", help="only time training steps, fp32 against bf16"
    )
    ap.add_argument(
        "--predict", action="store_true", help="inference: masks and object F1, fp32 against bf16"
    )
    ap.add_argument(
        "--model", default=None, help="--predict: model file (default: the bundled one)"
    )
    ap.add_argument(
        "--images", type=int, default=None, help="--predict: only the first N held-out images"
    )
    args = ap.parse_args()
    if args.step:
        return time_steps()
    if args.predict:
        return compare_inference(args.model, args.images)

    from test_train import synthetic_scene  # the test suite's scene generator

    from geounet.network.unet import cpu_supports_bf16
    from geounet.training.config import TrainConfig
    from geounet.training.train import train_model

    print(f"native bf16 on this CPU: {cpu_supports_bf16()}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        scene, labels = synthetic_scene(d / "a.tif", d / "a.gpkg", seed=1)
        for seed, precision in [(s, p) for s in args.seeds for p in ("fp32", "bf16")]:
            t0 = time.perf_counter()
            r = train_model(
                TrainConfig(
                    images=[str(scene)],
                    labels=str(labels),
                    out=str(d / f"{precision}-{seed}.safetensors"),
                    class_field="kind",
                    classes=["building", "road"],
                    tile_size=64,
                    batch_size=8,
                    epochs=args.epochs,
                    samples_per_epoch=args.samples,
                    width=args.width,
                    depth=3,
                    lr=5e-3,
                    device="cpu",
                    seed=seed,
                    precision=precision,
                    plot=False,
                )
            )
            secs = time.perf_counter() - t0
            print(
                f"seed {seed} {precision}: best val IoU {r.best_iou:.3f} (epoch {r.best_epoch}), final train loss "
                f"{r.history[-1]['train_loss']:.4f}, {secs / args.epochs:.1f} s/epoch"
            )
    return 0


def time_steps(repeats: int = 4) -> int:
    """Milliseconds of one training step (width-16 U-Net, 8 x 256 px, AdamW), fp32 and bf16."""
    import torch

    from geounet.network.unet import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 16, 4).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(8, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(8, 1, 256, 256) > 0.5).float()
    for mode in ("fp32", "bf16", "fp32", "bf16"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                out = net(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(f"{mode}: {', '.join(f'{1000 * t:.0f}' for t in times)} ms per step")
    return 0


def compare_inference(model: str | None, limit: int | None) -> int:
    """bf16 autocast against float32 at inference, on whole held-out images."""
    import rasterio
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from buildings import DATA, held_out, labels_for

    from geounet.errors import LabelsError
    from geounet.network.checkpoint import resolve_model
    from geounet.network.unet import cpu_supports_bf16
    from geounet.prediction.config import PolygonOptions, PredictConfig
    from geounet.prediction.predictor import Predictor
    from geounet.training.evaluate import evaluate

    if not DATA.exists():
        print(f"no data at {DATA}")
        return 1
    model_path = str(resolve_model(model))
    _, images = held_out(DATA)
    images = images[:limit] if limit else images
    print(
        f"model {model_path}; native bf16 on this CPU: {cpu_supports_bf16()}; {len(images)} held-out images"
    )
    predictors = {
        p: Predictor(model_path, device="cpu", precision=p, backend="torch")
        for p in ("fp32", "bf16")
    }  # type: ignore[arg-type]
    opts = PolygonOptions.resolve(None, predictors["fp32"].meta)
    cfg = PredictConfig(
        device="cpu", regularize=opts.regularize, split_m=opts.split_m, min_area_m2=opts.min_area_m2
    )
    same = valid = 0
    sums = {p: {"tp": 0, "fp": 0, "fn": 0, "otp": 0, "ofp": 0, "ofn": 0} for p in predictors}
    seconds = dict.fromkeys(predictors, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for image in images:
            masks = {}
            for p, pred in predictors.items():
                path = Path(tmp) / f"{image.stem}.{p}.tif"
                t0 = time.perf_counter()
                pred.run(image, mask=path, config=PredictConfig(device="cpu", precision=p))  # type: ignore[arg-type]
                seconds[p] += time.perf_counter() - t0
                with rasterio.open(path) as src:
                    masks[p] = src.read(1)
                try:
                    rep = evaluate(image, labels_for(DATA, image), prediction=path, config=cfg)
                except LabelsError as exc:  # an image without buildings
                    print(f"  {image.stem} {p}: not scored ({exc})")
                    continue
                cls = rep["classes"][1]
                px, ob = rep["pixel"][cls], rep["object"].get(cls, {"tp": 0, "fp": 0, "fn": 0})
                for k in ("tp", "fp", "fn"):
                    sums[p][k] += int(px[k])
                    sums[p]["o" + k] += int(ob[k])
            ok = masks["fp32"] != 255
            n_same = int((masks["fp32"][ok] == masks["bf16"][ok]).sum())
            same += n_same
            valid += int(ok.sum())
            print(
                f"  {image.stem:12s} {masks['fp32'].shape[1]}x{masks['fp32'].shape[0]}: "
                f"{100 * n_same / max(1, int(ok.sum())):.3f} % of pixels agree",
                flush=True,
            )
    print(f"pixels that agree: {100 * same / max(1, valid):.3f} % of {valid}")
    for p, a in sums.items():
        f1 = 2 * a["tp"] / max(1, 2 * a["tp"] + a["fp"] + a["fn"])
        of1 = 2 * a["otp"] / max(1, 2 * a["otp"] + a["ofp"] + a["ofn"])
        print(
            f"{p}: pixel F1 {f1:.4f}, object F1 {of1:.4f} (tp/fp/fn {a['otp']}/{a['ofp']}/{a['ofn']}), "
            f"{seconds[p]:.1f} s predicting"
        )
    net = predictors["fp32"].net
    x = torch.randn(1, predictors["fp32"].meta.bands, 512, 512).contiguous(
        memory_format=torch.channels_last
    )
    for p in ("fp32", "bf16", "fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
            net(x)
            t0 = time.perf_counter()
            net(x)
            print(f"one 512 px tile, {p}: {1000 * (time.perf_counter() - t0):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
