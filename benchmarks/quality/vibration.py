"""The two vibration sets (UCI fan, CWRU bearings) as rows of windowed features.

Raw kHz/50 Hz samples are turned into feature rows once, by the library's own front end
(:func:`streamlstm.detect.compute_features`, the statistics the previous suite chose on
validation data from physics), so every method sees the same rows at the hop rate.
Each recording is its own stream; an anomalous recording is one event from its first
row (no splicing of recordings).

* Fan (50 Hz, x/y/z): configuration 1 is normal. Test: fit on samples 0-1999 of each of
  its 17 speed blocks; stream samples 2000-2999 of each (normal) and the whole blocks of
  configurations 2 and 3 at the 9 speeds in even positions of the sorted speeds
  (anomalous). Validation: fit on samples 0-1599, stream 1600-1999 (normal) and the
  whole anomalous blocks at the other 8 speeds (amendment 8; before amendment 7 the test
  streamed all 34 anomalous blocks and validation held no event).
* CWRU (12 kHz, drive end + fan end): test: fit on the first 60 % of ``normal.npz``,
  stream its last 40 % and the last 60 % of each of the 9 fault recordings. Validation:
  fit on the first 45 %, stream 45-60 % (normal) and the first 40 % of each fault
  recording (amendment 8; before amendment 7 the test streamed them whole).

An anomalous stream must be long enough that its NAB window (10 % of its rows) outlasts
the detector's warm-up and debounce (23 model steps): at least 240 rows (amendment 8).
"""

from __future__ import annotations

import numpy as np

from streamlstm.detect import FeatureSpec, compute_features

from .cases import ANOMALOUS, NORMAL, SHARED_DATA, Case, Dataset, Stream, nab_window

FAN_FEATURES = FeatureSpec(50, 10, ("log_std", "acf1", "corr_next"))
CWRU_FEATURES = FeatureSpec(1024, 128, ("log_rms", "crest", "kurtosis", "acf1"))
#: Amendment 8: the fan's anomalous blocks at odd speed positions, and this share of
#: each CWRU fault recording, go to validation.
CWRU_VALIDATION_SHARE = 0.4
CWRU_FAULTS = tuple(
    f"{fault}_{size}" for fault in ("ir", "ball", "or6") for size in ("007", "014", "021")
)


def _stream(name: str, rows: np.ndarray, label: int) -> Stream:
    labels = np.full(len(rows), ANOMALOUS if label else NORMAL, np.int8)
    return Stream(name, rows, labels, (0,) if label else (), nab_window(len(rows), 1))


def load_fan() -> Dataset:
    data = np.load(SHARED_DATA / "uci-fan-accelerometer" / "fan_accelerometer.npz")
    acc, config, speed = data["acc"].astype(np.float64), data["config_id"], data["speed_pct"]
    fs = float(data["fs_hz"])

    def rows(cfg: int, pct: int, part: slice) -> np.ndarray:
        return compute_features(acc[(config == cfg) & (speed == pct)][part], FAN_FEATURES)

    speeds = [int(p) for p in np.unique(speed)]
    held_out, tested = speeds[1::2], speeds[0::2]
    checks = [_stream(f"normal-{p}%", rows(1, p, slice(1600, 2000)), 0) for p in speeds]
    checks += [
        _stream(f"config{c}-{p}%", rows(c, p, slice(None)), 1) for c in (2, 3) for p in held_out
    ]
    validation = Case(
        "fan-validation", tuple(rows(1, p, slice(0, 1600)) for p in speeds), tuple(checks)
    )
    tests = [_stream(f"normal-{p}%", rows(1, p, slice(2000, 3000)), 0) for p in speeds]
    tests += [
        _stream(f"config{c}-{p}%", rows(c, p, slice(None)), 1) for c in (2, 3) for p in tested
    ]
    test = Case("fan-test", tuple(rows(1, p, slice(0, 2000)) for p in speeds), tuple(tests))
    return Dataset("fan", FAN_FEATURES.hop / fs, (validation,), (test,))


def _cwru(name: str) -> np.ndarray:
    with np.load(SHARED_DATA / "cwru-bearing-12k-subset" / f"{name}.npz") as f:
        raw = np.stack([f["de"], f["fe"]], axis=1).astype(np.float64)
    return raw


def load_cwru() -> Dataset:
    normal = _cwru("normal")
    n = normal.shape[0]

    def rows(raw: np.ndarray) -> np.ndarray:
        return compute_features(raw, CWRU_FEATURES)

    cut45, cut60 = int(0.45 * n), int(0.6 * n)
    faults = {name: _cwru(name) for name in CWRU_FAULTS}
    cuts = {name: int(CWRU_VALIDATION_SHARE * raw.shape[0]) for name, raw in faults.items()}
    checks = [_stream("normal-45-60%", rows(normal[cut45:cut60]), 0)]
    checks += [_stream(name, rows(raw[: cuts[name]]), 1) for name, raw in faults.items()]
    validation = Case("cwru-validation", (rows(normal[:cut45]),), tuple(checks))
    tests = [_stream("normal-tail", rows(normal[cut60:]), 0)]
    tests += [_stream(name, rows(raw[cuts[name] :]), 1) for name, raw in faults.items()]
    test = Case("cwru-test", (rows(normal[:cut60]),), tuple(tests))
    return Dataset("cwru", CWRU_FEATURES.hop / 12000.0, (validation,), (test,))
