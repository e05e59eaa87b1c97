"""systemd integration against a real notify socket (issue 12, item 10): READY only once the
kernels are compiled or loaded, and the watchdog fed only while every daemon thread lives."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from daemon_helpers import REPO, make_model, recording, site_config
from mqtt_helpers import free_port, publisher, wait_until
from systemd_helpers import NotifySocket

from streamlstm.daemon.config import validate
from streamlstm.daemon.engine import Daemon
from streamlstm.daemon.metrics import scrape
from streamlstm.sources import SourceStats

MQTT_SOURCE = """
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{sensor}/accel"
payload = "json"
qos = 1
"""


def test_ready_comes_after_the_kernels_and_the_watchdog_keeps_its_pace(broker, tmp_path):
    model = make_model(tmp_path / "model.npz")
    port = free_port()
    site = site_config(
        tmp_path, broker_port=broker.port, model=model, metrics_port=port, sources=MQTT_SOURCE
    )
    notify = NotifySocket(tmp_path / "notify")
    log_path = tmp_path / "daemon.log"
    log_at_ready: list[str] = []
    notify.on_ready.append(lambda: log_at_ready.append(log_path.read_text()))
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",  # WATCHDOG=1 every second
        "NUMBA_DEBUG_CACHE": "1",  # numba prints every kernel it loads from (or saves to) cache
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlstm.cli", "run", "--config", str(site)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pub = publisher(broker.port)
    samples = recording(3.0, 100.0, [], seed=1)
    try:
        wait_until(lambda: log_at_ready, 180, "READY=1")
        wait_until(lambda: "subscribed to" in log_path.read_text(), 30, "the subscription")
        # Only now does data arrive: a micro-batch on the parallel path, then single samples.
        for sensor in ("a", "b", "c"):
            batch = {"t": 0.0, "rate": 100.0, "samples": samples[:100].tolist()}
            pub.publish(f"sensors/{sensor}/accel", json.dumps(batch), qos=1)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 300, 30, "300 samples")
        for index in range(100, 110):
            batch = {"t": index / 100, "samples": samples[index : index + 1].tolist()}
            pub.publish("sensors/a/accel", json.dumps(batch), qos=1)
            time.sleep(0.05)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 310, 30, "310 samples")
        time.sleep(2.5)
    finally:
        pub.disconnect()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        notify.close()
    full_log = log_path.read_text()
    assert code == 0, full_log
    before, after = log_at_ready[0], full_log[len(log_at_ready[0]) :]
    assert "kernels ready in" in before
    assert "[cache] data loaded" in before or "[cache] data saved" in before
    assert "[cache]" not in after, after  # nothing was compiled or loaded after READY
    texts = notify.texts()
    assert texts.index("STATUS=compiling or loading kernels") < texts.index("READY=1")
    assert texts[-1] == "STOPPING=1"
    ready = notify.times("READY=1")[0]
    pings = [t for t in notify.times("WATCHDOG=1") if t > ready]
    assert len(pings) >= 3
    gaps = [b - a for a, b in zip([ready, *pings], pings, strict=False)]
    assert max(gaps) < 5.0, gaps  # WatchdogSec=2 would have been kept


class DyingSource:
    """A source whose thread ends with an exception nobody catches (SystemExit), on request."""

    name = "dying"

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.die = threading.Event()

    def run(self, emit, stop) -> None:
        while not stop.is_set():
            if self.die.wait(0.05):
                raise SystemExit("simulated thread death")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_watchdog_stops_when_a_daemon_thread_dies(tmp_path, monkeypatch, caplog):
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WATCHDOG=1 every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = validate(
        {
            "daemon": {"exit_when_sources_end": False, "snapshot_path": "state.npz"},
            "sources": [{"type": "demo", "speed": 1.0}],
            "sinks": [{"type": "jsonl", "path": "alerts.jsonl"}],
        },
        base=tmp_path,
    )
    daemon = Daemon(config)
    dying = DyingSource()
    daemon.sources.append(dying)
    runner = threading.Thread(target=daemon.run, name="test-daemon")
    caplog.set_level(logging.ERROR, "streamlstm.daemon")
    runner.start()
    try:
        wait_until(lambda: len(notify.times("WATCHDOG=1")) >= 3, 120, "watchdog pings")
        assert daemon.metrics.value("streamlstm_healthy") == 1
        dying.die.set()
        wait_until(lambda: daemon.metrics.value("streamlstm_healthy") == 0, 10, "the dead thread")
        stopped = time.monotonic()
        time.sleep(1.5)
        late = [t for t in notify.times("WATCHDOG=1") if t > stopped]
        assert late == []  # systemd would now restart the daemon
        assert daemon.metrics.value("streamlstm_samples_total") > 0  # the rest still runs
    finally:
        daemon.request_stop()
        runner.join(60)
        notify.close()
    assert not runner.is_alive()
    problems = [r.getMessage() for r in caplog.records if "unhealthy" in r.getMessage()]
    assert len(problems) == 1  # logged once, not every second
    assert "source dying: thread ended" in problems[0] and "watchdog" in problems[0]


@pytest.fixture(autouse=True)
def _no_inherited_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
