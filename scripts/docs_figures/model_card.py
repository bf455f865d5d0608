"""Figures and pictures of docs/model-card.md (the bundled ``buildings`` model).

    python scripts/docs_figures/model_card.py --out docs/img/model-card        # all of it
    python scripts/docs_figures/model_card.py --out /tmp/mc --candidates       # and list error cases

Predicts the 12 held-out images of ``../shared/data/buildings-rgb`` (the split of
``benchmarks/buildings.py``: rio_51/55/59/63 and the Inria crops of the source's ``val`` split)
with the model's defaults, once with plain outlines and once with ``--regularize``, writes each
prediction as a GeoPackage and a class mask, and scores them as ``geounet evaluate --prediction``
does:

- pixel IoU/F1 of the class mask (the figures ``geounet model info buildings`` records; squared
  outlines do not change the mask) and of the polygons themselves (rasterized);
- object F1 of the polygons: IoU >= 0.5, one to one (SpaceNet's rule), tp/fp/fn summed per source;
- the error of each figure: the range of the per-image figures, and 95 % intervals from two
  bootstraps (2,000 draws, seed 0): over images (each source's 4 images drawn with
  replacement; "all" draws 4 of each source) and, for object F1, over objects (each source's
  matches, false polygons and missed buildings drawn with replacement).

It sorts every labelled building as ``benchmarks/errors.py`` does (matched, merged with a
neighbour, partly found, missed) and counts the failure modes of the page: merged neighbours,
false polygons that overlap no building, small buildings (5-20 m²) and buildings under green
vegetation. It predicts copies of one held-out crop (``CONTRACT_IMAGE``) as other files would
bring it (BGR, a fourth band, 16-bit, finer and coarser pixels). Then it renders the page's
pictures (image crop, predicted outlines solid, label outlines dashed) at the crops listed in
``PICTURES`` and prints every figure (``--json`` writes them too). ``--candidates`` also lists
every error case per image, from which the pictures' crops were chosen. About two minutes on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "buildings-rgb"
SOURCES = ("rio", "austin", "chicago")
VARIANTS = ("plain", "regularized")
#: Predicted outlines: solid; label outlines: dashed.
PRED_COLOUR = "#ff3b30"
LABEL_COLOUR = "#ffe600"
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Crop:
    """A square crop of a held-out image: its stem, top-left pixel (col, row) and side in pixels."""

    image: str
    col: int
    row: int
    size: int


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: a crop, the outlines drawn (``plain`` or ``regularized``), a title."""

    crop: Crop
    title: str
    variant: str = "plain"


#: The page's pictures (file name -> panels, drawn side by side). The crops were picked from the
#: ``--candidates`` listing of the current bundled model (held-out images only) and checked by eye.
PICTURES: dict[str, list[Panel]] = {
    "merged.png": [
        Panel(Crop("austin1_7", 0, 100, 156), "austin1_7"),
        Panel(Crop("rio_55", 310, 190, 120), "rio_55"),
    ],
    "bright-ground.png": [
        Panel(Crop("rio_55", 220, 120, 110), "rio_55"),
        Panel(Crop("chicago1_20", 130, 40, 126), "chicago1_20"),
    ],
    "small-sheds.png": [
        Panel(Crop("austin1_8", 130, 0, 110), "austin1_8"),
        Panel(Crop("austin1_18", 150, 0, 106), "austin1_18"),
    ],
    "trees.png": [
        Panel(Crop("chicago1_20", 20, 140, 116), "chicago1_20"),
        Panel(Crop("austin1_17", 140, 10, 116), "austin1_17"),
    ],
    "regularize.png": [
        Panel(Crop("chicago1_5", 60, 95, 110), "plain outlines (default)"),
        Panel(Crop("chicago1_5", 60, 95, 110), "--regularize", "regularized"),
    ],
}


# --------------------------------------------------------------------------- scoring


def counts_of(report: dict[str, Any]) -> dict[str, int]:
    """tp/fp/fn of the foreground class, pixels and objects, from a ``geounet.evaluate`` report."""
    name = report["classes"][1]
    px = report["pixel"][name]
    ob = report["object"].get(name, {"tp": 0, "fp": 0, "fn": 0})
    return {k: int(px[k]) for k in ("tp", "fp", "fn")} | {
        f"obj_{k}": int(ob[k]) for k in ("tp", "fp", "fn")
    }


