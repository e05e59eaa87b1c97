"""Detector: alert state machine, fused kernel vs the slow reference, NaN safety, snapshots."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from detect_reference import ReferenceDetector

import streamlstm as sl
from streamlstm.detect import _kernel as K
from streamlstm.detect import calibrate
from streamlstm.detect import params as P
from streamlstm.detect.calibration_record import BASE_VERSION, SCHEMA_VERSION, Calibration
from streamlstm.detect.events import EVICTED, RESET
from streamlstm.detect.state import DetectorState
from streamlstm.errors import ConfigError, ShapeError
from streamlstm.model import Normalization

# Small synthetic sets cannot support the default budget (1 false alarm/day at 50 Hz);
# test_detect_v2.py checks that warning itself.
pytestmark = pytest.mark.filterwarnings("ignore::streamlstm.detect.calibration.CalibrationWarning")


# -- the alert state machine on constructed score sequences --------------------------------
def run_machine(
    scores, times=None, *, threshold=1.0, hysteresis=0.5, debounce=3, quiet_time=0.0, warmup=0
):
    """Drive the compiled state machine with a score sequence; return (kind, t, peak, dur)."""
    params = DetectorParams = P.DetectorParams(
        threshold=threshold,
        hysteresis=hysteresis,
        debounce=debounce,
        quiet_time=quiet_time,
        warmup=warmup,
    )
    del DetectorParams
    scoring = P.Scoring(True, np.zeros(0), np.zeros((0, 0)), 0)
    dparams = P.pack_params(params, scoring)
    ist = np.zeros(K.N_INT, np.int64)
    fst = np.full(K.N_FLOAT, np.nan)
    times = np.arange(len(scores), dtype=float) if times is None else np.asarray(times, float)
    kind, peak, dur = np.zeros(1, np.int8), np.zeros(1), np.zeros(1)
    events = []
    for score, t in zip(scores, times, strict=True):
        ist[K.I_STEPS] += 1
        kind[0] = 0
        K._alert_machine(dparams, ist, fst, float(score), float(t), 0, kind, peak, dur)
        if kind[0]:
            events.append(("start" if kind[0] == K.EVENT_START else "end", t, peak[0], dur[0]))
    return events


def test_debounce_needs_k_consecutive_samples_above():
    assert run_machine([2, 2, 0, 2, 2, 0, 2, 2]) == []
    assert run_machine([2, 2, 0, 2, 2, 2]) == [("start", 5.0, 2.0, 0.0)]
    assert run_machine([5, 5, 5], debounce=1)[0][:2] == ("start", 0.0)


def test_hysteresis_keeps_the_alert_open_between_end_and_start_thresholds():
    # Threshold 1, end threshold 0.5: 0.7 neither starts nor ends an alert.
    events = run_machine([2, 2, 2, 0.7, 0.7, 3, 0.7, 0.4, 0.7])
    assert events == [("start", 2.0, 2.0, 0.0), ("end", 7.0, 3.0, 5.0)]
    assert run_machine([0.7] * 10) == []


def test_quiet_time_must_pass_below_the_end_threshold_before_the_alert_ends():
    times = np.arange(12) * 0.5
    scores = [2, 2, 2, 0.1, 0.1, 2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    events = run_machine(scores, times, quiet_time=1.5)
    # The dip at t=1.5..2.0 is shorter than 1.5 s; the one from t=3.0 ends it at t=4.5.
    assert events == [("start", 1.0, 2.0, 0.0), ("end", 4.5, 2.0, 3.5)]


def test_warmup_raises_nothing_and_debounce_restarts_after_it():
    assert run_machine([9] * 5, warmup=5) == []
    events = run_machine([9] * 8, warmup=5)  # steps 6, 7, 8 count: third one starts
    assert events == [("start", 7.0, 9.0, 0.0)]


# -- models for the fused path ---------------------------------------------------------------
def predictor(width=3, hidden=(8,), seed=1, dtype=np.float64, norms=True):
    model = sl.random_model(width, list(hidden), output_size=width, seed=seed, dtype=dtype).replace(
        sample_rate=50.0
    )
    if norms:
        rng = np.random.default_rng(seed)
        model = model.replace(
            input_norm=Normalization(
                rng.normal(0, 1, width).astype(dtype), rng.uniform(0.5, 3, width).astype(dtype)
            ),
            output_norm=Normalization(
                rng.normal(0, 1, width).astype(dtype), rng.uniform(0.5, 3, width).astype(dtype)
            ),
        )
    return model


def normal_data(count, width, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(count)[:, None]
    return np.sin(0.3 * t + np.arange(width)) + 0.1 * rng.normal(size=(count, width))


def interleaved_batch(sensors, count, width, *, seed=2, nan_every=0, burst=None):
    """Samples of several sensors in arrival order, optionally with NaNs and a fault burst."""
    data = normal_data(count * len(sensors), width, seed).reshape(count, len(sensors), width)
    if burst is not None:
        data[burst, 0] += 6.0
    ids = [s for _ in range(count) for s in sensors]
    samples = data.reshape(-1, width)
    times = np.repeat(np.arange(count) * 0.02, len(sensors))
    if nan_every:
        samples[nan_every :: nan_every * 7 + 1] = np.nan
    return ids, samples, times


CASES = {
    "diagonal": dict(metric="diagonal"),
    "mahalanobis": dict(metric="mahalanobis"),
}


@pytest.fixture(scope="module")
def calibrated():
    model = predictor()
    return {
        name: calibrate(model, normal_data(600, 3), warmup_steps=10, quiet_s=0.1, **kw)
        for name, kw in CASES.items()
    }


def compare(model, ids, samples, times, batches, threads=1, **overrides):
    det = sl.Detector(model, threads=threads, **overrides)
    ref = ReferenceDetector(model, **overrides)
    fast_scores, fast_events = [], []
    for part in np.array_split(np.arange(len(ids)), batches):
        batch_ids = [ids[i] for i in part]
        fast_events += [
            (e.sensor, e.kind, e.t, e.peak, e.duration)
            for e in det.update(batch_ids, samples[part], times[part])
        ]
        fast_scores.append(det.last_scores)
    ref_scores, ref_events = ref.update(ids, samples, times)
    fast_scores = np.concatenate(fast_scores)
    np.testing.assert_array_equal(np.isnan(fast_scores), np.isnan(ref_scores))
    ok = ~np.isnan(ref_scores)
    np.testing.assert_allclose(fast_scores[ok], ref_scores[ok], rtol=1e-9, atol=1e-12)
    assert [e[:3] for e in fast_events] == [e[:3] for e in ref_events]
    np.testing.assert_allclose(
        [e[3:] for e in fast_events], [e[3:] for e in ref_events], rtol=1e-9, atol=1e-12
    )
    for sensor, state in ref.sensors.items():
        assert det.rejected(sensor) == state["rejected"]
    return fast_events


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threads,batches", [(1, 7), (2, 2)])
def test_fused_path_equals_reference(calibrated, case, threads, batches):
    ids, samples, times = interleaved_batch(
        ["a", 7, "c"], 400, 3, nan_every=13, burst=slice(150, 260)
    )
    events = compare(calibrated[case], ids, samples, times, batches, threads=threads)
    assert any(e[1] == "start" and e[0] == "a" for e in events)  # the burst is caught


def test_fused_path_equals_reference_with_overrides(calibrated):
    ids, samples, times = interleaved_batch(["x", "y"], 300, 3, burst=slice(100, 200))
    compare(
        calibrated["diagonal"],
        ids,
        samples,
        times,
        3,
        margin=0.8,
        alpha=0.3,
        debounce_steps=2,
        hysteresis=0.9,
        quiet_s=0.0,
        warmup_steps=3,
    )


def test_fused_path_equals_reference_for_a_direct_score_model():
    model = sl.random_model(2, [6], output_size=1, seed=4, dtype=np.float64)
    model = model.replace(sample_rate=50.0)
    model = calibrate(
        model,
        normal_data(300, 2),
        score="direct",
        warmup_steps=5,
        quantile=0.9,
        margin=1.0,
        quiet_s=0.0,
    )
    ids, samples, times = interleaved_batch(["p", "q"], 200, 2, nan_every=11, burst=slice(50, 120))
    compare(model, ids, samples, times, 4)


def test_fused_path_equals_reference_with_the_feature_front_end():
    spec = {
        "window": 16,
        "hop": 4,
        "stats": ["rms", "peak", "crest", "kurtosis", "log_rms", "log_std", "acf1", "corr_next"],
    }
    model = predictor(width=2 * 8, seed=3, norms=False).replace(metadata={"features": spec})
    model = calibrate(
        model, [normal_data(800, 2, seed=s) for s in range(3)], warmup_steps=4, quiet_s=0.0
    )
    ids, samples, times = interleaved_batch(["u", "v"], 500, 2, nan_every=17, burst=slice(250, 400))
    compare(model, ids, samples, times, 5)


# -- NaN safety, snapshots, sensors ------------------------------------------------------------
def test_nan_sample_neither_alerts_nor_touches_state(calibrated):
    det = sl.Detector(calibrated["diagonal"], warmup_steps=0, debounce_steps=1)
    det.update(["s"] * 50, normal_data(50, 3), np.arange(50) * 0.02)
    before = det.export_state()
    # No usable channel, an infinite value, or no usable timestamp: rejected whole.
    bad = np.array([[np.nan, np.nan, np.nan], [np.inf, 0.0, 0.0], [1e3, 0, 0]])
    events = det.update(["s"] * 3, bad, [1.0, 1.02, np.nan])
    assert events == []
    assert np.isnan(det.last_scores).all()
    assert list(det.last_status) == [sl.kernels.REJECTED_SAMPLE] * 3
    after = det.export_state()
    for name in ("states", "fstate", "preds", "rings"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
    assert det.rejected("s") == 3 and det.filled("s") == 0
    # Only the "prediction on file" is dropped: the next good sample is stepped unscored.
    assert after.istate[0, K.I_HAS_PRED] == 0
    det.update(["s"], normal_data(1, 3), [1.1])
    assert np.isfinite(det.last_scores).all() and not det.alerting("s")


def test_a_missing_channel_is_filled_counted_and_left_out_of_the_score(calibrated):
    det = sl.Detector(calibrated["diagonal"], warmup_steps=0)
    data = normal_data(60, 3)
    data[30:40, 1] = np.nan
    det.update(["s"] * 60, data, np.arange(60) * 0.02)
    assert det.filled("s") == 10 and det.rejected("s") == 0
    assert np.all(np.isfinite(det.last_scores[1:]))
    assert np.all(np.isfinite(det.export_state().states))


def test_snapshot_round_trip_is_bit_exact(calibrated):
    model = calibrated["mahalanobis"]
    ids, samples, times = interleaved_batch(["a", "b", "c"], 300, 3, burst=slice(100, 250))
    first, second = slice(0, 240), slice(240, None)  # the burst starts in the second part
    one = sl.Detector(model)
    one.update(ids[first], samples[first], times[first])
    snapshot = one.export_state()
    # Through JSON and back, as a daemon may store it.
    text = json.dumps(
        {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in snapshot.to_tree().items()
        },
        allow_nan=True,
    )
    two = sl.Detector(model)
    two.import_state(DetectorState.from_tree(json.loads(text)))
    for name in ("states", "istate", "fstate", "preds", "rings", "rejected"):
        np.testing.assert_array_equal(getattr(two.export_state(), name), getattr(snapshot, name))
    events_one = one.update(ids[second], samples[second], times[second])
    events_two = two.update(ids[second], samples[second], times[second])
    assert events_one == events_two and events_one
    np.testing.assert_array_equal(one.last_scores, two.last_scores)


def test_snapshot_from_another_model_is_refused(calibrated):
    det = sl.Detector(calibrated["diagonal"])
    det.update(["a"], normal_data(1, 3), [0.0])
    snapshot = dataclasses.replace(det.export_state(), preds=np.zeros((1, 5)))
    with pytest.raises(ShapeError, match="preds"):
        sl.Detector(calibrated["diagonal"]).import_state(snapshot)


def test_sensors_forget_reset_and_growth(calibrated):
    det = sl.Detector(calibrated["diagonal"], capacity=2)
    ids = [f"s{i}" for i in range(5)]
    det.update(ids, normal_data(5, 3), np.zeros(5))
    assert det.sensors == ids and det.bank.capacity >= 5
    det.forget("s1")
    assert "s1" not in det.sensors
    det.update(["new"], normal_data(1, 3), [0.0])  # reuses s1's row, from a fresh state
    assert np.isnan(det.last_scores[0])
    det.reset("s0")
    assert np.isnan(det.score("s0"))


def test_evicting_a_sensor_ends_its_open_alert_with_reason_evicted(calibrated):
    det = sl.Detector(calibrated["diagonal"], warmup_steps=0, debounce_steps=1, quiet_s=10.0)
    ids, samples, times = interleaved_batch(["a", "b"], 200, 3, burst=slice(150, 200))
    events = det.update(ids, samples, times)
    starts = [e for e in events if e.kind == "start"]
    assert [e.sensor for e in starts] == ["a"] and det.alerting("a") and not det.alerting("b")
    score, start = det.score("a"), starts[0]
    got = det.evict(["b", "unknown", "a"], t=[5.0, 6.0, 7.5])
    assert det.sensors == []
    assert len(got) == 1
    end = got[0]
    assert (end.sensor, end.kind, end.reason, end.t) == ("a", "end", EVICTED, 7.5)
    assert end.score == score and end.duration == 7.5 - start.t
    assert end.peak >= start.score and end.threshold == det.params.end_threshold
    assert end.model_id == start.model_id and start.reason is None
    # Without times the end is at NaN; a time per sensor is required when given.
    det.update(ids, samples, times)
    assert [np.isnan(e.t) for e in det.evict(["a", "b"])] == [True]
    with pytest.raises(ShapeError, match="1 times for 2 sensors"):
        det.evict(["a", "b"], t=[1.0])


def test_forget_and_reset_end_open_alerts_with_their_reasons(calibrated):
    # Before, both dropped an open alert without an end: a subscriber kept it open for ever.
    det = sl.Detector(calibrated["diagonal"], warmup_steps=0, debounce_steps=1, quiet_s=10.0)
    ids, samples, times = interleaved_batch(["a", "b", "c"], 200, 3, burst=slice(150, 200))
    det.update(ids, samples, times)
    assert det.alerting("a") and not det.alerting("b")
    assert det.forget("b", t=9.0) == []  # no open alert, no event
    score = det.score("a")
    [end] = det.forget("a", t=9.0)
    assert (end.sensor, end.kind, end.reason, end.t, end.score) == ("a", "end", EVICTED, 9.0, score)
    assert det.sensors == ["c"]
    with pytest.raises(KeyError):
        det.forget("a")
    # reset(sensor) ends that sensor's alert; reset() every open one; both warm up again.
    det.update(ids, samples, times)
    assert det.alerting("a") and not det.alerting("b") and not det.alerting("c")
    [end] = det.reset("a", t=12.5)
    assert (end.sensor, end.reason, end.t) == ("a", RESET, 12.5) and not det.alerting("a")
    assert np.isnan(det.score("a")) and det.reset("a") == []
    det.update(ids, samples, times + 20.0)
    assert det.alerting("a")
    [end] = det.reset()
    assert (end.sensor, end.reason) == ("a", RESET) and np.isnan(end.t)
    assert sorted(det.sensors) == ["a", "b", "c"] and not any(map(det.alerting, "abc"))


def test_parameters_come_from_calibration_and_can_be_overridden(calibrated):
    model = calibrated["diagonal"]
    cal = model.calibration
    det = sl.Detector(model, margin=2.0, debounce_steps=5)
    assert det.params.threshold == pytest.approx(cal["quantile_score"] * 2.0)
    assert det.params.debounce == 5 and det.params.alpha == cal["alpha"]
    # Alerts end part-way between the normal (median) score and the threshold.
    assert 0.5 < cal["baseline"] < cal["threshold"]
    assert sl.Detector(model, threshold=3.0).params.end_threshold == pytest.approx(
        cal["baseline"] + cal["hysteresis"] * (3.0 - cal["baseline"])
    )
    with pytest.raises(ConfigError, match="unknown detector parameter"):
        sl.Detector(model, treshold=1.0)
    with pytest.raises(ConfigError, match="hysteresis"):
        sl.Detector(model, hysteresis=1.5)
    with pytest.raises(ConfigError, match="no calibration"):
        sl.Detector(predictor())


def test_a_detector_takes_all_its_parameters_as_one_object(calibrated):
    model = calibrated["diagonal"]
    tuned = sl.Detector(model, margin=2.0, debounce_steps=5, warmup_steps=3)
    twin = sl.Detector(model, params=tuned.params)
    assert twin.params == tuned.params != sl.Detector(model).params
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3, burst=slice(100, 200))
    events = tuned.update(ids, samples, times)
    assert events and twin.update(ids, samples, times) == events
    np.testing.assert_array_equal(twin.last_scores, tuned.last_scores)
    # Every parameter comes from the object, none from the calibration; keyword
    # overrides then change single ones, margin still against the calibrated quantile.
    custom = P.DetectorParams(threshold=4.0, alpha=0.5, debounce=1, warmup=0, quiet_time=0.0)
    assert sl.Detector(model, params=custom).params == custom
    stacked = sl.Detector(model, params=custom, debounce_steps=2, margin=3.0).params
    expected_threshold = model.calibration["quantile_score"] * 3.0
    assert stacked == dataclasses.replace(custom, debounce=2, threshold=expected_threshold)
    with pytest.raises(ConfigError, match="params must be a DetectorParams, got dict"):
        sl.Detector(model, params={"threshold": 1.0})


def test_bad_batches_get_clear_errors(calibrated):
    det = sl.Detector(calibrated["diagonal"])
    with pytest.raises(ShapeError, match="samples"):
        det.update(["a"], [[1.0, 2.0]], [0.0])
    with pytest.raises(ShapeError, match="timestamps"):
        det.update(["a", "a"], normal_data(2, 3), [0.0])
    with pytest.raises(ShapeError, match="sensor_ids"):
        det.update(["a"], normal_data(2, 3), [0.0, 1.0])
    assert det.sensors == []


def test_fused_path_equals_reference_with_a_level_term():
    spec = {"window": 12, "hop": 3, "stats": ["log_std", "acf1", "corr_next"]}
    model = predictor(width=2 * 3, seed=5, norms=False).replace(metadata={"features": spec})
    model = calibrate(
        model,
        [normal_data(600, 2, seed=s) for s in range(2)],
        warmup_steps=4,
        quiet_s=0.0,
        level=True,
    )
    assert len(model.calibration["level_center"]) == 6
    ids, samples, times = interleaved_batch(["u", "v"], 400, 2, nan_every=13, burst=slice(200, 320))
    compare(model, ids, samples, times, 5)


def test_level_term_is_stored_only_when_asked_and_checked_on_load(calibrated):
    data = normal_data(600, 3)
    assert "level_center" not in calibrated["diagonal"].calibration
    level = calibrate(calibrated["diagonal"], data, warmup_steps=10, level=True)
    assert np.shape(level.calibration["level_whiten"]) == (3, 3)
    broken = dict(level.calibration, level_center=[0.0, 1.0])
    with pytest.raises(ConfigError, match="level_center"):
        sl.Detector(level.replace(calibration=broken))


# -- recipe v2 score paths: delta target, masked channels, missing values, priming -----------
def test_fused_path_equals_reference_for_a_delta_target_model():
    model = calibrate(
        predictor(seed=6), normal_data(600, 3), target="delta", warmup_steps=10, quiet_s=0.1
    )
    assert model.calibration["target"] == "delta"
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3, nan_every=19, burst=slice(120, 200))
    compare(model, ids, samples, times, 4)


@pytest.mark.parametrize("metric", ["diagonal", "mahalanobis"])
def test_fused_path_equals_reference_with_a_masked_channel_and_missing_values(metric):
    normal = normal_data(600, 3)
    normal[:, 2] = 7.0  # frozen: learned as masked
    model = calibrate(predictor(seed=7), normal, metric=metric, warmup_steps=10, quiet_s=0.1)
    assert model.calibration["mask"] == [1.0, 1.0, 0.0]
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3, burst=slice(120, 200))
    rng = np.random.default_rng(3)
    samples[rng.random(samples.shape) < 0.05] = np.nan  # scattered missing values
    samples[::37] = np.nan  # and a few empty samples
    samples[:, 2] = rng.normal(0, 100, len(samples))  # the masked channel: anything
    compare(model, ids, samples, times, 3)


def test_fused_path_equals_reference_when_priming(calibrated):
    model = calibrated["diagonal"]
    ids, samples, times = interleaved_batch(["a", "b"], 200, 3, burst=slice(20, 120))
    det, ref = sl.Detector(model, warmup_steps=5), ReferenceDetector(model, warmup_steps=5)
    det.prime(ids, samples, times)
    ref_scores, ref_events = ref.update(ids, samples, times, alert=False)
    assert ref_events == [] and not det.alerting("a")
    np.testing.assert_allclose(det.last_scores, ref_scores, rtol=1e-9, atol=1e-12)


# -- pool="max": the largest whitened component instead of the RMS ---------------------------
@pytest.mark.parametrize("metric", ["diagonal", "mahalanobis"])
def test_fused_path_equals_reference_with_max_pooling_a_level_term_and_gaps(metric):
    normal = normal_data(600, 3)
    normal[:, 1] = 2.0  # frozen: learned as masked
    model = calibrate(
        predictor(seed=8),
        normal,
        metric=metric,
        pool="max",
        level=True,
        target="delta",
        warmup_steps=10,
        quiet_s=0.1,
    )
    assert model.calibration["pool"] == "max"
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3, burst=slice(120, 200))
    rng = np.random.default_rng(4)
    samples[rng.random(samples.shape) < 0.05] = np.nan
    samples[:, 1] = rng.normal(0, 100, len(samples))
    events = compare(model, ids, samples, times, 5, threads=2)
    assert any(e[1] == "start" for e in events)


def test_max_pooling_is_not_diluted_by_quiet_channels():
    """A shift in one channel of twelve: the max-pooled score rises with the whole shift,
    the RMS by a fraction of it (each against its own normal scores)."""
    width = 12
    normal = normal_data(800, width, seed=3)
    rise = {}
    for pool in ("rms", "max"):
        model = calibrate(
            predictor(width=width, seed=9),
            normal,
            pool=pool,
            level=True,
            warmup_steps=10,
            quantile=0.99,
        )
        det = sl.Detector(model, alpha=1.0)
        shifted = normal_data(400, width, seed=5)
        shifted[200:, 4] += 3.0  # 30 normal standard deviations of the noise, one channel
        det.prime(["s"] * 400, shifted, np.arange(400) * 0.02)
        scores = det.last_scores
        rise[pool] = float(np.median(scores[250:]) / np.median(scores[50:200]))
    assert rise["max"] > 1.5 * rise["rms"]


def test_an_unknown_pool_is_refused(calibrated):
    with pytest.raises(ConfigError, match="pool"):
        calibrate(calibrated["diagonal"], normal_data(300, 3), pool="mean")
    broken = dict(calibrated["diagonal"].calibration, pool="median")
    with pytest.raises(ConfigError, match="pool"):
        sl.Detector(calibrated["diagonal"].replace(calibration=broken))


# -- guarded drift adaptation of the level term ----------------------------------------------
def drifting(count, width, *, drift, seed=2):
    """Normal data whose level moves by ``drift`` per sample in every channel."""
    return normal_data(count, width, seed) + drift * np.arange(count)[:, None]


@pytest.fixture(scope="module")
def adaptive():
    normal = normal_data(800, 3)
    normal[:, 2] = 4.0  # frozen: masked, never adapted
    return calibrate(
        predictor(seed=10),
        normal,
        level=True,
        level_alpha=0.02,
        level_bound=4.0,
        pool="max",
        target="delta",
        warmup_steps=10,
        quiet_s=0.1,
        quantile=0.99,
    )


@pytest.mark.parametrize("threads,batches", [(1, 5), (2, 2)])
def test_fused_path_equals_reference_with_drift_adaptation(adaptive, threads, batches):
    assert adaptive.calibration["level_alpha"] == 0.02
    assert adaptive.calibration["level_scale"][2] == 0.0
    ids, samples, times = interleaved_batch(["a", "b"], 400, 3, burst=slice(250, 320))
    samples[:, :2] += 0.004 * np.repeat(np.arange(400), 2)[:, None]  # a slow drift
    rng = np.random.default_rng(6)
    samples[rng.random(samples.shape) < 0.04] = np.nan
    samples[:, 2] = rng.normal(0, 50, len(samples))
    events = compare(adaptive, ids, samples, times, batches, threads=threads)
    assert any(e[1] == "start" for e in events)


def test_adaptation_follows_slow_drift_within_its_bound_and_freezes_while_alerting(adaptive):
    # A slow drift (1.2 units over the run, within the bound): the centre follows it with
    # the EWMA's lag, drift x (1 - alpha) / alpha; the masked channel never moves.
    slow = drifting(600, 3, drift=0.002, seed=3)
    slow[:, 2] = 4.0
    times = np.arange(600) * 0.02
    det = sl.Detector(adaptive, threshold=1e9)
    det.prime(["s"] * 600, slow, times)
    offset = det.export_state().levels[0]
    center = np.asarray(adaptive.calibration["level_center"])
    recent = slow[-100:, :2].mean(axis=0) - center[:2]
    np.testing.assert_allclose(offset[:2], recent, atol=0.15)
    assert offset[2] == 0.0 and np.all(offset[:2] > 0.8)
    # A step held after the alert starts: the centre is frozen, so the alert stays open.
    step = normal_data(600, 3, seed=4)
    step[300:, 0] += 2.5
    step[:, 2] = 4.0
    det = sl.Detector(adaptive)
    events = det.update(["s"] * 600, step, times)
    assert [e.kind for e in events] == ["start"] and det.alerting("s")
    before = det.export_state().levels[0].copy()
    det.update(["s"] * 50, step[-50:], times[-1] + 0.02 * np.arange(1, 51))
    np.testing.assert_array_equal(det.export_state().levels[0], before)
    # The offset never leaves the bound, whatever the drift.
    far = drifting(1500, 3, drift=0.02)
    far[:, 2] = 4.0
    det = sl.Detector(adaptive, threshold=1e9)
    det.prime(["s"] * 1500, far, np.arange(1500) * 0.02)
    limit = 4.0 * np.asarray(adaptive.calibration["level_scale"])
    offset = det.export_state().levels[0]
    assert np.all(np.abs(offset) <= limit + 1e-12) and offset[0] == pytest.approx(limit[0])


def test_snapshots_carry_the_adapted_level_and_old_ones_still_load(adaptive):
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3)
    samples[:, :2] += 0.003 * np.repeat(np.arange(300), 2)[:, None]
    one = sl.Detector(adaptive)
    one.update(ids[:400], samples[:400], times[:400])
    snapshot = one.export_state()
    assert np.any(snapshot.levels != 0)
    two = sl.Detector(adaptive)
    two.import_state(snapshot)
    one.update(ids[400:], samples[400:], times[400:])
    two.update(ids[400:], samples[400:], times[400:])
    np.testing.assert_array_equal(one.last_scores, two.last_scores)
    assert snapshot.version == 3
    # Version 2, written before adaptation existed, had no levels: they load as zero.
    older = {k: v for k, v in snapshot.to_tree().items() if k != "levels"}
    three = sl.Detector(adaptive)
    three.import_state(DetectorState.from_tree({**older, "version": 2}))
    np.testing.assert_array_equal(three.export_state().levels, 0.0)
    # Version 3 needs its levels (an older build, reading only 2, refuses version 3).
    with pytest.raises(ShapeError, match="levels"):
        DetectorState.from_tree(older)
    with pytest.raises(ShapeError, match="unsupported version 4"):
        DetectorState.from_tree({**snapshot.to_tree(), "version": 4})


def test_bad_adaptation_settings_are_refused(calibrated, adaptive):
    data = normal_data(300, 3)
    # Recalibrating keeps a stored adaptation; turning the level term off drops it.
    assert calibrate(adaptive, normal_data(800, 3)).calibration["level_alpha"] == 0.02
    plain = calibrate(adaptive, normal_data(800, 3), level=False).calibration
    assert "level_center" not in plain and "level_alpha" not in plain
    with pytest.raises(ConfigError, match="needs level=True"):
        calibrate(calibrated["diagonal"], data, level_alpha=0.1)
    with pytest.raises(ConfigError, match="level_alpha"):
        calibrate(calibrated["diagonal"], data, level=True, level_alpha=1.5)
    with pytest.raises(ConfigError, match="level_bound"):
        calibrate(calibrated["diagonal"], data, level=True, level_alpha=0.1, level_bound=0)


# -- level_balance: the level term read against its own normal tail ---------------------------
def _balanced(metric):
    normal = normal_data(800, 3)
    normal[:, 1] = 2.0  # frozen: learned as masked
    return calibrate(
        predictor(seed=11),
        normal,
        metric=metric,
        pool="max",
        level=True,
        level_balance=True,
        target="delta",
        warmup_steps=10,
        quiet_s=0.1,
        quantile=0.99,
    )


def _terms(model):
    """The calibration split into residual-only and (unscaled) level-only ones."""
    cal = model.calibration
    gain = cal["level_gain"]
    residual = {k: v for k, v in cal.items() if not k.startswith("level_")}
    level = dict(cal, whiten=np.zeros((3, 3)).tolist())
    level["level_whiten"] = (np.asarray(cal["level_whiten"]) / gain).tolist()
    level.pop("level_gain")
    return model.replace(calibration=residual), model.replace(calibration=level), gain


@pytest.mark.parametrize("metric", ["diagonal", "mahalanobis"])
def test_level_balance_scales_the_level_term_to_the_residuals_own_tail(metric):
    from streamlstm.detect import calibration_scores
    from streamlstm.detect.calibration import tail_threshold

    model = _balanced(metric)
    cal = model.calibration
    assert cal["level_balance"] is True and cal["version"] == SCHEMA_VERSION
    residual, level, gain = _terms(model)
    # Slow reference of the calibration: each term scored alone on the same normal data,
    # the level term's whitening scaled by the ratio of their 0.99 budget scores.
    normal = normal_data(800, 3)
    normal[:, 1] = 2.0
    own = [
        tail_threshold(np.concatenate(calibration_scores(m, normal)), 0.01).score
        for m in (residual, level)
    ]
    assert gain == pytest.approx(own[0] / own[1], rel=1e-9)
    unbalanced = calibrate(
        predictor(seed=11),
        normal,
        metric=metric,
        pool="max",
        level=True,
        target="delta",
        warmup_steps=10,
        quiet_s=0.1,
        quantile=0.99,
    ).calibration
    np.testing.assert_allclose(
        cal["level_whiten"], gain * np.asarray(unbalanced["level_whiten"]), rtol=1e-12
    )


@pytest.mark.parametrize("metric", ["diagonal", "mahalanobis"])
def test_fused_path_equals_reference_with_a_balanced_level_term(metric):
    model = _balanced(metric)
    ids, samples, times = interleaved_batch(["a", "b"], 300, 3, burst=slice(120, 200))
    rng = np.random.default_rng(7)
    samples[rng.random(samples.shape) < 0.05] = np.nan
    samples[:, 1] = rng.normal(0, 100, len(samples))  # the masked channel: anything
    events = compare(model, ids, samples, times, 4, threads=2)
    assert any(e[1] == "start" for e in events)
    # Unsmoothed, the fused score is the larger of the residual term and the gain times the
    # level term, each computed by the slow reference on its own.
    residual, level, gain = _terms(model)
    raw = {}
    for name, m in (("fused", model), ("residual", residual), ("level", level)):
        raw[name], _ = ReferenceDetector(m, alpha=1.0).update(ids, samples, times, alert=False)
    fast = sl.Detector(model, alpha=1.0)
    fast.prime(ids, samples, times)
    ok = ~np.isnan(raw["fused"])
    expected = np.maximum(raw["residual"][ok], gain * raw["level"][ok])
    np.testing.assert_allclose(raw["fused"][ok], expected, rtol=1e-12)
    np.testing.assert_allclose(fast.last_scores[ok], expected, rtol=1e-9, atol=1e-12)


def test_level_balance_needs_the_level_term_and_max_pooling(calibrated):
    data = normal_data(400, 3)
    with pytest.raises(ConfigError, match="level_balance"):
        calibrate(calibrated["diagonal"], data, level=True, level_balance=True)  # rms
    with pytest.raises(ConfigError, match="level_balance"):
        calibrate(calibrated["diagonal"], data, pool="max", level_balance=True)
    # Recalibrating keeps a stored balance; turning the level term off drops it.
    balanced = _balanced("diagonal")
    again = calibrate(balanced, normal_data(800, 3), warmup_steps=10).calibration
    assert again["level_balance"] is True and "level_gain" in again
    plain = calibrate(balanced, normal_data(800, 3), level=False, warmup_steps=10).calibration
    assert not any(k.startswith("level_") for k in plain)


# -- level_fit="cross": the level term's tail read out of sample --------------------------------
_CROSS = {
    "pool": "max",
    "level": True,
    "target": "delta",
    "warmup_steps": 10,
    "quiet_s": 0.1,
    "quantile": 0.99,
}


def _thirds(data):
    edges = np.linspace(0, data.shape[0], 4).round().astype(int)
    return [data[edges[k] : edges[k + 1]] for k in range(3)]


@pytest.mark.parametrize("metric", ["diagonal", "mahalanobis"])
def test_a_cross_fitted_level_term_reads_each_third_against_the_other_two(metric):
    from streamlstm.detect import calibration_scores
    from streamlstm.detect.calibration import tail_threshold

    model, data = predictor(seed=5), normal_data(900, 3, seed=3)
    cal = calibrate(model, data, metric=metric, level_balance=True, level_fit="cross", **_CROSS)
    cal = cal.calibration
    assert cal["level_fit"] == "cross" and cal["recordings"] == 1 and cal["samples"] == 900
    # Slow reference from the public API. Each third's level statistics: a pooled
    # calibration on the other two thirds; the residual term: the final calibration's.
    blocks = _thirds(data)
    left_out = [
        calibrate(model, [b for j, b in enumerate(blocks) if j != k], metric=metric, **_CROSS)
        for k in range(3)
    ]
    residual = {k: v for k, v in cal.items() if not k.startswith("level_")}

    def scores(calibrations):
        parts = [
            calibration_scores(model.replace(calibration=c), b)
            for c, b in zip(calibrations, blocks, strict=True)
        ]
        return np.concatenate([s for p in parts for s in p])

    def with_level(base, k, gain):
        level = left_out[k].calibration
        return dict(
            base,
            level_center=level["level_center"],
            level_whiten=(gain * np.asarray(level["level_whiten"])).tolist(),
        )

    silent = dict(cal, whiten=np.zeros((3, 3)).tolist())
    level_tail = tail_threshold(scores([with_level(silent, k, 1.0) for k in range(3)]), 0.01)
    residual_tail = tail_threshold(scores([residual] * 3), 0.01)
    gain = cal["level_gain"]
    assert gain == pytest.approx(residual_tail.score / level_tail.score, rel=1e-9)
    fused = tail_threshold(scores([with_level(cal, k, gain) for k in range(3)]), 0.01)
    assert cal["quantile_score"] == pytest.approx(fused.score, rel=1e-9)
    # The stored level term is fitted on all the data, as a pooled one is.
    pooled = calibrate(model, blocks, metric=metric, **_CROSS).calibration
    np.testing.assert_allclose(cal["level_center"], pooled["level_center"], rtol=1e-12)


def test_cross_fitting_widens_the_level_term_where_levels_wander_and_not_elsewhere():
    model = predictor(seed=5)
    steady = normal_data(1200, 3, seed=4)
    wandering = steady + np.linspace(0.0, 3.0, 1200)[:, None] * np.array([1.0, 0.0, 0.0])

    def gain(data, level_fit):
        cal = calibrate(model, data, level_balance=True, level_fit=level_fit, **_CROSS)
        return cal.calibration["level_gain"]

    steady_ratio = gain(steady, "cross") / gain(steady, "pooled")
    wandering_ratio = gain(wandering, "cross") / gain(wandering, "pooled")
    # Measured: 1.02 steady, 0.71 with a drift of 3 (the sine's amplitude is 1).
    assert 0.9 < steady_ratio < 1.1, steady_ratio
    assert wandering_ratio < 0.8 * steady_ratio, (wandering_ratio, steady_ratio)


def test_level_fit_needs_the_level_term_and_is_kept_on_recalibration(calibrated):
    data = normal_data(900, 3)
    with pytest.raises(ConfigError, match=r"level_fit .*needs level=True"):
        calibrate(calibrated["diagonal"], data, level_fit="cross")
    with pytest.raises(ConfigError, match="level_fit must be one of"):
        calibrate(calibrated["diagonal"], data, level=True, level_fit="rolling")
    crossed = calibrate(calibrated["diagonal"], data, level=True, level_fit="cross")
    again = calibrate(crossed, normal_data(900, 3, seed=1)).calibration
    assert again["level_fit"] == "cross"
    plain = calibrate(crossed, data, level=False).calibration
    assert not any(k.startswith("level_") for k in plain)
    with pytest.raises(ConfigError, match="level_fit must be one of"):
        sl.Detector(crossed.replace(calibration=dict(crossed.calibration, level_fit="rolling")))


# -- commission: each sensor's own level reference -------------------------------------------
def _level_model(model=None, data=None):
    return calibrate(
        predictor(seed=9) if model is None else model,
        normal_data(900, 3, seed=5) if data is None else data,
        level=True,
        pool="max",
        target="delta",
        warmup_steps=10,
        quiet_s=0.1,
        quantile=0.999,
    )


def _recentred(model, mean):
    """Slow reference: the model with its calibrated level centre moved to ``mean``."""
    return model.replace(calibration=dict(model.calibration, level_center=list(mean)))


def test_commissioning_recentres_the_level_term_on_the_sensors_own_normal():
    model = _level_model()
    offset = np.array([3.0, 0.0, -2.0])
    stream = normal_data(800, 3, seed=6) + offset
    stream[50:80, 2] = np.nan  # a gap while commissioning: left out of the mean
    stream[700:, 0] += 6.0  # a fault
    ids, times = ["s"] * 800, np.arange(800) * 0.02
    first, rest = slice(0, 300), slice(300, 800)

    plain = sl.Detector(model)
    plain.prime(ids[first], stream[first], times[first])
    early = plain.update(ids[300:700], stream[300:700], times[300:700])
    assert early and early[0].t < times[320]  # the sensor's own normal is far out

    det = sl.Detector(model)
    det.commission(ids[first], stream[first], times[first])
    reference = sl.Detector(_recentred(model, np.nanmean(stream[first], axis=0)))
    reference.prime(ids[first], stream[first], times[first])
    events = det.update(ids[rest], stream[rest], times[rest])
    expected = reference.update(ids[rest], stream[rest], times[rest])
    np.testing.assert_allclose(det.last_scores, reference.last_scores, rtol=1e-9)
    assert [(e.kind, e.t) for e in events] == [(e.kind, e.t) for e in expected]
    assert events and events[0].kind == "start" and events[0].t >= times[700]
    # Another sensor keeps the calibrated reference.
    other = normal_data(200, 3, seed=8)
    det.update(["t"] * 200, other, times[:200])
    plain.update(["t"] * 200, other, times[:200])
    np.testing.assert_array_equal(det.last_scores, plain.last_scores)


def test_commissioning_a_feature_model_recentres_on_its_feature_vectors():
    from streamlstm.detect.features import FeatureSpec, compute_features

    spec = {"window": 12, "hop": 3, "stats": ["log_std", "acf1", "corr_next"]}
    base = predictor(width=2 * 3, seed=5, norms=False).replace(metadata={"features": spec})
    model = _level_model(base, [normal_data(600, 2, seed=s) for s in range(2)])
    stream = normal_data(500, 2, seed=9) * 1.5
    ids, times = ["f"] * 500, np.arange(500) * 0.02
    det = sl.Detector(model)
    det.commission(ids[:240], stream[:240], times[:240])
    features = compute_features(stream[:240], FeatureSpec.from_metadata(model.metadata))
    reference = sl.Detector(_recentred(model, features.mean(axis=0)))
    reference.prime(ids[:240], stream[:240], times[:240])
    det.update(ids[240:], stream[240:], times[240:])
    reference.update(ids[240:], stream[240:], times[240:])
    assert np.isfinite(det.last_scores).any()
    np.testing.assert_allclose(det.last_scores, reference.last_scores, rtol=1e-9, equal_nan=True)


def test_commissioning_needs_a_plain_level_term_and_is_kept_in_snapshots(calibrated, adaptive):
    one = (["a"], normal_data(1, 3), [0.0])
    with pytest.raises(ConfigError, match="has none"):
        sl.Detector(calibrated["diagonal"]).commission(*one)
    with pytest.raises(ConfigError, match="level_alpha"):
        sl.Detector(adaptive).commission(*one)
    model = _level_model()
    data = normal_data(200, 3) + 2.0
    data[:, 1] = np.nan  # never seen while commissioning: keeps the calibrated centre
    data[7, 0] = np.inf  # rejected, as the kernel rejects it
    data[9, 0] = 1e6  # at a NaN time: rejected too
    times = np.arange(200) * 0.02
    times[9] = np.nan
    det = sl.Detector(model)
    det.commission(["a"] * 200, data, times)
    center = np.asarray(model.calibration["level_center"])
    kept = np.delete(data, [7, 9], axis=0)
    expected = [kept[:, 0].mean() - center[0], 0.0, kept[:, 2].mean() - center[2]]
    np.testing.assert_allclose(det.export_state().levels[0], expected, rtol=1e-12)
    restored = sl.Detector(model)
    restored.import_state(det.export_state())
    np.testing.assert_array_equal(restored.export_state().levels, det.export_state().levels)
    det.reset("a")
    assert not det.export_state().levels.any()


# -- schema and snapshot versions ------------------------------------------------------------
def test_calibrations_that_an_older_build_would_misread_are_version_3(calibrated):
    data = normal_data(600, 3)
    base = calibrated["diagonal"]
    assert base.calibration["version"] == BASE_VERSION == 2  # rms, no level: still 2
    for options in ({"pool": "max"}, {"level": True}):
        assert calibrate(base, data, **options).calibration["version"] == 3
    # Both versions are read; anything else is refused with the versions this build reads.
    old = calibrate(base, data, pool="max")
    assert sl.Detector(old.replace(calibration=dict(old.calibration, version=2))).params
    for version in (1, 4, None):
        broken = dict(old.calibration, version=version)
        with pytest.raises(ConfigError, match=r"unsupported version .*reads versions \(2, 3\)"):
            sl.Detector(old.replace(calibration=broken))


# -- the calibration record: parsed once, written back unchanged ------------------------------
def test_every_calibration_written_reads_into_a_record_and_back_unchanged(
    calibrated, adaptive, tmp_path
):
    data = normal_data(600, 3)
    direct = sl.random_model(2, [6], output_size=1, seed=4, dtype=np.float64)
    masked = normal_data(600, 3)
    masked[:, 0] = 1.5  # frozen: learned as masked
    models = {
        **calibrated,  # diagonal and mahalanobis whitening, rms pooling
        "level": calibrate(calibrated["diagonal"], data, warmup_steps=10, level=True),
        "max": calibrate(calibrated["diagonal"], data, warmup_steps=10, pool="max"),
        "named mask": calibrate(calibrated["diagonal"], data, warmup_steps=10, mask=["c1"]),
        "learnt mask, delta": calibrate(predictor(seed=3), masked, target="delta", warmup_steps=10),
        "adaptive": adaptive,
        "balanced": _balanced("mahalanobis"),
        "cross-fitted": calibrate(
            calibrated["diagonal"], normal_data(900, 3), level=True, level_fit="cross"
        ),
        "direct": calibrate(
            direct.replace(sample_rate=50.0), normal_data(300, 2), score="direct", quantile=0.9
        ),
    }
    models["saved"] = sl.load(sl.save(models["balanced"], tmp_path / "balanced.npz"))
    for name, model in models.items():
        record = Calibration.from_model(model)
        assert record.to_dict() == model.calibration, name
        assert json.loads(json.dumps(record.to_dict())) == model.calibration, name
        assert sl.Detector(model).calibration.to_dict() == model.calibration, name
    # Typed fields, None where the dict holds no such key.
    balanced = Calibration.from_model(models["balanced"])
    assert balanced.whiten.shape == (3, 3) and balanced.whiten.dtype == np.float64
    assert balanced.level_balance is True and balanced.level_gain > 0
    assert balanced.budget.quantile == 0.99 and balanced.budget.false_alarms_per_day is None
    assert balanced.score_index is None and balanced.mask_names == ("c1",)
    plain = Calibration.from_model(calibrated["diagonal"])
    assert plain.level_center is None and plain.budget.false_alarms_per_day == 1.0
    assert Calibration.from_model(models["direct"]).center is None


def _hand_written(**changes):
    """A valid version-2 residual calibration for :func:`predictor` (width 3), changed."""
    cal = {
        "version": 2,
        "score": "residual",
        "metric": "diagonal",
        "pool": "rms",
        "target": "level",
        "center": [0.0, 0.0, 0.0],
        "whiten": np.eye(3).tolist(),
        "mask": [1.0, 1.0, 1.0],
        "fill": [0.0, 0.0, 0.0],
        "alpha": 0.1,
        "threshold": 2.0,
        "quantile_score": 1.5,
    }
    cal.update(changes)
    return {k: v for k, v in cal.items() if v is not None}


LEVEL = {"level_center": [0.0, 0.0, 0.0], "level_whiten": np.eye(3).tolist()}
#: A malformed calibration, and the ConfigError message it has always been refused with.
MALFORMED = [
    (
        _hand_written(version=1),
        "model calibration: unsupported version 1 (this release reads versions (2, 3): "
        "run `streamlstm calibrate` on normal data again)",
    ),
    (
        _hand_written(score="mystery"),
        "model calibration: score must be one of ('residual', 'direct', 'reconstruction'), "
        "got 'mystery'",
    ),
    (
        _hand_written(center=[0.0, 0.0]),
        "model calibration: center (2,) / whiten (3, 3) do not match width 3",
    ),
    (_hand_written(whiten=None), "model calibration: bad center/whiten ('whiten')"),
    (
        _hand_written(whiten=[[float("nan")] * 3] * 3),
        "model calibration: non-finite center/whiten",
    ),
    (
        _hand_written(level_center=[0.0, 1.0], level_whiten=np.eye(3).tolist()),
        "model calibration: level_center (2,) / level_whiten (3, 3) do not match width 3",
    ),
    (
        _hand_written(mask=[0.0, 0.0, 0.0]),
        "model calibration: mask must hold 0/1 per channel, at least one 1",
    ),
    (
        _hand_written(mask=[1.0, 0.5, 1.0]),
        "model calibration: mask must hold 0/1 per channel, at least one 1",
    ),
    (_hand_written(fill=[0.0, 0.0]), "model calibration: fill must be 3 finite numbers"),
    (
        _hand_written(target="sideways"),
        "model calibration: target must be one of ('level', 'delta'), got 'sideways'",
    ),
    (
        _hand_written(pool="median"),
        "model calibration: pool must be one of ('rms', 'max'), got 'median'",
    ),
    (
        _hand_written(**LEVEL, level_alpha=1.5, level_bound=3.0, level_scale=[1.0] * 3),
        "model calibration: level_alpha must be in [0, 1), got 1.5",
    ),
    (
        _hand_written(**LEVEL, level_alpha=0.1, level_bound=0.0, level_scale=[1.0] * 3),
        "model calibration: level_bound must be a finite number > 0, got 0.0",
    ),
    (
        _hand_written(**LEVEL, level_alpha=0.1, level_bound=3.0),
        "model calibration: level_alpha needs level_scale, 3 numbers >= 0",
    ),
    (
        _hand_written(**LEVEL, level_alpha=0.1, level_bound=3.0, level_scale=[1.0, -1.0, 1.0]),
        "model calibration: level_alpha needs level_scale, 3 numbers >= 0",
    ),
    (_hand_written(alpha="fast"), "detector parameters: could not convert string to float: 'fast'"),
    (_hand_written(threshold=None), "model calibration has no threshold"),
    (_hand_written(hysteresis=1.5), "hysteresis must be in (0, 1], got 1.5"),
]


@pytest.mark.parametrize("cal,message", MALFORMED)
def test_a_malformed_calibration_is_refused_with_the_same_message(cal, message):
    model = predictor().replace(calibration=cal)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        sl.Detector(model)


def test_calibration_errors_that_depend_on_the_model_or_the_overrides():
    with pytest.raises(ConfigError, match=r"^model 'p' has no calibration: run `streamlstm"):
        sl.Detector(predictor().replace(name="p"))
    with pytest.raises(ConfigError, match=re.escape("margin override needs calibration[")):
        sl.Detector(predictor().replace(calibration=_hand_written(quantile_score=None)), margin=2)
    # The stored threshold may be missing when the caller gives one.
    model = predictor().replace(calibration=_hand_written(threshold=None))
    assert Calibration.from_model(model).threshold is None
    assert sl.Detector(model, threshold=4.0).params.threshold == 4.0
    wide = sl.random_model(3, [4], output_size=2, seed=1, dtype=np.float64)
    with pytest.raises(ConfigError, match=r"not a next-step predictor: it has 2 outputs for 3"):
        sl.Detector(wide.replace(calibration=_hand_written()))
    direct = _hand_written(score="direct", score_index=2)
    with pytest.raises(
        ConfigError, match=re.escape("calibration score_index 2 out of range (model has 2 outputs)")
    ):
        sl.Detector(wide.replace(calibration=direct))
