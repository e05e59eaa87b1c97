"""The quality suite's metrics and baselines against hand-computed cases and a slow oracle."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from quality import baselines, metrics, protocol
from quality.cases import ANOMALOUS, IGNORED, NORMAL, Stream

SIGMA_AT_ONSET = 2 / (1 + math.exp(-5)) - 1  # 0.98661...


def stream_with_one_event(rows=40, onset=10, window=10):
    labels = np.where(np.arange(rows) >= onset, ANOMALOUS, NORMAL).astype(np.int8)
    return Stream("s", np.zeros((rows, 1)), labels, (onset,), window)


def alarm_from(rows, start, stop=None):
    alarm = np.zeros(rows, bool)
    alarm[start:stop] = True
    return alarm


def test_nab_score_on_hand_computed_cases():
    s = stream_with_one_event()
    at_onset = metrics.score_stream(s, alarm_from(40, 10))
    assert metrics.nab_normalised([at_onset], "standard") == pytest.approx(100.0)
    none = metrics.score_stream(s, np.zeros(40, bool))
    assert metrics.nab_normalised([none], "standard") == pytest.approx(0.0)
    assert none.detected == 0 and none.events == 1
    # Half-way through the window: sigma(-0.5) = 2 / (1 + e^-2.5) - 1.
    late = metrics.score_stream(s, alarm_from(40, 15))
    expected = 100 * (2 / (1 + math.exp(-2.5)) - 1 + 1) / (SIGMA_AT_ONSET + 1)
    assert metrics.nab_normalised([late], "standard") == pytest.approx(expected)
    assert late.delays_rows == (5,)
    # An alert opened on normal data and held through the onset: one false positive (no
    # window before it: -A_FP) and a missed event.
    early = metrics.score_stream(s, alarm_from(40, 2))
    assert early.false_alerts == 1 and early.detected == 0
    for profile, (tp, fp, fn) in {
        "standard": (1, 0.11, 1),
        "low_fp": (1, 0.22, 1),
        "low_fn": (1, 0.055, 2),
    }.items():
        score, null, perfect = early.nab[profile]
        assert (score, null) == pytest.approx((-fp - fn, -fn))
        assert perfect == pytest.approx(tp * SIGMA_AT_ONSET)
    assert metrics.nab_normalised([early], "standard") == pytest.approx(
        100 * (-0.11) / (SIGMA_AT_ONSET + 1)
    )


def test_false_positive_right_after_a_window_costs_less_than_a_late_one():
    labels = np.r_[np.zeros(10), np.ones(10), np.zeros(40)].astype(np.int8)
    s = Stream("s", np.zeros((60, 1)), labels, (10,), 10)
    soon = metrics.score_stream(s, alarm_from(60, 21, 23))
    later = metrics.score_stream(s, alarm_from(60, 50, 52))
    assert soon.nab["standard"][0] > later.nab["standard"][0]
    # The FP's position past the window end (row 20), in window lengths: (21 - 20 + 1) / 10.
    assert soon.nab["standard"][0] == pytest.approx(-1 + 0.11 * metrics.sigma(0.2))


def slow_nab(stream, alarm, profile):
    """The score from its definition, row by row (an independent oracle)."""
    tp, fp, fn = profile
    windows = []
    for i, onset in enumerate(stream.onsets):
        stop = stream.onsets[i + 1] if i + 1 < len(stream.onsets) else len(alarm)
        windows.append((onset, min(onset + stream.window, stop)))
    hit = [False] * len(windows)
    total = 0.0
    for row in range(len(alarm)):
        if not alarm[row] or (row > 0 and alarm[row - 1]):
            continue
        inside = [k for k, (a, b) in enumerate(windows) if a <= row < b]
        if inside:
            k = inside[0]
            if not hit[k]:
                hit[k] = True
                total += tp * (2 / (1 + math.exp(5 * -(windows[k][1] - row) / stream.window)) - 1)
        elif stream.labels[row] == NORMAL:
            ended = [b for a, b in windows if b <= row]
            if ended:
                p = (row - ended[-1] + 1) / stream.window
                total += fp * (2 / (1 + math.exp(5 * p)) - 1)
            else:
                total -= fp
    total -= fn * hit.count(False)
    return total


@pytest.mark.parametrize("seed", range(6))
def test_nab_score_equals_the_slow_oracle_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    rows = 300
    onsets = tuple(sorted(rng.choice(np.arange(20, rows - 5), size=3, replace=False)))
    labels = np.zeros(rows, np.int8)
    for onset in onsets:
        labels[onset : onset + 25] = ANOMALOUS
    labels[rng.random(rows) < 0.05] = IGNORED
    s = Stream("r", np.zeros((rows, 1)), labels, onsets, 30)
    alarm = rng.random(rows) < 0.2
    result = metrics.score_stream(s, alarm)
    for name, weights in metrics.PROFILES.items():
        oracle = slow_nab(s, alarm, (weights.tp, weights.fp, weights.fn))
        assert result.nab[name][0] == pytest.approx(oracle)


def test_row_metrics_leave_ignored_rows_out():
    labels = np.array([0, 0, 0, 0, -1, 1, 1, 1, 1, 1], np.int8)
    s = Stream("s", np.zeros((10, 1)), labels, (5,), 5)
    alarm = np.array([0, 1, 0, 0, 1, 1, 1, 0, 0, 0], bool)
    summary = metrics.summarise([metrics.score_stream(s, alarm)], period_s=2.0)
    assert summary["false_alarm_rate"] == pytest.approx(1 / 4)
    assert summary["precision"] == pytest.approx(2 / 3)
    assert summary["recall"] == pytest.approx(2 / 5)
    assert summary["f1"] == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    # The alert starting on the ignored row 4 is inside no window and on no normal row.
    assert summary["false_alerts"] == 1 and summary["missed"] == 1


def test_run_rule_needs_three_rows_in_a_row_to_start_and_to_end():
    flags = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 1], bool)
    assert baselines.run_rule(flags).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]


def test_f_limited_baselines_flag_about_alpha_of_new_normal_rows():
    rng = np.random.default_rng(0)
    cov = [[1, 0.8, 0], [0.8, 1, 0.3], [0, 0.3, 1]]
    fit = rng.multivariate_normal([0, 0, 0], cov, size=2000)
    new = rng.multivariate_normal([0, 0, 0], cov, size=20000)
    for kind in (baselines.Hotelling, baselines.PcaT2Spe):
        rate = kind([fit]).flags(new).mean()
        assert 0.3 * baselines.ALPHA < rate < 3 * baselines.ALPHA, (kind.name, rate)
    shifted = new + np.array([3.0, 0.0, 0.0])
    assert baselines.Hotelling([fit]).flags(shifted).mean() > 0.5


def test_commissioned_hotelling_takes_its_mean_from_the_first_rows_of_the_stream():
    rng = np.random.default_rng(1)
    cov = [[1, 0.8, 0], [0.8, 1, 0.3], [0, 0.3, 1]]
    fit = rng.multivariate_normal([0, 0, 0], cov, size=2000)
    offset = rng.multivariate_normal([0, 0, 0], cov, size=20000) + np.array([3.0, 0.0, 0.0])
    plain, commissioned = baselines.Hotelling([fit]), baselines.HotellingCommissioned([fit])
    rows = protocol.COMMISSION_ROWS
    flags = commissioned.flags(offset)
    assert not flags[:rows].any()
    # Its own normal once commissioned (measured: 1.2 % of rows flagged, against 99 % for
    # the T² whose mean is the fit rows').
    assert flags[rows:].mean() < 3 * baselines.ALPHA < 0.5 < plain.flags(offset).mean()
    later = offset.copy()
    later[10000:] += np.array([0.0, 0.0, 4.0])
    assert commissioned.flags(later)[10000:].mean() > 0.5
