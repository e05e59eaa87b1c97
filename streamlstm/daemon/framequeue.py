"""The bounded queue between the source threads and the compute loop, and its backpressure.

Policy (``daemon.backpressure``):

* ``drop-oldest`` (default): a full queue drops its oldest frame to take the new one,
  so a stalled compute loop or a burst costs the stalest data, never the freshest, and
  never blocks a serial reader (whose OS buffer would overflow anyway) or the MQTT
  network thread (which would stall keepalives). Dropped frames and samples are counted.
* ``block``: producers wait for room; nothing is dropped in the daemon, and the MQTT
  broker holds QoS 1/2 messages meanwhile. For replays and lossless test rigs.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ..sources import Frame


class FrameQueue:
    """At most ``capacity`` frames; :meth:`take` forms micro-batches by size or wait time."""

    def __init__(self, capacity: int, policy: str) -> None:
        self.capacity = capacity
        self.policy = policy
        self.dropped_frames = 0
        self.dropped_samples = 0
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frames: list[Frame]) -> None:
        """Add frames (called from source threads); see the module docstring for when full."""
        with self._ready:
            for frame in frames:
                if len(self._frames) >= self.capacity:
                    if self.policy == "block":
                        while len(self._frames) >= self.capacity and not self._closed:
                            self._ready.wait(0.1)
                    else:
                        old = self._frames.popleft()
                        self.dropped_frames += 1
                        self.dropped_samples += len(old.t)
                if self._closed:
                    return
                self._frames.append(frame)
            self._ready.notify_all()

    def take(self, max_samples: int, wait: float, idle: float) -> list[Frame]:
        """Frames for one micro-batch: waits up to ``idle`` s for the first, then up to
        ``wait`` s more while fewer than ``max_samples`` samples are gathered."""
        batch: list[Frame] = []
        count = 0
        with self._ready:
            if not self._frames:
                self._ready.wait(idle)
            deadline = time.monotonic() + wait
            while True:
                while self._frames and count < max_samples:
                    frame = self._frames.popleft()
                    batch.append(frame)
                    count += len(frame.t)
                remaining = deadline - time.monotonic()
                if count >= max_samples or not batch or remaining <= 0:
                    break
                self._ready.wait(remaining)
            self._ready.notify_all()  # room for blocked producers
        return batch

    def close(self) -> None:
        """Release blocked producers; later puts are ignored."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
