"""The data types every dataset loader returns: streams with labels, grouped into cases."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
#: Staged data, read in place (never copied into the repository).
SHARED_DATA = Path(os.environ.get("STREAMLSTM_SHARED", ROOT / ".." / "shared")) / "data"

NORMAL, ANOMALOUS, IGNORED = 0, 1, -1


@dataclasses.dataclass(frozen=True, eq=False)
class Stream:
    """One recording streamed from a fresh detector state.

    ``x``: ``(T, D)`` rows (NaN = missing); ``labels``: ``(T,)`` of ``NORMAL``,
    ``ANOMALOUS`` or ``IGNORED`` (left out of every row-level metric); ``onsets``: the row
    of each labelled changepoint (an event), ascending; ``window``: rows after an onset
    in which a detection counts for that event (NAB's window).
    """

    name: str
    x: np.ndarray
    labels: np.ndarray
    onsets: tuple[int, ...]
    window: int

    def __post_init__(self) -> None:
        if self.labels.shape != (self.x.shape[0],):
            raise ValueError(f"{self.name}: {self.labels.shape} labels for {self.x.shape} rows")
        if any(not 0 <= o < self.x.shape[0] for o in self.onsets) or self.window < 1:
            raise ValueError(f"{self.name}: onsets {self.onsets} / window {self.window}")


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """Normal recordings to fit on (``fit``, never spliced) and the streams scored after."""

    name: str
    fit: tuple[np.ndarray, ...]
    streams: tuple[Stream, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's validation part (design choices) and test part (reported as it came)."""

    name: str
    period_s: float  # seconds between rows (after any feature front end)
    validation: tuple[Case, ...]
    test: tuple[Case, ...]

    def part(self, name: str) -> tuple[Case, ...]:
        return self.validation if name == "validation" else self.test


def nab_window(length: int, events: int) -> int:
    """NAB's window size: 10 % of the stream's rows shared among its events."""
    return max(1, int(0.1 * length / max(events, 1)))
