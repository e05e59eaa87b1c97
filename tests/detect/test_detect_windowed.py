"""Detection with window models: class alerts from classifiers, calibrated reconstruction
scores from autoencoders, snapshots, and the alert record's optional label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from window_models import autoencoder, channel_classifier, fault_sequence

import streamlstm as sl
from streamlstm.detect import Detector, WindowDetector, calibrate_reconstruction
from streamlstm.detect.calibration_record import Calibration
from streamlstm.detect.events import EVICTED, RESET
from streamlstm.errors import ConfigError, ShapeError
from streamlstm.model import Model
from streamlstm.sinks import alert_record
from streamlstm.window_spec import WindowSpec
from streamlstm.windows import evaluate_windows

RATE = 100.0


def summary(events):
    return [(e.sensor, e.kind, e.label, round(e.t, 6)) for e in events]


EXPECTED = [
    ("a", "start", "inner", 0.47),
    ("a", "end", "inner", 0.87),
    ("a", "start", "ball", 0.87),
    ("a", "end", "ball", 1.27),
]


@pytest.mark.parametrize("output", ["probabilities", "log_probabilities", "last"])
def test_a_class_that_holds_for_n_windows_starts_an_alert_carrying_its_label(output):
    # Windows end at samples 7 + 4j; inner holds from the window ending at 43, the second
    # in a row ends at 47: the alert starts there; ball takes over at 87, normal at 127.
    x = fault_sequence(np.random.default_rng(0))
    det = WindowDetector(channel_classifier(output=output), min_probability=0.9, consecutive=2)
    events = det.update(["a"] * len(x), x, np.arange(len(x)) / RATE)
    assert summary(events) == EXPECTED
    start, end = events[0], events[1]
    assert start.threshold == end.threshold == 0.9
    assert start.score > 0.999 and start.duration == 0.0
    assert end.duration == pytest.approx(0.4) and end.peak >= start.score
    assert end.score < 0.01  # inner's probability in the window that ended it
    assert not det.alerting("a") and det.label("a") is None
    assert np.count_nonzero(np.isfinite(det.last_scores)) == (160 - 8) // 4 + 1


def test_class_alerts_do_not_depend_on_how_sensors_are_interleaved_in_micro_batches():
    rng = np.random.default_rng(1)
    sensors = {name: fault_sequence(rng) for name in ("a", "b", "c")}
    order = np.repeat(np.arange(3), 160)
    rng.shuffle(order)
    names = np.array(list(sensors))[order]
    position = {name: 0 for name in sensors}
    samples = []
    for name in names:
        samples.append(sensors[name][position[name]])
        position[name] += 1
    samples = np.array(samples)
    index = {name: np.cumsum(names == name) - 1 for name in sensors}
    times = np.array([index[n][i] for i, n in enumerate(names)]) / RATE
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    events = []
    for cut in np.array_split(np.arange(len(names)), 17):
        events += det.update(list(names[cut]), samples[cut], times[cut])
    assert sorted(summary(events)) == sorted(
        (s, k, label, t) for name in sensors for (_, k, label, t) in EXPECTED for s in [name]
    )


def test_evicting_a_sensor_ends_its_open_class_alert_with_its_class():
    x = fault_sequence(np.random.default_rng(0))
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    t = np.arange(len(x)) / RATE
    det.update(["a"] * 60, x[:60], t[:60])  # inside the inner fault: its alert is open
    det.update(["b"] * 20, x[:20], t[:20])
    assert det.alerting("a") and det.label("a") == "inner" and not det.alerting("b")
    score = det.score("a")
    got = det.evict(["a", "b", "unknown"], t=[0.6, 0.2, 0.0])
    assert summary(got) == [("a", "end", "inner", 0.6)]
    assert got[0].reason == EVICTED and got[0].score == score
    assert got[0].duration == pytest.approx(0.6 - 0.47) and got[0].threshold == 0.9
    assert det.sensors == []
    assert alert_record(got[0], seq=1, daemon="d", model_id="m", model_sha="0", published=0.0)[
        "reason"
    ] == ("evicted")


def test_forget_and_reset_end_an_open_class_alert_with_its_class():
    x = fault_sequence(np.random.default_rng(0))
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    t = np.arange(len(x)) / RATE
    for name in ("a", "b", "c"):
        det.update([name] * 60, x[:60], t[:60])  # inside the inner fault: alerts open
    [end] = det.reset("a", t=0.6)
    assert summary([end]) == [("a", "end", "inner", 0.6)] and end.reason == RESET
    assert not det.alerting("a") and np.isnan(det.score("a")) and det.reset("a") == []
    [end] = det.forget("b", t=0.7)
    assert summary([end]) == [("b", "end", "inner", 0.7)] and end.reason == EVICTED
    assert det.sensors == ["a", "c"]
    [end] = det.reset()
    assert end.sensor == "c" and end.reason == RESET and np.isnan(end.t)
    assert not det.alerting("c")


def test_an_alert_holds_while_its_class_stays_the_most_probable_below_min_probability():
    # Inner holds at about 0.95, then alternates between 0.95 and 0.85 window by window
    # (the last sample of each window decides): one alert, not a flicker at each dip.
    x = np.zeros((160, 3))
    x[40:60, 1] = 0.23
    x[60:120, 1] = np.where((np.arange(60, 120) // 4) % 2 == 0, 0.23, 0.157)
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=1)
    events = det.update(["a"] * 160, x, np.arange(160) / RATE)
    assert [(e.kind, e.label) for e in events] == [("start", "inner"), ("end", "inner")]
    scores = det.last_scores[np.isfinite(det.last_scores)]
    assert scores.min() < 0.9 < scores.max()


def test_prime_advances_the_windows_without_alerting_and_a_nan_sample_skips_its_windows():
    x = fault_sequence(np.random.default_rng(2))
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    det.prime(["a"] * 60, x[:60], np.arange(60) / RATE)
    assert not det.alerting("a") and det.score("a") > 0.999  # inner holds, not alerted
    # The next inner window makes a third in a row: now it alerts.
    events = det.update(["a"] * 4, x[60:64], np.arange(60, 64) / RATE)
    assert summary(events) == [("a", "start", "inner", 0.63)]
    y = x[64:].copy()
    y[3] = np.nan  # sample 67: windows ending at 67 and 71 are skipped
    times = np.arange(64, 160) / RATE
    times[10] = np.inf  # sample 74 rejected by its timestamp: 75, 79 skipped
    det.update(["a"] * len(y), y, times)
    assert det.last_status[3] == 1 and det.last_status[10] == 1
    assert det.last_status.sum() == 2 and det.rejected("a") == 2
    assert det.bank.skipped("a") == 4


def test_a_snapshot_restores_windows_and_alerts_bit_for_bit():
    x = fault_sequence(np.random.default_rng(3))
    times = np.arange(len(x)) / RATE
    whole = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    expected = whole.update(["a"] * 160, x, times)
    first = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    events = first.update(["a"] * 85, x[:85], times[:85])  # mid-alert, mid-window
    state = first.export_state()
    second = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    second.update(["other"], x[:1], times[:1])
    second.import_state(state)
    events += second.update(["a"] * 75, x[85:], times[85:])
    assert summary(events) == summary(expected)
    assert second.sensors == ["other", "a"]
    bad = dataclasses.replace(state, istate=state.istate * 0 + 7)
    with pytest.raises(ShapeError, match="class index out of range"):
        second.import_state(bad)
    with pytest.raises(ShapeError, match="unsupported kind"):
        second.import_state(Detector(calibrated_predictor()).export_state())


def calibrated_predictor() -> Model:
    from streamlstm.detect import calibrate

    rng = np.random.default_rng(0)
    return calibrate(
        sl.random_model(3, [4], output_size=3),
        rng.normal(size=(400, 3)),
        quantile=0.99,
        warmup_steps=5,
    )


def test_window_models_are_refused_where_they_do_not_fit():
    with pytest.raises(ShapeError, match="WindowDetector"):
        Detector(channel_classifier())
    with pytest.raises(ConfigError, match="'outer' is not one of the model's classes"):
        WindowDetector(channel_classifier(), normal_class="outer")
    with pytest.raises(ConfigError, match="min_probability must be in"):
        WindowDetector(channel_classifier(), min_probability=1.5)
    with pytest.raises(ConfigError, match="unknown option"):
        WindowDetector(channel_classifier(), threshold=3.0)
    with pytest.raises(ConfigError, match="regression head"):
        WindowDetector(
            channel_classifier().replace(
                metadata={"window": {"length": 8, "hop": 4, "output": "last"}}
            )
        )
    with pytest.raises(ConfigError, match="calibrate_reconstruction"):
        WindowDetector(autoencoder())
    with pytest.raises(ConfigError, match="only for window classifiers"):
        WindowDetector(autoencoder(), consecutive=2)


def test_the_normal_class_defaults_to_normal_else_the_first_and_may_be_named():
    det = WindowDetector(channel_classifier())
    assert det.class_params.normal_class == "normal"
    renamed = channel_classifier().replace(
        metadata={
            "window": WindowSpec(8, 4, "probabilities", ("ok", "inner", "ball")).to_metadata()
        }
    )
    assert WindowDetector(renamed).class_params.normal_class == "ok"
    # "inner" as the normal class: channel 0 and 2 windows are the anomalies now.
    x = fault_sequence(np.random.default_rng(4))
    det = WindowDetector(
        channel_classifier(), normal_class="inner", min_probability=0.9, consecutive=2
    )
    labels = [e.label for e in det.update(["a"] * 160, x, np.arange(160) / RATE)]
    assert labels == ["ball", "ball"]  # plain normal never reaches p >= 0.9


# -- autoencoders ---------------------------------------------------------------------------


def test_reconstruction_scores_are_the_whitened_error_of_each_window_on_the_residual_scale():
    rng = np.random.default_rng(5)
    normal = rng.normal(size=(4000, 2))
    model = calibrate_reconstruction(
        autoencoder(), normal, quantile=0.99, warmup_steps=3, alpha=1.0
    )
    cal = model.calibration
    assert cal["score"] == "reconstruction" and cal["scores"] == (4000 - 16) // 4 + 1 - 3
    assert 0.5 < cal["baseline"] < 1.5  # the residual scale: about 1 when normal
    det = WindowDetector(model)
    x = rng.normal(size=(200, 2))
    det.update(["s"] * 200, x, np.arange(200) / RATE)
    ends = np.arange(15, 200, 4)
    windows = np.stack([x[e - 15 : e + 1] for e in ends])
    recon = evaluate_windows(model, windows)
    z = (windows - recon - np.array(cal["center"])) @ np.array(cal["whiten"]).T
    reference = np.sqrt(np.mean(z**2, axis=(1, 2)))
    np.testing.assert_allclose(det.last_scores[ends], reference, rtol=1e-9)
    assert np.isnan(np.delete(det.last_scores, ends)).all()


def test_an_autoencoder_alerts_on_a_burst_and_the_alert_ends_after_it():
    rng = np.random.default_rng(6)
    model = calibrate_reconstruction(
        autoencoder(),
        rng.normal(size=(4000, 2)),
        quantile=0.999,
        warmup_steps=3,
        debounce_steps=2,
        quiet_s=0.0,
    )
    det = WindowDetector(model)
    x = rng.normal(size=(600, 2))
    x[300:340] *= 30
    events = det.update(["s"] * 600, x, np.arange(600) / RATE)
    kinds = [(e.kind, e.label) for e in events]
    assert kinds == [("start", None), ("end", None)]
    assert 3.0 <= events[0].t <= 3.5 and events[1].t > events[0].t
    assert events[0].threshold == pytest.approx(model.calibration["threshold"])
    assert events[1].threshold < events[0].threshold


def test_an_autoencoders_parameters_pass_as_one_object_and_a_classifier_refuses_them():
    rng = np.random.default_rng(6)
    model = calibrate_reconstruction(autoencoder(), rng.normal(size=(4000, 2)), quantile=0.999)
    tuned = WindowDetector(model, warmup_steps=3, debounce_steps=2, quiet_s=0.0)
    twin = WindowDetector(model, params=tuned.params)
    assert twin.params == tuned.params != WindowDetector(model).params
    x = rng.normal(size=(600, 2))
    x[300:340] *= 30
    events = tuned.update(["s"] * 600, x, np.arange(600) / RATE)
    assert events and twin.update(["s"] * 600, x, np.arange(600) / RATE) == events
    with pytest.raises(ConfigError, match=r"params \(DetectorParams\) are for autoencoders"):
        WindowDetector(channel_classifier(), params=tuned.params)


def test_a_masked_channel_is_fed_its_normal_fill_and_never_scored():
    rng = np.random.default_rng(7)
    normal = rng.normal(size=(2000, 2))
    normal[:, 1] = 5.0  # constant: masked at calibration
    model = calibrate_reconstruction(autoencoder(), normal, quantile=0.99, warmup_steps=3)
    assert model.calibration["mask"] == [1.0, 0.0]
    det = WindowDetector(model)
    x = rng.normal(size=(100, 2))
    x[:, 1] = np.nan  # dead live: filled, not rejected
    det.update(["s"] * 100, x, np.arange(100) / RATE)
    assert det.rejected("s") == 0 and np.isfinite(det.score("s"))


def test_the_alert_record_carries_the_label_only_for_class_alerts():
    x = fault_sequence(np.random.default_rng(8))
    det = WindowDetector(channel_classifier(), min_probability=0.9, consecutive=2)
    event = det.update(["a"] * 160, x, np.arange(160) / RATE)[0]
    record = alert_record(event, seq=1, daemon="d", model_id="m", model_sha="x", published=0.0)
    assert record["label"] == "inner" and record["kind"] == "start"
    plain = alert_record(
        event.__class__(**{**event.as_dict(), "label": None}),
        seq=2,
        daemon="d",
        model_id="m",
        model_sha="x",
        published=0.0,
    )
    assert "label" not in plain


def test_the_calibrate_command_calibrates_a_window_autoencoder_as_the_python_api_does(
    tmp_path, capsys
):
    from streamlstm.cli import main

    rng = np.random.default_rng(8)
    normal = rng.normal(size=(3000, 2))
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, normal, delimiter=",", header="a,b", comments="")
    source = sl.save(autoencoder(), tmp_path / "ae.npz")
    out = tmp_path / "calibrated.npz"
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
                "--warmup",
                "3",
                "--alpha",
                "0.5",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "window reconstruction scores" in printed
    cal = sl.load(out).calibration
    expected = calibrate_reconstruction(
        autoencoder(), normal, quantile=0.99, warmup=3, alpha=0.5
    ).calibration
    assert cal["score"] == "reconstruction"
    assert cal["threshold"] == pytest.approx(expected["threshold"], rel=1e-12)
    assert cal["scores"] == expected["scores"] == (3000 - 16) // 4 + 1 - 3
    assert WindowDetector(sl.load(out)).params.alpha == 0.5
    # Recalibrating keeps the stored options unless told otherwise, as for predictors.
    again = tmp_path / "again.npz"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(out),
                "--data",
                str(csv),
                "--out",
                str(again),
                "--margin",
                "2",
            ]
        )
        == 0
    )
    cal = sl.load(again).calibration
    assert (cal["alpha"], cal["warmup"], cal["quantile"], cal["margin"]) == (0.5, 3, 0.99, 2.0)
    # Predictor-only options and window classifiers are refused with the reason.
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(source),
                "--data",
                str(csv),
                "--out",
                str(tmp_path / "x.npz"),
                "--score",
                "direct",
                "--level",
            ]
        )
        == 2
    )
    assert (
        "--score, --level: only for next-step predictors; model 'random' is a window autoencoder"
    ) in capsys.readouterr().err
    classifier = sl.save(channel_classifier(), tmp_path / "classifier.npz")
    three = tmp_path / "three.csv"
    np.savetxt(three, rng.normal(size=(100, 3)), delimiter=",")
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(classifier),
                "--data",
                str(three),
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )
    assert "is a window classifier" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_the_calibrate_command_help_describes_window_autoencoders(capsys):
    from streamlstm.cli import main

    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A window autoencoder (a window model with output 'every') is scored once per" in text
    assert "(windows, for a window autoencoder)" in text
    assert "(default: the model's calibration, else 50 steps)" in text


def test_a_reconstruction_calibration_reads_into_a_record_and_back_unchanged():
    rng = np.random.default_rng(9)
    normal = rng.normal(size=(2000, 2))
    normal[:, 1] = 5.0  # constant: masked at calibration
    models = [
        calibrate_reconstruction(autoencoder(), normal, quantile=0.99, warmup_steps=3),
        calibrate_reconstruction(
            autoencoder(1).replace(sample_rate=RATE),
            rng.normal(size=(2000, 2)),
            metric="mahalanobis",
            quantile=0.95,
            warmup_steps=3,
        ),
    ]
    for model in models:
        record = Calibration.from_model(model)
        assert record.score == "reconstruction" and record.pool is None
        assert record.to_dict() == model.calibration
        assert WindowDetector(model).calibration.to_dict() == model.calibration
    # The kind is checked on the parsed record: a predictor's calibration is refused.
    residual = dict(models[0].calibration, score="residual")
    with pytest.raises(ConfigError, match="without a reconstruction calibration"):
        WindowDetector(models[0].replace(calibration=residual))
    with pytest.raises(ConfigError, match=r"unsupported version 7"):
        WindowDetector(models[0].replace(calibration=dict(models[0].calibration, version=7)))
