"""Shared fixtures: small georeferenced rasters, vector labels and hand-made U-Nets."""

from __future__ import annotations

import http.server
import mimetypes
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

SHARED_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spacenet-vegas-samples"
)
requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"{SHARED_DATA} not found (the real SpaceNet samples live in ../shared/data)",
)

BUILDINGS_RGB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "buildings-rgb"
requires_buildings_rgb = pytest.mark.skipif(
    not BUILDINGS_RGB.is_dir(),
    reason=f"{BUILDINGS_RGB} not found (the real RGB samples live in ../shared/data)",
)

MakeRaster = Callable[..., Path]


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The onnxruntime backend's graph cache in a folder of the test session's own (shared by its
    tests and their subprocesses), never the user's ~/.cache/geounet."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOUNET_CACHE", str(tmp_path_factory.mktemp("geounet-cache")))
    yield
    mp.undo()


@pytest.fixture
def make_raster(tmp_path: Path) -> MakeRaster:
    """Factory: ``make(name=, width=, height=, count=, dtype=, crs=, transform=, nodata=, data=)``."""

    def make(
        name: str = "scene.tif",
        *,
        width: int = 64,
        height: int = 64,
        count: int = 3,
        dtype: str = "uint8",
        crs: str | None = "EPSG:32633",
        transform: Affine | None = None,
        nodata: float | None = None,
        data: np.ndarray | None = None,
        **profile: Any,
    ) -> Path:
        if data is None:
            rng = np.random.default_rng(0)
            data = rng.integers(0, 200, size=(count, height, width)).astype(dtype)
        count, height, width = data.shape
        path = tmp_path / name
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=data.dtype.name,
            crs=crs,
            transform=transform
            if transform is not None
            else from_origin(500000, 5000000, 0.5, 0.5),
            nodata=nodata,
            **profile,
        ) as dst:
            dst.write(data)
        return path

    return make


def threshold_unet(
    in_channels: int,
    *,
    width: int = 4,
    depth: int = 2,
    band: int = 0,
    gain: float = 4.0,
    bias: float = -4.0,
) -> Any:
    """A real U-Net whose hand-set weights compute ``gain * relu(x[band]) + bias`` per pixel.

    Only the full-resolution path carries signal (centre taps, identity BatchNorm); every deeper
    level has zero weights. With inputs normalized to +-2, pixels above the band mean get logit
    ``2 * gain + bias`` and the rest ``bias``: a known answer for the whole pipeline.
    """
    import torch

    from geounet.network.unet import UNet

    net = UNet(in_channels, 1, width=width, depth=depth)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.eps = 0.0
        inc1, inc2 = net.inc[0], net.inc[3]
        inc1.weight[0, band, 1, 1] = 1.0
        inc2.weight[0, 0, 1, 1] = 1.0
        last = net.ups[-1].conv
        last[0].weight[0, 0, 1, 1] = 1.0  # channel 0 of the concatenation is the skip's channel 0
        last[3].weight[0, 0, 1, 1] = 1.0
        net.head.weight[0, 0, 0, 0] = gain
        net.head.bias[0] = bias
    return net.eval()


def constant_unet(
    in_channels: int, value: float, *, classes: int = 1, width: int = 4, depth: int = 2
) -> Any:
    """A U-Net that outputs ``value`` everywhere (all weights zero, head bias ``value``)."""
    import torch

    from geounet.network.unet import UNet

    net = UNet(in_channels, classes, width=width, depth=depth)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.head.bias.fill_(value)
    return net.eval()


def meta_for(
    net: Any,
    *,
    dtype: str = "uint8",
    classes: list[str] | None = None,
    tile_size: int = 64,
    overlap: int = 16,
) -> Any:
    """Model metadata matching a hand-made network."""
    from geounet.network.checkpoint import create_model

    _, meta = create_model(
        bands=net.in_channels,
        classes=classes or (["building"] if net.classes == 1 else net.classes),
        width=net.width,
        depth=net.depth,
        dtype=dtype,
        tile_size=tile_size,
        overlap=overlap,
    )
    return meta


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A model file of ``threshold_unet(3)`` (centre taps only, so D4-equivariant too)."""
    from geounet.network.checkpoint import save_model

    net = threshold_unet(3)
    path = tmp_path / "model.safetensors"
    save_model(net, meta_for(net, tile_size=64, overlap=16), path)
    return path


def roofs_model(path: Path) -> Path:
    """A tiny U-Net that marks red-ish pixels (roofs), saved at ``path``: real polygons on
    synthetic scenes (the batch and STAC tests)."""
    from geounet.network.checkpoint import save_model

    net = threshold_unet(3, width=4, depth=2)
    save_model(net, meta_for(net, tile_size=64, overlap=16), path)
    return path


def one_torch_thread_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Body of an autouse fixture: one torch thread here and in subprocesses (geounet batch, Dask
    workers). Tiny models run fastest on one; more only fight over a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def default_sigint() -> None:
    """``preexec_fn`` for a child that must take Ctrl-C: a job started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then installs no handler for it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --------------------------------------------------------------------------------------------
# Files served over HTTP


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``root`` with single HTTP Range requests (what GDAL's /vsicurl/ sends)."""

    root: Path
    served: list[tuple[str | None, int]]  # (Range header, bytes sent)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = self.root / self.path.split("?")[0].lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        header = self.headers.get("Range")
        if header:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
            if not m or int(m[1]) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header(
            "Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))
            self.served.append((header, end - start + 1))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path, list[tuple[str | None, int]]]]:
    """(base URL, served folder, log of (Range, bytes)) of an HTTP server on 127.0.0.1."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "www"
    root.mkdir()
    served: list[tuple[str | None, int]] = []
    handler = type("Handler", (RangeHandler,), {"root": root, "served": served})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
