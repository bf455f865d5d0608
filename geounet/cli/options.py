"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

overwrite_opt = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace outputs that already exist; without it, an existing output is an error.",
)
device_opt = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the network runs; auto uses CUDA when PyTorch sees a GPU, else the CPU.",
)
backend_opt = click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="What runs the network. auto: onnxruntime when the network runs on the CPU in float32 "
    "and geounet[onnx] is installed (the model is exported once and cached in $GEOUNET_CACHE or "
    "~/.cache/geounet); PyTorch on CUDA, in bf16 (the auto precision on CPUs with native bf16) "
    "or with --compile. Name one to force it.",
)


precision_opt = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "int8"]),
    default="auto",
    show_default=True,
    help="The network's arithmetic: fp32, or bf16 autocast. auto uses bf16 on CUDA and on CPUs "
    "with native bf16 (AVX512-BF16, AMX), float32 on other CPUs, which would emulate bf16 slowly. "
    "int8 runs the model's int8 copy on the CPU (NAME-int8.onnx beside it; the bundled model has "
    "one; `geounet model quantize` writes others): about twice as fast, nearly the same masks.",
)


split_opt = click.option(
    "--split-touching",
    "split_m",
    type=click.FloatRange(min=0),
    help="Split a polygon where its parts meet through a neck narrower than this many metres "
    "(two roofs that touch); 0 turns it off [default: the model's, see geounet model info].",
)

seeds_opt = click.option(
    "--split-seeds",
    "split_seeds",
    type=click.FloatRange(min=0, max=1),
    metavar="P",
    help="Binary models: part touching objects in the mask, growing them from cores at or above "
    "probability P (the predicted core channel when the model has one, else the foreground "
    "probability, cut along its valleys). Raise P to cut less; 0 turns it off "
    "[default: the model's, see geounet model info].",
)

tta_opt = click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average each tile's logits over its 8 rotations and mirrors. "
    "About 8x the network's time for a small gain; off by default.",
)


model_opt = click.option(
    "-m",
    "--model",
    "model_path",
    metavar="MODEL",
    help="A bundled model's name (geounet model list), a .safetensors model file or an exported "
    ".onnx file [default: the bundled 'buildings' model].",
)


# Options that predict and batch share, word for word.
tile_size_opt = click.option(
    "--tile-size",
    type=click.IntRange(min=1),
    help="Tile size in model pixels, a multiple of 2**depth [default: the model's]. Larger tiles "
    "give the network more context and take more memory.",
)
overlap_opt = click.option(
    "--overlap",
    type=click.IntRange(min=0),
    help="Pixels that neighbouring tiles share; predictions are blended across them so that no "
    "seams show [default: the model's].",
)
regularize_opt = click.option(
    "--regularize/--no-regularize",
    default=None,
    help="Square building outlines: right angles along each building's main direction, small "
    "jogs removed; round or irregular shapes keep their outline "
    "[default: the model's, see geounet model info].",
)
threshold_opt = click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Binary models: probability at or above which a pixel is foreground (multi-class "
    "models take the most probable class). Raise it for fewer, surer objects.",
)
prob_dtype_opt = click.option(
    "--prob-dtype",
    type=click.Choice(["float32", "uint8"]),
    default="float32",
    show_default=True,
    help="Type of the probability GeoTIFF: float32 (nodata NaN) or uint8 (0..254 for 0..1, "
    "nodata 255; a quarter of the size).",
)
min_area_opt = click.option(
    "--min-area",
    "min_area_m2",
    type=click.FloatRange(min=0),
    help="Drop polygons smaller than this many square metres of ground "
    "[default: the model's, 0 for most; see geounet model info].",
)
simplify_opt = click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Simplify outlines within this tolerance in pixels (Douglas-Peucker); 0, the "
    "default, keeps the pixel outline (centerlines are simplified within 1 pixel then).",
)


def announce_model(ctx: click.Context, model: str | None) -> str:
    """The model file to use; when none was named, say on stderr which bundled one is used."""
    from geounet.network.checkpoint import DEFAULT_MODEL, read_meta, resolve_model

    path = resolve_model(model)
    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    if model is None and not quiet:
        meta = read_meta(path)
        gsd = f", {meta.gsd:g} m pixels" if meta.gsd else ""
        click.echo(
            f"Using the bundled model '{DEFAULT_MODEL}' ({', '.join(meta.classes)}; {meta.bands}-band "
            f"{meta.dtype}{gsd}); -m picks another",
            err=True,
        )
    return str(path)


if TYPE_CHECKING:
    # ParamType is generic from click 8.4 on; subscripting it at run time needs click >= 8.4
    _BandsType = click.ParamType[tuple[int, ...]]
else:
    _BandsType = click.ParamType


class BandList(_BandsType):
    """A comma-separated list of 1-based band indexes, e.g. ``4,3,2``."""

    name = "BANDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            bands = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a comma-separated list of band numbers (e.g. 3,2,1)", param, ctx
            )
        if not bands or any(b < 1 for b in bands):
            self.fail(f"{value!r}: band numbers start at 1", param, ctx)
        return bands


def tile_progress(
    ctx: click.Context, desc: str, unit: str = "tile"
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm progress callback ``(done, total)`` on stderr, and a function that closes it."""
    from tqdm import tqdm

    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if quiet:
            return
        if not bar:
            # disable=None: no bar when stderr is not a terminal (logs, CI), as tqdm documents.
            bar.append(
                tqdm(
                    total=total,
                    desc=desc,
                    unit=unit,
                    leave=False,
                    dynamic_ncols=True,
                    mininterval=0.5,
                    disable=None,
                )
            )
        bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close


class ManyValues(click.Option):
    """A repeatable option that also takes several values after one flag.

    ``--images a.tif b.tif --images c.tif`` gives ``("a.tif", "b.tif", "c.tif")``, and so does
    an unquoted shell glob (``--images tiles/*.tif``, which the shell expands), as GDAL and rio
    tools take file lists. Values are taken up to the next argument that starts with ``-``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            take_one = opt.process

            def process(value: Any, state: Any, take_one: Any = take_one) -> None:
                take_one(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    take_one(state.rargs.pop(0), state)

            opt.process = process
