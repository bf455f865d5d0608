"""Training in float32 against bf16 autocast: validation IoU for the same epochs, and time.

Trains the same seeded run twice (``--precision fp32`` and ``bf16``) on a synthetic scene of
buildings and roads (the test suite's, larger) and prints, per precision, the best validation IoU,
the final training loss and the seconds per epoch. bf16 is only faster where the CPU has native
bf16 (AVX512-BF16 or AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) or on CUDA; elsewhere
PyTorch emulates it and it is slower, which is why ``--precision auto`` then picks float32.

    python benchmarks/precision.py [--epochs 8] [--width 8] [--seeds 0 1 2]
    python benchmarks/precision.py --step        # one width-16 step on 8 x 256 px, fp32 vs bf16
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
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and precision")
    ap.add_argument("--step", action="store_true", help="only time training steps, fp32 against bf16")
    args = ap.parse_args()
    if args.step:
        return time_steps()

    from test_train import synthetic_scene  # the test suite's scene generator

    from geounet.model import cpu_supports_bf16
    from geounet.train import TrainConfig, train_model

    print(f"native bf16 on this CPU: {cpu_supports_bf16()}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        scene, labels = synthetic_scene(d / "a.tif", d / "a.gpkg", seed=1)
        for seed, precision in [(s, p) for s in args.seeds for p in ("fp32", "bf16")]:
            t0 = time.perf_counter()
            r = train_model(TrainConfig(
                images=[str(scene)], labels=str(labels), out=str(d / f"{precision}-{seed}.safetensors"), class_field="kind",
                classes=["building", "road"], tile_size=64, batch_size=8, epochs=args.epochs,
                samples_per_epoch=args.samples, width=args.width, depth=3, lr=5e-3, device="cpu", seed=seed,
                precision=precision, plot=False,
            ))
            secs = time.perf_counter() - t0
            print(f"seed {seed} {precision}: best val IoU {r.best_iou:.3f} (epoch {r.best_epoch}), final train loss "
                  f"{r.history[-1]['train_loss']:.4f}, {secs / args.epochs:.1f} s/epoch")
    return 0


def time_steps(repeats: int = 4) -> int:
    """Milliseconds of one training step (width-16 U-Net, 8 x 256 px, AdamW), fp32 and bf16."""
    import torch

    from geounet.model import UNet

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


if __name__ == "__main__":
    sys.exit(main())
