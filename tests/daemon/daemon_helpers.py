"""Running ``streamlstm run`` as a real subprocess, and a calibrated test model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

import streamlstm as sl
from streamlstm import formats
from streamlstm.detect import calibrate

REPO = Path(__file__).resolve().parents[2]
DETECTOR_OPTIONS = {"warmup_steps": 10, "debounce_steps": 2, "quiet_s": 0.0}


def make_model(path: Path) -> Path:
    """A small random next-step predictor calibrated on Gaussian noise (alerts on bursts)."""
    rng = np.random.default_rng(0)
    model = calibrate(
        sl.random_model(3, [16], output_size=3, seed=1),
        rng.normal(size=(3000, 3)).astype(np.float32),
        **DETECTOR_OPTIONS,
    )
    formats.save(model, path)
    return path


def recording(
    seconds: float, rate: float, faults: list[tuple[float, float]], seed: int
) -> np.ndarray:
    """Gaussian noise ``(seconds * rate, 3)`` with 30x bursts over the ``faults`` intervals (s)."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=(int(seconds * rate), 3)).astype(np.float32)
    for start, end in faults:
        samples[int(start * rate) : int(end * rate)] *= 30
    return samples


def expected_events(
    model_path: Path, sensors: list[str], samples: list[np.ndarray], times: list[np.ndarray]
) -> list[tuple[str, str, float]]:
    """What the detector decides for each sensor's sequence, computed in this process."""
    detector = sl.Detector(formats.load(model_path))
    events = []
    for sensor, x, t in zip(sensors, samples, times, strict=True):
        events += [
            (str(e.sensor), e.kind, round(e.t, 6)) for e in detector.update([sensor] * len(x), x, t)
        ]
    return sorted(events)


class DaemonProcess:
    """``python -m streamlstm.cli run --config <site>``, output in ``<folder>/daemon-N.log``.

    ``prelude``: Python run in the process first (a test's fault injection)."""

    def __init__(
        self,
        site: Path,
        folder: Path,
        name: str = "daemon",
        env: dict[str, str] | None = None,
        prelude: str = "",
    ) -> None:
        self.log_path = folder / f"{name}.log"
        command = ["-m", "streamlstm.cli", "run", "--config", str(site)]
        if prelude:
            run = f"import sys\nfrom streamlstm.cli import main\nsys.exit(main({command[2:]!r}))"
            command = ["-c", f"{prelude}\n{run}"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def site_config(
    folder: Path,
    *,
    broker_port: int,
    model: Path,
    metrics_port: int | None = None,
    sources: str,
    snapshot_interval_s: float = 60.0,
    extra_daemon: str = "",
) -> Path:
    """Write a site.toml: MQTT sink with fast state updates, JSONL sink, ``sources`` text."""
    metrics = f"metrics_port = {metrics_port}\n" if metrics_port else ""
    options = ", ".join(f"{k} = {v}" for k, v in DETECTOR_OPTIONS.items())
    text = f"""
[daemon]
snapshot_path = "state.npz"
snapshot_interval_s = {snapshot_interval_s}
backpressure = "block"
log_level = "info"
{metrics}{extra_daemon}
[model]
path = "{model}"

[detector]
options = {{ {options} }}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "test-daemon"
keepalive_s = 5

{sources}

[[sinks]]
type = "mqtt"
spool_dir = "spool"
state_interval_s = 0.5

[[sinks]]
type = "jsonl"
path = "alerts.jsonl"
"""
    path = folder / "site.toml"
    path.write_text(text)
    return path