def figures(acc: dict[str, int]) -> dict[str, float]:
    """Pixel IoU/F1 and object F1 from summed counts (as ``benchmarks/buildings.py`` sums them)."""
    tp, fp, fn = acc["tp"], acc["fp"], acc["fn"]
    otp, ofp, ofn = acc["obj_tp"], acc["obj_fp"], acc["obj_fn"]
    return {
        "pixel_iou": tp / max(1, tp + fp + fn),
        "pixel_f1": 2 * tp / max(1, 2 * tp + fp + fn),
        "object_f1": 2 * otp / max(1, 2 * otp + ofp + ofn),
    }


def source_of(stem: str) -> str:
    """``rio``, ``austin`` or ``chicago`` from an image name (as ``benchmarks/buildings.py``)."""
    return "rio" if stem.startswith("rio") else stem.split("1_")[0]


def summed(rows: Sequence[dict[str, int]]) -> dict[str, int]:
    keys = ("tp", "fp", "fn", "obj_tp", "obj_fp", "obj_fn")
    return {k: int(sum(r[k] for r in rows)) for k in keys}


def bootstrap(
    per_source: dict[str, list[dict[str, int]]], n: int = BOOTSTRAP, seed: int = 0
) -> dict[str, dict[str, tuple[float, float]]]:
    """95 % intervals (2.5th and 97.5th percentiles of ``n`` resamples), per source and ``all``.

    ``images``: each source's images drawn with replacement (``all``: 4 of each source, summed),
    for every figure. ``objects``: each source's tp, fp and fn outcomes (one per matched pair,
    false polygon and missed building) drawn with replacement, as many as there are, for object
    F1 (``all``: stratified by source the same way). Images are the honest unit (errors within
    one image are alike), but there are only 4 of each; the object draw gives the error of a
    count of a few hundred buildings."""
    rng = np.random.default_rng(seed)
    keys = ("tp", "fp", "fn", "obj_tp", "obj_fp", "obj_fn")
    arrays = {s: np.array([[r[k] for k in keys] for r in rows]) for s, rows in per_source.items()}
    by_image: dict[str, list[dict[str, float]]] = {s: [] for s in [*arrays, "all"]}
    for _ in range(n):
        total = np.zeros(len(keys), dtype=np.int64)
        for s, arr in arrays.items():
            pick = arr[rng.integers(0, len(arr), len(arr))].sum(axis=0)
            total += pick
            by_image[s].append(figures(dict(zip(keys, pick.tolist(), strict=True))))
        by_image["all"].append(figures(dict(zip(keys, total.tolist(), strict=True))))
    by_object: dict[str, np.ndarray] = {}
    all_counts = np.zeros((n, 3), dtype=np.int64)
    for s, arr in arrays.items():
        outcomes = arr[:, 3:].sum(axis=0)
        total_n = int(outcomes.sum())
        draws = rng.multinomial(total_n, outcomes / max(1, total_n), size=n)
        all_counts += draws
        by_object[s] = draws
    by_object["all"] = all_counts

    def f1(c: np.ndarray) -> np.ndarray:
        return np.asarray(2 * c[:, 0] / np.maximum(1, 2 * c[:, 0] + c[:, 1] + c[:, 2]))

    def interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
        return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    out: dict[str, dict[str, tuple[float, float]]] = {}
    for s, rows in by_image.items():
        out[s] = {f"{m}_by_image": interval([r[m] for r in rows]) for m in rows[0]}
        out[s]["object_f1_by_object"] = interval(f1(by_object[s]))
    return out


