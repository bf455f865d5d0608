"""Touching buildings come apart: the background between close label objects is marked and
weighed more in the loss (``train --separation``)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from conftest import MakeRaster
from rasterio.transform import from_origin
from rasterio.windows import Window

from geounet.geodata.raster import open_scene
from geounet.labels.sets import read_label_sources
from geounet.labels.spec import LabelSpec
from geounet.labels.vector import read_labels
from geounet.training.dataset import (
    CONTACT_INDEX,
    IGNORE_INDEX,
    ImageEntry,
    Sample,
    WindowDataset,
    mark_contacts,
)
from geounet.training.metrics import confusion
from geounet.training.step import segmentation_loss

RES = 0.5
T = from_origin(500000, 5000000, RES, RES)


def _box(r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    """Map polygon of the pixel block rows r0..r1-1, cols c0..c1-1 of the grid ``T``."""
    x0, y0 = T * (c0, r0)
    x1, y1 = T * (c1, r1)
    return shapely.box(x0, y1, x1, y0)


def _ids_and_target(
    blocks: list[tuple[int, int, int, int]], shape: tuple[int, int], r: int
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((shape[0] + 2 * r, shape[1] + 2 * r), np.int32)
    for k, (r0, c0, r1, c1) in enumerate(blocks, start=1):
        ids[r0 + r : r1 + r, c0 + r : c1 + r] = k
    target = (ids[r:-r, r:-r] > 0).astype(np.uint8)
    return ids, target


def test_gap_between_two_objects_is_marked_and_nothing_else() -> None:
    ids, target = _ids_and_target(
        [(4, 2, 12, 6), (4, 8, 12, 12)], (16, 16), 2
    )  # a 2 px gap: cols 6, 7
    out = mark_contacts(target, ids, 2)
    contact = out == CONTACT_INDEX
    assert contact[4:12, 6:8].all()  # the whole gap between the facing walls
    assert not contact[:, :5].any() and not contact[:, 9:].any()  # never beside only one object
    assert (out[target == 1] == 1).all()  # buildings stay buildings
    assert not (out == CONTACT_INDEX)[target == 1].any()
    # Farther apart than twice the radius: nothing between them is a contact.
    ids, target = _ids_and_target([(4, 0, 12, 4), (4, 10, 12, 14)], (16, 16), 2)
    assert not (mark_contacts(target, ids, 2) == CONTACT_INDEX).any()
    # Touching objects (no background between them): a one-pixel gap on one side only.
    ids, target = _ids_and_target([(4, 2, 12, 6), (4, 6, 12, 10)], (16, 16), 2)
    out = mark_contacts(target, ids, 2)
    assert (out[4:12, 5] == CONTACT_INDEX).all() and (out[4:12, 6] == 1).all()
    assert ((out == CONTACT_INDEX) & (target == 1)).sum() == 8
    # One object alone: nothing.
    ids, target = _ids_and_target([(4, 4, 12, 12)], (16, 16), 3)
    assert mark_contacts(target, ids, 3) is target


def test_objects_just_outside_the_window_count() -> None:
    # The second object lies in the margin only (left of the window): the gap at column 0 is marked.
    r = 2
    ids = np.zeros((10 + 2 * r, 10 + 2 * r), np.int32)
    ids[r : r + 10, r + 1 : r + 4] = 1  # cols 1..3 of the window
    ids[r : r + 10, 0:r] = 2  # left margin, outside the window
    target = (ids[r:-r, r:-r] > 0).astype(np.uint8)
    out = mark_contacts(target, ids, r)
    assert (out[:, 0] == CONTACT_INDEX).all()


def _two_houses(make_raster: MakeRaster, tmp_path: Path) -> tuple[Path, Path]:
    data = np.full((3, 64, 64), 30, np.uint8)
    data[:, 10:30, 10:30] = 200
    data[:, 10:30, 31:50] = 190  # one pixel of ground between two roofs
    path = make_raster("houses.tif", width=64, height=64, data=data, transform=T)
    road = shapely.LineString([T * (0, 50), T * (64, 50)])
    frame = gpd.GeoDataFrame(
        {"kind": ["building", "building", "road"]},
        geometry=[_box(10, 10, 30, 30), _box(10, 31, 30, 50), road],
        crs="EPSG:32633",
    )
    labels = tmp_path / "houses.geojson"
    frame.to_file(labels)
    return path, labels


def test_vector_labels_mark_the_gap_between_polygons_only(
    make_raster: MakeRaster, tmp_path: Path
) -> None:
    path, labels = _two_houses(make_raster, tmp_path)
    scene = open_scene(path)
    rl = read_labels(labels, LabelSpec(class_field="kind", line_width_m=2.0)).for_scene(scene)
    ids = rl.instances(Window(0, 0, 64, 64))
    assert len(np.unique(ids[10:30, 10:50])) == 3  # two houses and the ground between them
    assert ids[48:52].max() == 0  # the buffered road is not an object
    entry = ImageEntry(scene, scene.data_bands, rl, [], contact_px=2)
    _, target = WindowDataset(
        [entry], [Sample(0, 0, 0)], tile_size=64, mean=[0, 0, 0], std=[1, 1, 1]
    ).read(Sample(0, 0, 0))
    assert (target[10:30, 30] == CONTACT_INDEX).all()
    assert (target == CONTACT_INDEX).sum() <= 20 + 2 * 2 * 4  # the gap, and a little round its ends
    assert not (target[40:60] == CONTACT_INDEX).any()  # the road and its sides: no contacts
    # Off: the gap is plain background.
    entry.contact_px = 0
    _, plain = WindowDataset(
        [entry], [Sample(0, 0, 0)], tile_size=64, mean=[0, 0, 0], std=[1, 1, 1]
    ).read(Sample(0, 0, 0))
    assert not (plain == CONTACT_INDEX).any()
    np.testing.assert_array_equal(np.where(target == CONTACT_INDEX, 0, target), plain)


def test_mask_labels_mark_gaps_between_their_parts(make_raster: MakeRaster, tmp_path: Path) -> None:
    path, _ = _two_houses(make_raster, tmp_path)
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 10:30, 10:30] = 1
    mask[0, 10:30, 31:50] = 1
    mask_path = make_raster("houses_mask.tif", width=64, height=64, count=1, data=mask, transform=T)
    scene = open_scene(path)
    rl = read_label_sources([str(mask_path)]).for_scene(scene)
    entry = ImageEntry(scene, scene.data_bands, rl, [], contact_px=1)
    _, target = WindowDataset(
        [entry], [Sample(0, 0, 0)], tile_size=64, mean=[0, 0, 0], std=[1, 1, 1]
    ).read(Sample(0, 0, 0))
    assert (target[10:30, 30] == CONTACT_INDEX).all()
    # Touching parts are one part: no gap, nothing to mark.
    mask[0, 10:30, 30] = 1
    make_raster("houses_mask.tif", width=64, height=64, count=1, data=mask, transform=T)
    rl = read_label_sources([str(mask_path)]).for_scene(scene)
    entry = ImageEntry(scene, scene.data_bands, rl, [], contact_px=1)
    _, target = WindowDataset(
        [entry], [Sample(0, 0, 0)], tile_size=64, mean=[0, 0, 0], std=[1, 1, 1]
    ).read(Sample(0, 0, 0))
    assert not (target == CONTACT_INDEX).any()


@pytest.mark.parametrize("binary", [True, False])
def test_contact_pixels_weigh_more_in_the_loss_and_count_as_background(binary: bool) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1 if binary else 3, 8, 8, generator=g)
    target = torch.randint(0, 2 if binary else 3, (2, 8, 8), generator=g)
    target[0, 0, :4] = IGNORE_INDEX
    contact = target.clone()
    contact[1, 3, :] = CONTACT_INDEX
    as_background = contact.masked_fill(contact == CONTACT_INDEX, 0)
    # Weight 1: a contact pixel is plain background.
    torch.testing.assert_close(
        segmentation_loss(logits, contact, binary, 1.0),
        segmentation_loss(logits, as_background, binary),
    )
    # Weight 10: the cross-entropy of those 8 pixels counts 10 times.
    heavy = segmentation_loss(logits, contact, binary, 10.0)
    base = segmentation_loss(logits, as_background, binary)
    valid = int((contact != IGNORE_INDEX).sum())
    row = logits[1:2, :, 3:4, :]
    if binary:
        ce_row = torch.nn.functional.binary_cross_entropy_with_logits(
            row[:, 0], torch.zeros(1, 1, 8), reduction="sum"
        )
    else:
        ce_row = torch.nn.functional.cross_entropy(
            row, torch.zeros(1, 1, 8, dtype=torch.long), reduction="sum"
        )
    torch.testing.assert_close(heavy - base, 9 * ce_row / valid)
    n = 2 if binary else 3
    torch.testing.assert_close(
        confusion(logits, contact, n, binary), confusion(logits, as_background, n, binary)
    )
