"""Faults that must degrade the daemon, not stop it (issue 12, item 4): a full disk under a
sink, reloads that cannot be honoured, unusable snapshots at start. Real subprocesses, a
real mosquitto, a real (tiny, full) tmpfs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import (
    DETECTOR_OPTIONS,
    DaemonProcess,
    expected_events,
    make_model,
    recording,
    site_config,
)
from mqtt_helpers import Subscriber, free_port, publisher, wait_until
from snapshot_helpers import compressed_bomb

import streamlstm as sl
from streamlstm import formats
from streamlstm.daemon import snapshot
from streamlstm.daemon.metrics import scrape
from streamlstm.detect import calibrate

RATE = 100.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs mount (root only), unmounted afterwards; :func:`fill` fills it.

    Like a missing broker, being unable to mount fails the test unless skipping is asked
    for explicitly (``STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS=1``).
    """
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs to simulate a full disk (run as root): {done.stderr}"
        if os.environ.get("STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS") == "1":
            pytest.skip(message)
        pytest.fail(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        try:
            for _ in range(10_000):
                file.write(b"\0" * 1024)
        except OSError as exc:
            assert exc.errno == 28
    with pytest.raises(OSError, match="No space left"):
        (folder / "probe").write_bytes(b"x" * 4096)
    return filler


def replay_source(path: Path, speed: float = 1.0) -> str:
    return f"""
[[sources]]
type = "replay"
name = "line"
path = "{path}"
speed = {speed}
block = 10
progress = false
"""


def jsonl_seqs(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def write_recording(tmp_path: Path, seconds: float, faults, seed: int) -> tuple[Path, list]:
    samples = recording(seconds, RATE, faults, seed=seed)
    path = tmp_path / "line.npz"
    np.savez(path, samples=samples, rate=np.float64(RATE), sensor=np.str_("line"))
    return path, samples


# -- a full disk under the MQTT spool -------------------------------------------------------


@pytest.mark.slow
def test_full_disk_under_the_spool_starves_no_other_sink_and_recovers(
    broker, tmp_path, model_path, full_disk
):
    path, samples = write_recording(tmp_path, 9.0, [(1.5, 1.8), (3.0, 3.3), (7.0, 7.3)], 21)
    expected = expected_events(model_path, ["line"], [samples], [np.arange(len(samples)) / RATE])
    assert len(expected) == 6
    port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=port,
        sources=replay_source(path),
        extra_daemon="exit_when_sources_end = false\n",
    )
    site.write_text(site.read_text().replace('spool_dir = "spool"', f'spool_dir = "{full_disk}"'))
    filler = fill(full_disk)
    sub = Subscriber(broker.port, ["streamlstm/+/alert"])
    daemon = DaemonProcess(site, tmp_path)
    jsonl = tmp_path / "alerts.jsonl"
    try:
        # The first two alerts (two faults) arrive while the disk is full.
        wait_until(lambda: len(jsonl_seqs(jsonl)) >= 4, 90, "four alerts in the JSONL log")
        metrics = scrape(port)
        assert metrics['streamlstm_sink_errors_total{sink="mqtt0",reason="ENOSPC"}'] >= 1
        assert metrics["streamlstm_seq_unreserved_total"] >= 1
        assert daemon.process.poll() is None
        filler.unlink()  # room again: the last fault's alerts go out over MQTT too
        wait_until(lambda: len(jsonl_seqs(jsonl)) >= 6, 30, "every alert in the JSONL log")
        wait_until(lambda: len(sub.json("/alert")) >= 2, 15, "the alerts after the disk freed")
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted((a["sensor"], a["kind"], round(a["t"], 6)) for a in logged) == expected
    seqs = [a["seq"] for a in logged]
    assert seqs == sorted(set(seqs))  # unique and increasing, full disk or not
    over_mqtt = {a["seq"] for a in sub.json("/alert")}
    assert over_mqtt == set(seqs[4:])  # what was decided once the disk had room again
    assert daemon.log().count("No space left on device") == 1  # logged once, counted always
    sub.close()


@pytest.mark.slow
def test_restart_on_a_full_disk_keeps_deciding_and_drains_the_spool(
    broker, tmp_path, model_path, full_disk
):
    path, samples = write_recording(tmp_path, 14.0, [(1.5, 1.8), (3.5, 3.8), (5.5, 5.8)], 22)
    expected = expected_events(model_path, ["line"], [samples], [np.arange(len(samples)) / RATE])
    site = site_config(
        tmp_path, broker_port=broker.port, model=model_path, sources=replay_source(path)
    )
    spool = full_disk / "spool"
    site.write_text(site.read_text().replace('spool_dir = "spool"', f'spool_dir = "{spool}"'))
    sub = Subscriber(broker.port, ["streamlstm/+/alert"])
    time.sleep(1.2)  # mosquitto saves the subscription every second
    broker.stop()  # no PUBACKs: the alerts stay spooled
    first = DaemonProcess(site, tmp_path, "first")
    try:
        wait_until(lambda: len(list(spool.glob("*.json"))) >= 2, 90, "two spooled alerts")
    finally:
        first.stop(signal.SIGKILL)
    spooled = sorted(json.loads(p.read_text())["seq"] for p in spool.glob("*.json"))
    jsonl = tmp_path / "alerts.jsonl"
    before = len(jsonl_seqs(jsonl))
    # The restart meets a full disk (reserving seq numbers and spooling fail: this used to
    # exit, into a restart loop) and a broker that is still down.
    fill(full_disk)
    second = DaemonProcess(site, tmp_path, "second")
    try:
        wait_until(lambda: len(jsonl_seqs(jsonl)) >= before + 2, 90, "alerts after the restart")
        broker.start()
        wait_until(lambda: set(spooled) <= {a["seq"] for a in sub.json("/alert")}, 60, "the spool")
        assert second.process.wait(60) == 0, second.log()
    finally:
        second.stop(signal.SIGKILL)
    assert not list(spool.glob("*.json"))  # acknowledged, so deleted even on a full disk
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    after_restart = logged[before:]
    # The restart decided the whole recording again, with seq numbers nobody used before.
    assert sorted((a["sensor"], a["kind"], round(a["t"], 6)) for a in after_restart) == expected
    seqs = [a["seq"] for a in after_restart]
    assert not set(seqs) & set(spooled) and seqs == sorted(set(seqs))
    assert "No space left on device" in second.log()
    sub.close()


# -- reloads that cannot be honoured ------------------------------------------------------


MQTT_SOURCE = """
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{sensor}/accel"
payload = "json"
qos = 1
"""


def test_sighup_refuses_other_widths_and_unbuildable_sinks_keeping_everything_running(
    broker, tmp_path, model_path
):
    wide = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    formats.save(
        calibrate(sl.random_model(5, [8], output_size=5, seed=2), rng.normal(size=(2000, 5))),
        wide,
    )
    port = free_port()
    site = site_config(
        tmp_path, broker_port=broker.port, model=model_path, metrics_port=port, sources=MQTT_SOURCE
    )
    original = site.read_text()
    (tmp_path / "a-file").write_text("not a folder\n")
    sub = Subscriber(broker.port, ["streamlstm/+/alert", "streamlstm/status"])
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    samples = recording(30.0, RATE, [(12.0, 12.4), (22.0, 22.4)], seed=4)

    def send(start_s: float, end_s: float) -> None:
        for block in range(int(start_s * RATE), int(end_s * RATE), 100):
            batch = {"t": block / RATE, "rate": RATE, "samples": samples[block : block + 100]}
            batch["samples"] = batch["samples"].tolist()
            pub.publish("sensors/pump/accel", json.dumps(batch), qos=1)

    def samples_total() -> float:
        return scrape(port).get("streamlstm_samples_total", 0)

    def refused() -> float:
        return scrape(port).get('streamlstm_reloads_total{result="refused"}', 0)

    try:
        wait_until(lambda: "subscribed to" in daemon.log(), 60, "the daemon to subscribe")
        send(0, 5)
        wait_until(lambda: samples_total() == 500, 20, "500 samples")
        site.write_text(original.replace(str(model_path), str(wide)))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: refused() == 1, 30, "the wider model to be refused")
        assert "takes 5 values per sample, the running one 3" in daemon.log()
        send(5, 10)
        wait_until(lambda: samples_total() == 1000, 20, "1000 samples with the old model")

        site.write_text(original.replace('"alerts.jsonl"', f'"{tmp_path / "a-file" / "x.jsonl"}"'))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: refused() == 2, 30, "the unwritable JSONL path to be refused")
        site.write_text(
            original.replace(
                'client_id = "test-daemon"',
                'client_id = "test-daemon"\npassword_file = "missing-password"',
            )
        )
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: refused() == 3, 30, "the missing password file to be refused")
        # The old sinks were never closed: the next fault's alerts reach both of them.
        send(10, 30)
        wait_until(lambda: samples_total() == 3000, 30, "3000 samples")
        wait_until(lambda: len(sub.json("/alert")) >= 4, 20, "four alerts over MQTT")
    finally:
        pub.disconnect()
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    log = daemon.log()
    assert "a-file" in log and "mqtt.password_file" in log and log.count("reload refused") == 3
    expected = expected_events(model_path, ["pump"], [samples], [np.arange(3000) / RATE])
    mqtt_seqs = sorted({a["seq"] for a in sub.json("/alert")})
    assert jsonl_seqs(tmp_path / "alerts.jsonl") == mqtt_seqs and len(mqtt_seqs) == len(expected)
    assert not (tmp_path / "a-file").is_dir()
    status = sub.payloads("streamlstm/status")
    assert status.count(b"online") == 1 and status[-1] == b"offline"  # one connection, kept
    sub.close()


