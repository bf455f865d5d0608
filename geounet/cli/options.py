"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

overwrite_opt = click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
device_opt = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the model runs (auto: CUDA when present).",
)


tta_opt = click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average the logits over the 8 rotations and mirrors of each "
    "tile (8x the network time).",
)


class BandList(click.ParamType):
    """A comma-separated list of 1-based band indexes, e.g. ``4,3,2``."""

    name = "BANDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:  # noqa: D102
        if isinstance(value, tuple):
            return value
        try:
            bands = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of band numbers (e.g. 3,2,1)", param, ctx)
        if not bands or any(b < 1 for b in bands):
            self.fail(f"{value!r}: band numbers start at 1", param, ctx)
        return bands


def tile_progress(ctx: click.Context, desc: str, unit: str = "tile") -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm progress callback ``(done, total)`` on stderr, and a function that closes it."""
    from tqdm import tqdm

    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if quiet:
            return
        if not bar:
            # disable=None: no bar when stderr is not a terminal (logs, CI), as tqdm documents.
            bar.append(tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, mininterval=0.5, disable=None))
        bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close
