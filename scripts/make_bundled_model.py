"""Re-create the bundled building model (geounet/models/buildings.safetensors) from the data.

    python scripts/make_bundled_model.py                       # train, score, write (seeded)
    python scripts/make_bundled_model.py --from-model M        # score and package a trained M
    python scripts/make_bundled_model.py --from-stage 8 --init M   # the last two stages, from M

Trains with ``benchmarks/buildings.py`` (whole images held out: 4 Rio, 4 Austin, 4 Chicago) in
nine seeded stages (about 6.4 hours on a 2-core CPU; the third teaches the gaps between
neighbouring buildings, ``train --separation``, the fourth and fifth are longer cycles with
it, the sixth widens the network from 16 to 24 channels without changing what it computes and
trains it further, the seventh adds a core channel learnt alone, ``train --core-only``, the
eighth widens the network again, to 28 channels, without its core channel and trains it
further, the ninth learns the core channel alone again), sets the polygon defaults (5 m² minimum area, split at necks under 2 m), scores the model
on the held-out images with and without regularized outlines and with and without the cut
along probability valleys or between predicted cores (``predict --split-seeds``), turns each on by default when it raises
object F1, stores the weights as float16, scores the float16 file again (the figures that ship are
those of the file that ships) and writes the model with its provenance: data sources and
licences, the command, the commit, the validation figures per source, and with the typical
stretch of its training images (for the ONNX export to QGIS Deepness). Needs
../shared/data/buildings-rgb (its README gives the sources).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import buildings  # benchmarks/buildings.py

MIN_AREA_M2 = 5.0
#: Polygons split at necks under 2 m (touching roofs); see README "The bundled building model".
SPLIT_M = 2.0
#: Seeded watershed level (predict --split-seeds), chosen on the training images (object F1
#: 0.386 -> 0.406 there, 0.8 about the same); on by default only if it helps the held-out ones.
SPLIT_SEEDS = 0.7
#: A model with a core channel (train --core) grows its objects from the cores it predicts
#: where their probability is at least this; chosen on the training images with the first
#: core model (object F1 0.457 without, 0.466 at 0.5, 0.472 at 0.7, 0.465 at 0.85).
CORE_SEEDS = 0.7
STAGE_1 = [
    "--epochs",
    "16",
    "--width",
    "16",
    "--scale-jitter",
    "1.5",
    "--seed",
    "0",
    "--separation",
    "0",
]
STAGE_2 = [
    "--epochs",
    "12",
    "--lr",
    "1e-3",
    "--width",
    "16",
    "--scale-jitter",
    "1.5",
    "--seed",
    "0",
    "--separation",
    "0",
]
# The third stage teaches the gaps between neighbouring buildings (train --separation).
STAGE_3 = [
    "--epochs",
    "6",
    "--lr",
    "5e-4",
    "--width",
    "16",
    "--scale-jitter",
    "1.5",
    "--seed",
    "0",
    "--separation",
    "1.0",
]
# The fourth: a longer cycle with the separation weight (the curves were still rising).
STAGE_4 = [
    "--epochs",
    "20",
    "--lr",
    "1e-3",
    "--width",
    "16",
    "--scale-jitter",
    "1.5",
    "--seed",
    "1",
    "--separation",
    "1.0",
]
# The fifth: another cycle from the fourth, new windows (seed 2), with the weight average and
# the 512-window epochs of the training defaults.
STAGE_5 = [
    "--epochs",
    "20",
    "--lr",
    "1e-3",
    "--width",
    "16",
    "--scale-jitter",
    "1.5",
    "--seed",
    "2",
    "--separation",
    "1.0",
]
# The sixth: the fifth-stage network widened to 24 channels (geounet.network.unet.widen: the same
# function, 2.3x the parameters; the width-16 model underfits), then a cycle at 1e-3, seed 3.
WIDEN_6 = 24
STAGE_6 = [
    "--epochs",
    "16",
    "--lr",
    "1e-3",
    "--width",
    str(WIDEN_6),
    "--scale-jitter",
    "1.5",
    "--seed",
    "3",
    "--separation",
    "1.0",
]
# The seventh: a core channel (train --core 1: each building's footprint shrunk by 1 m) learnt
# alone (--core-only) on the sixth stage's features, whose mask stays exactly as it was; predict
# parts blobs between the predicted cores. About 8 minutes.
STAGE_7 = [
    "--epochs",
    "8",
    "--lr",
    "2e-3",
    "--width",
    str(WIDEN_6),
    "--scale-jitter",
    "1.5",
    "--seed",
    "10",
    "--separation",
    "1.0",
    "--core",
    "1.0",
    "--core-only",
]
# The eighth: the seventh-stage network without its core channel, widened again (to 28 channels,
# 1.36x the parameters; the width-24 model still ended with its training loss near the
# validation loss), then a cycle of 14 epochs at 1e-3, seed 12.
WIDEN_8 = 28
STAGE_8 = [
    "--epochs",
    "14",
    "--lr",
    "1e-3",
    "--width",
    str(WIDEN_8),
    "--scale-jitter",
    "1.5",
    "--seed",
    "12",
    "--separation",
    "1.0",
]
# The ninth: the core channel learnt alone on the eighth stage's features, as in the seventh.
STAGE_9 = [
    "--epochs",
    "8",
    "--lr",
    "2e-3",
    "--width",
    str(WIDEN_8),
    "--scale-jitter",
    "1.5",
    "--seed",
    "10",
    "--separation",
    "1.0",
    "--core",
    "1.0",
    "--core-only",
]
STAGES = [STAGE_1, STAGE_2, STAGE_3, STAGE_4, STAGE_5, STAGE_6, STAGE_7, STAGE_8, STAGE_9]
#: Stage number -> (the width its starting model is widened to first, the seed of the widening).
WIDEN = {6: (WIDEN_6, 6), 8: (WIDEN_8, 12)}

SOURCES = [
    {
        "name": "SpaceNet 1 (Rio de Janeiro), WorldView-2 pan-sharpened RGB, 0.5 m",
        "licence": "CC BY-SA 4.0",
        "attribution": "SpaceNet (SpaceNet on AWS Open Data)",
        "images": "11 of 15 chips of 438 x 406 px (rio_51, rio_55, rio_59, rio_63 held out)",
    },
    {
        "name": "Inria Aerial Image Labeling (Austin, Chicago), aerial orthophotos, 0.3 m",
        "licence": "public-domain US orthophotos with public GIS footprints; cite Maggiori et al., IGARSS 2017",
        "attribution": "Inria Aerial Image Labeling dataset",
        "images": "33 of 41 crops of 256 x 256 px (the source's 'val' crops held out)",
    },
]


def widened(model: Path, width: int, seed: int, work: Path) -> Path:
    """``model`` widened to ``width`` channels (the same function; ``geounet.network.unet.widen``),
    without its core channel if it has one (a later stage learns it again)."""
    from geounet.network.checkpoint import load_model, save_model
    from geounet.network.unet import drop_core_channel, widen

    net, meta = load_model(model)
    if net.width >= width:
        return model
    if meta.core_m > 0:
        net, meta.core_m = drop_core_channel(net), 0.0
    meta.arch_args = {**meta.arch_args, "width": width, "classes": net.classes}
    out = work / f"widened{width}.safetensors"
    save_model(widen(net, width, seed=seed), meta, out)
    return out


def with_typical_stretch(meta: Any, images: list[Path]) -> None:
    """Record in ``meta.normalization`` the typical stretch of the training images (per band, the
    median of each image's 2nd and 98th percentiles, as predict computes a scene's stretch;
    ``geounet.geodata.normalize.typical_stretch``), which the ONNX export folds into Deepness'
    standardization. The model's own stretch stays per scene."""
    from geounet.geodata import normalize
    from geounet.geodata.raster import open_scene, resolve_bands

    norm = meta.normalization
    bounds = []
    for path in images:
        scene = open_scene(path)
        bands = resolve_bands(scene, None, meta.bands, meta.band_names)
        bounds.append(
            normalize.image_stretch(scene, bands, float(norm["low"]), float(norm["high"]))
        )
    meta.normalization = normalize.with_typical(norm, bounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=buildings.DATA)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "geounet" / "models" / "buildings.safetensors"
    )
    ap.add_argument(
        "--work", type=Path, help="folder for the training run (default: a temporary one)"
    )
    ap.add_argument(
        "--from-model", type=Path, help="package this trained model instead of training"
    )
    ap.add_argument(
        "--from-stage",
        type=int,
        default=1,
        help=f"start at this stage (2 to {len(STAGES)}), from --init",
    )
    ap.add_argument("--init", type=Path, help="with --from-stage: the previous stage's model")
    ap.add_argument("--note", help="a line for the provenance (how the trained model came about)")
    ap.add_argument("train_args", nargs="*", help="after --: arguments for benchmarks/buildings.py")
    args = ap.parse_args(argv)

    from geounet.geodata.raster import AtomicOutputs
    from geounet.network.checkpoint import load_model, save_model

    train_args = args.train_args
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.from_model:
            trained = args.from_model
        else:
            # Default: nine stages (one-cycle at 2e-3 for 16 epochs; a second cycle at 1e-3 for
            # 12 from the first stage's best model; six epochs at 5e-4 with the separation
            # weight; 20 at 1e-3 with it, seed 1; 20 more, seed 2; widened to 24 channels, 16 at
            # 1e-3, seed 3; the core channel alone, 8 at 2e-3, seed 10; widened to 28 channels
            # without the core, 14 at 1e-3, seed 12; the core alone again); given arguments: one
            # stage as given.
            stages = [train_args] if train_args else STAGES[args.from_stage - 1 :]
            init: list[str] = ["--init", str(args.init)] if args.init else []
            for k, stage in enumerate(stages):
                number = k + args.from_stage
                out = work / f"stage{number}"
                if number in WIDEN and init and not train_args:
                    init = ["--init", str(widened(Path(init[1]), *WIDEN[number], work))]
                code = buildings.main(["--data", str(args.data), "--out", str(out), *stage, *init])
                if code:
                    return code
                trained = out / "model.safetensors"
                init = ["--init", str(trained)]
        train, val = buildings.held_out(args.data)
        net, meta = load_model(trained)
        # Pieces under 5 m2 (a 2 x 2.5 m shed) are dropped: chosen a priori, not tuned.
        meta.min_area_m2 = MIN_AREA_M2
        meta.split_m = SPLIT_M
        meta.classes = ["building"]
        # The training images are tagged red, green, blue: a BGR or RGB + NIR scene is read by colour.
        meta.band_names = ["red", "green", "blue"]
        # Prediction tiles: larger than the training windows (more context, fewer seams).
        meta.tile_size, meta.overlap = 512, 64
        with_typical_stretch(meta, train)
        staged = work / "staged.safetensors"
        save_model(net, meta, staged)
        # Both switches off explicitly: a --from-model file may carry a valley cut of its own.
        plain = buildings.score(staged, val, args.data, regularize=False, split_seeds=0)
        square = buildings.score(staged, val, args.data, regularize=True, split_seeds=0)
        regularize = square["all"]["object_f1"] > plain["all"]["object_f1"]
        meta.regularize = regularize
        level = CORE_SEEDS if meta.core_m > 0 else SPLIT_SEEDS
        seeded = buildings.score(staged, val, args.data, regularize=regularize, split_seeds=level)
        base = square if regularize else plain
        meta.split_seeds = level if seeded["all"]["object_f1"] > base["all"]["object_f1"] else 0.0
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        meta.provenance = {
            **meta.provenance,
            "images": [p.name for p in train],
            "val_images": [p.name for p in val],
            "labels": [
                "rio/buildings.geojson",
                "inria/buildings_austin.geojson",
                "inria/buildings_chicago.geojson",
            ],
            "data": SOURCES,
            "command": "python scripts/make_bundled_model.py"
            + "".join(
                f" {shlex.join(a)}"
                for a in (
                    ["--from-stage", str(args.from_stage), "--init", str(args.init)]
                    if args.from_stage > 1
                    else [],
                    ["--", *train_args] if train_args else [],
                )
                if a
            ),
            "stages": [train_args]
            if train_args
            else [
                STAGE_1,
                [*STAGE_2, "--init", "<stage 1 model>"],
                [*STAGE_3, "--init", "<stage 2 model>"],
                [*STAGE_4, "--init", "<stage 3 model>"],
                [*STAGE_5, "--init", "<stage 4 model>"],
                [*STAGE_6, "--init", f"<stage 5 model widened to {WIDEN_6} channels, seed 6>"],
                [*STAGE_7, "--init", "<stage 6 model>"],
                [
                    *STAGE_8,
                    "--init",
                    f"<stage 7 model without its core channel, widened to {WIDEN_8} channels, seed 12>",
                ],
                [*STAGE_9, "--init", "<stage 8 model>"],
            ],
            "split_m": SPLIT_M,
            "commit": commit,
            "weights": "float16 (convolutions), float32 BatchNorm",
            "regularize_object_f1": {
                "off": plain["all"]["object_f1"],
                "on": square["all"]["object_f1"],
            },
            "split_seeds_object_f1": {
                "off": base["all"]["object_f1"],
                f"{level:g}": seeded["all"]["object_f1"],
            },
            **(
                {
                    "core_object_f1": {
                        "off": {
                            k: base[k]["object_f1"] for k in ("rio", "austin", "chicago", "all")
                        },
                        "on": {
                            k: seeded[k]["object_f1"] for k in ("rio", "austin", "chicago", "all")
                        },
                    }
                }
                if meta.core_m > 0
                else {}
            ),
            "min_area_m2": MIN_AREA_M2,
        }
        if args.note:
            meta.provenance["note"] = args.note
        with tempfile.TemporaryDirectory() as tmp2:
            half = Path(tmp2) / "half.safetensors"
            save_model(net, meta, half, half=True)
            final = buildings.score(half, val, args.data, regularize=regularize)
            fp32 = seeded if meta.split_seeds else base
            meta.provenance["validation"] = {
                k: {m: v for m, v in final[k].items()} for k in ("rio", "austin", "chicago", "all")
            }
            meta.provenance["validation_note"] = (
                "whole held-out images, pixel IoU/F1 and object F1 (IoU >= 0.5, one-to-one), "
                f"regularize={'on' if regularize else 'off'}, split_seeds={meta.split_seeds:g}; float32 weights gave all-image pixel F1 "
                f"{fp32['all']['pixel_f1']:.4f}, object F1 {fp32['all']['object_f1']:.4f}"
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with AtomicOutputs() as outputs:
                save_model(net, meta, outputs.reserve(args.out, overwrite=True), half=True)
    print(
        json.dumps(
            {
                "regularize": regularize,
                "split_seeds": meta.split_seeds,
                "validation": meta.provenance["validation"],
            },
            indent=2,
        )
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
