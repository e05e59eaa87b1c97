"""The alert events a detector emits."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any, Literal

EventKind = Literal["start", "end"]


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """An alert starting or ending on one sensor.

    ``t``: timestamp (seconds, the caller's clock) of the sample that decided the event;
    ``score``: the smoothed score of that sample; ``threshold``: the threshold it was
    compared with (the start threshold for ``start``, the lower end threshold for
    ``end``); ``peak``: the highest smoothed score since the alert started; ``duration``:
    seconds since the alert started (0 for ``start``); ``model_id``: which model decided;
    ``label``: the class an alert is about (window classifiers, see
    :class:`~streamlstm.detect.windowed.WindowDetector`; None for other detectors).
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

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the sensor id as given: str or int)."""
        return dataclasses.asdict(self)
