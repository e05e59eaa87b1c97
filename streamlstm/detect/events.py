"""The alert events a detector emits."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import ShapeError

EventKind = Literal["start", "end"]
#: :attr:`AlertEvent.reason` of the ``end`` a detector emits when it drops a sensor whose
#: alert is open (``evict``), so that no consumer keeps that alert open for ever.
EVICTED = "evicted"
#: :attr:`AlertEvent.reason` of the ``end`` a detector emits for an alert open on a sensor
#: it is told to ``reset``: the sensor warms up again, and its alert is over.
RESET = "reset"


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """An alert starting or ending on one sensor.

    ``t``: timestamp (seconds, the caller's clock) of the sample that decided the event;
    ``score``: the smoothed score of that sample; ``threshold``: the threshold it was
    compared with (the start threshold for ``start``, the lower end threshold for
    ``end``); ``peak``: the highest smoothed score since the alert started; ``duration``:
    seconds since the alert started (0 for ``start``); ``model_id``: which model decided;
    ``label``: the class an alert is about (window classifiers, see
    :class:`~streamlstm.detect.windowed.WindowDetector`; None for other detectors);
    ``reason``: why an ``end`` came other than by the score: :data:`EVICTED` when the
    detector dropped the sensor while its alert was open, :data:`RESET` when it was told
    to reset it (``t``: the time the caller gave, e.g. the sensor's last sample, NaN if
    none; ``score``: its last score). None otherwise.
    """

    sensor: Hashable
    kind: EventKind
    t: float
    score: float
    threshold: float
    peak: float
    duration: float
    model_id: str
    label: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the sensor id as given: str or int)."""
        return dataclasses.asdict(self)


def eviction_times(count: int, t: Sequence[float] | None) -> list[float]:
    """The times of ``count`` evicted sensors' end events: ``t`` checked, or NaN each."""
    times = np.full(count, np.nan) if t is None else np.asarray(t, np.float64)
    if times.shape != (count,):
        raise ShapeError(f"t: {len(times)} times for {count} sensors")
    return [float(v) for v in times]
