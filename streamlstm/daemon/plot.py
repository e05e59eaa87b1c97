"""The PNG a replay can leave behind: signal, score, threshold and alerts over time.

Needs matplotlib, which is optional: without it the daemon logs that the plot was
skipped. Only replay sensors are recorded, and a recording is already in memory, so
keeping its scores costs no more than the recording itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..model import Model
from ..sources import Frame

log = logging.getLogger(__name__)


def sample_channels(model: Model) -> tuple[str, ...]:
    """Names of a raw sample's channels: a feature model's ``sample_channels`` (its own
    channels name the features), otherwise the model's channels; () when unnamed."""
    if "features" in model.metadata:
        return tuple(model.metadata.get("sample_channels") or ())
    return tuple(model.channels)


def legend_names(channels: Sequence[str], width: int) -> list[str]:
    """One legend entry per signal column: the given names when they fit, else x, y, z
    for three columns (an accelerometer), else ``channel 0``, ``channel 1``, ..."""
    if len(channels) == width:
        return list(channels)
    if width == 3:
        return ["x", "y", "z"]
    return [f"channel {k}" for k in range(width)]


class ReplayPlot:
    """Collects ``(t, sample, score)`` of the given sensors and alert records, then draws them."""

    def __init__(self, path: str, sensors: list[str], channels: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.sensors = set(sensors)
        self.channels = tuple(channels)
        self._t: list[np.ndarray] = []
        self._signal: list[np.ndarray] = []
        self._score: list[np.ndarray] = []
        self._alerts: list[dict[str, Any]] = []

    def observe(self, frame: Frame, scores: np.ndarray) -> None:
        if frame.sensor in self.sensors:
            self._t.append(frame.t)
            self._signal.append(frame.samples)
            self._score.append(scores.copy())

    def alert(self, record: dict[str, Any]) -> None:
        if record["sensor"] in self.sensors:
            self._alerts.append(record)

    def save(self, threshold: float | None) -> bool:
        """Write the PNG; False (and a log line) when matplotlib is missing or nothing was seen."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("plot %s skipped: matplotlib is not installed", self.path)
            return False
        if not self._t:
            log.warning("plot %s skipped: no samples were replayed", self.path)
            return False
        t, signal, score = (np.concatenate(a) for a in (self._t, self._signal, self._score))
        figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(12, 6))
        lines = top.plot(t, signal.reshape(len(t), -1), linewidth=0.5)
        top.legend(lines, legend_names(self.channels, len(lines)), loc="upper right")
        top.set_ylabel("signal")
        bottom.plot(t, score, linewidth=0.7, color="black", label="score")
        if threshold is not None:
            bottom.axhline(threshold, color="red", linestyle="--", label="threshold")
        bottom.set_yscale("log")
        bottom.set_ylabel("score")
        bottom.set_xlabel("t (s)")
        starts = [a["t"] for a in self._alerts if a["kind"] == "start"]
        ends = [a["t"] for a in self._alerts if a["kind"] == "end"]
        for index, start in enumerate(starts):
            end = ends[index] if index < len(ends) else float(t[-1])
            for axis in (top, bottom):
                axis.axvspan(start, end, color="orange", alpha=0.3)
        bottom.legend(loc="upper right")
        top.set_title(f"{', '.join(sorted(self.sensors))}: {len(starts)} alert(s)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.path, dpi=100)
        plt.close(figure)
        log.info("plot written to %s", self.path)
        return True
