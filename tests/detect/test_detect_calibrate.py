"""Calibration: statistics it stores, the round trip through the native file, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.detect import calibrate, calibration_scores, compute_features
from streamlstm.errors import ConfigError, ShapeError
from streamlstm.formats import load, save

# Small synthetic sets cannot support the default budget (1 false alarm/day at 50 Hz);
# test_detect_v2.py checks that warning itself.
pytestmark = pytest.mark.filterwarnings("ignore::streamlstm.detect.calibration.CalibrationWarning")


def sine_data(count, width=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(count)[:, None]
    return np.sin(0.2 * t + np.arange(width)) + 0.05 * rng.normal(size=(count, width))


@pytest.fixture(scope="module")
def model():
    return sl.random_model(2, [8], output_size=2, seed=5).replace(sample_rate=50.0)


def test_threshold_is_the_quantile_of_normal_scores_times_the_margin(model):
    data = [sine_data(400, seed=s) for s in range(3)]
    cal = calibrate(model, data, quantile=0.99, margin=2.0, warmup_steps=20).calibration
    scores = np.concatenate(calibration_scores(model.replace(calibration=cal), data))
    assert scores.size == 3 * (400 - 20)  # the first step has no prediction to compare
    assert cal["quantile_score"] == pytest.approx(np.quantile(scores, 0.99))
    assert cal["threshold"] == pytest.approx(2.0 * cal["quantile_score"])
    # Residual scale: the score is about 1 on the calibration data.
    assert 0.5 < float(np.mean(scores)) < 1.5


def test_calibration_survives_the_native_file_and_detects_the_same(model, tmp_path):
    calibrated = calibrate(model, sine_data(500), metric="mahalanobis", warmup_steps=10)
    path = save(calibrated, tmp_path / "m.npz")
    loaded = load(path)
    assert loaded.calibration == calibrated.calibration
    data = sine_data(300, seed=9)
    data[150:] *= 4
    one, two = sl.Detector(calibrated), sl.Detector(loaded)
    times = np.arange(300) / 50
    assert one.update(["s"] * 300, data, times) == two.update(["s"] * 300, data, times)
    np.testing.assert_array_equal(one.last_scores, two.last_scores)


def test_feature_model_calibrates_on_raw_samples(model):
    spec = {"window": 20, "hop": 5, "stats": ["rms", "kurtosis"]}
    feat_model = sl.random_model(4, [6], output_size=4, seed=2).replace(
        metadata={"features": spec}, sample_rate=1000.0
    )
    raw = sine_data(2000, width=2)
    cal = calibrate(feat_model, raw, warmup_steps=5).calibration
    assert len(cal["center"]) == 4
    assert compute_features(raw, spec).shape == ((2000 - 20) // 5 + 1, 4)


def test_calibration_refuses_bad_data(model):
    with pytest.raises(ShapeError, match="every channel is masked"):
        calibrate(model, np.full((100, 2), np.nan))
    with pytest.raises(ShapeError, match="expected shape"):
        calibrate(model, np.zeros((100, 3)))
    with pytest.raises(ShapeError, match="warm-up"):
        calibrate(model, sine_data(30), warmup_steps=50)
    with pytest.raises(ConfigError, match="metric"):
        calibrate(model, sine_data(300), metric="euclid")


def test_calibrate_command(model, tmp_path, capsys):
    source = save(model, tmp_path / "raw.npz")
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, sine_data(600), delimiter=",", header="a,b", comments="")
    out = tmp_path / "cal.npz"
    code = main(
        [
            "calibrate",
            "--model",
            str(source),
            "--data",
            str(csv),
            "--out",
            str(out),
            "--margin",
            "2",
            "--warmup-steps",
            "10",
            "--metric",
            "mahalanobis",
        ]
    )
    assert code == 0, capsys.readouterr().err
    cal = load(out).calibration
    assert cal["margin"] == 2 and cal["warmup"] == 10 and cal["metric"] == "mahalanobis"
    assert "threshold" in capsys.readouterr().out
    # Recalibrating keeps the stored alert parameters unless told otherwise.
    again = tmp_path / "again.npz"
    assert main(["calibrate", "--model", str(out), "--data", str(csv), "--out", str(again)]) == 0
    assert load(again).calibration["warmup"] == 10
    assert "level_center" not in load(again).calibration
    # --level adds the level term; a later recalibration keeps it unless --no-level.
    level = tmp_path / "level.npz"
    assert (
        main(["calibrate", "--model", str(out), "--data", str(csv), "--out", str(level), "--level"])
        == 0
    )
    assert len(load(level).calibration["level_center"]) == 2
    assert main(["calibrate", "--model", str(level), "--data", str(csv), "--out", str(again)]) == 0
    assert "level_center" in load(again).calibration
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(level),
                "--data",
                str(csv),
                "--out",
                str(again),
                "--no-level",
            ]
        )
        == 0
    )
    assert "level_center" not in load(again).calibration


def test_calibrate_command_reports_bad_input(model, tmp_path, capsys):
    source = save(model, tmp_path / "raw.npz")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,nan\n")
    code = main(
        ["calibrate", "--model", str(source), "--data", str(bad), "--out", str(tmp_path / "x.npz")]
    )
    assert code == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_calibrate_command_hints_at_columns_for_a_wider_csv(model, tmp_path, capsys):
    """A CSV with more columns than the model's inputs names them and points at --columns;
    with --columns the same file calibrates."""
    source = save(model, tmp_path / "raw.npz")
    csv = tmp_path / "wide.csv"
    data = np.column_stack([np.arange(600.0), sine_data(600), np.zeros((600, 5))])
    names = ["t", "a", "b", "p", "q", "r", "s", "u"]
    np.savetxt(csv, data, delimiter=",", header=",".join(names), comments="")
    out = tmp_path / "cal.npz"
    assert main(["calibrate", "--model", str(source), "--data", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has 8 columns (t, a, b, p, q, r, s, u)" in err and "--columns" in err
    assert not out.exists()
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
                "--columns",
                "a,b",
                "--warmup-steps",
                "10",
            ]
        )
        == 0
    ), capsys.readouterr().err
