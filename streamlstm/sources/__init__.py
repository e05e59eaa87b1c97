"""Data sources: serial ports, MQTT topics, recordings and the built-in demo.

Every source turns bytes into :class:`Frame` objects: one sensor's samples with their
timestamps, and hands lists of them (micro-batches) to an ``emit`` callback from its own
I/O thread. Nothing here knows about models or detectors; malformed input is counted per
reason in :class:`SourceStats` and dropped, never raised into the caller.

Rule for every source thread and callback: no exception caused by one message escapes
into the thread that serves the others. A :class:`~.parsers.ParseError` is counted under
its reason; anything else is a bug the message exposed, counted under ``internal`` and
logged with its traceback. Both are logged on first occurrence, then rate-limited.

Sensor ids are checked once, here at intake (:func:`check_sensor_id`), so that every id
that reaches the daemon can name an MQTT topic level, a JSON string and a snapshot key.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .._ratelimit import RateLimitedLog
from .parsers import ParseError

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

#: Longest sensor id accepted, in UTF-8 bytes (MQTT topics allow 65,535 in all).
MAX_SENSOR_ID_BYTES = 256


def _forbidden_id_characters() -> re.Pattern[str]:
    # Wildcards and NUL break MQTT topics; control characters, surrogates (not encodable
    # as UTF-8) and Unicode non-characters make mosquitto drop the publishing connection.
    planes = "".join(f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(1, 17))
    return re.compile(
        "[\\x00-\\x1f\\x7f-\\x9f+#\\ud800-\\udfff\\ufdd0-\\ufdef\\ufffe\\uffff" + planes + "]"
    )


_FORBIDDEN_IN_ID = _forbidden_id_characters()


def check_sensor_id(sensor: str) -> str:
    """``sensor`` if it is a usable id, else :class:`ParseError` ``"sensor_id"``.

    Usable: 1 to :data:`MAX_SENSOR_ID_BYTES` bytes of UTF-8, without ``+``, ``#``, NUL,
    control characters or non-characters. ``/`` is allowed; the MQTT sink writes it as
    ``_`` in topics (the record keeps the id as it came).
    """
    if not sensor or len(sensor) > MAX_SENSOR_ID_BYTES:
        raise ParseError("sensor_id", f"sensor id of {len(sensor)} characters")
    if _FORBIDDEN_IN_ID.search(sensor) or len(sensor.encode("utf-8")) > MAX_SENSOR_ID_BYTES:
        raise ParseError("sensor_id", f"unusable sensor id {sensor[:40]!r}")
    return sensor


#: Bytes a frame costs beyond its arrays (the objects around them), for the queue bound.
FRAME_OVERHEAD_BYTES = 512


@dataclass(frozen=True)
class Frame:
    """Consecutive samples of one sensor.

    ``t``: ``(n,)`` float64 seconds (device time when the source carries it, else host
    receive time); ``samples``: ``(n, D)`` float32 in sensor units; ``received``: host
    wall-clock time (``time.time()``) at which the bytes arrived. ``device_time``: True
    when ``t`` comes from the sensor's (or recording's) clock, so that redeliveries and
    gaps can be recognised by it. ``ack``: for at-least-once intake, called once the
    frame has been stepped (or deliberately dropped); ``None`` when nothing waits for it.
    """

    sensor: str
    t: np.ndarray
    samples: np.ndarray
    received: float
    device_time: bool = True
    ack: Callable[[], object] | None = None

    @property
    def nbytes(self) -> int:
        """Memory this frame holds, arrays and overhead, for byte-bounded queues."""
        return self.samples.nbytes + self.t.nbytes + FRAME_OVERHEAD_BYTES


Emit = Callable[[list[Frame]], None]


@dataclass(frozen=True)
class SourceCounts:
    """A consistent copy of one source's counters, taken for a metrics scrape."""

    parse_errors: dict[str, int]
    samples: int
    reconnects: int
    connected: bool
    rate_mismatches: int
    subscribe_refusals: int


@dataclass
class SourceStats:
    """Counters one source keeps; read by the metrics endpoint from another thread."""

    parse_errors: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    # Messages whose sample rate is not the model's: stepped all the same, so not errors.
    rate_mismatches: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    # Subscriptions the broker refused (MQTT SUBACK): nothing comes from such a source.
    subscribe_refusals: int = 0
    connected: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.parse_errors[reason] += count

    def dropped(self, source: str, exc: Exception) -> None:
        """Count (and log, rate-limited) a message dropped because of ``exc``."""
        if isinstance(exc, ParseError):
            self.error(exc.reason)
            _limited(
                logging.WARNING,
                f"{source}/{exc.reason}",
                "%s: dropped malformed input (%s)",
                source,
                exc,
            )
            return
        self.error("internal")
        if _limited(
            logging.ERROR,
            f"{source}/internal/{type(exc).__name__}",
            "%s: dropped a message that raised %s: %s",
            source,
            type(exc).__name__,
            exc,
        ):
            log.debug("traceback of the above", exc_info=exc)

    def received(self, count: int) -> None:
        with self._lock:
            self.samples += count

    def reconnected(self) -> None:
        with self._lock:
            self.reconnects += 1

    def connect_failed(self) -> None:
        with self._lock:
            self.connect_failures += 1

    def subscribe_refused(self) -> None:
        with self._lock:
            self.subscribe_refusals += 1

    def rate_mismatch(self) -> None:
        with self._lock:
            self.rate_mismatches += 1

    def snapshot(self) -> SourceCounts:
        with self._lock:
            return SourceCounts(
                dict(self.parse_errors),
                self.samples,
                self.reconnects,
                self.connected,
                self.rate_mismatches,
                self.subscribe_refusals,
            )


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
    with np.errstate(over="ignore"):  # absurd times become Inf, refused before the step
        return start + step * np.arange(count, dtype=np.float64)