def table(
    per_image: dict[str, dict[str, Any]], kind: str, *, n: int = BOOTSTRAP
) -> dict[str, dict[str, Any]]:
    """Per source and all: summed figures, tp/fp/fn, per-image range and bootstrap interval.

    ``kind`` picks the pixel counts: ``mask`` (the class mask) or ``polygons`` (rasterized).
    The per-image ranges leave out images without labelled buildings (rio_59), whose F1 is 0
    whatever the model does; the sums and the bootstraps (:func:`bootstrap`) keep them."""
    rows = {stem: {**c[kind], **c["objects"]} for stem, c in per_image.items()}
    stems = {s: [t for t in rows if source_of(t) == s] for s in SOURCES}
    stems = {s: v for s, v in stems.items() if v}
    intervals = bootstrap({s: [rows[t] for t in v] for s, v in stems.items()}, n=n)
    out: dict[str, dict[str, Any]] = {}
    for s in [*stems, "all"]:
        group = [t for v in stems.values() for t in v] if s == "all" else stems[s]
        acc = summed([rows[t] for t in group])
        single = [figures(rows[t]) for t in group if per_image[t].get("labelled", True)]
        out[s] = {
            "images": len(group),
            **{m: round(v, 4) for m, v in figures(acc).items()},
            "objects": {"tp": acc["obj_tp"], "fp": acc["obj_fp"], "fn": acc["obj_fn"]},
            "per_image_range": {
                m: [round(min(f[m] for f in single), 3), round(max(f[m] for f in single), 3)]
                for m in single[0]
            },
            "bootstrap_95": {
                m: [round(lo, 3), round(hi, 3)] for m, (lo, hi) in intervals[s].items()
            },
        }
    return out


def foreground(mask: Path) -> int:
    """Building pixels of a class mask."""
    import rasterio

    with rasterio.open(mask) as src:
        return int((src.read(1) == 1).sum())


def burnt(geoms: Any, shape: tuple[int, int], transform: Any) -> int:
    """Pixels that polygons cover, rasterized on the scene's grid."""
    from rasterio.features import rasterize

    shapes = [(g, 1) for g in geoms if g is not None and not g.is_empty]
    if not shapes:
        return 0
    return int(rasterize(shapes, out_shape=shape, transform=transform, dtype="uint8").sum())


# --------------------------------------------------------------------------- error cases


def metric(geoms: Any, crs: Any, bounds: Sequence[float]) -> Any:
    """A GeoSeries of ``geoms`` in ``crs``, in metres (the UTM zone of ``bounds`` when ``crs``
    is geographic)."""
    import geopandas as gpd
    from shapely.geometry import box

    s = gpd.GeoSeries(list(geoms), crs=crs)
    if not s.crs.is_geographic:
        return s
    return s.to_crs(gpd.GeoSeries([box(*bounds)], crs=crs).estimate_utm_crs())


def green_share(rgb: np.ndarray, transform: Any, geom: Any) -> float:
    """Share of the pixels under ``geom`` that look like vegetation (excess green 2G-R-B > 20)."""
    from rasterio.features import geometry_mask

    inside = ~geometry_mask([geom], out_shape=rgb.shape[1:], transform=transform)
    if not inside.any():
        return 0.0
    r, g, b = (rgb[i].astype(np.int32) for i in range(3))
    veg = (2 * g - r - b) > 20
    return float(veg[inside].mean())


def error_cases(
    labels: Any, predicted: Any, crs: Any, rgb: np.ndarray, transform: Any
) -> list[dict[str, Any]]:
    """Each label polygon sorted as ``benchmarks/errors.py`` sorts it (matched, merged, partly
    found, missed), and each predicted polygon that matches nothing: ``false`` when it touches no
    label. Areas in m²; ``at`` the centre in pixels (col, row); ``green`` the vegetation share."""
    h, w = rgb.shape[1:]
    bounds = (*(transform * (0, h)), *(transform * (w, 0)))
    lab_m, pred_m = metric(labels, crs, bounds), metric(predicted, crs, bounds)
    inv = ~transform
    cases: list[dict[str, Any]] = []

    def where(g: Any) -> list[int]:
        c = g.representative_point()
        col, row = inv * (c.x, c.y)
        return [int(col), int(row)]

    lab_list, pred_list = list(lab_m), list(pred_m)
    for i, g in enumerate(lab_list):
        kind, ious = "missed", [0.0]
        hits = [j for j, p in enumerate(pred_list) if p.intersects(g)]
        if hits:
            ious = [g.intersection(pred_list[j]).area / g.union(pred_list[j]).area for j in hits]
            best = pred_list[hits[int(np.argmax(ious))]]
            if max(ious) >= 0.5:
                kind = "matched"
            elif sum(q.intersection(best).area > 0.3 * q.area for q in lab_list) >= 2:
                kind = "merged"
            elif g.intersection(best).area > 0.3 * g.area:
                kind = "partly found"
        cases.append(
            {
                "what": "label",
                "kind": kind,
                "area_m2": round(g.area, 1),
                "iou": round(max(ious), 2),
                "at": where(labels.iloc[i]),
                "green": round(green_share(rgb, transform, labels.iloc[i]), 2),
            }
        )
    for j, p in enumerate(pred_list):
        touching = [g for g in lab_list if g.intersects(p)]
        best = max((p.intersection(g).area / p.union(g).area for g in touching), default=0.0)
        if best >= 0.5:
            continue
        merged = sum(g.intersection(p).area > 0.3 * g.area for g in touching)
        cases.append(
            {
                "what": "prediction",
                "kind": "false" if best == 0 else ("merged" if merged >= 2 else "unmatched"),
                "area_m2": round(p.area, 1),
                "iou": round(best, 2),
                "labels_inside": merged,
                "at": where(predicted.iloc[j]),
                "brightness": round(brightness(rgb, transform, predicted.iloc[j]), 2),
            }
        )
    return cases


