"""Where alert decisions go: MQTT (with an on-disk spool), JSONL files, stdout.

The daemon turns each detector event into an *alert record* (:func:`alert_record`), a
plain JSON-able dict with a sequence number ``seq`` that increases across restarts, and
hands the same records to every sink. Record schema ``streamlstm.alert/1``::

    {"schema": "streamlstm.alert/1", "seq": 42, "daemon": "streamlstm",
     "sensor": "s1", "kind": "start" | "end",
     "t": 1700000000.25,          # time of the deciding sample (s, device/host clock)
     "published": 1700000000.31,  # wall-clock time the daemon decided (s since epoch)
     "score": 7.3, "threshold": 4.0, "peak": 7.3, "duration": 0.0,  # duration (s): end events
     "model": {"id": "accel-default", "sha256": "..."},
     "label": "inner",            # only for window classifiers: the class alerted on
     "reason": "evicted"}         # only for an end not decided by the score: "evicted" =
                                  # the sensor was dropped (idle for sensor_idle_s) while
                                  # its alert was open; t is then its last sample's time

Delivery is at least once: a subscriber drops a record whose ``(daemon, seq)`` it has seen.
A subscriber ignores keys it does not know (``reason`` came within version 1).

A sink may also be told that the daemon dropped sensors (:meth:`Sink.forget`: idle ones,
``[daemon] sensor_idle_s``), e.g. to clear their retained state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ALERT_SCHEMA = "streamlstm.alert/1"
STATE_SCHEMA = "streamlstm.state/1"


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def alert_record(
    event: Any, *, seq: int, daemon: str, model_id: str, model_sha: str, published: float
) -> dict[str, Any]:
    """The wire form of one detector ``AlertEvent`` (schema in the module docstring)."""
    record = {
        "schema": ALERT_SCHEMA,
        "seq": seq,
        "daemon": daemon,
        "sensor": str(event.sensor),
        "kind": event.kind,
        "t": _number(event.t),
        "published": published,
        "score": _number(event.score),
        "threshold": _number(event.threshold),
        "peak": _number(event.peak),
        "duration": _number(event.duration),
        "model": {"id": getattr(event, "model_id", None) or model_id, "sha256": model_sha},
    }
    for optional in ("label", "reason"):
        value = getattr(event, optional, None)
        if value is not None:
            record[optional] = str(value)
    return record


@dataclass
class SensorState:
    """What the daemon last knew about one sensor (the retained state topic's payload)."""

    sensor: str
    t: float = math.nan
    score: float = math.nan
    alert: bool = False
    samples: int = 0
    rejected: int = 0
    period: float = math.nan  # last seen sample spacing (s), for gap counting; not published

    def record(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "sensor": self.sensor,
            "alert": self.alert,
            "t": _number(self.t),
            "score": _number(self.score),
            "samples": self.samples,
            "rejected": self.rejected,
        }


class Sink(Protocol):
    """What the daemon needs from a sink; all calls come from the compute thread."""

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        """Deliver alert records (durably queued on return where the sink promises that)."""
        ...

    def states(self, states: Mapping[str, SensorState]) -> None:
        """Publish per-sensor states that changed since the last call."""
        ...

    def forget(self, sensors: Sequence[str]) -> None:
        """The daemon holds no state for these sensors any more (evicted)."""
        ...

    def close(self) -> None:
        """Flush and release; a clean shutdown."""
        ...
