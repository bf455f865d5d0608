from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geounet.errors import CheckpointError
from geounet.network.checkpoint import create_model, load_model, read_meta, save_model
from geounet.network.contract import FORMAT_VERSION, META_KEY
from geounet.network.unet import UNet, calibrate_batchnorm, count_parameters, fuse_batchnorm, widen


def test_seed_architecture_parameter_count() -> None:
    # The classic U-Net (transposed-conv up path): 31,037,633 parameters for 3 bands and 1 class,
    # 31,037,698 for 2 classes (the head adds 65).
    assert count_parameters(UNet(3, 1, width=64, depth=4)) == 31_037_633
    assert count_parameters(UNet(3, 2, width=64, depth=4)) == 31_037_698


@pytest.mark.parametrize(
    ("bands", "classes", "width", "depth", "size"),
    [(1, 1, 4, 1, 32), (3, 2, 8, 3, 64), (4, 5, 4, 4, 48), (2, 1, 6, 2, 20)],
)
def test_forward_shapes(bands: int, classes: int, width: int, depth: int, size: int) -> None:
    net = UNet(bands, classes, width=width, depth=depth).eval()
    with torch.no_grad():
        y = net(torch.randn(2, bands, size, size + 4 * 2**depth))
    assert y.shape == (2, classes, size, size + 4 * 2**depth)


def test_odd_sizes_are_padded_in_the_up_path() -> None:
    net = UNet(1, 1, width=4, depth=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 37, 51)).shape == (1, 1, 37, 51)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive in_channels"):
        UNet(0, 1)


def test_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    net, meta = create_model(bands=3, classes=["building"], width=8, depth=3, seed=3)
    with torch.no_grad():  # make BatchNorm statistics non-trivial
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "m.safetensors"
    save_model(net, meta, path)
    loaded, meta2 = load_model(path)
    assert meta2 == meta
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


def test_seed_makes_weights_reproducible() -> None:
    a, _ = create_model(bands=3, classes=1, width=4, seed=1)
    b, _ = create_model(bands=3, classes=1, width=4, seed=1)
    c, _ = create_model(bands=3, classes=1, width=4, seed=2)
    assert torch.equal(a.inc[0].weight, b.inc[0].weight)
    assert not torch.equal(a.inc[0].weight, c.inc[0].weight)


def test_metadata_contract(tmp_path: Path) -> None:
    net, meta = create_model(
        bands=4,
        classes=["background", "building", "road"],
        width=4,
        dtype="uint16",
        tile_size=256,
        overlap=32,
    )
    path = tmp_path / "m.safetensors"
    save_model(net, meta, path)
    got = read_meta(path)
    assert got.bands == 4 and got.dtype == "uint16" and not got.binary
    assert got.mask_classes == ["background", "building", "road"]
    assert got.tile_size == 256 and got.overlap == 32 and len(got.colours) == 3
    assert got.arch_args == {"in_channels": 4, "classes": 3, "width": 4, "depth": 4}


def test_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(CheckpointError, match=r"not a safetensors model file.*never loads pickled"):
        load_model(path)
    assert not marker.exists()


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="has no geounet metadata"):
        read_meta(path)


def test_future_format_refused(tmp_path: Path) -> None:
    net, meta = create_model(bands=1, classes=1, width=4)
    data = json.loads(meta.to_json())
    data["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={META_KEY: json.dumps(data)},
    )
    with pytest.raises(CheckpointError, match=r"newer geounet.*upgrade geounet"):
        read_meta(path)


def test_weights_that_do_not_match_metadata(tmp_path: Path) -> None:
    net, _ = create_model(bands=1, classes=1, width=4)
    _, meta = create_model(bands=1, classes=1, width=8)
    path = tmp_path / "mismatch.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={META_KEY: meta.to_json()},
    )
    with pytest.raises(CheckpointError, match="weights do not match the unet"):
        load_model(path)


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model file not found"):
        read_meta(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors model file"):
        read_meta(bad)


def test_fused_batchnorm_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    net = UNet(3, 2, width=8, depth=3)
    x = torch.randn(2, 3, 64, 64) * 2 + 1
    calibrate_batchnorm(net, [x])  # non-trivial running statistics
    with torch.no_grad():
        for m in net.modules():  # and non-trivial affine parameters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        want = net(x)
        fused = fuse_batchnorm(net)
        got = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert count_parameters(fused) < count_parameters(UNet(3, 2, width=8, depth=3))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [2, 3])
def test_widen_keeps_the_function_and_breaks_the_copies_apart(depth: int) -> None:
    torch.manual_seed(0)
    net = UNet(3, 2, width=4, depth=depth)
    x = torch.randn(2, 3, 32, 32) * 2 + 1
    calibrate_batchnorm(net, [x])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        want = net(x)
    wide = widen(net, 7, seed=3)
    assert wide.width == 7 and not wide.training
    assert wide.inc[0].weight.shape == (7, 3, 3, 3)
    assert wide.ups[-1].conv[0].weight.shape == (7, 14, 3, 3)
    assert count_parameters(wide) > 2 * count_parameters(net)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), want, rtol=1e-4, atol=1e-4)
        # Train mode (batch statistics): copies of a channel have the statistics of the original.
        torch.testing.assert_close(wide.train()(x), net.train()(x), rtol=1e-4, atol=1e-4)
    # Copied output channels start with equal incoming weights (first layer: no copied
    # inputs), but the noise on the next layer's weights gives them different gradients.
    first = wide.inc[0].weight
    copies = [j for j in range(4, 7)]
    originals = [int((first[j] - first[:4]).abs().flatten(1).sum(1).argmin()) for j in copies]
    for j, o in zip(copies, originals, strict=True):
        torch.testing.assert_close(first[j], first[o])
    wide.zero_grad()
    wide(x).square().mean().backward()
    grad = wide.inc[0].weight.grad
    assert all(not torch.allclose(grad[j], grad[o]) for j, o in zip(copies, originals, strict=True))
    # The same seed gives the same network; narrowing is refused.
    again = widen(net.eval(), 7, seed=3)
    for a, b in zip(
        again.state_dict().values(), widen(net, 7, seed=3).state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot narrow"):
        widen(net, 3)


def test_model_files_get_the_umasks_mode_not_a_private_one(tmp_path: Path) -> None:
    import os
    import stat

    from geounet.geodata.raster import AtomicOutputs

    net, meta = create_model(bands=3, classes=["building"], width=4, depth=2)
    with AtomicOutputs() as outputs:
        save_model(net, meta, outputs.reserve(tmp_path / "m.safetensors"))
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o666 & ~mask
