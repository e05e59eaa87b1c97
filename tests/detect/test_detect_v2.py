"""Recipe v2 contracts: budget warnings, channel masks, priming, shared defaults, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.detect import calibrate
from streamlstm.detect.calibration import CalibrationWarning, tail_threshold
from streamlstm.errors import ConfigError
from streamlstm.formats import load, save


def sine(count, width=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(count)[:, None]
    return np.sin(0.2 * t + np.arange(width)) + 0.05 * rng.normal(size=(count, width))


def model_at(rate=1.0, width=3, outputs=None):
    return sl.random_model(width, [8], output_size=outputs or width, seed=5).replace(
        sample_rate=rate
    )


def test_calibration_with_too_little_data_for_the_budget_warns():
    # 1 false alarm/day at 1 Hz is 1.2e-5 per step: 450 scores cannot show it.
    with pytest.warns(CalibrationWarning, match="too few"):
        model = calibrate(model_at(1.0), sine(500), warmup_steps=50)
    assert model.calibration["tail_supported"] is False
    # A budget the data do support: no warning, the empirical quantile.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        model = calibrate(model_at(1.0), sine(3000), warmup_steps=50, false_alarms_per_day=2000)
    assert model.calibration["tail"] == "empirical"


def test_tail_fit_extrapolates_an_exponential_tail():
    rng = np.random.default_rng(0)
    scores = rng.exponential(size=20000)
    fit = tail_threshold(scores, 1e-5)  # 0.2 expected exceedances: beyond the data
    assert fit.method == "gpd" and fit.supported
    assert fit.score == pytest.approx(-np.log(1e-5), rel=0.1)  # 11.5
    assert abs(fit.shape) < 0.1


def test_masked_channels_are_learned_excluded_and_counted():
    normal = sine(600)
    normal[:, 1] = 3.0  # frozen
    normal[::3, 2] = np.nan  # missing in a third of the rows
    model = calibrate(model_at(50.0), normal, warmup_steps=10, quantile=0.99)
    cal = model.calibration
    assert cal["mask"] == [1.0, 0.0, 0.0] and cal["mask_names"] == ["c1", "c2"]
    det = sl.Detector(model)
    assert det.masked_channels == ("c1", "c2")
    stream = sine(200, seed=1)
    det.update(["a"] * 200, stream, np.arange(200) / 50)
    quiet = det.last_scores.copy()
    wild = stream.copy()
    wild[:, 1:] = np.random.default_rng(2).normal(0, 1e3, (200, 2))
    wild[50:60, 2] = np.nan
    det.update(["b"] * 200, wild, np.arange(200) / 50)
    # Masked channels reach neither the score nor the counters of missing values.
    np.testing.assert_allclose(det.last_scores, quiet, rtol=1e-6)
    assert det.filled("b") == 0 and det.rejected("b") == 0
    # A missing value in a scored channel is filled and counted.
    gap = stream.copy()
    gap[100:110, 0] = np.nan
    det.update(["c"] * 200, gap, np.arange(200) / 50)
    assert det.filled("c") == 0 and det.rejected("c") == 10  # c0 is the only scored one


def test_configured_mask_is_kept_when_recalibrating():
    model = calibrate(model_at(50.0), sine(600), warmup_steps=10, quantile=0.99, mask=("c0",))
    assert model.calibration["mask"] == [0.0, 1.0, 1.0]
    again = calibrate(model, sine(600, seed=3))
    assert again.calibration["mask"] == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="no channel 'x'"):
        calibrate(model, sine(600), mask=("x",))


def test_priming_raises_no_alert_and_counts_towards_the_warmup():
    model = calibrate(model_at(50.0), sine(600), warmup_steps=10, quantile=0.99, debounce_steps=1)
    broken = sine(100, seed=4) + np.r_[np.zeros(50), np.full(50, 8.0)][:, None]
    det = sl.Detector(model)
    det.prime(["s"] * 100, broken, np.arange(100) / 50)
    assert not det.alerting("s") and det.score("s") > det.params.threshold
    # The same data through update() alert; after priming, the next sample can alert at
    # once (the warm-up is spent).
    fresh = sl.Detector(model)
    assert [e.kind for e in fresh.update(["s"] * 100, broken, np.arange(100) / 50)] == ["start"]
    events = det.update(["s"], broken[-1:], [2.0])
    assert [e.kind for e in events] == ["start"]


def test_python_and_cli_calibration_agree(tmp_path, capsys):
    source = save(
        calibrate(
            model_at(50.0),
            sine(600),
            warmup_steps=7,
            alpha=0.3,
            margin=1.2,
            false_alarms_per_day=5000,
        ),
        tmp_path / "m.npz",
    )
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, sine(800, seed=1), delimiter=",", header="c0,c1,c2", comments="")
    out = tmp_path / "cli.npz"
    assert (
        main(["calibrate", "--model", str(source), "--data", str(csv), "--out", str(out)]) == 0
    ), capsys.readouterr().err
    python = calibrate(load(source), sine(800, seed=1)).calibration
    cli = load(out).calibration
    assert cli["threshold"] == pytest.approx(python["threshold"], rel=1e-12)
    for key in ("warmup", "alpha", "margin", "false_alarms_per_day"):
        assert cli[key] == python[key]
    assert python["warmup"] == 7 and python["margin"] == 1.2  # the stored settings
    # And with an explicit option on both sides.
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(source),
                "--data",
                str(csv),
                "--out",
                str(out),
                "--quantile",
                "0.99",
            ]
        )
        == 0
    )
    python = calibrate(load(source), sine(800, seed=1), quantile=0.99).calibration
    assert load(out).calibration["threshold"] == pytest.approx(python["threshold"])


def test_models_that_are_not_next_step_predictors_get_a_clear_error():
    with pytest.raises(ConfigError, match=r"not a next-step predictor.*direct"):
        calibrate(model_at(50.0, outputs=2), sine(300), quantile=0.99)


def test_a_budget_without_a_sample_rate_warns_and_falls_back_to_a_quantile():
    with pytest.warns(CalibrationWarning, match="no sample rate"):
        fallback = calibrate(model_at(None), sine(3000)).calibration
    explicit = calibrate(model_at(None), sine(3000), quantile=0.999).calibration
    assert fallback["exceedance"] == pytest.approx(0.001)
    assert fallback["threshold"] == pytest.approx(explicit["threshold"])


def test_an_alert_ends_when_the_score_returns_to_its_normal_level():
    # Residual-scale scores sit near 1: with hysteresis 0.5 and margin 1.5 an end
    # threshold of hysteresis x threshold (0.75 x normal) would never be met.
    model = calibrate(
        model_at(50.0), sine(3000), warmup_steps=10, quantile=0.999, margin=1.5, hysteresis=0.5
    )
    cal = model.calibration
    assert cal["hysteresis"] * cal["threshold"] < cal["baseline"] < cal["threshold"]
    stream = sine(1500, seed=6)
    stream[500:600] += 3.0
    events = sl.Detector(model).update(["s"] * 1500, stream, np.arange(1500) / 50)
    assert [e.kind for e in events] == ["start", "end"]
    assert 10.0 <= events[0].t < 12.0 and events[1].t < 20.0
