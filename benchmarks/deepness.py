"""How closely QGIS Deepness reproduces ``geounet predict`` with the default ONNX export.

Deepness (0.6.5) is played by :func:`deepness_mask`, written from its source
(``src/deepness/processing/models/model_base.py``, ``segmentor.py``,
``processing/map_processor/map_processor.py``, ``map_processor_segmentation.py``,
``processing/extent_utils.py``, ``processing/tile_params.py``,
``common/processing_overlap.py``), for "Entire layer" on a layer already at the model's
resolution:

- the file: the tile size is ``input_shape[-1]`` (an integer, or the model does not load); every
  metadata value goes through ``json.loads``; ``resolution`` is cm per pixel; the overlap is
  ``int(tile * tiles_overlap / 100 * 2) // 2`` pixels, the stride the tile minus that;
- the grid: the layer is extended to ``tile + N * stride`` pixels each way by adding columns past
  its right edge and rows past its top edge (``extended_extent.setYMaximum``), read as zeros;
  tiles start at the extended top-left corner every ``stride`` pixels;
- each tile: ``float32(x * 1/255)``, ``(x - mean) / std`` with the metadata's standardization,
  NHWC to NCHW, first output; values under ``seg_thresh`` set to 0, then one channel: non-zero
  is the class, several: argmax;
- the seams: each tile writes its centre, ``half = overlap // 2`` pixels in from every side that
  has a neighbour, over what earlier tiles wrote (no blending); a median filter of size
  ``seg_small_segment // 2 * 2 + 1`` (1, none, with geounet's export); the padding is cut off.

Deepness' own ``Segmentor`` and ``MapProcessorSegmentation`` (0.6.5, headless in QGIS 3.22,
"Entire layer", the parameters its panel loads from the file) gave the same mask as this
stand-in, pixel for pixel, on the default export over a 1024 x 1024 and a 1000 x 900 scene.

Against it, ``geounet predict`` of the bundled model (its class mask: blended tiles, each
scene's own percentile stretch, the cut between touching buildings). The scenes are mosaics of
the held-out Inria crops of one city (256 x 256 at 0.3 m each; the bundled model never trained
on them): ``--grid 4`` places the four crops of a city four times each (turned by 0, 90, 180,
270 degrees) in a 1024 x 1024 scene, and ``--sizes`` cuts smaller scenes from its top-left
corner. Printed per scene, for the default export: the share of pixels on which the two masks
agree, the building IoU between them and the share of the differing pixels within 32 px of the
scene's edge; then the agreement with Deepness' overlap set to the model's own (13 %), with the
export as it was before (a 0..255 stretch folded in, 13 %), and with the scene's own stretch
folded in (``--stretch-from``), which leaves only Deepness' padding and seams.
Run from the repository root (about 3 minutes on 2 cores; 12 with ``--sizes 1024 1000 900 800``):

    python benchmarks/deepness.py [--data ../shared/data/buildings-rgb] [--sizes 1024 1000 900 800]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import buildings  # benchmarks/buildings.py: the held-out images

#: Disagreeing pixels this close to the scene's edge count as "near the edge".
EDGE_PX = 32


@dataclass
class DeepnessModel:
    """An ONNX file as Deepness' ``Segmentor`` reads it."""

    session: Any
    input_name: str
    tile_size: int
    channels: int
    resolution_cm: float | None
    overlap_pct: int
    threshold: float
    small_segment: int
    mean: npt.NDArray[np.float32]
    std: npt.NDArray[np.float32]

    @property
    def overlap_px(self) -> int:
        """``ProcessingOverlap.get_overlap_px`` for a percentage."""
        return int(self.tile_size * self.overlap_pct / 100 * 2) // 2

    @property
    def stride(self) -> int:
        """``MapProcessingParameters.processing_stride_px``."""
        return self.tile_size - self.overlap_px


