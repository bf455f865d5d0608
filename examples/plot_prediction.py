"""Draw predicted polygons (and optionally labels) over a scene, to a PNG.

python examples/plot_prediction.py scene.tif buildings.geojson out.png [--labels truth.geojson]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def plot(
    scene: Path, polygons: Path, out: Path, labels: Path | None = None, title: str | None = None
) -> None:
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio
    from rasterio.plot import plotting_extent

    with rasterio.open(scene) as src:
        rgb = src.read([1, 2, 3]).astype(np.float64)
        extent = plotting_extent(src)
        crs = src.crs
    lo, hi = np.percentile(rgb, [1, 99], axis=(1, 2))
    rgb = np.clip(
        (rgb - lo[:, None, None]) / np.maximum(hi - lo, 1)[:, None, None], 0, 1
    ).transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(7, 7 * rgb.shape[0] / rgb.shape[1]), dpi=110)
    ax.imshow(rgb, extent=extent)
    if labels is not None:
        truth = gpd.read_file(labels).to_crs(crs)
        if len(truth):
            truth.boundary.plot(ax=ax, color="#00e5ff", linewidth=1.0, linestyle="--")
    pred = gpd.read_file(polygons).to_crs(crs)
    if len(pred):
        pred.boundary.plot(ax=ax, color="#ff3b30", linewidth=1.4)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("polygons", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--labels", type=Path, help="reference polygons, drawn dashed")
    ap.add_argument("--title")
    args = ap.parse_args()
    plot(args.scene, args.polygons, args.out, args.labels, args.title)
    print(args.out)


if __name__ == "__main__":
    main()
