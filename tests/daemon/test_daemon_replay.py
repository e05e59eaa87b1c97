"""Replays and the no-config demo, run as users run them (subprocess, stdout)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from daemon_helpers import REPO, expected_events, make_model, recording

from streamlstm.daemon.pipeline import default_model_path
from streamlstm.sources.demo import demo_path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "streamlstm.cli", *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def test_csv_replay_prints_the_expected_alerts_and_plots(tmp_path):
    model = make_model(tmp_path / "model.npz")
    samples = recording(12.0, 100.0, [(4.0, 4.5), (8.0, 8.3)], seed=11)
    t = 50.0 + np.arange(len(samples)) / 100.0
    rows = "\n".join(
        f"{ti:.2f},{x:.6f},{y:.6f},{z:.6f}" for ti, (x, y, z) in zip(t, samples, strict=True)
    )
    (tmp_path / "rec.csv").write_text("time,x,y,z\n" + rows + "\n")
    site = tmp_path / "site.toml"
    site.write_text(f"""
[model]
path = "{model}"
[detector]
options = {{ warmup_steps = 10, debounce_steps = 2, quiet_s = 0.0 }}
[[sources]]
type = "replay"
path = "rec.csv"
time_column = 0
columns = [1, 2, 3]
sensor = "press"
plot = "rec.png"
[[sinks]]
type = "stdout"
[[sinks]]
type = "jsonl"
path = "alerts.jsonl"
""")
    expected = expected_events(model, ["press"], [samples], [np.round(t, 2)])
    done = run_cli("run", "--config", str(site))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "ALERT" in line]
    assert len(lines) == len(expected) == 4
    assert "ALERT START  press" in lines[0] and "(seq 1)" in lines[0]
    logged = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert sorted((a["sensor"], a["kind"], round(a["t"], 6)) for a in logged) == expected
    assert "replay0: 1200/1200 samples (100%)" in done.stderr  # the progress line
    # Whole lines (readable in a log), one per tenth at most, none rewritten in place.
    progress = [line for line in done.stderr.splitlines() if line.startswith("replay0: ")]
    assert "\r" not in done.stderr and 1 <= len(progress) <= 11
    assert all(line.endswith("%)") for line in progress)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "rec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_recording_or_model_refuses_to_start(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(f'[model]\npath = "{tmp_path / "none.npz"}"\n')
    done = run_cli("run", "--config", str(site))
    assert done.returncode == 2 and "model.path" in done.stderr and "none.npz" in done.stderr
    model = make_model(tmp_path / "model.npz")
    site.write_text(f'[model]\npath = "{model}"\n[[sources]]\ntype = "replay"\npath = "gone.npz"\n')
    done = run_cli("check-config", str(site))
    assert done.returncode == 2 and "gone.npz: no such recording" in done.stderr


def test_no_config_runs_the_demo_and_exits():
    assert demo_path().exists() and default_model_path().exists()  # shipped in the package
    done = run_cli("run", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ALERT START" in done.stdout