def load_deepness(path: str | Path) -> DeepnessModel:
    """Load a file as Deepness does (``ModelBase``, the dock widget's defaults from metadata).

    Raises:
        TypeError: A symbolic input size, which Deepness puts in an integer spin box (the
            error it shows: ``setValue(self, val: int): argument 1 has unexpected type 'str'``).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = session.get_inputs()
    if len(inputs) > 1:
        raise ValueError("ONNX model: unsupported number of inputs")
    shape = inputs[0].shape
    if not isinstance(shape[-1], int):
        raise TypeError(
            f"setValue(self, val: int): argument 1 has unexpected type '{type(shape[-1]).__name__}'"
        )
    meta = session.get_modelmeta().custom_metadata_map

    def value(name: str) -> Any:
        return json.loads(meta[name]) if name in meta else None

    channels = int(shape[-3])
    mean = np.zeros(channels, np.float32)
    std = np.ones(channels, np.float32)
    if "standardization_mean" in meta and "standardization_std" in meta:
        mean = np.array([float(x) for x in value("standardization_mean")], dtype=np.float32)
        std = np.array([float(x) for x in value("standardization_std")], dtype=np.float32)
    tile = value("tile_size")  # the metadata sets the spin box, then the input shape overrides it
    assert tile is None or int(tile) == shape[-1], (tile, shape)
    resolution = value("resolution")
    return DeepnessModel(
        session=session,
        input_name=inputs[0].name,
        tile_size=int(shape[-1]),
        channels=channels,
        resolution_cm=float(resolution) if resolution is not None else None,
        overlap_pct=int(value("tiles_overlap")) if "tiles_overlap" in meta else 15,
        threshold=float(value("seg_thresh")) if "seg_thresh" in meta else 0.5,
        small_segment=int(value("seg_small_segment")) if "seg_small_segment" in meta else 9,
        mean=mean,
        std=std,
    )


def preprocess(model: DeepnessModel, tiles_nhwc: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """``ModelBase.preprocessing``: channels limited, /255, standardized, NHWC -> NCHW."""
    x = tiles_nhwc[:, :, :, : model.channels]
    x = np.float32(x * 1.0 / 255.0)
    x = (x - model.mean) / model.std
    return np.transpose(x, (0, 3, 1, 2))


def classify(model: DeepnessModel, tiles_nhwc: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """``MapProcessorSegmentation._process_tile`` for the first output: (N, H, W) 1 + class."""
    (result, *_) = model.session.run(None, {model.input_name: preprocess(model, tiles_nhwc)})
    result = np.array(result)
    result[result < model.threshold] = 0.0
    if result.ndim == 3:
        result = result[:, None]
    if result.shape[1] == 1:
        return (result[:, 0] != 0).astype(int) + 1
    return np.argmax(result, axis=1) + 1


def extend(length: int, tile: int, stride: int) -> int:
    """Pixels Deepness adds to reach ``tile + N * stride`` (``calculate_extended_processing_extent``)."""
    if length <= tile:
        return tile - length
    return (stride - (length - tile) % stride) % stride


def deepness_mask(
    model: DeepnessModel, image_chw: npt.NDArray[Any], *, batch_size: int = 1
) -> npt.NDArray[np.uint8]:
    """Deepness' class mask (0 = background, 1.. the classes) of a whole layer (bands, rows, cols)
    already at the model's resolution ("Entire layer", no mask polygons)."""
    bands, height, width = image_chw.shape
    tile, stride = model.tile_size, model.stride
    pad_x, pad_y = extend(width, tile, stride), extend(height, tile, stride)
    full_h, full_w = height + pad_y, width + pad_x
    # The extension lies past the right edge and past the top edge; QGIS reads zeros there.
    layer = np.zeros((full_h, full_w, bands), image_chw.dtype)
    layer[pad_y:, :width] = np.moveaxis(image_chw, 0, -1)
    x_bins = round((full_w - tile) / stride) + 1
    y_bins = round((full_h - tile) / stride) + 1
    result = np.zeros((full_h, full_w), np.uint8)
    half = max((tile - stride) // 2, 0)
    jobs = [(yb, xb) for yb in range(y_bins) for xb in range(x_bins)]
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        tiles = np.array(
            [
                layer[yb * stride : yb * stride + tile, xb * stride : xb * stride + tile]
                for yb, xb in batch
            ]
        )
        for (yb, xb), cls in zip(batch, classify(model, tiles), strict=True):
            y0, x0 = yb * stride, xb * stride
            # TileParams.get_slice_on_full_image_for_copying: the centre, the whole tile on
            # the extended layer's own edges.
            r0 = y0 + (0 if yb == 0 else half)
            r1 = y0 + tile - (0 if yb == y_bins - 1 else half)
            c0 = x0 + (0 if xb == 0 else half)
            c1 = x0 + tile - (0 if xb == x_bins - 1 else half)
            result[r0:r1, c0:c1] = cls[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
    size = int(model.small_segment // 2) * 2 + 1
    if size > 1:  # cv2.medianBlur; geounet's export writes seg_small_segment 0 (size 1: none)
        from scipy.ndimage import median_filter

        result = median_filter(result, size=size, mode="nearest")
    return (result[pad_y:, :width].astype(np.int16) - 1).clip(0).astype(np.uint8)


def mosaic(crops: list[Path], out: Path, grid: int) -> Path:
    """A ``grid`` x ``grid`` mosaic of 256 px crops, each placed ``grid**2 / len(crops)`` times,
    turned by a quarter more each time (the first crop's georeferencing at the top-left)."""
    arrays = []
    for p in crops:
        with rasterio.open(p) as src:
            arrays.append(src.read())
            profile = src.profile
    size = arrays[0].shape[-1]
    data = np.zeros((arrays[0].shape[0], grid * size, grid * size), arrays[0].dtype)
    for k in range(grid * grid):
        a = np.rot90(arrays[k % len(arrays)], k // len(arrays), axes=(1, 2))
        r, c = divmod(k, grid)
        data[:, r * size : (r + 1) * size, c * size : (c + 1) * size] = a
    profile.update(width=grid * size, height=grid * size, tiled=False, compress="deflate")
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        with rasterio.open(crops[0]) as src:
            dst.colorinterp = src.colorinterp
    return out


def city_crops(data: Path, city: str) -> list[Path]:
    """The held-out crops of an Inria city (the bundled model never trained on them)."""
    _, val = buildings.held_out(data)
    return sorted(p for p in val if p.name.startswith(city))


def predict_mask(
    scene: Path, out: Path, *, split_seeds: float | None = None, precision: str = "auto"
) -> npt.NDArray[np.uint8]:
    """``geounet predict SCENE --mask OUT`` with the bundled model, as an array."""
    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    cfg = PredictConfig(device="cpu", precision=precision, split_seeds=split_seeds, overwrite=True)  # type: ignore[arg-type]
    predict_raster(scene, mask=out, model="buildings", config=cfg)
    with rasterio.open(out) as src:
        return src.read(1)


def agreement(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], edge: int = EDGE_PX
) -> dict[str, float]:
    """Share of equal pixels, foreground IoU between the two, and the share of the differing
    pixels that lie within ``edge`` px of the scene's edge."""
    differ = a != b
    near = np.zeros_like(differ)
    near[:edge], near[-edge:], near[:, :edge], near[:, -edge:] = True, True, True, True
    fa, fb = a == 1, b == 1
    union = (fa | fb).sum()
    return {
        "agree": float(1 - differ.mean()),
        "iou": float((fa & fb).sum() / union) if union else 1.0,
        "near_edge": float((differ & near).sum() / differ.sum()) if differ.any() else 0.0,
    }


def read_image(path: Path) -> npt.NDArray[Any]:
    with rasterio.open(path) as src:
        return src.read()


def crop(scene: Path, out: Path, size: int) -> Path:
    """The top-left ``size`` x ``size`` pixels of a scene, as a GeoTIFF."""
    from rasterio.windows import Window

    window = Window(0, 0, size, size)
    with rasterio.open(scene) as src:
        profile = src.profile
        data = src.read(window=window)
        profile.update(width=size, height=size, transform=src.window_transform(window))
        colorinterp = src.colorinterp
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = colorinterp
    return out


def with_scene_stretch(model: DeepnessModel, scene: Path) -> DeepnessModel:
    """``model`` with the standardization ``geounet model export --stretch-from SCENE`` writes."""
    from geounet.network.checkpoint import read_meta
    from geounet.network.export import onnx_metadata, scene_stretch

    meta = read_meta("buildings")
    props = onnx_metadata(meta, stretch=scene_stretch(meta, scene))
    mean = np.array(json.loads(props["standardization_mean"]), np.float32)
    std = np.array(json.loads(props["standardization_std"]), np.float32)
    return dataclasses.replace(model, mean=mean, std=std)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=buildings.DATA)
    ap.add_argument(
        "--grid", type=int, default=4, help="crops per side of each mosaic (256 px each)"
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024],
        help="scene sizes: the mosaic's top-left corner",
    )
    ap.add_argument("--cities", nargs="+", default=["austin", "chicago"])
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="geounet predict's arithmetic",
    )
    args = ap.parse_args(argv)

    from geounet.network.checkpoint import read_meta
    from geounet.network.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="geounet-deepness-") as tmp:
        work = Path(tmp)
        default = load_deepness(export_onnx("buildings", work / "buildings.onnx"))
        print(
            f"default export: tile {default.tile_size} px, overlap {default.overlap_pct} % ({default.overlap_px} px), "
            f"threshold {default.threshold:g}, resolution {default.resolution_cm:g} cm/px, "
            f"mean {np.round(default.mean, 4).tolist()}, std {np.round(default.std, 4).tolist()}"
        )
        narrow = dataclasses.replace(default, overlap_pct=13)  # the model's own 64 of 512 px
        # The export before the typical stretch and the wider overlap: the model's mean/std as
        # they are (a 0..255 stretch folded in) and its own overlap.
        meta = read_meta("buildings")
        before = dataclasses.replace(narrow, mean=np.float32(meta.mean), std=np.float32(meta.std))
        print(
            "Deepness against geounet predict (the bundled model's mask): pixels agreeing, building IoU between "
            f"the two, share of the differing pixels within {EDGE_PX} px of the scene's edge"
        )
        rows = []
        for city in args.cities:
            full = mosaic(city_crops(args.data, city), work / f"{city}.tif", args.grid)
            for size in args.sizes:
                scene = (
                    full
                    if size == args.grid * 256
                    else crop(full, work / f"{city}_{size}.tif", size)
                )
                image = read_image(scene)
                reference = predict_mask(
                    scene, work / f"{city}_{size}_mask.tif", precision=args.precision
                )
                row = {
                    "scene": f"{city} {image.shape[2]} x {image.shape[1]}",
                    "default": agreement(deepness_mask(default, image), reference),
                    "overlap 13 %": agreement(deepness_mask(narrow, image), reference),
                    "before": agreement(deepness_mask(before, image), reference),
                    "stretch-from": agreement(
                        deepness_mask(with_scene_stretch(default, scene), image), reference
                    ),
                }
                rows.append(row)
                print(
                    f"  {row['scene']:<18} default export {100 * row['default']['agree']:6.2f} % (IoU {row['default']['iou']:.3f}, "
                    f"near edge {100 * row['default']['near_edge']:4.1f} %)   "
                    f"with 13 % overlap {100 * row['overlap 13 %']['agree']:6.2f} %   "
                    f"before (0-255, 13 %) {100 * row['before']['agree']:6.2f} %   "
                    f"--stretch-from the scene {100 * row['stretch-from']['agree']:6.2f} % (IoU {row['stretch-from']['iou']:.3f}, "
                    f"near edge {100 * row['stretch-from']['near_edge']:4.1f} %)",
                    flush=True,
                )
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
