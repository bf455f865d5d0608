"""The documentation cannot drift from the code.

- Every tutorial's (and Getting started's) ``bash`` blocks run, in order, as one script, from a copy of the repository's
  layout (``examples/`` and the sample data at ``../shared/data``), with the page's own speed-ups
  applied. A page steers its test with HTML comments (invisible on the site):

  ``<!-- docs-test: sub "OLD" "NEW" -->``
      replace OLD by NEW in the page's script before it runs (``--epochs 30`` -> ``--epochs 1``);
  ``<!-- docs-test: skip -->``
      on the line before a fence: that block is not run (an install command, a GUI step);
  ``<!-- docs-test: expect PATH -->``
      PATH (relative to the working folder) exists after the script ran.

- Every ``geounet ...`` command line in the docs and the README uses only options that its
  command has.
- The Python API reference documents exactly ``geounet.__all__``.
- ``geounet --help`` and every command's help lead with an example and say where the docs are.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED = ROOT.parent / "shared" / "data"
TUTORIALS = [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md"))]

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<text>.*?)\s*-->", re.DOTALL)


def page_script(text: str) -> tuple[str, list[str]]:
    """The page's runnable script (its bash blocks, in order, with its substitutions) and the
    paths it promises to leave."""
    subs: list[tuple[str, str]] = []
    expect: list[str] = []
    for m in DIRECTIVE.finditer(text):
        words = shlex.split(m.group("text"))
        if words[0] == "sub" and len(words) == 3:
            subs.append((words[1], words[2]))
        elif words[0] == "expect" and len(words) == 2:
            expect.append(words[1])
        elif words[0] != "skip":
            raise AssertionError(f"unknown docs-test directive: {m.group(0)}")
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("bash", "sh", "shell"):
            continue
        before = text[: m.start()].rstrip().splitlines()
        if before and re.fullmatch(r"\s*<!--\s*docs-test:\s*skip\s*-->\s*", before[-1]):
            continue
        blocks.append(re.sub(r"^" + m.group("indent"), "", m.group("body"), flags=re.MULTILINE))
    script = "\n".join(blocks)
    for old, new in subs:
        assert old in script, f"docs-test sub {old!r} matches nothing"
        script = script.replace(old, new)
    return script, expect


def test_page_script_parser() -> None:
    text = (
        '<!-- docs-test: sub "--epochs 30" "--epochs 1" -->\n'
        "<!-- docs-test: expect out/model.safetensors -->\n"
        "```bash\ngeounet train --epochs 30\n```\n"
        "<!-- docs-test: skip -->\n```bash\npip install torch\n```\n"
        "```text\nnot run\n```\n"
        "1. A step:\n\n    ```bash\n    echo indented\n    ```\n"
    )
    script, expect = page_script(text)
    assert script == "geounet train --epochs 1\n\necho indented\n"
    assert expect == ["out/model.safetensors"]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found (the tutorials' sample data)")
@pytest.mark.parametrize("page", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(page: Path, tmp_path: Path) -> None:
    script, expect = page_script(page.read_text())
    assert script.strip(), f"{page.name} has no runnable bash block: nothing keeps it true"
    # the layout the tutorials assume: a checkout (examples/, scripts/) with ../shared/data beside it
    work = tmp_path / "geounet"
    work.mkdir()
    for name in ("examples", "scripts", "benchmarks"):
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED)
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{page.name}: exit {proc.returncode}\n--- script\n{script}\n--- stdout\n"
        f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )
    for rel in expect:
        assert (work / rel).exists(), f"{page.name} promised {rel}"


def _command_lines(text: str) -> list[str]:
    """``geounet ...`` lines of code blocks (continuations joined)."""
    lines: list[str] = []
    for m in FENCE.finditer(text):
        body = re.sub(r"\\\n\s*", " ", m.group("body"))
        for line in body.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("geounet "):
                lines.append(line.split(" #")[0].split(" |")[0].split(" &&")[0])
    return lines


def _options(cmd: click.Command) -> set[str]:
    opts = {"--help", "-h"}
    for p in cmd.params:
        opts.update(p.opts)
        opts.update(p.secondary_opts)
    return opts


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_documented_command_lines_use_real_options() -> None:
    from geounet.cli.main import cli

    checked = 0
    problems = []
    for path in _doc_files():
        for line in _command_lines(path.read_text()):
            try:
                words = shlex.split(line)
            except ValueError:
                problems.append(f"{path.name}: cannot parse {line!r}")
                continue
            cmd: click.Command = cli
            words = words[1:]
            allowed = _options(cli)
            while words and isinstance(cmd, click.Group) and not words[0].startswith("-"):
                sub = cmd.get_command(click.Context(cmd), words[0])
                if sub is None:
                    problems.append(f"{path.name}: unknown command {words[0]!r} in {line!r}")
                    break
                cmd, words = sub, words[1:]
                allowed |= _options(cmd)
            for w in words:
                if w.startswith("-") and len(w) > 1 and not re.fullmatch(r"-\d[\d.]*", w):
                    name = w.split("=")[0]
                    if name not in allowed:
                        problems.append(
                            f"{path.relative_to(ROOT)}: {name} is not an option of {line!r}"
                        )
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 5


def test_api_reference_is_exactly_the_public_api() -> None:
    import geounet

    text = (DOCS / "reference" / "api.md").read_text()
    documented = {m.rsplit(".", 1)[1] for m in re.findall(r"^::: ([\w.]+)", text, re.MULTILINE)}
    errors = {n for n in geounet.__all__ if n.endswith("Error")}
    public = set(geounet.__all__) - {"__version__"}
    assert documented - public == set(), "documented but not public"
    assert public - documented == set(), "public but not documented"
    assert errors <= documented


def test_help_leads_with_an_example_and_names_the_docs() -> None:
    from click.testing import CliRunner

    from geounet.cli.main import cli

    runner = CliRunner()
    commands: list[list[str]] = [[]]
    for name, cmd in cli.commands.items():
        commands.append([name])
        if isinstance(cmd, click.Group):
            commands += [[name, sub] for sub in cmd.commands]
    for args in commands:
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output
        body = result.output.split("\n\n", 1)[1].lstrip()  # after the "Usage:" line
        first = body.splitlines()[0].strip()
        assert first.startswith("geounet " + " ".join(args)), (args, first)
        assert "docs/" in result.output or "documentation" in result.output.lower(), args


def test_every_option_and_public_name_has_a_description() -> None:
    """The references are generated: an option without help or a public name without a docstring
    would appear there empty."""
    import inspect

    import geounet
    from geounet.cli.main import cli

    def walk(cmd: click.Command, path: str) -> list[str]:
        missing = [
            f"{path} {p.opts[0]}"
            for p in cmd.params
            if isinstance(p, click.Option) and not (p.help or "").strip()
        ]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(cli, "geounet") == []
    undocumented = [
        name
        for name in geounet.__all__
        if name != "__version__" and len(inspect.getdoc(getattr(geounet, name)) or "") < 20
    ]
    assert undocumented == []