#: Label polygons of this many m² or less count as small buildings (sheds, garages, kiosks);
#: those under the model's 5 m² minimum are left out (mostly slivers cut by the image edge).
SMALL_M2 = (5.0, 20.0)
#: A label polygon with at least this share of vegetation pixels is "under trees".
GREEN = 0.25


def error_summary(cases: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per source and all (plain outlines): label polygons by kind, small ones found, those under
    green canopy found, and predicted polygons that touch no labelled building."""
    out: dict[str, dict[str, Any]] = {}
    for s in [*SOURCES, "all"]:
        rows = [c for stem, cs in cases.items() if s in ("all", source_of(stem)) for c in cs]
        labels = [c for c in rows if c["what"] == "label"]
        preds = [c for c in rows if c["what"] == "prediction"]
        small = [c for c in labels if SMALL_M2[0] <= c["area_m2"] <= SMALL_M2[1]]
        green = [c for c in labels if c["green"] >= GREEN]
        out[s] = {
            "labels": {
                k: sum(c["kind"] == k for c in labels)
                for k in ("matched", "merged", "partly found", "missed")
            },
            "small_labels": len(small),
            "small_missed": sum(c["kind"] == "missed" for c in small),
            "small_matched": sum(c["kind"] == "matched" for c in small),
            "green_labels": len(green),
            "green_matched": sum(c["kind"] == "matched" for c in green),
            "merged_predictions": sum(c["kind"] == "merged" for c in preds),
            "false_predictions": sum(c["kind"] == "false" for c in preds),
            "false_brighter_than_median": sum(
                c["kind"] == "false" and c["brightness"] > 1 for c in preds
            ),
        }
    return out


def brightness(rgb: np.ndarray, transform: Any, geom: Any) -> float:
    """Mean grey level under ``geom`` against the image's median (1 = as bright as the median)."""
    from rasterio.features import geometry_mask

    inside = ~geometry_mask([geom], out_shape=rgb.shape[1:], transform=transform)
    grey = rgb.astype(np.float32).mean(axis=0)
    return float(grey[inside].mean() / max(1.0, float(np.median(grey)))) if inside.any() else 0.0


# --------------------------------------------------------------------------- input contract

#: The held-out image the input checks rewrite (one Chicago crop, 256 x 256 px at 0.3 m).
CONTRACT_IMAGE = "chicago1_5"


def contract_copies(image: Path, work: Path) -> dict[str, Path]:
    """Copies of ``image`` as other files would bring it: bands in BGR order (tagged so),
    RGB + a fourth band (a stand-in for near-infrared, untagged), 16-bit (values x 257), and
    the same ground at 0.15 m and 0.6 m pixels (nearest and averaged)."""
    import rasterio
    from rasterio.enums import ColorInterp, Resampling

    with rasterio.open(image) as src:
        rgb, profile = src.read(), dict(src.profile)
        hi = src.read(out_shape=(3, src.height * 2, src.width * 2), resampling=Resampling.nearest)
        lo = src.read(out_shape=(3, src.height // 2, src.width // 2), resampling=Resampling.average)
        transform = src.transform
    red, green, blue, undefined = (
        ColorInterp.red,
        ColorInterp.green,
        ColorInterp.blue,
        ColorInterp.undefined,
    )
    copies = {
        "BGR, tagged blue/green/red": (rgb[::-1], [blue, green, red], transform, "uint8"),
        "RGB + a 4th band": (
            np.concatenate([rgb, rgb.mean(axis=0, keepdims=True).astype(np.uint8)]),
            [red, green, blue, undefined],
            transform,
            "uint8",
        ),
        "16-bit (x 257)": (rgb.astype(np.uint16) * 257, [red, green, blue], transform, "uint16"),
        "0.15 m pixels (2x finer)": (
            hi,
            [red, green, blue],
            transform * transform.scale(0.5),
            "uint8",
        ),
        "0.6 m pixels (2x coarser)": (
            lo,
            [red, green, blue],
            transform * transform.scale(2),
            "uint8",
        ),
    }
    out = {}
    for k, (name, (arr, colours, tr, dtype)) in enumerate(copies.items()):
        path = work / f"contract_{k}.tif"
        p = {
            **profile,
            "count": arr.shape[0],
            "height": arr.shape[1],
            "width": arr.shape[2],
            "dtype": dtype,
            "transform": tr,
            "photometric": None,
        }
        with rasterio.open(path, "w", **p) as dst:
            dst.write(arr.astype(dtype))
            dst.colorinterp = colours
        out[name] = path
    return out


def contract_checks(predictor: Any, image: Path, labels: Path, work: Path) -> dict[str, Any]:
    """Pixel F1 (of the mask) and object F1 of the model's defaults on ``image`` and on each of
    its :func:`contract_copies`, against the same labels."""
    from geounet.prediction.config import PredictConfig
    from geounet.training.evaluate import evaluate

    rows = {}
    for name, path in {
        "as given (RGB, 8-bit, 0.3 m)": image,
        **contract_copies(image, work),
    }.items():
        mask = work / f"{path.stem}_contract_mask.tif"
        vec = work / f"{path.stem}_contract.gpkg"
        predictor.run(path, vec, mask=mask, config=PredictConfig(device="cpu", overwrite=True))
        c_mask = counts_of(evaluate(path, labels, prediction=mask))
        c_poly = counts_of(evaluate(path, labels, prediction=vec))
        f = figures({**c_mask, **{k: c_poly[k] for k in ("obj_tp", "obj_fp", "obj_fn")}})
        rows[name] = {
            "pixel_f1": round(f["pixel_f1"], 4),
            "object_f1": round(f["object_f1"], 4),
            "objects": [c_poly["obj_tp"], c_poly["obj_fp"], c_poly["obj_fn"]],
        }
    return rows


# --------------------------------------------------------------------------- pictures


def display_rgb(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (H, W, 3) floats in 0..1, each band stretched between its 1st and 99th
    percentiles (for the eye only; the model stretches each scene itself)."""
    out = np.empty((*rgb.shape[1:], 3), dtype=np.float32)
    for i in range(3):
        band = rgb[i].astype(np.float32)
        lo, hi = np.percentile(band, (1, 99))
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1.0), 0, 1)
    return out


def pixel_geoms(geoms: Any, transform: Any) -> list[Any]:
    """Geometries in map coordinates -> (col, row) pixel coordinates (pixel edges at integers)."""
    import shapely.affinity

    inv = ~transform
    params = [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f]
    return [shapely.affinity.affine_transform(g, params) for g in geoms if not g.is_empty]


def rings(geom: Any) -> list[np.ndarray]:
    """Every exterior and interior ring of a (Multi)Polygon as an (n, 2) array."""
    parts = getattr(geom, "geoms", [geom])
    out = []
    for part in parts:
        if part.geom_type != "Polygon":
            continue
        out.append(np.asarray(part.exterior.coords))
        out.extend(np.asarray(r.coords) for r in part.interiors)
    return out


def draw_panel(
    ax: Any,
    image: np.ndarray,
    crop: Crop,
    predicted: Sequence[Any],
    labels: Sequence[Any],
    title: str | None = None,
) -> None:
    """One panel: ``image`` ((H, W, 3), 0..1) cut to ``crop``, predicted outlines solid and
    label outlines dashed (both in pixel coordinates, as :func:`pixel_geoms` gives them)."""
    c0, r0, size = crop.col, crop.row, crop.size
    c1, r1 = min(c0 + size, image.shape[1]), min(r0 + size, image.shape[0])
    ax.imshow(image[r0:r1, c0:c1], extent=(c0, c1, r1, r0), interpolation="nearest")
    for geoms, style in (
        (labels, {"color": LABEL_COLOUR, "linestyle": (0, (3, 2)), "linewidth": 1.4}),
        (predicted, {"color": PRED_COLOUR, "linestyle": "-", "linewidth": 1.4}),
    ):
        for g in geoms:
            for ring in rings(g):
                ax.plot(ring[:, 0], ring[:, 1], **style)
    ax.set_xlim(c0, c1)
    ax.set_ylim(r1, r0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_picture(
    path: Path,
    panels: Sequence[tuple[np.ndarray, Crop, str | None, Sequence[Any], Sequence[Any]]],
    *,
    panel_in: float = 3.2,
    dpi: int = 100,
) -> None:
    """A row of panels, each ``(image, crop, title, predicted, labels)`` as :func:`draw_panel`
    takes them, with one legend, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(
        1, len(panels), figsize=(panel_in * len(panels), panel_in + 0.45), squeeze=False
    )
    for ax, (image, crop, title, predicted, labels) in zip(axes[0], panels, strict=True):
        draw_panel(ax, image, crop, predicted, labels, title)
    handles = [
        Line2D([], [], color=PRED_COLOUR, linewidth=1.6, label="predicted"),
        Line2D([], [], color=LABEL_COLOUR, linewidth=1.6, linestyle=(0, (3, 2)), label="label"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


def load_benchmark() -> Any:
    """``benchmarks/buildings.py`` (the data folder, the held-out split, the label files)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmarks_buildings", ROOT / "benchmarks" / "buildings.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_buildings"] = module
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> dict[str, Any]:
    import geopandas as gpd
    import rasterio

    from geounet.labels.spec import LabelSpec
    from geounet.labels.vector import read_labels
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import Predictor
    from geounet.training.evaluate import evaluate

    bench = load_benchmark()
    _, val = bench.held_out(args.data)
    if args.images:
        val = [p for p in val if p.stem in args.images]
    predictor = Predictor(args.model, device="cpu")
    work: Path = args.work
    per_variant: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
    scenes: dict[str, dict[str, Any]] = {}
    cases: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for image in val:
        labels_path = bench.labels_for(args.data, image)
        with rasterio.open(image) as src:
            rgb, transform, crs = src.read([1, 2, 3]), src.transform, src.crs
            shape = (src.height, src.width)
        lab = read_labels(labels_path, LabelSpec())
        rl = lab.for_raster(crs, transform, shape[1], shape[0], name=image.name)
        label_geoms = rl.geometries[rl.polygonal]
        scene = {"rgb": rgb, "transform": transform, "labels": label_geoms, "pred": {}}
        for variant in VARIANTS:
            vec = work / f"{image.stem}_{variant}.gpkg"
            mask = work / f"{image.stem}_{variant}_mask.tif"
            cfg = PredictConfig(device="cpu", regularize=variant == "regularized", overwrite=True)
            if not (args.reuse and vec.exists() and mask.exists()):
                predictor.run(image, vec, mask=mask, config=cfg)
            pred = gpd.read_file(vec, layer=vec.stem).to_crs(crs)
            scene["pred"][variant] = pred.geometry
            if len(label_geoms):
                cm = counts_of(evaluate(image, labels_path, prediction=mask))
                cp = counts_of(evaluate(image, labels_path, prediction=vec))
            else:
                # No labelled building (rio_59): every predicted pixel is false; its polygons are
                # not counted in object F1, as benchmarks/buildings.py counts them.
                cm = {"tp": 0, "fp": foreground(mask), "fn": 0}
                cp = {"tp": 0, "fp": burnt(pred.geometry, shape, transform), "fn": 0}
                cp |= {"obj_tp": 0, "obj_fp": 0, "obj_fn": 0}
            per_variant[variant][image.stem] = {
                "mask": {k: cm[k] for k in ("tp", "fp", "fn")},
                "polygons": {k: cp[k] for k in ("tp", "fp", "fn")},
                "objects": {k: cp[k] for k in ("obj_tp", "obj_fp", "obj_fn")},
                "labelled": bool(len(label_geoms)),
                "polygons_written": len(pred),
            }
        scenes[image.stem] = scene
        cases[image.stem] = error_cases(
            label_geoms.reset_index(drop=True),
            scene["pred"]["plain"].reset_index(drop=True),
            crs,
            rgb,
            transform,
        )
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "model": str(args.model),
        "images": [p.stem for p in val],
        "seconds": round(seconds, 1),
        "bootstrap": f"{args.bootstrap} resamples of the images, within each source, seed 0",
    }
    for variant in VARIANTS:
        result[variant] = {
            "mask": table(per_variant[variant], "mask", n=args.bootstrap),
            "polygons": table(per_variant[variant], "polygons", n=args.bootstrap),
            "per_image": per_variant[variant],
        }
    result["error_kinds"] = error_summary(cases)
    if args.candidates:
        result["cases"] = cases
    contract = next((p for p in val if p.stem == CONTRACT_IMAGE), None)
    if contract is not None and not args.no_contract:
        result["contract"] = contract_checks(
            predictor, contract, bench.labels_for(args.data, contract), work
        )
    if not args.no_pictures:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, panels in PICTURES.items():
            if any(p.crop.image not in scenes for p in panels):
                continue
            drawn = []
            for p in panels:
                sc = scenes[p.crop.image]
                drawn.append(
                    (
                        display_rgb(sc["rgb"]),
                        p.crop,
                        p.title,
                        pixel_geoms(sc["pred"][p.variant], sc["transform"]),
                        pixel_geoms(sc["labels"], sc["transform"]),
                    )
                )
            save_picture(args.out / name, drawn)
            print(f"wrote {args.out / name}")
    return result


def print_tables(result: dict[str, Any]) -> None:
    """The figures as the page gives them: sums, per-image ranges and 95 % intervals."""
    for variant in VARIANTS:
        for kind in ("mask", "polygons"):
            print(f"\n{variant}: pixel figures of the {kind}, object F1 of the polygons")
            print(
                f"{'':8} {'pixel IoU':>9} {'pixel F1':>9} {'per image':>13} {'95% images':>13}"
                f" {'object F1':>9} {'tp/fp/fn':>12} {'per image':>13} {'95% objects':>13}"
                f" {'95% images':>13}"
            )
            for source, r in result[variant][kind].items():
                o, rng_, b = r["objects"], r["per_image_range"], r["bootstrap_95"]
                cells = [
                    rng_["pixel_f1"],
                    b["pixel_f1_by_image"],
                    rng_["object_f1"],
                    b["object_f1_by_object"],
                    b["object_f1_by_image"],
                ]
                lo_hi = [f"{lo:6.3f}-{hi:.3f}" for lo, hi in cells]
                print(
                    f"{source:8} {r['pixel_iou']:9.3f} {r['pixel_f1']:9.3f} {lo_hi[0]} {lo_hi[1]}"
                    f" {r['object_f1']:9.3f} {o['tp']:>4}/{o['fp']}/{o['fn']:<4}"
                    f" {lo_hi[2]} {lo_hi[3]} {lo_hi[4]}"
                )
    print(f"\n{len(result['images'])} images predicted twice in {result['seconds']} s")
    if "contract" in result:
        print(
            f"\n{CONTRACT_IMAGE} as other files bring it (pixel F1 of the mask, object F1, tp/fp/fn)"
        )
        for name, r in result["contract"].items():
            tp, fp, fn = r["objects"]
            print(f"  {name:32} {r['pixel_f1']:.4f} {r['object_f1']:.4f} {tp}/{fp}/{fn}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the buildings-rgb folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "model-card")
    ap.add_argument("--model", default="buildings", help="model file or bundled name")
    ap.add_argument(
        "--work", type=Path, help="keep the predictions here (default: a temporary folder)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="bootstrap resamples")
    ap.add_argument("--images", nargs="*", help="only these held-out images (stems)")
    ap.add_argument("--candidates", action="store_true", help="list the error cases per image")
    ap.add_argument("--no-pictures", action="store_true", help="figures only")
    ap.add_argument(
        "--reuse", action="store_true", help="with --work: keep predictions already there"
    )
    ap.add_argument(
        "--no-contract", action="store_true", help="skip the input checks on copies of one image"
    )
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(
            f"{args.data} not found: this script needs ../shared/data/buildings-rgb",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="model-card-") as tmp:
        args.work = args.work or Path(tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(args)
    print_tables(result)
    print(
        "\nerror kinds, plain outlines (label polygons; small: 5-20 m2; green: >= 25 % vegetation)"
    )
    for source, e in result["error_kinds"].items():
        print(f"  {source:8} {json.dumps(e)}")
    if args.candidates:
        for stem, rows in result["cases"].items():
            for c in rows:
                if c["kind"] != "matched":
                    print(stem, json.dumps(c))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
