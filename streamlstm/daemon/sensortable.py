"""The sensor table: the per-sensor records kept beside the detector's rows.

The daemon and each fleet partition keep one :class:`~streamlstm.sinks.SensorState` per
sensor (last device time, score, alert flag, sample counts: what the state topics
publish) and the set of sensors changed since their states were last published. This
module is how a stepped micro-batch, an alert, the ``max_sensors`` limit and an eviction
update that table, and how it travels in a snapshot (:class:`SensorColumns`); the detector
state itself is the pipeline's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ShapeError
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


@dataclass(frozen=True)
class SensorColumns:
    """The per-sensor records as columns, as a snapshot holds them: ``names[i]``'s last
    accepted sample time ``t[i]``, ``score[i]``, ``alert[i]`` and its ``samples[i]`` /
    ``rejected[i]`` counts."""

    names: list[str]
    t: np.ndarray  # float64
    score: np.ndarray  # float64
    alert: np.ndarray  # bool
    samples: np.ndarray  # int64
    rejected: np.ndarray  # int64

    #: The columns besides ``names``, with their dtypes.
    DTYPES: ClassVar[dict[str, type]] = {
        "t": np.float64,
        "score": np.float64,
        "alert": np.bool_,
        "samples": np.int64,
        "rejected": np.int64,
    }

    def __post_init__(self) -> None:
        for name in self.DTYPES:
            column = getattr(self, name)
            if not isinstance(column, np.ndarray) or column.shape != (len(self.names),):
                raise ShapeError(
                    f"snapshot sensors: {name} is not one value per sensor "
                    f"({len(self.names)} sensors)"
                )

    @classmethod
    def from_records(cls, records: Sequence[SensorState]) -> SensorColumns:
        """The records as columns (copies of their fields)."""
        n = len(records)
        return cls(
            [r.sensor for r in records],
            *(
                np.fromiter((getattr(r, name) for r in records), dtype, n)
                for name, dtype in cls.DTYPES.items()
            ),
        )

    def records(self) -> dict[str, SensorState]:
        """The records by sensor name."""
        columns = (getattr(self, name).tolist() for name in self.DTYPES)
        return {
            str(name): SensorState(str(name), t, score, alert, samples, rejected)
            for name, t, score, alert, samples, rejected in zip(self.names, *columns, strict=True)
        }

    def to_tree(self) -> dict[str, Any]:
        """``{"names": [...], "t": array, ...}`` for a snapshot file."""
        return {"names": self.names, **{name: getattr(self, name) for name in self.DTYPES}}

    @classmethod
    def from_tree(cls, stored: Any) -> SensorColumns:
        """Read :meth:`to_tree` output, or the older ``{name: [t, score, alert, samples,
        rejected]}`` (a missing time or score is NaN); :class:`ShapeError` if malformed."""
        try:
            if isinstance(stored, dict) and "names" in stored:
                names = list(stored["names"])
                raw = [stored[name] for name in cls.DTYPES]
            else:
                names = list(stored)
                rows = [list(fields) for fields in stored.values()]
                if any(len(row) != len(cls.DTYPES) for row in rows):
                    raise ValueError("a record of the wrong length")
                raw = [list(c) for c in zip(*rows, strict=True)] or [[] for _ in cls.DTYPES]
            columns = [
                _column(values, dtype, nan_for_none=name in ("t", "score"))
                for values, (name, dtype) in zip(raw, cls.DTYPES.items(), strict=True)
            ]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"snapshot sensors: missing or malformed ({exc})") from None
        return cls(names, *columns)


def _column(values: Any, dtype: type, *, nan_for_none: bool) -> np.ndarray:
    """A stored column as an array of ``dtype`` (a list may hold None for NaN)."""
    if not isinstance(values, np.ndarray):
        values = [math.nan if nan_for_none and v is None else v for v in values]
    return np.asarray(values).astype(dtype)
