"""Write a synthetic aerial scene and its building footprints.

Usage::

    python examples/make_example.py OUT_DIR [--size 1024] [--seed 0]

Writes ``OUT_DIR/scene.tif`` (RGB GeoTIFF, EPSG:32633, 0.5 m pixels) and
``OUT_DIR/buildings.geojson`` (building polygons, attribute ``class`` = ``"building"``) and prints
the two paths. Works from a source checkout without installing the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import geounet.synthetic  # noqa: F401
except ImportError:  # running from a checkout without the package (or with an older one)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for _name in [m for m in sys.modules if m == "geounet" or m.startswith("geounet.")]:
        del sys.modules[_name]

from geounet.synthetic import make_scene


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, write the scene and its labels, print their paths."""
    parser = argparse.ArgumentParser(
        description="Write a synthetic aerial GeoTIFF and its building footprints."
    )
    parser.add_argument("out_dir", type=Path, help="output directory (created if missing)")
    parser.add_argument("--size", type=int, default=1024, help="width and height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be positive")
    if args.seed < 0:
        parser.error("--seed must be non-negative")

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    info = make_scene(
        out_dir / "scene.tif",
        width=args.size,
        height=args.size,
        seed=args.seed,
        labels_path=out_dir / "buildings.geojson",
    )
    print(info.path)
    print(info.labels_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
