"""Data sources: serial ports, MQTT topics, recordings and the built-in demo.

Every source turns bytes into :class:`Frame` objects: one sensor's samples with their
timestamps, and hands lists of them (micro-batches) to an ``emit`` callback from its own
I/O thread. Nothing here knows about models or detectors; malformed input is counted per
reason in :class:`SourceStats` and dropped, never raised into the caller.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    """Consecutive samples of one sensor.

    ``t``: ``(n,)`` float64 seconds (device time when the source carries it, else host
    receive time); ``samples``: ``(n, D)`` float32 in sensor units; ``received``: host
    wall-clock time (``time.time()``) at which the bytes arrived.
    """

    sensor: str
    t: np.ndarray
    samples: np.ndarray
    received: float


Emit = Callable[[list[Frame]], None]


@dataclass
class SourceStats:
    """Counters one source keeps; read by the metrics endpoint from another thread."""

    parse_errors: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    reconnects: int = 0
    connected: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.parse_errors[reason] += count

    def received(self, count: int) -> None:
        with self._lock:
            self.samples += count

    def reconnected(self) -> None:
        with self._lock:
            self.reconnects += 1

    def snapshot(self) -> tuple[dict[str, int], int, int, bool]:
        with self._lock:
            return dict(self.parse_errors), self.samples, self.reconnects, self.connected


class Source(Protocol):
    """What the daemon needs from a source."""

    name: str
    stats: SourceStats

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read until ``stop`` is set (or the input ends), calling ``emit`` per micro-batch."""
        ...


def sample_times(
    count: int, *, start: float | None, rate: float | None, received: float
) -> np.ndarray:
    """Timestamps ``(count,)`` for a block: from ``start`` at ``rate`` Hz when known.

    Without a start time the block is taken to end at ``received``; without a rate every
    sample gets the same time.
    """
    step = 1.0 / rate if rate else 0.0
    if start is None:
        start = received - step * (count - 1)
    return start + step * np.arange(count, dtype=np.float64)
