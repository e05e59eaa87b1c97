"""Window models in the daemon: a classifier chosen by its declared window, its class alerts
in the JSONL sink across a restart from the snapshot, and its reload checks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import REPO

from streamlstm import formats
from streamlstm.daemon import config as config_module
from streamlstm.daemon import snapshot
from streamlstm.daemon.engine import Daemon
from streamlstm.daemon.pipeline import make_detector
from streamlstm.detect import WindowDetector
from streamlstm.errors import ConfigError
from streamlstm.model import Model, dense_layer, rnn_layer
from streamlstm.window_spec import WindowSpec

RATE = 100.0
CLASSES = ("normal", "inner", "ball")


def classifier(path: Path, width: int = 3) -> Path:
    """Channel 1 on at a window's last step -> inner, channel 2 -> ball, else normal."""
    rnn = rnn_layer(
        2.0 * np.eye(3, width), np.zeros((3, 3)), np.zeros(3), np.zeros(3), activation="tanh"
    )
    head = dense_layer(np.diag([0.0, 10.0, 10.0]), np.array([1.0, 0, 0]))
    spec = WindowSpec(8, 4, "probabilities", CLASSES)
    formats.save(
        Model(
            layers=(rnn,),
            head=(head,),
            name="bearing-classes",
            metadata={"window": spec.to_metadata()},
        ),
        path,
    )
    return path


def faults(seed: int) -> np.ndarray:
    """normal, inner, ball, normal: 100 samples each."""
    x = np.random.default_rng(seed).normal(0, 0.01, (400, 3)).astype(np.float32)
    x[100:200, 1] += 1
    x[200:300, 2] += 1
    return x


def write_csv(path: Path, t: np.ndarray, x: np.ndarray) -> None:
    rows = "\n".join(
        f"{ti:.2f},{a:.6f},{b:.6f},{c:.6f}" for ti, (a, b, c) in zip(t, x, strict=True)
    )
    path.write_text("time,x,y,z\n" + rows + "\n")


def site(folder: Path, model: Path, recording: str) -> Path:
    path = folder / "site.toml"
    path.write_text(f"""
[daemon]
snapshot_path = "state.npz"
[model]
path = "{model}"
[detector]
normal_class = "normal"
min_probability = 0.9
consecutive = 2
[[sources]]
type = "replay"
path = "{recording}"
time_column = 0
columns = [1, 2, 3]
sensor = "bearing"
[[sinks]]
type = "jsonl"
path = "alerts.jsonl"
[[sinks]]
type = "stdout"
""")
    return path


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_class_change_alerts_reach_the_jsonl_sink_with_their_class_across_a_restart(tmp_path):
    model = classifier(tmp_path / "classes.npz")
    x = faults(0)
    t = np.round(1000.0 + np.arange(len(x)) / RATE, 2)
    detector = WindowDetector(
        formats.load(model), normal_class="normal", min_probability=0.9, consecutive=2
    )
    expected = [
        (e.kind, e.label, round(e.t, 6)) for e in detector.update(["bearing"] * len(x), x, t)
    ]
    assert [k for k, _, _ in expected] == ["start", "end", "start", "end"]
    # First run: up to the middle of the ball fault (its alert open, a window half full).
    write_csv(tmp_path / "part1.csv", t[:250], x[:250])
    write_csv(tmp_path / "part2.csv", t[250:], x[250:])
    done = run_daemon(site(tmp_path, model, "part1.csv"))
    assert done.returncode == 0, done.stderr
    assert "ALERT START  bearing  class inner" in done.stdout
    state = snapshot.load(tmp_path / "state.npz")
    assert state["detector"]["kind"] == "window" and state["detector"]["sensors"] == ["bearing"]
    # Second run restores the snapshot: the ball alert it started ends with its class.
    done = run_daemon(site(tmp_path, model, "part2.csv"))
    assert done.returncode == 0, done.stderr
    assert "restored 1 sensors" in done.stderr
    logged = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["label"], round(a["t"], 6)) for a in logged] == expected
    assert all(a["threshold"] == 0.9 and a["sensor"] == "bearing" for a in logged)


def settings(**given) -> config_module.DetectorConfig:
    return config_module.DetectorConfig(capacity=8, **given)


