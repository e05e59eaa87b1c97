"""Durations in detector and calibration options: named with their unit, converted through
the model's sample rate; the old names still work, with a DeprecationWarning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.detect import calibrate
from streamlstm.detect.durations import resolve_durations, step_seconds
from streamlstm.errors import ConfigError
from streamlstm.formats import load, save

pytestmark = pytest.mark.filterwarnings("ignore::streamlstm.detect.calibration.CalibrationWarning")


def sine(count, width=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(count)[:, None]
    return np.sin(0.2 * t + np.arange(width)) + 0.05 * rng.normal(size=(count, width))


@pytest.fixture(scope="module")
def model():
    """Calibrated at 50 Hz (a step is 0.02 s)."""
    raw = sl.random_model(2, [8], output_size=2, seed=3).replace(sample_rate=50.0)
    return calibrate(raw, sine(600), warmup_steps=10, quantile=0.99)


def test_steps_and_seconds_give_the_same_parameters(model):
    in_steps = sl.Detector(model, warmup_steps=25, debounce_steps=4, quiet_steps=10).params
    in_seconds = sl.Detector(model, warmup_s=0.5, debounce_s=0.08, quiet_s=0.19).params
    assert (in_steps.warmup, in_steps.debounce) == (25, 4)
    assert (in_seconds.warmup, in_seconds.debounce) == (25, 4)
    # quiet_steps=k: the k-th step after the first one below ends the alert (half a step
    # of slack for jittery timestamps), as quiet_s between (k-1) and k steps does.
    assert in_steps.quiet_time == pytest.approx(9.5 * 0.02)
    assert in_seconds.quiet_time == pytest.approx(0.19)
    assert sl.Detector(model, quiet_steps=0).params.quiet_time == 0.0
    # Seconds round up to whole steps.
    assert sl.Detector(model, debounce_s=0.061).params.debounce == 4


def test_quiet_steps_end_the_alert_on_that_step():
    """Drive a detector to an alert, then below the end threshold: with quiet_steps=3 the
    alert ends on the third sample after the first one below, whatever the jitter."""
    raw = sl.random_model(1, [4], output_size=1, seed=1).replace(sample_rate=10.0)
    model = calibrate(
        raw,
        sine(400, width=1),
        quantile=0.99,
        level=True,
        warmup_steps=5,
        alpha=1.0,
        hysteresis=1.0,
    )
    det = sl.Detector(model, quiet_steps=3, debounce_steps=1, warmup_steps=0)
    rng = np.random.default_rng(0)
    x = np.r_[sine(40, width=1)[:, 0], np.full(5, 50.0), sine(40, width=1, seed=2)[:, 0]]
    t = np.arange(x.size) * 0.1 + rng.uniform(-0.02, 0.02, x.size)
    events = det.update(["s"] * x.size, x[:, None], t)
    kinds = [(e.kind, int(np.argmin(np.abs(t - e.t)))) for e in events]
    assert kinds[0] == ("start", 40)
    below = 45 + int(np.argmax(det.last_scores[45:] < det.params.end_threshold))
    assert ("end", below + 3) in kinds


def test_old_names_still_work_with_a_deprecation_warning(model, tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        old = sl.Detector(model, warmup=25, debounce=4, quiet_time=0.19).params
    assert sorted(str(w.message).split(" is deprecated: use ")[1].split()[0] for w in caught) == [
        "'debounce_steps'",
        "'quiet_s'",
        "'warmup_steps'",
    ]
    assert all(w.filename == __file__ for w in caught)  # points at the caller's line
    assert old == sl.Detector(model, warmup_steps=25, debounce_steps=4, quiet_s=0.19).params
    with pytest.warns(DeprecationWarning, match="quiet_time"):
        calibrated = calibrate(model, sine(600), quiet_time=0.3, quantile=0.99)
    assert calibrated.calibration["quiet_time"] == pytest.approx(0.3)
    # A stored calibration uses the schema's keys: reading it warns of nothing.
    path = save(calibrated, tmp_path / "m.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        sl.Detector(load(path))
        calibrate(load(path), sine(600), quantile=0.99)


def test_calibration_stores_converted_durations(model):
    cal = calibrate(
        model, sine(600), warmup_s=0.3, debounce_steps=2, quiet_steps=5, quantile=0.99
    ).calibration
    assert (cal["warmup"], cal["debounce"]) == (15, 2)
    assert cal["quiet_time"] == pytest.approx(4.5 * 0.02)


def test_bad_durations_get_clear_errors(model):
    with pytest.raises(ConfigError, match="'warmup_steps' and 'warmup_s'"):
        sl.Detector(model, warmup_steps=3, warmup_s=1.0)
    with (
        pytest.raises(ConfigError, match="'warmup' and 'warmup_steps'"),
        pytest.warns(DeprecationWarning),
    ):
        sl.Detector(model, warmup=3, warmup_steps=3)
    with pytest.raises(ConfigError, match="whole number"):
        sl.Detector(model, debounce_steps=2.5)
    with pytest.raises(ConfigError, match=">= 0"):
        sl.Detector(model, quiet_s=-1)
    with pytest.raises(ConfigError, match=r"unknown detector parameter.*quiet_steps"):
        sl.Detector(model, quiet_seconds=1.0)
    no_rate = model.replace(sample_rate=None)
    with pytest.raises(ConfigError, match="sample rate"):
        sl.Detector(no_rate, warmup_s=1.0)
    assert sl.Detector(no_rate, warmup_steps=4).params.warmup == 4  # same unit: no rate needed


def test_a_step_is_a_hop_for_feature_and_window_models():
    base = sl.random_model(6, [4], output_size=6, seed=1).replace(sample_rate=1000.0)
    features = base.replace(
        metadata={"features": {"window": 64, "hop": 16, "stats": ["rms", "std", "kurtosis"]}}
    )
    assert step_seconds(base) == pytest.approx(0.001)
    assert step_seconds(features) == pytest.approx(0.016)
    assert resolve_durations({"warmup_s": 0.16}, step_seconds(features)) == {"warmup": 10}


def test_the_command_takes_durations_with_units_pool_adaptation_balance_and_level_fit(
    model, tmp_path, capsys
):
    source = save(model, tmp_path / "m.npz")
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, sine(800, seed=1), delimiter=",", header="c0,c1", comments="")
    out = tmp_path / "cli.npz"
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
                "--warmup-s",
                "0.2",
                "--debounce-steps",
                "2",
                "--quiet-steps",
                "4",
                "--pool",
                "max",
                "--level",
                "--level-alpha",
                "0.05",
                "--level-balance",
                "--level-fit",
                "cross",
            ]
        )
        == 0
    ), capsys.readouterr().err
    cal = load(out).calibration
    assert (cal["warmup"], cal["debounce"], cal["pool"]) == (10, 2, "max")
    assert (cal["level_alpha"], cal["level_bound"], cal["level_balance"]) == (0.05, 3.0, True)
    assert cal["level_fit"] == "cross"
    assert cal["quiet_time"] == pytest.approx(3.5 * 0.02)
    python = calibrate(
        model,
        sine(800, seed=1),
        warmup_s=0.2,
        debounce_steps=2,
        quiet_steps=4,
        pool="max",
        level=True,
        level_alpha=0.05,
        level_balance=True,
        level_fit="cross",
    ).calibration
    assert cal["threshold"] == pytest.approx(python["threshold"], rel=1e-12)
    # A deprecated flag still works, with a notice on stderr.
    with pytest.warns(DeprecationWarning):
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
                    "--warmup",
                    "10",
                ]
            )
            == 0
        )
    assert "--warmup is deprecated, use --warmup-steps" in capsys.readouterr().err
    assert load(out).calibration["warmup"] == 10
