"""The package's imports run one way: the CLI on top, geodata I/O and tiling at the bottom.

Every ``import geounet...`` / ``from geounet... import`` in the package counts, also those inside
functions (deferred for speed, they are still dependencies), but not those under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geounet"

#: Subpackages (and top-level modules) from the bottom up; a module may import its own layer's
#: modules and those of lower layers only.
LAYERS: list[set[str]] = [
    {"errors", "__init__"},
    {"geodata", "synthetic"},
    {"vectors", "labels", "network"},
    {"prediction"},
    {"training"},
    {"archive"},
    {"cli", "__main__"},
]


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: its subpackage, or the top-level module."""
    parts = module.split(".")
    assert parts[0] == "geounet", module
    return parts[1] if len(parts) > 1 else "__init__"


def _level(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{unit} is in no layer of tests/test_layers.py")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1 and parts[-2] != "geounet":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def _imports(source: str, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("geounet"):
                # the longest known module the name starts with
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules:
                    found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p.read_text(), modules) - {m} for m, p in modules.items()}


GRAPH = _graph()


def test_every_module_sits_in_a_layer() -> None:
    for module in GRAPH:
        assert _level(_unit(module)) >= 0, module  # _level raises for a unit in no layer


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module: str) -> None:
    if module == "geounet":
        return  # the package's __init__: lazy names only (checked below)
    level = _level(_unit(module))
    upward = sorted(dep for dep in GRAPH[module] if dep != "geounet" and _level(_unit(dep)) > level)
    assert not upward, f"{module} (layer {level}) imports higher layers: {upward}"


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w == "geounet":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_check_sees_a_violation() -> None:
    # The check itself can fail: a low module importing the CLI is reported.
    found = _imports("from geounet.cli.main import main\n", _modules())
    assert "geounet.cli.main" in found
    assert _level(_unit("geounet.cli.main")) > _level(_unit("geounet.geodata.raster"))


def test_every_lazy_name_is_listed_in_all() -> None:
    import geounet

    assert set(geounet._LAZY) <= set(geounet.__all__)
    assert all(module in GRAPH for module in geounet._LAZY.values())
