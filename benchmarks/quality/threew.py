"""3W (Petrobras) real oil-well instances: per-instance fit, one natural normal→fault onset.

Protocol (the dataset README's, fixed before any result): per instance, the first valid
row is the first with any finite channel; fit on the first 60 % of the valid normal
segment ``[first_valid, normal_end)``, stream every later row from a fresh state. Labels:
``label > 0`` anomalous, ``0`` normal, ``-1`` ignored; the onset is ``normal_end``.
Split by instance, in file-name order: every third one (0, 3, 6, ...) is validation,
the others are the test part. Raw channels are passed on as they are (NaN = missing,
frozen channels included): dropping or masking them is each method's job.

Cross-occasion validation (amendment 5 in ``protocol.py``; the README's optional
cross-occasion test, on validation instances only): for each pair of consecutive
validation instances of the same well (WELL-00011 has five, May to October 2014), fit on
the whole valid normal segment of the earlier one and stream the later one from its
first valid row, so its whole normal segment counts for false alarms. These cases join
the validation part; the test part is unchanged.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .cases import ANOMALOUS, IGNORED, NORMAL, SHARED_DATA, Case, Dataset, Stream, nab_window

FOLDER = SHARED_DATA / "3w-oilwell-real-subset"
FIT_FRACTION = 0.6


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(X, labels, first_valid, normal_end)`` of one instance."""
    with np.load(path, allow_pickle=False) as f:
        x, label, normal_end = f["X"].astype(np.float64), f["label"], int(f["normal_end"])
    first_valid = int(np.argmax(np.isfinite(x).any(axis=1)))
    labels = np.where(label > 0, ANOMALOUS, np.where(label == 0, NORMAL, IGNORED))
    return x, labels.astype(np.int8), first_valid, normal_end


def _stream(name: str, x: np.ndarray, labels: np.ndarray, start: int, onset: int) -> Stream:
    return Stream(
        name, x[start:], labels[start:], (onset - start,), nab_window(x.shape[0] - start, 1)
    )


def _case(path: Path) -> Case:
    x, labels, first_valid, normal_end = _read(path)
    fit_end = first_valid + int(FIT_FRACTION * (normal_end - first_valid))
    return Case(
        path.stem, (x[first_valid:fit_end],), (_stream(path.stem, x, labels, fit_end, normal_end),)
    )


def _cross_case(earlier: Path, later: Path) -> Case:
    """Fit on ``earlier``'s valid normal segment, stream ``later`` from its first valid row."""
    x_fit, _, fit_start, fit_end = _read(earlier)
    x, labels, first_valid, normal_end = _read(later)
    name = f"cross:{earlier.stem}->{later.stem}"
    return Case(
        name, (x_fit[fit_start:fit_end],), (_stream(name, x, labels, first_valid, normal_end),)
    )


def _well(path: Path) -> str:
    return path.stem.split("_")[1]


def load() -> Dataset:
    paths = sorted(FOLDER.glob("c*_WELL-*.npz"))
    cases = [_case(p) for p in paths]
    validation_paths = paths[0::3]
    cross = [
        _cross_case(a, b) for a, b in itertools.pairwise(validation_paths) if _well(a) == _well(b)
    ]
    return Dataset(
        "3w", 1.0, tuple(cases[0::3]) + tuple(cross), tuple(c for i, c in enumerate(cases) if i % 3)
    )
