"""Pixel and object metrics of a model (or of existing predictions) against vector labels.

Pixel metrics (IoU, F1, precision, recall per class) come from a confusion matrix accumulated
strip by strip over the scene's valid pixels, with the labels rasterized per strip in the scene's
CRS. Object metrics follow SpaceNet: a predicted polygon matches a label polygon of the same
class when their IoU is at least 0.5, one-to-one (greedy by descending IoU); precision, recall
and F1 count those matches. Lines and points are not objects: object metrics cover the classes
whose labels are polygons.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from rasterio.windows import Window

from geounet.errors import GeounetError, LabelsError
from geounet.geodata.raster import gdal_path, open_scene
from geounet.labels.spec import LabelSpec
from geounet.labels.vector import read_labels
from geounet.prediction.config import PolygonOptions, PredictConfig, Progress
from geounet.prediction.predictor import Predictor
from geounet.training.metrics import scores_from_confusion
from geounet.vectors.centerline import CenterlineOptions, StripCenterliner
from geounet.vectors.strips import MASK_NODATA, StripVectorizer
from geounet.vectors.writer import VECTOR_FORMATS

logger = logging.getLogger(__name__)

STRIP_ROWS = 512


def match_pairs(
    predicted: Sequence[shapely.Geometry],
    truth: Sequence[shapely.Geometry],
    *,
    iou_threshold: float = 0.5,
) -> tuple[list[tuple[int, int, float]], npt.NDArray[np.float64]]:
    """The one-to-one matches of :func:`match_objects`, and each prediction's best IoU.

    Pairs at or above ``iou_threshold`` are taken greedily, highest IoU first, each polygon at
    most once (SpaceNet's rule).

    Returns:
        ``(matches, best)``: ``(prediction index, truth index, IoU)`` per match, in the order
        taken, and the best IoU of each prediction with any truth polygon (0 where none touches).
    """
    best = np.zeros(len(predicted))
    pairs: list[tuple[float, int, int]] = []
    if len(predicted) and len(truth):
        tree = shapely.STRtree(list(truth))
        p_idx, t_idx = tree.query(np.asarray(predicted, dtype=object), predicate="intersects")
        for i, j in zip(p_idx, t_idx, strict=True):
            a, b = predicted[int(i)], truth[int(j)]
            inter = shapely.intersection(a, b).area
            union = a.area + b.area - inter
            iou = inter / union if union > 0 else 0.0
            best[i] = max(best[i], iou)
            if iou >= iou_threshold:
                pairs.append((iou, int(i), int(j)))
    pairs.sort(reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for iou, i, j in pairs:
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j, iou))
    return matches, best


def match_objects(
    predicted: Sequence[shapely.Geometry],
    truth: Sequence[shapely.Geometry],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """SpaceNet-style one-to-one matching of polygons at an IoU threshold (:func:`match_pairs`).

    Returns:
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` and ``mean_iou`` of the matches.
    """
    pred = [g for g in predicted if g is not None and not g.is_empty]
    true = [g for g in truth if g is not None and not g.is_empty]
    matches, _ = match_pairs(pred, true, iou_threshold=iou_threshold)
    ious = [iou for _, _, iou in matches]
    tp = len(ious)
    fp = len(pred) - tp
    fn = len(true) - tp
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
    }


def match_lines(
    predicted: Sequence[shapely.Geometry], truth: Sequence[shapely.Geometry], *, buffer: float
) -> dict[str, float]:
    """Road-extraction measures of Wiedemann et al. (1998) within ``buffer`` (CRS units).

    ``completeness``: share of the true length within ``buffer`` of a predicted line;
    ``correctness``: share of the predicted length within ``buffer`` of a true line;
    ``quality``: matched predicted length / (predicted length + unmatched true length).
    Lengths are in CRS units; ``length_true``/``length_pred`` are reported too.
    """
    pred = shapely.union_all(
        np.asarray([g for g in predicted if g is not None and not g.is_empty], dtype=object)
    )
    true = shapely.union_all(
        np.asarray([g for g in truth if g is not None and not g.is_empty], dtype=object)
    )
    lp, lt = float(pred.length), float(true.length)
    matched_true = (
        float(shapely.intersection(true, shapely.buffer(pred, buffer)).length) if lp and lt else 0.0
    )
    matched_pred = (
        float(shapely.intersection(pred, shapely.buffer(true, buffer)).length) if lp and lt else 0.0
    )
    denom = lp + lt - matched_true
    return {
        "completeness": matched_true / lt if lt else float("nan"),
        "correctness": matched_pred / lp if lp else float("nan"),
        "quality": matched_pred / denom if denom else float("nan"),
        "length_true": lt,
        "length_pred": lp,
        "buffer": buffer,
    }


def _metric_frame(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The frame in metres: its own CRS when projected in metres, else its UTM zone."""
    crs = frame.crs
    if (
        crs is not None
        and crs.is_projected
        and crs.axis_info
        and crs.axis_info[0].unit_conversion_factor == 1.0
    ):
        return frame
    return frame.to_crs(frame.estimate_utm_crs())


def _read_prediction(path: Path, crs: Any) -> gpd.GeoDataFrame:
    """A vector prediction in ``crs``: every feature layer of a GeoPackage (polygons and the
    ``<stem>_lines`` centerlines of a model with both kinds), with the ``<stem>_lines`` file that
    ``geounet predict`` writes beside other formats."""
    import pandas as pd
    import pyogrio

    def read(p: Path) -> list[gpd.GeoDataFrame]:
        if p.suffix.lower() == ".parquet":
            return [gpd.read_parquet(p)]
        layers = [str(name) for name, _ in pyogrio.list_layers(p) if name != "layer_styles"]
        return [gpd.read_file(p, layer=layer) for layer in layers] or [gpd.read_file(p)]

    frames = read(path)
    beside = path.with_name(f"{path.stem}_lines{path.suffix}")
    if path.suffix.lower() != ".gpkg" and beside.exists():
        frames += read(beside)
    frames = [f.to_crs(crs) if f.crs is not None else f.set_crs(crs) for f in frames]
    if len(frames) == 1:
        return frames[0]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)


def evaluate(
    scene: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    prediction: str | os.PathLike[str] | None = None,
    spec: LabelSpec | None = None,
    config: PredictConfig | None = None,
    iou_threshold: float = 0.5,
    line_buffer_m: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of a model or of a prediction (mask GeoTIFF or vector file) against labels.

    Args:
        scene: The scene the prediction covers (its grid and valid pixels define the area).
        labels: Vector labels (any CRS; reprojected to the scene's).
        model: A model file to run over the scene (exclusive with ``prediction``).
        prediction: A class-mask GeoTIFF written by ``geounet predict --mask`` (mask values are
            class ids, 255 nodata) or a vector file with a ``class`` (name) column.
        spec: How to read the labels (class field, class names, line width, point radius).
        config: Prediction options when ``model`` is given.
        iou_threshold: Object-matching IoU threshold.
        line_buffer_m: Buffer in metres of the line measures (`match_lines`) of the line
            classes (the model's, or those labelled with lines only); None: half the model's line
            width (or the spec's).
        progress: Tile progress when running a model.

    Returns:
        ``{"scene", "labels", "classes", "pixel": {class: {...}}, "object": {class: {...}},
        "line": {class: {...}}}`` (``line`` empty without line classes).

    Raises:
        GeounetError: Bad inputs, or class names of the model and the labels that do not match.
    """
    if (model is None) == (prediction is None):
        raise GeounetError("give either a model or a prediction to evaluate")
    src_scene = open_scene(scene)
    lab = read_labels(labels, spec or LabelSpec())
    rl = lab.for_raster(
        src_scene.crs, src_scene.transform, src_scene.width, src_scene.height, name=src_scene.name
    )
    if rl.empty:
        raise LabelsError(
            f"{Path(labels).name} has no feature inside {src_scene.name}; check the label file's CRS and extent"
        )
    names = ["background", *lab.class_names]
    polygons = PolygonOptions.resolve(config, None)
    line_names = [n for n, k in lab.class_geometry().items() if k == "line"]
    line_width = (spec or LabelSpec()).line_width_m
    with tempfile.TemporaryDirectory(prefix="geounet-eval-") as tmp:
        vector_pred = None
        if model is not None:
            cfg = config or PredictConfig()
            predictor = Predictor(
                model, device=cfg.device, precision=cfg.precision, backend=cfg.backend
            )
            polygons = PolygonOptions.resolve(config, predictor.meta)
            meta = predictor.meta
            line_names = [
                n for n in meta.mask_classes[1:] if meta.geometry_of(n) == "line" and n in names
            ]
            if lab.binary and meta.binary and meta.line_class_ids:
                line_names = list(names[1:])
            line_width = meta.line_width_m or line_width
            mapping = _class_mapping(predictor.meta.mask_classes, names, lab.binary)
            mask_path = Path(tmp) / "mask.tif"
            predictor.run(scene, mask=mask_path, config=config, progress=progress)
        else:
            pred = Path(prediction)  # type: ignore[arg-type]
            if not pred.exists():
                raise GeounetError(
                    f"{pred}: prediction not found; pass a mask GeoTIFF or a vector file"
                )
            if pred.suffix.lower() in VECTOR_FORMATS:
                vector_pred = _read_prediction(pred, src_scene.crs)
                vector_pred["class_id"] = _vector_class_ids(vector_pred, names, lab.binary)
                mask_path = Path(tmp) / "mask.tif"
                _rasterize_vectors(vector_pred, src_scene, mask_path)
                mapping = np.arange(256)
            else:
                mask_path = pred
                mapping = _class_mapping(_mask_class_names(pred) or names, names, lab.binary)
        line_ids = [names.index(n) for n in line_names]
        cl = (
            StripCenterliner(
                src_scene.transform,
                src_scene.crs,
                names,
                line_ids,
                CenterlineOptions(line_width_m=line_width),
            )
            if line_ids and vector_pred is None
            else None
        )
        cm, vec = _pixel_confusion(
            mask_path, rl, src_scene, mapping, polygons.vectorizer(src_scene, names), cl
        )
        pred_frame = vector_pred if vector_pred is not None else vec.finish()
        line_frame = cl.finish() if cl is not None else vector_pred
    pixel = scores_from_confusion(cm, names)
    for k, name in enumerate(names):
        pixel[name].update(
            tp=int(cm[k, k]), fp=int(cm[:, k].sum() - cm[k, k]), fn=int(cm[k, :].sum() - cm[k, k])
        )
    objects: dict[str, dict[str, float]] = {}
    truth_geoms, truth_ids, polygonal = rl.geometries, rl.class_ids, rl.polygonal
    for k, name in enumerate(names[1:], start=1):
        sel = (truth_ids == k) & polygonal
        if not sel.any():
            continue
        pred_cls = pred_frame[pred_frame["class_id"] == k]
        objects[name] = match_objects(
            list(pred_cls.geometry), list(truth_geoms[sel]), iou_threshold=iou_threshold
        )
    lines: dict[str, dict[str, float]] = {}
    if line_names and line_frame is not None:
        true_geoms, true_ids = lab.line_parts(src_scene.crs)
        buffer = line_buffer_m if line_buffer_m is not None else line_width / 2
        for name in line_names:
            k = names.index(name)
            pred = line_frame[
                (line_frame["class_id"] == k)
                & line_frame.geom_type.isin(["LineString", "MultiLineString"])
            ]
            true = gpd.GeoDataFrame(
                geometry=gpd.GeoSeries(true_geoms[true_ids == k], crs=src_scene.crs)
            )
            # Truth is clipped to the scene's footprint (labels may run beyond it).
            true = true.clip(shapely.box(*src_scene.bounds))
            metric_true = _metric_frame(true)
            metric_pred = pred.to_crs(metric_true.crs) if len(pred) else pred
            lines[name] = match_lines(
                list(metric_pred.geometry), list(metric_true.geometry), buffer=buffer
            )
    return {
        "scene": str(scene),
        "labels": str(labels),
        "model": str(model) if model is not None else None,
        "prediction": str(prediction) if prediction is not None else None,
        "classes": names,
        "pixel": {k: _clean(v) for k, v in pixel.items()},
        "object": {k: _clean(v) for k, v in objects.items()},
        "line": {k: _clean(v) for k, v in lines.items()},
    }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (
            None
            if isinstance(v, float) and math.isnan(v)
            else (round(v, 6) if isinstance(v, float) else v)
        )
        for k, v in d.items()
    }


def _class_mapping(
    pred_names: Sequence[str], label_names: Sequence[str], binary: bool
) -> npt.NDArray[np.int64]:
    """Lookup table: predicted mask value -> label class id (binary: foreground -> 1)."""
    table = np.full(256, 0, dtype=np.int64)
    table[MASK_NODATA] = MASK_NODATA
    if binary and len(pred_names) == 2:
        table[1] = 1
        return table
    missing = [n for n in pred_names[1:] if n not in label_names]
    if len(pred_names) != len(label_names) or missing:
        raise GeounetError(
            f"the model's classes ({', '.join(pred_names[1:])}) do not match the labels' "
            f"({', '.join(label_names[1:])}); pass --class-field/--classes so they agree"
        )
    for i, n in enumerate(pred_names):
        table[i] = list(label_names).index(n)
    return table


def _mask_class_names(path: Path) -> list[str] | None:
    with rasterio.open(path) as src:
        tags = src.tags(1)
    names = [tags.get(f"CLASS_{i}") for i in range(256)]
    found = [n for n in names if n is not None]
    return found if found and names[0] is not None else None


def _vector_class_ids(
    frame: gpd.GeoDataFrame, names: Sequence[str], binary: bool
) -> npt.NDArray[np.int64]:
    """Label class ids of predicted polygons, by their ``class`` name (any name when binary)."""
    if binary or "class" not in frame:
        return np.ones(len(frame), dtype=np.int64)
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(c) for c in frame["class"]} - set(lookup))
    if unknown:
        raise GeounetError(
            f"prediction classes {', '.join(unknown)} are not among the labels' ({', '.join(names[1:])})"
        )
    return np.array([lookup[str(c)] for c in frame["class"]], dtype=np.int64)


def _rasterize_vectors(frame: gpd.GeoDataFrame, scene: Any, path: Path) -> None:
    from rasterio.features import rasterize

    shapes = [
        (g, int(i))
        for g, i in zip(frame.geometry, frame["class_id"], strict=True)
        if g is not None and not g.is_empty
    ]
    profile = {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": 1,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, scene.height, STRIP_ROWS):
            h = min(STRIP_ROWS, scene.height - r0)
            win = Window(0, r0, scene.width, h)
            arr = (
                rasterize(
                    shapes,
                    out_shape=(h, scene.width),
                    transform=rasterio.windows.transform(win, scene.transform),
                    dtype="uint8",
                )
                if shapes
                else np.zeros((h, scene.width), np.uint8)
            )
            dst.write(arr, 1, window=win)


def _pixel_confusion(
    mask_path: Path,
    rl: Any,
    scene: Any,
    mapping: npt.NDArray[np.int64],
    vec: StripVectorizer,
    centerliner: StripCenterliner | None = None,
) -> tuple[npt.NDArray[np.int64], StripVectorizer]:
    n_classes = len(vec.class_names)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    with rasterio.open(gdal_path(scene.path)) as src, rasterio.open(mask_path) as msk:
        if (msk.width, msk.height) != (scene.width, scene.height):
            raise GeounetError(
                f"{Path(mask_path).name} is {msk.width}x{msk.height}, {scene.name} is {scene.width}x{scene.height}; "
                f"evaluate a prediction made on this scene"
            )
        for r0 in range(0, scene.height, STRIP_ROWS):
            h = min(STRIP_ROWS, scene.height - r0)
            win = Window(0, r0, scene.width, h)
            pred_raw = msk.read(1, window=win)
            pred = mapping[pred_raw]
            truth = rl.rasterize(win)
            valid = pred_raw != MASK_NODATA
            if scene.has_mask:
                valid &= src.dataset_mask(window=win) > 0
            idx = truth[valid].astype(np.int64) * n_classes + np.minimum(pred[valid], n_classes - 1)
            cm += np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
            vec.add(r0, np.where(valid, pred, MASK_NODATA).astype(np.uint8), None)
            if centerliner is not None:
                centerliner.add(r0, np.where(valid, pred, 0).astype(np.uint8), None)
    return cm, vec
