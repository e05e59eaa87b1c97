"""Readable alert lines on standard output (the demo's sink)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ..daemon.config import StdoutSinkConfig, section_values
from . import SensorState


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds > 1e9:  # an epoch time; recordings often count from 0 instead
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int(seconds % 1 * 1000):03d}Z"
        )
    return f"t={seconds:.3f}s"


def format_alert(record: Mapping[str, Any]) -> str:
    """``2026-11-22T18:20:01.123Z  ALERT START  s1  score 7.31 > 4.00  (seq 42)``; a class
    alert names its class after the sensor (``s1  class inner  score 0.97 ...``), an end
    with a reason gives it before the seq (``... peak 9.1  (evicted)  (seq 43)``)."""
    score = record["score"]
    threshold = record["threshold"]
    label = f"class {record['label']}  " if record.get("label") is not None else ""
    text = (
        f"{_when(record['t'])}  ALERT {record['kind'].upper():<5}  {record['sensor']}  {label}"
        f"score {score if score is None else f'{score:.3g}'}"
        f" / threshold {threshold if threshold is None else f'{threshold:.3g}'}"
    )
    if record["kind"] == "end" and record["duration"] is not None:
        text += f"  lasted {record['duration']:.3g} s, peak {record['peak']:.3g}"
    if record.get("reason") is not None:
        text += f"  ({record['reason']})"
    return text + f"  (seq {record['seq']})"


class StdoutSink:
    """Writes one line per alert to ``stream`` (default: standard output); with ``states``
    also a line per changed sensor state."""

    def __init__(
        self,
        *,
        name: str = "stdout",
        states: bool = StdoutSinkConfig.states,
        stream: TextIO | None = None,
    ) -> None:
        self.settings = StdoutSinkConfig(name=name, states=states)
        self._stream = stream or sys.stdout

    @classmethod
    def from_config(cls, settings: StdoutSinkConfig) -> StdoutSink:
        """The sink a validated ``[[sinks]]`` table of type stdout describes."""
        return cls(**section_values(settings))

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._stream.write(format_alert(record) + "\n")
        self._stream.flush()

    def states(self, states: Mapping[str, SensorState]) -> None:
        if not self.settings.states:
            return
        for state in states.values():
            self._stream.write(
                f"state {state.sensor}: score {state.score:.3g}, "
                f"{'ALERT' if state.alert else 'ok'}, {state.samples} samples, "
                f"{state.rejected} rejected\n"
            )
        self._stream.flush()

    def forget(self, sensors: Sequence[str]) -> None:
        """Nothing is kept per sensor (an open alert's end was printed)."""

    def close(self) -> None:
        self._stream.flush()
