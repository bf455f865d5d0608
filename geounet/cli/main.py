"""The ``geounet`` command group and its single error handler.

Errors are translated in one place: a :class:`~geounet.errors.GeounetError` prints
``Error: <message>`` on stderr and exits 1; click's usage errors exit 2; an interrupt (SIGINT)
exits 130 and SIGTERM 143, after outputs in progress were removed; anything else is an internal
error (exit 3). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from geounet import __version__
from geounet.errors import GeounetError, Terminated


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool) -> Iterator[None]:
    """Keep C libraries (GDAL, libtiff, PROJ) from printing on stderr; Python output still shows.

    Their failures already reach us as exceptions, which become one clean line; their own prints
    would add unasked lines. File descriptor 2 goes to a scratch file while ``sys.stderr`` keeps
    writing to the real stderr. Off with -v/--debug, or when stderr is not file descriptor 2.
    """
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not enabled or not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        old_stderr = sys.stderr
        sys.stderr = os.fdopen(
            os.dup(saved), "w", buffering=1, encoding=old_stderr.encoding, errors="backslashreplace"
        )
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sys.stderr.close()
            sys.stderr = old_stderr


class GeounetGroup(click.Group):
    """A click group whose ``main`` maps every exception to one line and an exit status."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("args", args[0] if args else None)
        argv = list(given) if given is not None else sys.argv[1:]
        debug = "--debug" in argv
        verbose = any(
            a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv
        )
        with _quiet_native_stderr(not (debug or verbose)):
            return self._main(debug, *args, **kwargs)

    def _main(self, debug: bool, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("standalone_mode", True)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not in the main thread (e.g. some test runners)
            pass
        try:
            rv = super().main(*args, **{**kwargs, "standalone_mode": False})
            if isinstance(rv, int) and rv:  # ctx.exit(n) returns n outside standalone mode
                sys.exit(rv)
            return rv
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            if debug:
                raise
            click.echo("Interrupted; no output written", err=True)
            sys.exit(130)
        except Terminated:
            if debug:
                raise
            click.echo("Terminated; no output written", err=True)
            sys.exit(143)
        except GeounetError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            if debug:
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"internal error: {type(exc).__name__}: {msg} (re-run with --debug)", err=True
            )
            sys.exit(3)


@click.group(cls=GeounetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geounet")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output on stderr: -v for information, -vv for debugging.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars and no log output; errors still show."
)
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of an error instead of its one-line message.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """\b
        geounet predict scene.tif -o buildings.gpkg

    Segment large geospatial rasters with a U-Net: find buildings with the bundled model, train
    your own from labels, score, export and run whole archives. COMMAND --help lists each
    command's options.

    Docs: docs/index.md, docs/getting-started.md and docs/reference/cli.md (build the site from
    the source tree with mkdocs serve).
    """
    level = logging.ERROR if quiet else max(logging.DEBUG, logging.WARNING - 10 * verbose)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    ctx.obj = {"quiet": quiet, "debug": debug}


def _register() -> None:
    from geounet.cli.batch import batch
    from geounet.cli.evaluate import evaluate
    from geounet.cli.model import model
    from geounet.cli.predict import predict
    from geounet.cli.train import train

    cli.add_command(predict)
    cli.add_command(train)
    cli.add_command(evaluate)
    cli.add_command(model)
    cli.add_command(batch)


_register()


def main() -> None:
    """Console-script entry point."""
    cli()
