"""Fingerprints of a prediction's outputs, to show that a change of the pipeline keeps them.

Runs ``geounet.prediction.predictor.predict_raster`` on a scene and prints one SHA-256 per output: the pixels
of the probability and mask GeoTIFFs (plus their georeferencing and nodata), and the vector
features (class, class_id, score, area_m2 and geometry as WKB) in file order, and again sorted
by WKB with each geometry normalized (``shapely.normalize``: the same polygons whatever their
order and ring start), and with each outline canonical (also no vertex in the middle of a
straight edge: the same polygons whatever vertex list describes them). Run it before and after a change; equal lines are equal outputs:

    python benchmarks/digest.py SCENE MODEL [--format gpkg] [--tile-size 512 --overlap 64]

To run an older checkout of the package, put it first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path


def raster_digest(path: Path) -> str:
    import rasterio

    h = hashlib.sha256()
    with rasterio.open(path) as ds:
        h.update(
            repr(
                (ds.crs.to_wkt(), tuple(ds.transform), ds.nodatavals, ds.dtypes, ds.count)
            ).encode()
        )
        h.update(ds.read().tobytes())
    return h.hexdigest()[:16]


def vector_digests(path: Path) -> tuple[str, str, str, int]:
    import geopandas as gpd
    import shapely

    frame = gpd.read_file(path) if path.suffix != ".parquet" else gpd.read_parquet(path)
    rows = [
        repr((c, int(i), float(s), float(a))).encode() + shapely.to_wkb(g)
        for c, i, s, a, g in zip(
            frame["class"],
            frame["class_id"],
            frame["score"],
            frame["area_m2"],
            frame.geometry,
            strict=True,
        )
    ]
    ordered = hashlib.sha256(b"".join(rows)).hexdigest()[:16]
    norm = sorted(
        repr((c, int(i), float(s), float(a))).encode() + shapely.to_wkb(shapely.normalize(g))
        for c, i, s, a, g in zip(
            frame["class"],
            frame["class_id"],
            frame["score"],
            frame["area_m2"],
            frame.geometry,
            strict=True,
        )
    )
    # Canonical: also without vertices in the middle of straight edges (simplify with tolerance
    # 0), so that two outlines of the same polygon with different vertex lists agree.
    canon = sorted(
        repr((c, int(i), float(s), float(a))).encode()
        + shapely.to_wkb(shapely.normalize(shapely.simplify(g, 0)))
        for c, i, s, a, g in zip(
            frame["class"],
            frame["class_id"],
            frame["score"],
            frame["area_m2"],
            frame.geometry,
            strict=True,
        )
    )
    return (
        ordered,
        hashlib.sha256(b"".join(norm)).hexdigest()[:16],
        hashlib.sha256(b"".join(canon)).hexdigest()[:16],
        len(frame),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene")
    ap.add_argument("model")
    ap.add_argument(
        "--format", default="gpkg", help="vector suffix: gpkg, geojson, fgb, shp, parquet"
    )
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the outputs here instead of a temporary folder",
    )
    args = ap.parse_args()

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import predict_raster

    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        vec, prob, mask = out / f"v.{args.format}", out / "p.tif", out / "m.tif"
        cfg = PredictConfig(tile_size=args.tile_size, overlap=args.overlap, overwrite=True)
        t0 = time.perf_counter()
        res = predict_raster(
            args.scene, vec, model=args.model, probabilities=prob, mask=mask, config=cfg
        )
        seconds = time.perf_counter() - t0
        ordered, normalized, canonical, n = vector_digests(vec)
        print(f"probabilities {raster_digest(prob)}")
        print(f"mask          {raster_digest(mask)}")
        print(f"vectors       {ordered} (file order)")
        print(f"vectors       {normalized} (normalized, sorted)")
        print(f"vectors       {canonical} (canonical outlines, sorted)")
        print(f"features      {n} (result says {res.features})")
        print(f"# {seconds:.1f} s")


if __name__ == "__main__":
    main()
