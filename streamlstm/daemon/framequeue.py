"""The bounded queue between the source threads and the compute loop, and its backpressure.

The queue is bounded twice: at most ``queue_frames`` frames *and* at most ``queue_bytes``
bytes of frame memory (arrays plus a fixed per-frame overhead), so a flood of maximum-size
payloads costs at most ``queue_bytes``, whatever its frame count. A single frame larger
than the whole byte bound is still taken when the queue is empty (never a deadlock).

Policy (``daemon.backpressure``) when either bound is reached:

* ``drop-oldest`` (default): the oldest frames are dropped to make room for the new one,
  so a stalled compute loop or a burst costs the stalest data, never the freshest, and
  never blocks a serial reader (whose OS buffer would overflow anyway) or the MQTT
  network thread (which would stall keepalives). Dropped frames and samples are counted
  and logged (rate-limited); a dropped frame's ``ack`` is called (it was handled: dropped).
* ``block``: producers wait for room; nothing is dropped in the daemon, and the MQTT
  broker holds QoS 1/2 messages meanwhile. For replays and lossless test rigs.

After a flood, once the queue has drained, freed memory is handed back to the operating
system (``malloc_trim`` where glibc provides it): without that, glibc keeps the freed
payload buffers of the network threads' arenas and the resident size stays at its peak
(``benchmarks/flood_rss.py``: 1.5 GB after a 1.6 GB flood without it, back to the 176 MB
baseline with it). The trim costs milliseconds (28 ms after 315 MB were freed), once per
drained flood, in the compute thread while the queue is empty.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .._ratelimit import RateLimitedLog
from ..sources import Frame

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

#: Memory is handed back once the queue has drained after holding at least this much.
TRIM_AFTER_BYTES = 32 * 2**20


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``; elsewhere a no-op)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class FrameQueue:
    """At most ``capacity`` frames and ``max_bytes`` bytes; :meth:`take` forms micro-batches."""

    def __init__(self, capacity: int, policy: str, max_bytes: int = 2**62) -> None:
        self.capacity = capacity
        self.policy = policy
        self.max_bytes = max_bytes
        self.dropped_frames = 0
        self.dropped_samples = 0
        self.bytes = 0
        self._peak_bytes = 0
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def _full(self, frame: Frame) -> bool:
        if not self._frames:
            return False
        return len(self._frames) >= self.capacity or self.bytes + frame.nbytes > self.max_bytes

    def put(self, frames: list[Frame]) -> None:
        """Add frames (called from source threads); see the module docstring for when full."""
        dropped: list[Frame] = []
        with self._ready:
            for frame in frames:
                if self.policy == "block":
                    while self._full(frame) and not self._closed:
                        self._ready.wait(0.1)
                else:
                    while self._full(frame):
                        old = self._frames.popleft()
                        self.bytes -= old.nbytes
                        self.dropped_frames += 1
                        self.dropped_samples += len(old.t)
                        dropped.append(old)
                if self._closed:
                    break
                self._frames.append(frame)
                self.bytes += frame.nbytes
                self._peak_bytes = max(self._peak_bytes, self.bytes)
            self._ready.notify_all()
        if dropped:
            self._dropped(dropped)

    def _dropped(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.ack is not None:
                frame.ack()
        _limited(
            logging.WARNING,
            "dropped",
            "queue full (%d frames, %d bytes): dropped the oldest %d frame(s); %d samples "
            "dropped so far (daemon.queue_frames, daemon.queue_bytes, daemon.backpressure)",
            self.capacity,
            self.max_bytes,
            len(frames),
            self.dropped_samples,
        )

    def take(self, max_samples: int, wait: float, idle: float) -> list[Frame]:
        """Frames for one micro-batch: waits up to ``idle`` s for the first, then up to
        ``wait`` s more while fewer than ``max_samples`` samples are gathered."""
        batch: list[Frame] = []
        count = 0
        trim = False
        with self._ready:
            if not self._frames:
                self._ready.wait(idle)
            deadline = time.monotonic() + wait
            while True:
                while self._frames and count < max_samples:
                    frame = self._frames.popleft()
                    self.bytes -= frame.nbytes
                    batch.append(frame)
                    count += len(frame.t)
                remaining = deadline - time.monotonic()
                if count >= max_samples or not batch or remaining <= 0:
                    break
                self._ready.wait(remaining)
            if not self._frames and self._peak_bytes >= TRIM_AFTER_BYTES:
                self._peak_bytes = 0
                trim = True
            self._ready.notify_all()  # room for blocked producers
        if trim:
            # The batch still holds its frames, but those are at most one batch; the
            # flood's other buffers are free now.
            release_free_memory()
        return batch

    def close(self) -> None:
        """Release blocked producers; later puts are ignored."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
