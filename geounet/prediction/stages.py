"""The stages that :meth:`~geounet.prediction.predictor.Predictor.run` chains between the reader
and the outputs.

:class:`TileBatcher` groups tiles with valid pixels into batches for the network;
:class:`StripWorker` hands finished strips to the outputs, inline or on a background thread
(:func:`spare_cores` says whether a core is free for it); :func:`release_free_memory` gives the
tile loop's memory back before the tail.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from geounet.geodata.tiling import Tile
from geounet.prediction.blend import Strip

#: Finished strips that may wait for the strip worker before the model waits for it.
STRIPS_IN_FLIGHT = 2


@dataclass
class TileBatch:
    """Tiles that go through the network together, with their raw pixels and validity."""

    tiles: list[Tile]
    data: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]


class TileBatcher:
    """The batching stage: groups tiles that have valid pixels into batches of ``size``.

    Tiles without a valid pixel (all nodata) are counted in :attr:`skipped` and never batched.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.tiles: list[Tile] = []
        self._data: list[npt.NDArray[np.float32]] = []
        self._valid: list[npt.NDArray[np.bool_]] = []
        self._first = 0
        self._seen = 0
        self.skipped = 0

    def add(
        self, index: int, tile: Tile, data: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
    ) -> bool:
        """Add tile number ``index`` (consecutive from 0); True when the batch is full."""
        self._seen = index + 1
        if not valid.any():
            self.skipped += 1
        else:
            if not self.tiles:
                self._first = index
            self.tiles.append(tile)
            self._data.append(data)
            self._valid.append(valid)
        return len(self.tiles) >= self.size

    @property
    def waiting_from(self) -> int:
        """Index of the first tile not yet handed out in a batch (every earlier one was)."""
        return self._first if self.tiles else self._seen

    def take(self) -> TileBatch:
        """The batch so far (the batcher starts a new one)."""
        batch = TileBatch(list(self.tiles), np.stack(self._data), np.stack(self._valid))
        self.tiles.clear()
        self._data.clear()
        self._valid.clear()
        return batch


class StripWorker:
    """The policy for finished strips: handled inline, or in order on one background thread.

    In the background, at most :data:`STRIPS_IN_FLIGHT` strips wait before :meth:`submit`
    waits for the oldest; a failure of the thread is raised by the next :meth:`submit` or
    :meth:`drain`. :meth:`call` runs other work (closing the writers) on the same thread.

    Args:
        handle: What to do with a strip.
        background: Use the thread (True) or handle strips in the caller's thread.
        timings: ``strips`` (inline handling) and ``strips_wait`` (waiting for the thread) add up here.
    """

    def __init__(
        self, handle: Callable[[Strip], None], *, background: bool, timings: dict[str, float]
    ) -> None:
        self._handle = handle
        self.background = background
        self._timings = timings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-strips")
        self._in_flight: deque[Future[None]] = deque()

    def submit(self, strip: Strip) -> None:
        """Handle a strip (strips must come in scene order)."""
        t0 = time.perf_counter()
        while self._in_flight and (
            self._in_flight[0].done() or len(self._in_flight) >= STRIPS_IN_FLIGHT
        ):
            self._in_flight.popleft().result()  # re-raises a failure of the strip thread
        self._timings["strips_wait"] += time.perf_counter() - t0
        if not self.background:
            t0 = time.perf_counter()
            self._handle(strip)
            self._timings["strips"] += time.perf_counter() - t0
            return
        self._in_flight.append(self._pool.submit(self._handle, strip))

    def drain(self) -> None:
        """Wait until every submitted strip is handled."""
        while self._in_flight:
            self._in_flight.popleft().result()

    def call(self, fn: Callable[[], None]) -> Future[None]:
        """Run ``fn`` on the strip thread (after the strips submitted before)."""
        return self._pool.submit(fn)

    def shutdown(self) -> None:
        """Drop strips not started and wait for the one in progress."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def release_free_memory() -> None:
    """Hand memory the C allocator holds but no longer uses back to the OS (glibc; else no-op).

    glibc keeps freed blocks of large arrays in its heap for reuse; between the tile loop and the
    tail (COG copies, vector writing) that is dead weight in the peak.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def spare_cores() -> bool:
    """Whether this process may use more CPU cores than PyTorch's intra-op threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()
