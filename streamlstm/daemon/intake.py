"""Checks on each frame's device timestamps before it is stepped: validity, redelivery, gaps.

Runs in the compute loop, once per frame (never per sample), against what the daemon last
stepped for the sensor (:attr:`SensorState.t`, which the snapshot keeps, so redeliveries
are recognised across restarts too). Only frames whose ``t`` comes from the sensor's or
the recording's clock (:attr:`Frame.device_time`) are judged; host-stamped frames carry
nothing to judge by. Policy (keys of ``[daemon]``):

* a frame with a non-finite time is dropped (``time_nonfinite``);
* a frame ending more than ``time_future_s`` ahead of the host clock is dropped
  (``time_future``): an epoch-stamped sensor with a broken clock (``t = 1e300``). Clocks
  that count from power-on are far behind the epoch and never trip this;
* a frame whose first time is not newer than the sensor's last stepped time is dropped:
  within ``redelivery_window_s`` of it, as a redelivery (``redelivered``, the broker
  resends after a reconnect or restart); further back, as a clock that went backwards
  (``time_backwards``), e.g. a stale backlog or a device that rebooted;
* a sensor whose clock keeps running behind its last time for ``clock_reset_s`` seconds
  (host time) has restarted its clock: the daemon follows the new clock from then on
  (counted in ``clock_resets``), losing those seconds instead of the sensor for good;
* a frame that starts more than one sample period after the last one reveals samples
  that never arrived (dropped by a broker during an outage, lost on a link): their
  number is counted in ``gap_samples``. The period is the frame's own spacing, or the
  sensor's last one for single-sample frames.

Frames the gate drops are counted per reason, logged (rate-limited), and acknowledged
with the rest of their batch.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._ratelimit import RateLimitedLog
from ..sinks import SensorState
from ..sources import Frame
from .config import IntakeConfig

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


@dataclass(frozen=True)
class TimePolicy:
    """Tolerances of the gate, in seconds (see the module docstring)."""

    future_s: float = 300.0
    redelivery_window_s: float = 60.0
    clock_reset_s: float = 10.0


def time_policy(settings: IntakeConfig) -> TimePolicy:
    """The ``[daemon]`` timestamp tolerances as a :class:`TimePolicy`."""
    return TimePolicy(settings.time_future_s, settings.redelivery_window_s, settings.clock_reset_s)


@dataclass
class IntakeCounts:
    """What the gate dropped (frames and samples per reason) and the gaps it saw."""

    frames: Counter[str] = field(default_factory=Counter)
    samples: Counter[str] = field(default_factory=Counter)
    clock_resets: int = 0
    gaps: int = 0
    gap_samples: int = 0


class TimestampGate:
    """Filters micro-batches by device time; one instance per daemon, compute thread only."""

    def __init__(self, policy: TimePolicy) -> None:
        self.policy = policy
        self.counts = IntakeCounts()
        # sensor -> host time its clock was first seen behind; only for sensors that are.
        self._behind_since: dict[str, float] = {}

    def admit(self, frames: list[Frame], sensors: Mapping[str, SensorState]) -> list[Frame]:
        """The frames of ``frames`` to step, in order; the others are counted and dropped."""
        admitted: list[Frame] = []
        latest: dict[str, tuple[float, float]] = {}  # (t, period) admitted earlier in this batch
        for frame in frames:
            if not frame.device_time:
                admitted.append(frame)
                continue
            state = sensors.get(frame.sensor)
            last, period = latest.get(
                frame.sensor, (state.t, state.period) if state is not None else (math.nan, math.nan)
            )
            reason = self._judge(frame, last)
            if reason is not None:
                self._drop(frame, reason, last)
                continue
            period = self._count_gap(frame, last, period)
            if state is not None:
                state.period = period
            latest[frame.sensor] = (float(frame.t[-1]), period)
            admitted.append(frame)
        return admitted

    def _judge(self, frame: Frame, last: float) -> str | None:
        # Sources produce monotone times (start + k / rate) and recordings are checked when
        # loaded, so finite ends mean finite times: no per-sample work here.
        first, end = float(frame.t[0]), float(frame.t[-1])
        if not (math.isfinite(first) and math.isfinite(end)):
            return "time_nonfinite"
        if end > frame.received + self.policy.future_s:
            return "time_future"
        if math.isnan(last) or first > last:
            self._behind_since.pop(frame.sensor, None)
            return None
        if first >= last - self.policy.redelivery_window_s:
            return "redelivered"
        since = self._behind_since.setdefault(frame.sensor, frame.received)
        if frame.received - since < self.policy.clock_reset_s:
            return "time_backwards"
        del self._behind_since[frame.sensor]
        self.counts.clock_resets += 1
        log.warning(
            "sensor %r: its clock has stayed %.6g s behind for %.3g s; following the new clock",
            frame.sensor,
            last - first,
            self.policy.clock_reset_s,
        )
        return None

    def _drop(self, frame: Frame, reason: str, last: float) -> None:
        self.counts.frames[reason] += 1
        self.counts.samples[reason] += len(frame.t)
        _limited(
            logging.WARNING,
            reason,
            "sensor %r: dropped %d samples at t=%.16g (last stepped t=%.16g): %s",
            frame.sensor,
            len(frame.t),
            float(frame.t[0]),
            last,
            reason,
        )

    def _count_gap(self, frame: Frame, last: float, period: float) -> float:
        """Count the samples missing between ``last`` and ``frame``; the sample period now."""
        first = float(frame.t[0])
        if len(frame.t) > 1:
            period = (float(frame.t[-1]) - first) / (len(frame.t) - 1)
        if math.isnan(last) or first <= last:  # a new sensor, or a clock that restarted
            return period
        if not period > 0.0:  # single samples: learn the spacing from two of them
            return first - last if len(frame.t) == 1 else period
        missing = round((first - last) / period) - 1
        if missing < 1:
            return first - last if len(frame.t) == 1 else period
        self.counts.gaps += 1
        self.counts.gap_samples += missing
        _limited(
            logging.WARNING,
            "gap",
            "sensor %r: %d samples missing between t=%.16g and t=%.16g",
            frame.sensor,
            missing,
            last,
            first,
        )
        return period
