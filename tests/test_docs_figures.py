"""The model card's figure script (scripts/docs_figures/model_card.py) on tiny synthetic data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from rasterio.transform import from_origin
from shapely.geometry import box

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "model_card_script", ROOT / "scripts" / "docs_figures" / "model_card.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_card_script"] = module
    spec.loader.exec_module(module)
    return module


def test_figures_sum_counts_as_the_benchmark_does(card: ModuleType) -> None:
    f = card.figures({"tp": 6, "fp": 2, "fn": 2, "obj_tp": 1, "obj_fp": 1, "obj_fn": 2})
    assert f["pixel_iou"] == pytest.approx(0.6)
    assert f["pixel_f1"] == pytest.approx(0.75)
    assert f["object_f1"] == pytest.approx(2 / 5)


def test_bootstrap_intervals_hold_the_estimate(card: ModuleType) -> None:
    same = {"tp": 50, "fp": 10, "fn": 10, "obj_tp": 5, "obj_fp": 1, "obj_fn": 1}
    other = {"tp": 20, "fp": 30, "fn": 10, "obj_tp": 2, "obj_fp": 3, "obj_fn": 4}
    out = card.bootstrap({"rio": [same, same], "chicago": [same, other]}, n=200)
    lo, hi = out["rio"]["pixel_f1_by_image"]
    assert lo == hi == pytest.approx(card.figures(same)["pixel_f1"])  # identical images
    lo, hi = out["chicago"]["pixel_f1_by_image"]
    assert lo < card.figures(card.summed([same, other]))["pixel_f1"] < hi
    lo, hi = out["all"]["object_f1_by_object"]
    assert 0 <= lo < card.figures(card.summed([same, same, same, other]))["object_f1"] < hi <= 1


def test_error_cases_sort_labels_and_predictions(card: ModuleType) -> None:
    import geopandas as gpd

    transform = from_origin(500000, 4000010, 0.5, 0.5)  # 20 x 20 px, UTM metres
    rgb = np.full((3, 20, 20), 100, dtype=np.uint8)
    rgb[:, 15:, 15:] = 250  # a bright corner
    labels = gpd.GeoSeries(
        [
            box(500000, 4000006, 500002, 4000008),  # merged with the next one
            box(500002.5, 4000006, 500004.5, 4000008),
            box(500006, 4000001, 500008, 4000003),  # missed
        ]
    )
    predicted = gpd.GeoSeries(
        [box(500000, 4000006, 500004.5, 4000008), box(500008, 4000000, 500010, 4000002.4)]
    )
    cases = card.error_cases(labels, predicted, "EPSG:32631", rgb, transform)
    kinds = [(c["what"], c["kind"]) for c in cases]
    assert kinds == [
        ("label", "merged"),
        ("label", "merged"),
        ("label", "missed"),
        ("prediction", "merged"),
        ("prediction", "false"),
    ]
    assert cases[-1]["brightness"] > 1  # the false polygon lies on the bright corner
    summary = card.error_summary({"rio_1": cases})
    assert summary["rio"]["labels"]["merged"] == 2 and summary["all"]["false_predictions"] == 1


def test_a_panel_is_drawn_from_a_synthetic_raster(card: ModuleType, tmp_path: Path) -> None:
    transform = from_origin(0, 40, 1, 1)
    rgb = np.zeros((3, 40, 40), dtype=np.uint8)
    rgb[0, 10:20, 10:20] = 200
    image = card.display_rgb(rgb)
    assert image.shape == (40, 40, 3) and 0 <= image.min() and image.max() <= 1
    predicted = card.pixel_geoms([box(10, 20, 20, 30)], transform)
    assert predicted[0].bounds == (10, 10, 20, 20)  # rows count down from the top
    labels = card.pixel_geoms([box(11, 21, 21, 31)], transform)
    crop = card.Crop("synthetic", 5, 5, 30)
    out = tmp_path / "panel.png"
    card.save_picture(out, [(image, crop, "a", predicted, labels), (image, crop, None, [], labels)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 300_000
