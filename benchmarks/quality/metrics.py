"""Detection metrics on streams: NAB-style changepoint score, false alarms, misses, delay, F1.

A method gives, per stream, one boolean per row: is an alert open. Its *detections* are
the rows where an alert starts (rising edges; an alert open at row 0 starts there): what
an operator is paged for. An alert already open when an event begins does not detect it.

NAB-style score (Lavin & Ahmad 2015, adapted to alert starts). Each event owns the
window ``[onset, onset + window)`` (cut at the next onset and the stream's end). The
first detection in a window scores ``A_TP * sigma(p)`` with ``p = -(end - row) / window``
(-1 at the onset, towards 0 at the window's end) and ``sigma(p) = 2 / (1 + exp(5 p)) - 1``;
later ones in the same window count nothing. A detection outside every window on a
normal row is a false positive: ``A_FP * sigma(p)`` with ``p`` its distance past the end
of the previous window in window lengths (so it costs less right after a window), or
``-A_FP`` with no window before it. Detections on anomalous or ignored rows outside a
window count nothing. Each window without a detection costs ``-A_FN``. Over a set of
streams the raw sums are normalised: ``100 * (S - S_null) / (S_perfect - S_null)``, with
the null detector (no detection: ``-A_FN`` per event) at 0 and the perfect one (one
detection at each onset) at 100; worse than null is negative.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from .cases import ANOMALOUS, NORMAL, Stream


@dataclasses.dataclass(frozen=True)
class Profile:
    """NAB's application profiles: weights of a true positive, false positive, miss."""

    tp: float
    fp: float
    fn: float


PROFILES = {
    "standard": Profile(1.0, 0.11, 1.0),
    "low_fp": Profile(1.0, 0.22, 1.0),
    "low_fn": Profile(1.0, 0.055, 2.0),
}


def sigma(position: float) -> float:
    """NAB's scaled sigmoid: about 0.987 at -1, 0 at 0, towards -1 for large positions."""
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def alert_starts(alarm: np.ndarray) -> np.ndarray:
    """Rows where an alert starts (an alert open at row 0 starts there)."""
    alarm = np.asarray(alarm, bool)
    return np.flatnonzero(alarm & ~np.r_[False, alarm[:-1]])


def event_windows(stream: Stream) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: each event's window, cut at the next onset and the end."""
    ends = [*stream.onsets[1:], stream.x.shape[0]][: len(stream.onsets)]
    return [(o, min(o + stream.window, nxt)) for o, nxt in zip(stream.onsets, ends, strict=True)]


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """What one method did on one stream (all row-level counts leave ignored rows out)."""

    name: str
    nab: dict[str, tuple[float, float, float]]  # profile -> (score, null, perfect)
    events: int
    detected: int
    delays_rows: tuple[int, ...]
    false_alerts: int  # alert starts on normal rows outside every window
    normal_rows: int
    alarm_normal_rows: int  # normal rows with an alert open
    anomalous_rows: int
    alarm_anomalous_rows: int  # anomalous rows with an alert open (true positives)


def score_stream(stream: Stream, alarm: np.ndarray) -> StreamResult:
    """Every metric of one stream, from the per-row open-alert flags ``alarm``."""
    alarm = np.asarray(alarm, bool)
    if alarm.shape != stream.labels.shape:
        raise ValueError(f"{stream.name}: alarm {alarm.shape} vs labels {stream.labels.shape}")
    windows = event_windows(stream)
    starts = alert_starts(alarm)
    window_of = np.full(len(alarm), -1)
    for k, (a, b) in enumerate(windows):
        window_of[a:b] = k
    first = [None] * len(windows)
    false_positions: list[float | None] = []
    for row in starts:
        k = window_of[row]
        if k >= 0:
            if first[k] is None:
                first[k] = int(row)
        elif stream.labels[row] == NORMAL:
            before = [w for w in windows if w[1] <= row]
            false_positions.append(
                None if not before else (row - before[-1][1] + 1) / stream.window
            )
    nab = {}
    for name, w in PROFILES.items():
        score = 0.0
        for (_, b), hit in zip(windows, first, strict=True):
            score += w.tp * sigma(-(b - hit) / stream.window) if hit is not None else -w.fn
        score += sum(-w.fp if p is None else w.fp * sigma(p) for p in false_positions)
        nab[name] = (score, -w.fn * len(windows), w.tp * sigma(-1.0) * len(windows))
    normal = stream.labels == NORMAL
    anomalous = stream.labels == ANOMALOUS
    return StreamResult(
        stream.name,
        nab,
        len(windows),
        sum(h is not None for h in first),
        tuple(h - a for (a, _), h in zip(windows, first, strict=True) if h is not None),
        len(false_positions),
        int(normal.sum()),
        int((alarm & normal).sum()),
        int(anomalous.sum()),
        int((alarm & anomalous).sum()),
    )


def nab_normalised(results: Sequence[StreamResult], profile: str) -> float | None:
    """The normalised NAB score over ``results`` (None when they hold no event)."""
    score = sum(r.nab[profile][0] for r in results)
    null = sum(r.nab[profile][1] for r in results)
    perfect = sum(r.nab[profile][2] for r in results)
    if perfect == null:
        return None
    return 100.0 * (score - null) / (perfect - null)


def summarise(results: Sequence[StreamResult], period_s: float) -> dict:
    """The part's table row: NAB scores, false-alarm rate, misses, delays, point F1."""
    normal = sum(r.normal_rows for r in results)
    alarm_normal = sum(r.alarm_normal_rows for r in results)
    tp = sum(r.alarm_anomalous_rows for r in results)
    fn = sum(r.anomalous_rows for r in results) - tp
    precision = tp / (tp + alarm_normal) if tp + alarm_normal else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    delays = [d * period_s for r in results for d in r.delays_rows]
    hours = normal * period_s / 3600
    return {
        **{f"nab_{p}": nab_normalised(results, p) for p in PROFILES},
        "false_alarm_rate": alarm_normal / normal if normal else None,
        "false_alerts": sum(r.false_alerts for r in results),
        "false_alerts_per_day": (
            sum(r.false_alerts for r in results) / hours * 24 if hours else None
        ),
        "events": sum(r.events for r in results),
        "missed": sum(r.events - r.detected for r in results),
        "delay_median_s": float(np.median(delays)) if delays else None,
        "delay_max_s": float(np.max(delays)) if delays else None,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
    }


def per_stream(result: StreamResult, period_s: float) -> dict:
    """One stream's figures (TEP's per-fault detection rate is its row recall)."""
    return {
        "detected": result.detected,
        "events": result.events,
        "delay_s": result.delays_rows[0] * period_s if result.delays_rows else None,
        "false_alerts": result.false_alerts,
        "false_alarm_rate": (
            result.alarm_normal_rows / result.normal_rows if result.normal_rows else None
        ),
        "detection_rate": (
            result.alarm_anomalous_rows / result.anomalous_rows if result.anomalous_rows else None
        ),
    }