def test_class_keys_are_validated_and_refused_for_a_predictor(tmp_path):
    with pytest.raises(ConfigError, match=r"detector\.min_probability: must be in \(0, 1\]"):
        config_module.validate({"detector": {"min_probability": 1.5}})
    with pytest.raises(ConfigError, match=r"detector\.consecutive: must be >= 1"):
        config_module.validate({"detector": {"consecutive": 0}})
    from daemon_helpers import make_model

    predictor = formats.load(make_model(tmp_path / "predictor.npz"))
    with pytest.raises(ConfigError, match="normal_class: only for window classifiers"):
        make_detector(predictor, settings(normal_class="normal"))
    window = formats.load(classifier(tmp_path / "classes.npz"))
    with pytest.raises(ConfigError, match="'healthy' is not one of the model's classes"):
        make_detector(window, settings(normal_class="healthy"))
    assert isinstance(make_detector(window, settings(consecutive=4)), WindowDetector)


def test_device_cuda_is_checked_and_refused_for_a_predictor(tmp_path):
    """``[detector] device``: "cpu" or "cuda"; "cuda" only for a window model (the GPU
    window detector itself: tests/cuda/test_cuda_window_detector.py)."""
    with pytest.raises(ConfigError, match=r"detector\.device: must be one of 'cpu', 'cuda'"):
        config_module.validate({"detector": {"device": "gpu"}})
    assert config_module.validate({}).detector.device == "cpu"
    from daemon_helpers import make_model

    predictor = formats.load(make_model(tmp_path / "predictor.npz"))
    with pytest.raises(
        ConfigError,
        match=r"detector: device = 'cuda': only for window models, and model .* is a "
        "next-step predictor, whose detector runs on the CPU",
    ):
        make_detector(predictor, settings(device="cuda"))
    window = formats.load(classifier(tmp_path / "classes.npz"))
    assert make_detector(window, settings(device="cpu")).device == "cpu"


def check_config(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def test_check_config_refuses_device_cuda_for_a_predictor_and_without_a_gpu(tmp_path):
    from daemon_helpers import make_model

    predictor = make_model(tmp_path / "predictor.npz")
    config = tmp_path / "site.toml"
    config.write_text(f'[model]\npath = "{predictor}"\n[detector]\ndevice = "cuda"\n')
    done = check_config(config)
    assert done.returncode == 2
    assert "device = 'cuda': only for window models" in done.stderr
    # A window model on a machine without a GPU (none visible, simulator off).
    config.write_text(
        config.read_text().replace(str(predictor), str(classifier(tmp_path / "c.npz")))
    )
    done = check_config(config, NUMBA_ENABLE_CUDASIM="0", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2
    assert done.stderr.startswith("detector: ")
    assert "no CUDA GPU is available" in done.stderr or "numba-cuda is not installed" in done.stderr


def test_a_reload_checks_a_window_models_width_and_keeps_or_resets_state(tmp_path, caplog):
    model = classifier(tmp_path / "classes.npz")
    x = faults(1)
    write_csv(tmp_path / "rec.csv", np.arange(len(x)) / RATE, x)
    config = site(tmp_path, model, "rec.csv")
    daemon = Daemon(config_module.load(config), config_path=str(config))
    daemon.pipeline.update(["bearing"] * 150, x[:150], np.arange(150) / RATE)
    assert daemon.pipeline.alerting("bearing")
    caplog.set_level(logging.INFO)
    # A window model of another width: refused, the running one keeps its state.
    classifier(tmp_path / "wide.npz", width=4)
    config.write_text(config.read_text().replace("classes.npz", "wide.npz"))
    daemon.reload()
    assert "takes 4 values per sample, the running one 3" in caplog.text
    assert daemon.metrics.value("streamlstm_reloads_total", (("result", "refused"),)) == 1
    # Same model again: the sensor's windows and open alert carry over.
    config.write_text(config.read_text().replace("wide.npz", "classes.npz"))
    running = daemon.pipeline
    daemon.reload()
    assert daemon.pipeline is not running and "sensor state kept" in caplog.text
    assert daemon.pipeline.alerting("bearing") and daemon.pipeline.label("bearing") == "inner"
    events = daemon.pipeline.update(["bearing"] * 250, x[150:], np.arange(150, 400) / RATE)
    assert [(e.kind, e.label) for e in events] == [
        ("end", "inner"),
        ("start", "ball"),
        ("end", "ball"),
    ]
    # A next-step predictor of the same width: accepted, sensor state reset (another kind).
    from daemon_helpers import make_model

    make_model(tmp_path / "predictor.npz")
    config.write_text(
        config.read_text()
        .replace("classes.npz", "predictor.npz")
        .replace('normal_class = "normal"\nmin_probability = 0.9\nconsecutive = 2\n', "")
    )
    daemon.reload()
    assert "sensor state reset by the reload" in caplog.text
    assert daemon.metrics.value("streamlstm_reloads_total", (("result", "ok"),)) == 2
