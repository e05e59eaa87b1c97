"""3W (Petrobras) real oil-well instances: per-instance fit, one natural normal→fault onset.

Protocol (the dataset README's, fixed before any result): per instance, the first valid
row is the first with any finite channel; fit on the first 60 % of the valid normal
segment ``[first_valid, normal_end)``, stream every later row from a fresh state. Labels:
``label > 0`` anomalous, ``0`` normal, ``-1`` ignored; the onset is ``normal_end``.
Split by instance, in file-name order: every third one (0, 3, 6, ...) is validation,
the others are the test part. Raw channels are passed on as they are (NaN = missing,
frozen channels included): dropping or masking them is each method's job.
"""

from __future__ import annotations

import numpy as np

from .cases import ANOMALOUS, IGNORED, NORMAL, SHARED_DATA, Case, Dataset, Stream, nab_window

FOLDER = SHARED_DATA / "3w-oilwell-real-subset"
FIT_FRACTION = 0.6


def _case(path) -> Case:
    with np.load(path, allow_pickle=False) as f:
        x, label, normal_end = f["X"].astype(np.float64), f["label"], int(f["normal_end"])
    first_valid = int(np.argmax(np.isfinite(x).any(axis=1)))
    fit_end = first_valid + int(FIT_FRACTION * (normal_end - first_valid))
    labels = np.where(label > 0, ANOMALOUS, np.where(label == 0, NORMAL, IGNORED))
    rows = x.shape[0] - fit_end
    stream = Stream(path.stem, x[fit_end:], labels[fit_end:].astype(np.int8),
                    (normal_end - fit_end,), nab_window(rows, 1))
    return Case(path.stem, (x[first_valid:fit_end],), (stream,))


def load() -> Dataset:
    cases = [_case(p) for p in sorted(FOLDER.glob("c*_WELL-*.npz"))]
    return Dataset("3w", 1.0, tuple(cases[0::3]),
                   tuple(c for i, c in enumerate(cases) if i % 3))
