"""The sensor table: the per-sensor records kept beside the detector's rows.

The daemon and each fleet partition keep one :class:`~streamlstm.sinks.SensorState` per
sensor (last device time, score, alert flag, sample counts: what the state topics
publish) and the set of sensors changed since their states were last published. This
module is how a stepped micro-batch, an alert, the ``max_sensors`` limit and an eviction
update that table, and how it travels in a snapshot (:func:`sensor_columns`,
:func:`sensor_records`); the detector state itself is the pipeline's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..sinks import SensorState
from ..sources import Frame

#: How often changed sensor states are published when no sink sets ``state_interval_s``.
DEFAULT_STATE_INTERVAL_S = 10.0


def batch_arrays(frames: Sequence[Frame]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The frames as one detector batch: a sensor id per sample, the samples, their times."""
    sensors: list[str] = []
    for frame in frames:
        sensors += [frame.sensor] * len(frame.t)
    if len(frames) == 1:
        return sensors, frames[0].samples, frames[0].t
    return (
        sensors,
        np.concatenate([f.samples for f in frames]),
        np.concatenate([f.t for f in frames]),
    )


def within_sensor_limit(
    frames: list[Frame], known: Mapping[str, SensorState], limit: int
) -> tuple[list[Frame], int]:
    """The frames of known sensors, and of new ones while fewer than ``limit`` are known (in
    order, so a replay refuses the same ones); and how many samples were refused."""
    if len(known) + len(frames) <= limit:
        return frames, 0
    kept: list[Frame] = []
    new: set[str] = set()
    refused = 0
    for frame in frames:
        if frame.sensor in known or frame.sensor in new:
            kept.append(frame)
        elif len(known) + len(new) < limit:
            new.add(frame.sensor)
            kept.append(frame)
        else:
            refused += len(frame.t)
    return kept, refused


def record_batch(
    records: dict[str, SensorState],
    changed: set[str],
    frames: Sequence[Frame],
    scores: np.ndarray,
    status: np.ndarray,
) -> None:
    """Count the stepped ``frames`` in their sensors' records (created on first sight).

    ``scores`` and ``status`` are the detector's per-sample outputs for the frames'
    samples in order; a record's score and time move only past an accepted sample.
    """
    begin = 0
    for frame in frames:
        end = begin + len(frame.t)
        state = records.get(frame.sensor)
        if state is None:
            state = records[frame.sensor] = SensorState(frame.sensor)
        state.samples += end - begin
        bad = int(np.count_nonzero(status[begin:end]))
        state.rejected += bad
        if bad < end - begin:
            finite = scores[begin:end][np.isfinite(scores[begin:end])]
            if finite.size:
                state.score = float(finite[-1])
            state.t = float(frame.t[-1])
        changed.add(frame.sensor)
        begin = end


def record_alert(records: dict[str, SensorState], event: Any) -> None:
    """Note a detector ``AlertEvent`` in its sensor's record (alerting after a start)."""
    state = records.setdefault(str(event.sensor), SensorState(str(event.sensor)))
    state.alert = event.kind == "start"


def last_sample_times(records: Mapping[str, SensorState], names: Sequence[str]) -> list[float]:
    """Each sensor's last accepted sample time (NaN without a record): when the alerts of
    sensors being evicted end."""
    return [records[n].t if n in records else math.nan for n in names]


def forget_sensors(
    records: dict[str, SensorState], changed: set[str], names: Iterable[str]
) -> None:
    """Drop evicted sensors' records; their unpublished changes go with them."""
    for name in names:
        records.pop(name, None)
        changed.discard(name)


def sensor_columns(records: Sequence[SensorState]) -> dict[str, Any]:
    """The per-sensor records as columns (arrays), for a compact snapshot."""
    return {
        "names": [r.sensor for r in records],
        "t": np.fromiter((r.t for r in records), np.float64, len(records)),
        "score": np.fromiter((r.score for r in records), np.float64, len(records)),
        "alert": np.fromiter((r.alert for r in records), np.bool_, len(records)),
        "samples": np.fromiter((r.samples for r in records), np.int64, len(records)),
        "rejected": np.fromiter((r.rejected for r in records), np.int64, len(records)),
    }


def sensor_records(stored: Any) -> dict[str, SensorState]:
    """:func:`sensor_columns` output (or the older ``{name: [t, score, ...]}``) -> records."""
    if isinstance(stored, dict) and "names" in stored:
        columns = [stored[key] for key in ("t", "score", "alert", "samples", "rejected")]
        rows: Iterable[tuple[Any, ...]] = zip(
            stored["names"], *(np.asarray(c).tolist() for c in columns), strict=True
        )
    else:
        rows = ((name, *fields) for name, fields in stored.items())
    records = {}
    for name, t, score, alert, samples, rejected in rows:
        records[str(name)] = SensorState(
            str(name),
            float(t if t is not None else math.nan),
            float(score if score is not None else math.nan),
            bool(alert),
            int(samples),
            int(rejected),
        )
    return records
