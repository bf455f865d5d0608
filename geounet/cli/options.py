"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

overwrite_opt = click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
device_opt = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the model runs (auto: CUDA when present).",
)
backend_opt = click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="What runs the network: PyTorch, or onnxruntime (the model exported once and cached in "
    "~/.cache/geounet or $GEOUNET_CACHE); auto: onnxruntime on the CPU in float32 when installed, "
    "PyTorch otherwise.",
)


split_opt = click.option(
    "--split-touching",
    "split_m",
    type=click.FloatRange(min=0),
    help="Split polygons where parts meet through a neck narrower than this many metres "
    "(touching buildings); 0 = off [default: the model's].",
)

seeds_opt = click.option(
    "--split-seeds",
    "split_seeds",
    type=click.FloatRange(min=0, max=1),
    metavar="P",
    help="Cut touching objects apart along the probability valleys between cores at or above "
    "probability P (a seeded watershed; binary models; a model with a core channel grows objects "
    "from its predicted cores, P being the core probability); 0 = off [default: the model's].",
)

tta_opt = click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average the logits over the 8 rotations and mirrors of each "
    "tile (8x the network time).",
)


model_opt = click.option(
    "-m",
    "--model",
    "model_path",
    metavar="MODEL",
    help="Model file (.safetensors) or bundled model name [default: the bundled 'buildings' model].",
)


# Options that predict and batch share, word for word.
tile_size_opt = click.option(
    "--tile-size", type=click.IntRange(min=1), help="Tile size in pixels [default: the model's]."
)
overlap_opt = click.option(
    "--overlap", type=click.IntRange(min=0), help="Overlap in pixels [default: the model's]."
)
regularize_opt = click.option(
    "--regularize/--no-regularize",
    default=None,
    help="Square building outlines (right angles, small jogs removed) [default: the model's; see geounet model info].",
)
threshold_opt = click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Foreground probability threshold.",
)
prob_dtype_opt = click.option(
    "--prob-dtype",
    type=click.Choice(["float32", "uint8"]),
    default="float32",
    show_default=True,
    help="Probability GeoTIFF type (uint8: 0..254 scaled, 255 nodata).",
)
min_area_opt = click.option(
    "--min-area",
    "min_area_m2",
    type=click.FloatRange(min=0),
    help="Drop polygons smaller than this many m² [default: the model's; 0 for most].",
)
simplify_opt = click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Simplify polygons, tolerance in pixels.",
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
