"""Bands found by their colour interpretation: a BGR file or RGB + near-infrared reads as RGB."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import MakeRaster, meta_for, threshold_unet
from rasterio.enums import ColorInterp as C

from geounet.cli.main import cli
from geounet.errors import BandMismatchError
from geounet.geodata.raster import band_names, colour_bands, open_scene, resolve_bands
from geounet.network.checkpoint import save_model
from geounet.training.plan import _band_names

RGB = ["red", "green", "blue"]


def _tagged(make_raster: MakeRaster, name: str, data: np.ndarray, colours: list[C]) -> Path:
    path = make_raster(name, data=data, photometric="MINISBLACK")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = colours
    return path


def _data(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(10, 60, (count, 64, 64)).astype(np.uint8)


@pytest.mark.parametrize(
    ("colours", "want"),
    [
        ([C.red, C.green, C.blue], (1, 2, 3)),
        ([C.blue, C.green, C.red], (3, 2, 1)),
        ([C.red, C.green, C.blue, C.undefined], (1, 2, 3)),  # NAIP: RGB + near-infrared untagged
        ([C.blue, C.green, C.red, C.nir], (3, 2, 1)),  # a BGRN satellite product
        ([C.nir, C.red, C.green, C.blue], (2, 3, 4)),
    ],
)
def test_a_colour_model_takes_its_colours_wherever_they_are(
    make_raster: MakeRaster, colours: list[C], want: tuple[int, ...]
) -> None:
    scene = open_scene(_tagged(make_raster, "s.tif", _data(len(colours)), colours))
    assert resolve_bands(scene, None, 3, RGB) == want
    # A choice of the user's wins; a model with unnamed bands takes the file order.
    assert resolve_bands(scene, (1, 1, 1), 3, RGB) == (1, 1, 1)
    if len(colours) == 3:
        assert resolve_bands(scene, None, 3, ["band1", "band2", "band3"]) == (1, 2, 3)


def test_untagged_or_ambiguous_scenes_keep_the_file_order(make_raster: MakeRaster) -> None:
    untagged = open_scene(
        _tagged(make_raster, "u.tif", _data(4), [C.gray, C.undefined, C.undefined, C.undefined])
    )
    assert colour_bands(untagged, RGB) is None
    with pytest.raises(
        BandMismatchError, match=r"model expects 3 bands, u.tif has 4; pass --bands"
    ):
        resolve_bands(untagged, None, 3, RGB)
    twice = open_scene(_tagged(make_raster, "t.tif", _data(4), [C.red, C.green, C.blue, C.red]))
    assert colour_bands(twice, RGB) is None
    three = open_scene(_tagged(make_raster, "g.tif", _data(3), [C.gray, C.undefined, C.undefined]))
    assert resolve_bands(three, None, 3, RGB) == (1, 2, 3)


def test_new_models_name_their_bands_by_colour_when_the_images_agree(
    make_raster: MakeRaster,
) -> None:
    rgb = open_scene(_tagged(make_raster, "a.tif", _data(3), [C.red, C.green, C.blue]))
    bgr = open_scene(_tagged(make_raster, "b.tif", _data(3), [C.blue, C.green, C.red]))
    plain = open_scene(_tagged(make_raster, "c.tif", _data(3), [C.gray, C.undefined, C.undefined]))
    assert band_names(rgb, (1, 2, 3)) == RGB and band_names(bgr, (3, 2, 1)) == RGB
    assert band_names(plain, (1, 2, 3)) == ["band1", "band2", "band3"]
    entry = lambda s, b: SimpleNamespace(scene=s, bands=b)
    assert _band_names([entry(rgb, (1, 2, 3)), entry(bgr, (3, 2, 1))]) == RGB
    assert _band_names([entry(rgb, (1, 2, 3)), entry(plain, (1, 2, 3))]) == [
        "band1",
        "band2",
        "band3",
    ]


def test_predict_reads_a_bgr_scene_as_the_rgb_one(make_raster: MakeRaster, tmp_path: Path) -> None:
    data = _data(3)
    data[0, 10:30, 10:40] = 220  # red roofs: the model marks bright band-0 (red) pixels
    data[2, 40:60, 20:50] = 220  # a blue patch, not a roof
    rgb = _tagged(make_raster, "rgb.tif", data, [C.red, C.green, C.blue])
    bgr = _tagged(make_raster, "bgr.tif", data[::-1].copy(), [C.blue, C.green, C.red])
    net = threshold_unet(3)
    meta = meta_for(net)
    meta.band_names = RGB
    model = tmp_path / "m.safetensors"
    save_model(net, meta, model)
    runner = CliRunner()
    masks = {}
    for scene in (rgb, bgr):
        mask = tmp_path / f"{scene.stem}_mask.tif"
        r = runner.invoke(cli, ["predict", str(scene), "--mask", str(mask), "-m", str(model)])
        assert r.exit_code == 0, r.output
        with rasterio.open(mask) as src:
            masks[scene.stem] = src.read(1)
        assert (
            "Read bands 3,2,1 of bgr.tif by their colour interpretation (red, green, blue)"
            in r.stderr
        ) == (scene == bgr)
    assert (
        (masks["rgb"] == masks["bgr"]).all()
        and masks["rgb"][10:30, 10:40].all()
        and not masks["rgb"][40:60, 20:50].any()
    )
