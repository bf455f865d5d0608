"""The fixed cost of a command: heavy libraries stay out of imports that do not need them.

Each check runs a fresh interpreter (``sys.modules`` of this test process already holds everything).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: What loads only with its use: the vector writers with the first vector file, onnx for an
#: export (a cached onnxruntime graph needs onnxruntime alone), dask/pystac for a cluster or STAC.
LAZY = (
    "geopandas",
    "pandas",
    "pyogrio",
    "matplotlib",
    "dask",
    "distributed",
    "pystac",
    "onnx",
    "onnxruntime",
)


def loaded(statement: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has in ``sys.modules`` after ``statement``."""
    code = (
        f"import sys; {statement}; print(' '.join(m for m in {candidates!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_the_cli_imports_no_library_before_a_command_runs() -> None:
    # `geounet --help` and argument errors pay for click alone; each command imports its library.
    heavy = ("torch", "numpy", "rasterio", "scipy", "shapely", "safetensors", *LAZY)
    assert loaded("import geounet.cli.main", heavy) == []


@pytest.mark.parametrize("module", ["geounet.prediction.predictor", "geounet.archive.batch"])
def test_prediction_imports_leave_outputs_and_extras_to_their_use(module: str) -> None:
    assert loaded(f"import {module}", LAZY) == []


def test_the_package_names_its_public_api_without_loading_torch() -> None:
    # `import geounet` stays light; each public name loads its module on first use, documented.
    assert loaded("import geounet", ("torch", "numpy", "rasterio", *LAZY)) == []
    statement = (
        "import geounet; "
        "missing = [n for n in geounet.__all__ if n != '__version__' and not getattr(geounet, n).__doc__]; "
        "assert not missing, missing; "
        "assert len(geounet.__all__) >= 30"
    )
    assert loaded(statement, ("torch",)) == ["torch"]
