"""WindowDetector(device="cuda") against the CPU one: the same alerts, scores, counters and
snapshots, and the daemon's ``[detector] device = "cuda"`` for a window model.

The GPU window bank is checked push for push against the CPU one in
``tests/cuda/test_cuda_windows.py``; here the detector built on it must decide exactly what the
CPU detector decides on the same stream. Runs on the CUDA simulator (see conftest.py), with
tiny models (hidden size <= 6, W <= 16), or on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from window_models import autoencoder, channel_classifier, fault_sequence

from streamlstm import formats
from streamlstm.daemon import config as config_module
from streamlstm.daemon.pipeline import compile_kernels, make_detector
from streamlstm.detect import WindowDetector, calibrate_reconstruction
from streamlstm.errors import ConfigError

window_bank = pytest.importorskip("streamlstm.cuda.window_bank", reason="numba-cuda not installed")
from streamlstm.cuda import is_available  # noqa: E402

if not is_available():
    pytest.skip(
        "no CUDA GPU and the simulator is off (NUMBA_ENABLE_CUDASIM=0)", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[2]
RATE = 100.0
SCORE_TOL = 1e-9  # float64 models: window outputs within 1e-9 of the CPU's, scores likewise


def classifier_stream() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Three sensors' fault sequences (normal, inner, ball, normal; 160 samples each),
    interleaved in arrival order, one NaN sample in sensor b's inner stretch."""
    rng = np.random.default_rng(11)
    per_sensor = [fault_sequence(rng) for _ in range(3)]
    per_sensor[1][50, 0] = np.nan
    ids = [s for _ in range(160) for s in ("a", "b", "c")]
    x = np.stack(per_sensor, axis=1).reshape(-1, 3)
    t = np.repeat(np.arange(160) / RATE, 3)
    return ids, x, t


def calibrated_autoencoder():
    rng = np.random.default_rng(12)
    return calibrate_reconstruction(
        autoencoder(),
        rng.normal(size=(2000, 2)),
        quantile=0.999,
        warmup_steps=3,
        debounce_steps=2,
        quiet_s=0.0,
    )


