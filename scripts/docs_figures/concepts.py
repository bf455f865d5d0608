"""Diagrams of the Concepts pages (docs/concepts/), drawn from geounet's own tiling and blending.

    python scripts/docs_figures/concepts.py --out docs/img/concepts

Writes, in a few seconds and without a model or data:

- ``tile-grid.png``: the edge-complete tile grid of a 1,400 x 1,200 pixel scene at 512 px tiles
  and 64 px overlap (:func:`geounet.geodata.tiling.tile_windows`), the last row and column
  snapped to the scene's edge;
- ``blend-weights.png``: along one row of that scene, each tile's raised-cosine weight
  (:func:`geounet.prediction.blend.taper_1d`) and its share of every pixel once divided by the
  weight sum: the shares add up to 1 everywhere;
- ``rolling-strip.png``: which rows of a tall scene are written, held in the strip buffer, or not
  read yet, while one row of tiles is blended;

and, with the bundled model (about half a minute on 2 CPU cores):

- ``seams.png``: ``examples/rio_55.tif`` predicted in 256 px tiles twice, with no overlap and
  with 64 px of blended overlap (PyTorch, float32), the building probability of each and their
  difference, with the tile grid: without overlap every tile border shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from geounet.geodata.tiling import Tile, tile_rows, tile_windows
from geounet.prediction.blend import taper_1d

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT, TILE, OVERLAP = 1400, 1200, 512, 64
COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]


def tile_grid(path: Path) -> None:
    """The tile grid over the scene, each tile outlined, the overlaps shaded."""
    tiles = tile_windows(HEIGHT, WIDTH, TILE, OVERLAP)
    fig, ax = plt.subplots(figsize=(7.2, 5.4), dpi=100)
    ax.add_patch(Rectangle((0, 0), WIDTH, HEIGHT, facecolor="#f2f2f2", edgecolor="black", lw=1.5))
    for t in tiles:
        colour = COLOURS[(t.row % 2) * 2 + t.col % 2]
        ax.add_patch(
            Rectangle(
                (t.col_off, t.row_off),
                t.width,
                t.height,
                facecolor=colour,
                alpha=0.18,
                edgecolor=colour,
                lw=2,
            )
        )
        ax.text(
            t.col_off + 14,
            t.row_off + 40,
            f"({t.row},{t.col})",
            color=colour,
            fontsize=9,
            fontweight="bold",
        )
    starts = sorted({t.col_off for t in tiles})
    row_starts = sorted({t.row_off for t in tiles})
    ax.annotate(
        f"last row and column snapped to the edges: they start at\n"
        f"row {row_starts[-1]} = {HEIGHT} - {TILE} and column {starts[-1]} = {WIDTH} - {TILE}",
        xy=(starts[-1] + TILE / 2, HEIGHT - 20),
        xytext=(60, HEIGHT + 150),
        fontsize=9,
        arrowprops={"arrowstyle": "->"},
    )
    ax.set_xlim(-20, WIDTH + 20)
    ax.set_ylim(HEIGHT + 230, -20)
    ax.set_aspect("equal")
    ax.set_xlabel("column (pixels)")
    ax.set_ylabel("row (pixels)")
    counts = f"{len(list(tile_rows(tiles)))} x {len(starts)} = {len(tiles)} tiles"
    ax.set_title(
        f"{WIDTH} x {HEIGHT} scene, {TILE} px tiles, {OVERLAP} px overlap: {counts}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def blend_weights(path: Path) -> None:
    """One row of the scene: each tile's weight (top) and its share after division (bottom)."""
    tiles = [t for t in tile_windows(HEIGHT, WIDTH, TILE, OVERLAP) if t.row == 0]
    x = np.arange(WIDTH)
    weights = []
    for t in tiles:
        w = np.zeros(WIDTH, np.float32)
        w[t.col_off : t.col_end] = taper_1d(t.width, OVERLAP, start=not t.left, end=not t.right)
        weights.append(w)
    total = np.sum(weights, axis=0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.2, 4.6), dpi=100, sharex=True)
    for i, (t, w) in enumerate(zip(tiles, weights, strict=True)):
        colour = COLOURS[i % len(COLOURS)]
        top.plot(x, np.where(w > 0, w, np.nan), color=colour, lw=2, label=f"tile (0,{t.col})")
        bottom.fill_between(
            x, np.sum(weights[:i], axis=0) / total, np.sum(weights[: i + 1], axis=0) / total,
            color=colour, alpha=0.35, lw=0,
        )  # fmt: skip
    top.plot(x, total, color="black", lw=1, ls="--", label="sum of weights")
    top.set_ylabel("weight")
    top.set_ylim(0, 1.35)
    top.legend(fontsize=8, ncol=4, loc="upper center")
    top.set_title(
        "raised-cosine taper where a neighbour overlaps, flat at the scene edges", fontsize=10
    )
    bottom.plot(x, total / total, color="black", lw=1)
    bottom.set_ylabel("share of the pixel")
    bottom.set_ylim(0, 1.1)
    bottom.set_xlabel("column (pixels)")
    bottom.set_title(
        "divided by the weight sum: the shares add up to 1 at every pixel", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rolling_strip(path: Path) -> None:
    """Rows written, held and not yet read while tile row 3 of a tall scene is blended."""
    width, height = 1400, 3600
    tiles = tile_windows(height, width, TILE, OVERLAP)
    rows = list(tile_rows(tiles))
    current = 3
    top_held = rows[current][0].row_off  # rows above the current tile row are flushed
    bottom_held = rows[current][0].row_end
    fig, ax = plt.subplots(figsize=(4.6, 6.4), dpi=100)
    spans = [
        (0, top_held, "#4daf4a", "written to the outputs\n(COG rows, finished polygons)"),
        (top_held, bottom_held, "#ff7f00", "strip buffer: logits and\nweights of one tile row\n"),
        (bottom_held, height, "#dddddd", "not read yet"),
    ]
    for y0, y1, colour, label in spans:
        ax.add_patch(Rectangle((0, y0), width, y1 - y0, facecolor=colour, alpha=0.5, lw=0))
        ax.text(width + 60, (y0 + y1) / 2, label, va="center", fontsize=9)
    for t in rows[current]:
        ax.add_patch(Rectangle((t.col_off, t.row_off), t.width, t.height, fill=False, lw=1.5))
    nxt = rows[current + 1][0].row_off
    ax.plot([0, width + 40], [nxt, nxt], color="black", lw=1, ls=":")
    ax.text(
        width + 60,
        nxt + 60,
        "rows above the dotted line are\nflushed once the row is done",
        fontsize=8,
        va="top",
    )
    ax.add_patch(Rectangle((0, 0), width, height, fill=False, lw=1.5))
    ax.set_xlim(-20, width + 1500)
    ax.set_ylim(height + 20, -20)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"a {width} x {height} scene, tile row {current} being blended", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def seams(path: Path, scene: Path = ROOT / "examples" / "rio_55.tif") -> None:
    """The bundled model on a real chip in small tiles: hard tile borders against blending."""
    import tempfile

    import rasterio

    from geounet.prediction.config import PredictConfig
    from geounet.prediction.predictor import Predictor

    predictor = Predictor("buildings", device="cpu", precision="fp32", backend="torch")
    probs: dict[int, np.ndarray] = {}
    grids: dict[int, list[Tile]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for overlap in (0, 64):
            cfg = PredictConfig(tile_size=256, overlap=overlap, precision="fp32", backend="torch")
            grids[overlap] = predictor.plan(scene, cfg).tiles
            out = Path(tmp) / f"p{overlap}.tif"
            predictor.run(scene, probabilities=out, config=cfg)
            with rasterio.open(out) as src:
                probs[overlap] = src.read(1)
        with rasterio.open(scene) as src:
            rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    # A window around the corner of the no-overlap grid where the two runs differ most.
    diff = np.abs(probs[0] - probs[64])
    half = 80
    corners = [
        (r, c)
        for r in sorted({t.row_off for t in grids[0]})[1:]
        for c in sorted({t.col_off for t in grids[0]})[1:]
    ]
    row, col = max(
        corners,
        key=lambda rc: diff[
            max(0, rc[0] - half) : rc[0] + half, max(0, rc[1] - half) : rc[1] + half
        ].sum(),
    )
    r0, c0 = max(0, row - half), max(0, col - half)
    window = (slice(r0, row + half), slice(c0, col + half))
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.1), dpi=100)
    panels = [
        (rgb, "the scene (rio_55, 0.48 m pixels)", None),
        (probs[0], "no overlap: the tile borders show", "magma"),
        (probs[64], "64 px blended overlap (the default)", "magma"),
        (diff, f"difference (up to {diff[window].max():.2f} here)", "viridis"),
    ]
    for ax, (image, title, cmap) in zip(axes, panels, strict=True):
        ax.imshow(
            image[window],
            cmap=cmap,
            vmin=0,
            vmax=None if cmap is None else 1,
            interpolation="nearest",
            extent=(
                c0 - 0.5,
                c0 + image[window].shape[1] - 0.5,
                r0 + image[window].shape[0] - 0.5,
                r0 - 0.5,
            ),
        )
        if cmap is not None:
            ax.axhline(row - 0.5, color="white", lw=0.8, ls="--")
            ax.axvline(col - 0.5, color="white", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(
        f"{2 * half} x {2 * half} scene pixels around a corner where four tiles of 256 model "
        "pixels meet (dashed: the borders of the tiles without overlap)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/concepts"))
    parser.add_argument(
        "--no-model", action="store_true", help="only the diagrams (no prediction, no seams.png)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("tile-grid.png", tile_grid),
        ("blend-weights.png", blend_weights),
        ("rolling-strip.png", rolling_strip),
    ]
    if not args.no_model:
        figures.append(("seams.png", seams))
    for name, draw in figures:
        draw(args.out / name)
        print(args.out / name)


if __name__ == "__main__":
    main()
