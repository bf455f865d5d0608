"""The classic U-Net, built in a loop from ``width`` and ``depth``.

Level ``i`` (0 = full resolution) has ``width * 2**i`` channels. Each level is a double
3x3 convolution + BatchNorm + ReLU; the encoder goes down with 2x2 max-pooling, the decoder up
with 2x2 transposed convolutions, concatenating the encoder's features (skip connections), and a
1x1 convolution gives the class logits. ``width=64, depth=4`` is the original architecture
(31.0M parameters for 3 bands and 2 classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geounet.errors import GeounetError


class DoubleConv(nn.Sequential):
    """(3x3 convolution => BatchNorm => ReLU) * 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """2x2 transposed convolution, concatenation with the skip features, double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, pad it to ``skip``'s size if odd sizes left it short, and fuse."""
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        fused = torch.cat([skip, x], dim=1)
        del skip, x  # at inference, free them before the convolutions (a third less peak memory)
        out: torch.Tensor = self.conv(fused)
        return out


class UNet(nn.Module):
    """U-Net for semantic segmentation.

    Args:
        in_channels: Input bands.
        classes: Output channels: 1 for a binary task (sigmoid), else one per class including
            background (softmax).
        width: Channels of the first level; level ``i`` has ``width * 2**i``.
        depth: Number of down (and up) steps; tiles must be divisible by ``2**depth``.

    Input: float (N, in_channels, H, W). Output: logits (N, classes, H, W).

    Attributes:
        in_channels: Input bands.
        classes: Output channels.
        width: Channels of the first level.
        depth: Number of down (and up) steps.
        inc: The first level's double convolution (3x3 convolution, BatchNorm, ReLU, twice).
        downs: The encoder: ``depth`` steps of 2x2 max-pooling and a double convolution.
        ups: The decoder: ``depth`` steps of a 2x2 transposed convolution, concatenation with
            the encoder's features at that level (the skip connection) and a double convolution.
        head: The 1x1 convolution that gives the logits.

    Raises:
        ValueError: A size that is not positive.
    """

    def __init__(self, in_channels: int, classes: int, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or classes < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"U-Net needs positive in_channels, classes, width and depth; got "
                f"{in_channels}, {classes}, {width}, {depth}"
            )
        self.in_channels = in_channels
        self.classes = classes
        self.width = width
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, chans[0])
        self.downs = nn.ModuleList(Down(chans[i], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(chans[i + 1], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], classes, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Input sizes must be divisible by this for exact skip alignment (``2**depth``)."""
        return int(2**self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images.

        Args:
            x: Float (N, in_channels, H, W), standardized as the model's contract says; H and W
                multiples of ``2**depth``.

        Returns:
            Logits (N, classes, H, W).
        """
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits: torch.Tensor = self.head(y)
        return logits


#: Architectures by name, as stored in model files (no class is ever looked up by string).
ARCHITECTURES: dict[str, type[UNet]] = {"unet": UNet}


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Recompute BatchNorm running statistics as the plain average over ``batches``; eval mode.

    Gives an untrained (seeded) network realistic activations, so its logits have structure: used
    by tests and benchmarks that need a model whose output is not a constant.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    model.train()
    for x in batches:
        model(x)
    return model.eval()


@torch.no_grad()
def fuse_batchnorm(model: UNet) -> UNet:
    """Fold each eval-mode BatchNorm into the convolution before it (inference only, in place).

    ``BN(conv(x)) = conv'(x)`` with scaled weights and a bias, so each fused pair skips one
    pass over the activations and one activation-sized tensor: faster and leaner on the CPU,
    same logits up to float rounding. The model must not be trained afterwards.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for block in model.modules():
        if not isinstance(block, DoubleConv):
            continue
        for i in (0, 3):
            conv, bn = block[i], block[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                block[i] = fuse_conv_bn_eval(conv, bn)
                block[i + 1] = nn.Identity()
    return model


@torch.no_grad()
def widen(model: UNet, width: int, *, seed: int = 0, noise: float = 0.01) -> UNet:
    """A wider U-Net that computes the same function as ``model`` (Net2WiderNet).

    Each new channel of a layer copies an old one (the old channels first, then a seeded
    random choice); a layer that reads copied channels divides their weights by the number of
    copies, so every sum is unchanged. BatchNorm parameters and running statistics are copied
    with their channels, so the logits agree in eval and in train mode. Zero-sum noise (``noise``
    times each layer's weight spread, summing to zero over the copies of an input channel) makes
    the copies' weights differ, so training pulls them apart instead of keeping them equal.
    A trained narrow model thus continues training with more capacity from where it stood.

    Raises:
        ValueError: ``width`` below the model's.
    """
    if width < model.width:
        raise ValueError(f"cannot narrow a width-{model.width} U-Net to {width}")
    gen = torch.Generator().manual_seed(seed)
    old_c = [model.width * 2**i for i in range(model.depth + 1)]
    new_c = [width * 2**i for i in range(model.depth + 1)]
    wide = UNet(model.in_channels, model.classes, width, model.depth)

    def mapping(level: int) -> torch.Tensor:
        extra = torch.randint(old_c[level], (new_c[level] - old_c[level],), generator=gen)
        return torch.cat([torch.arange(old_c[level]), extra])

    def spread(w: torch.Tensor, g_in: torch.Tensor, in_dim: int) -> torch.Tensor:
        """Divide by the copies of each input channel and add zero-sum noise over the copies."""
        count = torch.bincount(g_in).to(w.dtype)
        shape = [1] * w.dim()
        shape[in_dim] = -1
        w = w / count[g_in].view(shape)
        n = torch.randn(w.shape, generator=gen, dtype=w.dtype) * noise * float(w.std())
        group = torch.zeros((*w.shape[:in_dim], len(count), *w.shape[in_dim + 1 :]), dtype=w.dtype)
        group.index_add_(in_dim, g_in, n)
        mean = (group / count.view(shape)).index_select(in_dim, g_in)
        return w + n - mean

    def conv(
        dst: nn.Module, src: nn.Module, g_out: torch.Tensor | None, g_in: torch.Tensor | None
    ) -> None:
        assert isinstance(dst, nn.Conv2d) and isinstance(src, nn.Conv2d)
        w = src.weight if g_out is None else src.weight[g_out]
        dst.weight.copy_(w if g_in is None else spread(w[:, g_in], g_in, 1))
        if src.bias is not None:
            assert dst.bias is not None  # same architecture as src
            dst.bias.copy_(src.bias if g_out is None else src.bias[g_out])

    def norm(dst: nn.Module, src: nn.Module, g: torch.Tensor) -> None:
        assert isinstance(dst, nn.BatchNorm2d) and isinstance(src, nn.BatchNorm2d)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, name).copy_(getattr(src, name)[g])
        # U-Net BatchNorms track running statistics, so both counters exist
        assert dst.num_batches_tracked is not None and src.num_batches_tracked is not None
        dst.num_batches_tracked.copy_(src.num_batches_tracked)

    def double(
        dst: nn.Module, src: nn.Module, g_in: torch.Tensor | None, level: int
    ) -> torch.Tensor:
        assert isinstance(dst, DoubleConv) and isinstance(src, DoubleConv)
        g_mid, g_out = mapping(level), mapping(level)
        conv(dst[0], src[0], g_mid, g_in)
        norm(dst[1], src[1], g_mid)
        conv(dst[3], src[3], g_out, g_mid)
        norm(dst[4], src[4], g_out)
        return g_out

    skips = [double(wide.inc, model.inc, None, 0)]
    for i, (dst, src) in enumerate(zip(wide.downs, model.downs, strict=True)):
        assert isinstance(dst, Down) and isinstance(src, Down)
        skips.append(double(dst[1], src[1], skips[-1], i + 1))
    g = skips.pop()
    for k, (dst, src) in enumerate(zip(wide.ups, model.ups, strict=True)):
        assert isinstance(dst, Up) and isinstance(src, Up)
        level = model.depth - 1 - k
        g_skip, g_up = skips.pop(), mapping(level)
        # ConvTranspose2d weights are (in, out, kh, kw).
        dst.up.weight.copy_(spread(src.up.weight[g][:, g_up], g, 0))
        assert dst.up.bias is not None and src.up.bias is not None  # ConvTranspose2d(bias=True)
        dst.up.bias.copy_(src.up.bias[g_up])
        g = double(dst.conv, src.conv, torch.cat([g_skip, g_up + old_c[level]]), level)
    conv(wide.head, model.head, None, g)
    return wide.train(model.training)


def add_core_channel(model: UNet, *, bias_drop: float = 1.0) -> UNet:
    """``model`` (a binary U-Net, one output) with a second output, the core channel.

    The new channel starts as a copy of the foreground channel with its bias lowered by
    ``bias_drop`` (a core is the foreground shrunk), so fine-tuning starts from
    what the network already knows and the foreground logits stay exactly as they were.

    Raises:
        ValueError: ``model`` has more than one output.
    """
    if model.classes != 1:
        raise ValueError(
            f"a core channel goes beside one foreground channel; this U-Net has {model.classes} outputs"
        )
    out = UNet(model.in_channels, 2, model.width, model.depth)
    state = model.state_dict()
    w, b = state["head.weight"], state["head.bias"]
    state["head.weight"] = torch.cat([w, w.clone()])
    state["head.bias"] = torch.cat([b, b - bias_drop])
    out.load_state_dict(state)
    return out


def drop_core_channel(model: UNet) -> UNet:
    """``model`` without its core channel (the last output): a plain binary U-Net."""
    if model.classes != 2:
        raise ValueError(f"a U-Net with a core channel has 2 outputs; this one has {model.classes}")
    out = UNet(model.in_channels, 1, model.width, model.depth)
    state = model.state_dict()
    state["head.weight"], state["head.bias"] = state["head.weight"][:1], state["head.bias"][:1]
    out.load_state_dict(state)
    return out


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX through oneDNN).

    Without it PyTorch emulates bf16 and autocast is several times slower than float32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: float32).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16, float32 elsewhere; ``bf16`` forces
    it, ``fp32`` turns it off.

    Raises:
        ValueError: An unknown precision.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_supports_bf16():
        return torch.bfloat16
    return None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        GeounetError: ``cuda`` asked for but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeounetError(
            "--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu"
        )
    return torch.device(device)