def autoencoder_stream() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Two sensors, 320 samples each, interleaved: a burst in sensor p (its samples
    100..139), an Inf sample in sensor q (its sample 150)."""
    rng = np.random.default_rng(13)
    p, q = rng.normal(size=(320, 2)), rng.normal(size=(320, 2))
    p[100:140] *= 30
    q[150, 1] = np.inf
    x = np.stack([p, q], axis=1).reshape(-1, 2)
    return ["p", "q"] * 320, x, np.repeat(np.arange(320) / RATE, 2)


def summary(events):
    return [(e.sensor, e.kind, e.label, e.t, e.threshold, e.model_id) for e in events]


def assert_same_events(got, want) -> None:
    """Same alerts (sensor, kind, class, time, threshold); scores within float rounding."""
    assert summary(got) == summary(want)
    for g, w in zip(got, want, strict=True):
        for name in ("score", "peak", "duration"):
            assert getattr(g, name) == pytest.approx(getattr(w, name), rel=0, abs=SCORE_TOL)


def assert_same_detectors(gpu: WindowDetector, cpu: WindowDetector) -> None:
    """Counters, alert state and the snapshot arrays of every sensor."""
    assert gpu.sensors == cpu.sensors
    for sensor in cpu.sensors:
        assert (gpu.rejected(sensor), gpu.bank.skipped(sensor), gpu.bank.failed(sensor)) == (
            cpu.rejected(sensor),
            cpu.bank.skipped(sensor),
            cpu.bank.failed(sensor),
        )
        assert (gpu.alerting(sensor), gpu.label(sensor)) == (
            cpu.alerting(sensor),
            cpu.label(sensor),
        )
        assert gpu.score(sensor) == pytest.approx(cpu.score(sensor), rel=0, abs=SCORE_TOL)
    got, want = gpu.export_state(), cpu.export_state()
    assert got.to_tree().keys() == want.to_tree().keys()
    for name in ("ring", "counts", "last_bad", "rejected", "skipped", "failed", "istate"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.fstate, want.fstate, rtol=0, atol=SCORE_TOL)


@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_the_gpu_window_detector_alerts_as_the_cpu_one(kind):
    """Events (sensor, kind, class, time exactly; score, peak, duration within 1e-9), each
    push's last_scores (within 1e-9, NaN at the same samples) and last_status, the rejected,
    skipped and failed counters, and the alert state."""
    if kind == "classifier":
        model, options = channel_classifier(), {"min_probability": 0.9, "consecutive": 2}
        ids, x, t = classifier_stream()
    else:
        model, options = calibrated_autoencoder(), {}
        ids, x, t = autoencoder_stream()
    cpu = WindowDetector(model, capacity=2, **options)
    gpu = WindowDetector(model, capacity=2, device="cuda", **options)
    assert isinstance(gpu.bank, window_bank.CudaWindowBank) and gpu.device == "cuda"
    events: dict[str, list] = {"cpu": [], "gpu": []}
    start = 0
    for size in (37, 100, 5, 211, len(ids)):  # uneven micro-batches, rows grown on the way
        end = min(start + size, len(ids))
        for name, det in (("cpu", cpu), ("gpu", gpu)):
            events[name] += det.update(ids[start:end], x[start:end], t[start:end])
        np.testing.assert_array_equal(gpu.last_status, cpu.last_status)
        np.testing.assert_allclose(gpu.last_scores, cpu.last_scores, rtol=0, atol=SCORE_TOL)
        start = end
    assert gpu.bank.launches >= 4
    assert_same_events(events["gpu"], events["cpu"])
    kinds = [e.kind for e in events["cpu"]]
    assert kinds.count("start") >= 1 and kinds.count("end") >= 1  # the stream does alert
    assert_same_detectors(gpu, cpu)
    bad = "b" if kind == "classifier" else "q"
    assert gpu.rejected(bad) == 1 and gpu.bank.skipped(bad) > 0


@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_snapshot_of_either_device_continues_on_the_other(first, then):
    """Mid-alert and mid-window: the snapshot arrays are the same host arrays on both
    devices, so the restored detector ends the run exactly as one detector would."""
    model, options = channel_classifier(), {"min_probability": 0.9, "consecutive": 2}
    ids, x, t = classifier_stream()
    whole = WindowDetector(model, **options)
    expected = whole.update(ids, x, t)
    cut = 3 * 85  # each sensor in its inner alert, its window ring half full
    before = WindowDetector(model, device=first, **options)
    events = before.update(ids[:cut], x[:cut], t[:cut])
    assert before.alerting("a") and before.label("a") == "inner"
    after = WindowDetector(model, device=then, **options)
    after.import_state(before.export_state())
    events += after.update(ids[cut:], x[cut:], t[cut:])
    assert_same_events(events, expected)
    assert_same_detectors(after, whole)


def test_a_window_autoencoder_snapshot_keeps_its_smoothed_score_across_devices():
    model = calibrated_autoencoder()
    ids, x, t = autoencoder_stream()
    whole = WindowDetector(model)
    expected = whole.update(ids, x, t)
    cut = 2 * 120  # sensor p inside its burst
    gpu = WindowDetector(model, device="cuda")
    events = gpu.update(ids[:cut], x[:cut], t[:cut])
    cpu = WindowDetector(model)
    cpu.import_state(gpu.export_state())
    events += cpu.update(ids[cut:], x[cut:], t[cut:])
    assert [e.kind for e in expected] == ["start", "end"]
    assert_same_events(events, expected)


def window_site(tmp_path: Path, **detector) -> config_module.SiteConfig:
    model = tmp_path / "classes.npz"
    formats.save(channel_classifier(), model)
    return config_module.validate(
        {
            "model": {"path": str(model)},
            "detector": {"consecutive": 2, **detector},
            "sources": [{"type": "mqtt", "topic": "s/{sensor}", "payload": "json"}],
        }
    )


def test_the_daemon_config_builds_a_cuda_window_detector_and_warms_it_up(tmp_path):
    site = window_site(tmp_path, device="cuda")
    model = formats.load(site.model.path)
    detector = make_detector(model, site.detector)
    assert isinstance(detector, WindowDetector)
    assert isinstance(detector.bank, window_bank.CudaWindowBank)
    assert detector.class_params is not None and detector.class_params.consecutive == 2
    compile_kernels(model, site)  # the GPU window kernel's first launch, before READY
    with pytest.raises(ConfigError, match=r"detector: threads applies to device='cpu' only"):
        make_detector(model, window_site(tmp_path, device="cuda", threads=2).detector)


def test_check_config_accepts_device_cuda_for_a_window_model(tmp_path):
    model = tmp_path / "classes.npz"
    formats.save(channel_classifier(), model)
    site = tmp_path / "site.toml"
    site.write_text(f'[model]\npath = "{model}"\n[detector]\ndevice = "cuda"\n')
    done = subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "check-config", str(site)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"{site}: OK" in done.stdout