# -- unusable snapshots at start ------------------------------------------------------------


def _other_models_snapshot(path: Path) -> None:
    rng = np.random.default_rng(1)
    other = calibrate(sl.random_model(5, [8], output_size=5, seed=3), rng.normal(size=(500, 5)))
    detector = sl.Detector(other, **DETECTOR_OPTIONS)
    detector.update(["line"] * 20, rng.normal(size=(20, 5)), np.arange(20.0))
    tree = {"model_sha256": "x", "detector": detector.export_state().to_tree(), "sensors": {}}
    snapshot.save(path, tree)


@pytest.mark.parametrize(
    ("kind", "make", "reason"),
    [
        ("zero-byte", lambda p: p.write_bytes(b""), "unreadable"),
        ("malformed", lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(3000)), "unreadable"),
        ("compressed-bomb", compressed_bomb, "unreadable"),
        ("other-model", _other_models_snapshot, "mismatch"),
    ],
)
def test_unusable_snapshot_at_start_is_set_aside_and_the_daemon_starts_fresh(
    tmp_path, model_path, kind, make, reason
):
    path, _ = write_recording(tmp_path, 2.0, [], 23)
    state = tmp_path / "state.npz"
    make(state)
    original = state.read_bytes()
    port = free_port()
    site = tmp_path / "site.toml"
    site.write_text(f"""
[daemon]
snapshot_path = "state.npz"
metrics_port = {port}
exit_when_sources_end = false
[model]
path = "{model_path}"
{replay_source(path, speed=0.0)}
[[sinks]]
type = "jsonl"
path = "alerts.jsonl"
""")
    daemon = DaemonProcess(site, tmp_path)
    try:
        wait_until(lambda: "running:" in daemon.log(), 90, "the daemon to run")
        metrics = scrape(port)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 200, 30, "the replay")
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    label = f'streamlstm_snapshot_restore_failures_total{{reason="{reason}"}}'
    assert metrics[label] == 1, kind
    aside = list(tmp_path.glob("state.npz.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == original  # kept for inspection
    assert f"moved to {aside[0]}" in daemon.log() and "starting from fresh state" in daemon.log()
    fresh = snapshot.load(state)  # the clean stop wrote a new one
    assert fresh["detector"]["sensors"] == ["line"]
    assert int(fresh["sensors"]["samples"][0]) == 200
