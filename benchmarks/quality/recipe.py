"""The streamlstm detector as a method of the suite, and the designs tried.

Each design is a set of :func:`streamlstm.train.train` keywords, applied unchanged to
every dataset (the recipe is general, not per dataset). Fixed for all: the sample rate
is the dataset's row rate, the false-alarm budget ``BUDGET_PER_DAY``, a warm-up of
``WARMUP`` model steps (the shortest fold of the fan's fit recordings is 52 rows), one
torch thread.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

import streamlstm as sl
from streamlstm.train import train

from .protocol import COMMISSION_ROWS

BUDGET_PER_DAY = 1.0
WARMUP = 20

#: Every design tried, in the order it was declared (see protocol.py).
#: Each names every recipe setting it depends on, so a later change of the library's
#: defaults does not change a design.
DESIGNS: dict[str, dict] = {
    "level": {"target": "level", "calibration": {"level": False, "pool": "rms"}},
    "delta": {"target": "delta", "calibration": {"level": False, "pool": "rms"}},
    # Added after the first validation run (validation results only; see protocol.py).
    "delta-level": {"target": "delta", "calibration": {"level": True, "pool": "rms"}},
    "delta-level-maha": {
        "target": "delta",
        "calibration": {"level": True, "metric": "mahalanobis", "pool": "rms"},
    },
    # Added with amendment 5 (after the fourth test run; see protocol.py): pooling by the
    # largest whitened component, and the residuals' T² alone.
    "delta-max": {"target": "delta", "calibration": {"level": False, "pool": "max"}},
    "delta-level-max": {"target": "delta", "calibration": {"level": True, "pool": "max"}},
    "delta-maha": {
        "target": "delta",
        "calibration": {"level": False, "metric": "mahalanobis", "pool": "rms"},
    },
    # Amendment 6: the level term with guarded drift adaptation (a priori: time constant
    # 100 model steps, at most 3 normal standard deviations).
    "delta-level-max-adapt": {
        "target": "delta",
        "calibration": {"level": True, "pool": "max", "level_alpha": 0.01, "level_bound": 3.0},
    },
    # Amendment 7: a residual term and a level term, each against its own normal tail.
    "delta-hybrid": {
        "target": "delta",
        "calibration": {"level": True, "pool": "max", "level_balance": True},
    },
    "delta-hybrid-maha": {
        "target": "delta",
        "calibration": {
            "level": True,
            "pool": "max",
            "level_balance": True,
            "metric": "mahalanobis",
        },
    },
    "delta-hybrid-adapt": {
        "target": "delta",
        "calibration": {
            "level": True,
            "pool": "max",
            "level_balance": True,
            "level_alpha": 0.01,
            "level_bound": 3.0,
        },
    },
}
# Amendment 9: two of the hybrids with the level term cross-fitted like the residuals.
DESIGNS.update(
    {
        f"{name}-xfit": {
            **DESIGNS[name],
            "calibration": {**DESIGNS[name]["calibration"], "level_fit": "cross"},
        }
        for name in ("delta-hybrid", "delta-hybrid-maha")
    }
)
# Amendment 10: three of the hybrids with every stream commissioned on its first rows
# (``commission``: a setting of the suite, not of train()).
DESIGNS.update(
    {
        f"{name}-commission": {**DESIGNS[name], "commission": True}
        for name in ("delta-hybrid", "delta-hybrid-maha", "delta-hybrid-xfit")
    }
)


class LstmMethod:
    """Train + calibrate on the case's fit recordings; alarm = an open detector alert.
    A commissioning design takes each stream's first ``COMMISSION_ROWS`` rows as the
    sensor's own normal (:meth:`streamlstm.Detector.commission`)."""

    def __init__(self, fit: Sequence[np.ndarray], period_s: float, design: str) -> None:
        keywords = dict(DESIGNS[design])
        self.commission = bool(keywords.pop("commission", False))
        calibration = {
            "false_alarms_per_day": BUDGET_PER_DAY,
            "warmup_steps": WARMUP,
            **keywords.pop("calibration", {}),
        }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(
                list(fit),
                sample_rate=1.0 / period_s,
                progress=False,
                threads=1,
                calibration=calibration,
                **keywords,
            )
        self.warnings = sorted({type(w.message).__name__ for w in caught})
        self.model = result.model
        self.period_s = period_s
        self.name = f"lstm-{design}"

    def alarm(self, x: np.ndarray) -> np.ndarray:
        det = sl.Detector(self.model)
        times = np.arange(x.shape[0]) * self.period_s
        ids = ["stream"] * x.shape[0]
        start = COMMISSION_ROWS if self.commission else 0
        if start:
            det.commission(ids[:start], x[:start], times[:start])
        events = det.update(ids[start:], x[start:], times[start:])
        change = np.zeros(x.shape[0] + 1, np.int64)
        for event in events:
            row = int(np.searchsorted(times, event.t))
            change[row] += 1 if event.kind == "start" else -1
        return np.cumsum(change)[:-1] > 0
