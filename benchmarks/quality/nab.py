"""NAB machine temperature: one channel every 5 min, four labelled anomaly windows.

Fit on rows 0-2125 (the clean history before the first window, the README's protocol).
Validation: rows 2126-9999 streamed from a fresh state (windows 0 and 1); test: rows
10000 to the end (windows 2 and 3). Each NAB window is one event: its onset is the
window's first row and its NAB window is the labelled window itself.
"""

from __future__ import annotations

import numpy as np

from .cases import SHARED_DATA, Case, Dataset, Stream

PATH = SHARED_DATA / "nab-machine-temperature" / "machine_temperature.npz"
SPLIT_ROW = 10000


def _stream(name: str, x: np.ndarray, label: np.ndarray) -> Stream:
    starts = np.flatnonzero(np.diff(np.r_[0, label]) == 1)
    lengths = [int(np.argmin(label[s:] == 1)) or len(label) - s for s in starts]
    return Stream(
        name, x[:, None], label.astype(np.int8), tuple(int(s) for s in starts), min(lengths)
    )


def load() -> Dataset:
    with np.load(PATH, allow_pickle=False) as f:
        value, label = f["value"].astype(np.float64), f["label"].astype(np.int8)
        fit_rows, period = int(f["first_window_row"]), float(f["sample_period_s"])
    fit = (value[:fit_rows, None],)
    validation = _stream("windows-0-1", value[fit_rows:SPLIT_ROW], label[fit_rows:SPLIT_ROW])
    test = _stream("windows-2-3", value[SPLIT_ROW:], label[SPLIT_ROW:])
    return Dataset(
        "nab",
        period,
        (Case("nab-validation", fit, (validation,)),),
        (Case("nab-test", fit, (test,)),),
    )
