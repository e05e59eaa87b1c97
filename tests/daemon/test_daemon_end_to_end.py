"""The daemon as users run it: a subprocess, a real mosquitto, subscribers, signals."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import numpy as np
import pytest
from daemon_helpers import (
    DaemonProcess,
    expected_events,
    make_model,
    recording,
    site_config,
)
from mqtt_helpers import Subscriber, free_port, publisher, wait_until

from streamlstm.daemon import snapshot
from streamlstm.daemon.metrics import scrape

RATE = 100.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


def unique_alerts(sub: Subscriber) -> list[dict]:
    """Alert records deduplicated by seq, as the README tells subscribers to do."""
    seen = {}
    for alert in sub.json("/alert"):
        seen.setdefault(alert["seq"], alert)
    return [seen[s] for s in sorted(seen)]


def samples_of(state: dict, sensor: str) -> int:
    """How many samples a snapshot's daemon records count for ``sensor``."""
    columns = state["sensors"]
    return int(columns["samples"][columns["names"].index(sensor)])


def as_events(alerts: list[dict]) -> list[tuple[str, str, float]]:
    return sorted((a["sensor"], a["kind"], round(a["t"], 6)) for a in alerts)


MQTT_SOURCE = """
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{sensor}/accel"
payload = "json"
qos = 1
"""


def test_sensors_over_mqtt_alerts_garbage_nan_and_sigterm(broker, tmp_path, model_path):
    sensors = ["s0", "s1", "s2"]
    data = {
        s: recording(20.0, RATE, [(8.0, 9.0)] if s == "s1" else [], seed=i)
        for i, s in enumerate(sensors)
    }
    data["s2"][[150, 950]] = np.nan
    data["s2"][1500, 1] = np.inf
    times = {s: 1000.0 + np.arange(len(x)) / RATE for s, x in data.items()}
    expected = expected_events(
        model_path, sensors, [data[s] for s in sensors], [times[s] for s in sensors]
    )
    clean_s2 = np.isfinite(data["s2"]).all(axis=1)
    assert expected == sorted(  # NaN/Inf rows leave the state as if they had never come
        e
        for e in expected_events(
            model_path,
            sensors,
            [data["s0"], data["s1"], data["s2"][clean_s2]],
            [times["s0"], times["s1"], times["s2"][clean_s2]],
        )
    )
    assert {e[0] for e in expected} == {"s1"} and len(expected) == 2

    port = free_port()
    site = site_config(
        tmp_path, broker_port=broker.port, model=model_path, metrics_port=port, sources=MQTT_SOURCE
    )
    sub = Subscriber(broker.port, ["streamlstm/#"])
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    try:
        wait_until(lambda: "subscribed to" in daemon.log(), 60, "the daemon to subscribe")
        garbage = [b"\xff\xfe", b"{", b"", b'{"samples": [[1, 2]]}', b'{"samples": "lots"}']
        for block in range(0, 2000, 100):
            for sensor in sensors:
                batch = {
                    "t": times[sensor][block],
                    "rate": RATE,
                    "samples": data[sensor][block : block + 100].tolist(),
                }
                # json.dumps writes NaN/Infinity: the daemon decodes, then rejects them
                pub.publish(f"sensors/{sensor}/accel", json.dumps(batch), qos=1)
            if block // 100 < len(garbage):
                pub.publish("sensors/s0/accel", garbage[block // 100], qos=1)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 6000, 30, "all samples")
        wait_until(lambda: len(unique_alerts(sub)) >= 2, 15, "the alerts")
        metrics = scrape(port)
        wait_until(
            lambda: {"s0", "s1", "s2"} <= {m["sensor"] for m in sub.json("/state")}, 10, "states"
        )
    finally:
        pub.disconnect()
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    alerts = unique_alerts(sub)
    assert as_events(alerts) == expected
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert all(
        a["schema"] == "streamlstm.alert/1"
        and a["model"]["sha256"] == sha
        and a["daemon"] == "test-daemon"
        for a in alerts
    )
    assert [a["kind"] for a in alerts] == ["start", "end"] and alerts[0]["seq"] < alerts[1]["seq"]
    assert alerts[0]["score"] > alerts[0]["threshold"]
    errors = {k: v for k, v in metrics.items() if k.startswith("streamlstm_parse_errors_total")}
    assert errors == {
        f'streamlstm_parse_errors_total{{source="plant",reason="{r}"}}': 1.0
        for r in ("encoding", "json", "empty", "width")
    } | {'streamlstm_parse_errors_total{source="plant",reason="schema"}': 1.0}
    assert metrics["streamlstm_rejected_samples_total"] == 3
    assert metrics['streamlstm_connected{component="sink:mqtt"}'] == 1
    assert metrics["streamlstm_sensors"] == 3
    # SIGTERM: a retained offline, a snapshot of every sensor, the JSONL log complete.
    wait_until(
        lambda: sub.payloads("streamlstm/status")[-1:] == [b"offline"], 10, "the offline status"
    )
    state = snapshot.load(tmp_path / "state.npz")
    assert state["detector"]["sensors"] == sensors
    assert samples_of(state, "s0") == 2000
    logged = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["seq"] for a in logged] == [a["seq"] for a in alerts]
    final_state = [m for m in sub.json("/state") if m["sensor"] == "s2"][-1]
    assert final_state["rejected"] == 3 and final_state["samples"] == 2000
    sub.close()


def replay_source(path) -> str:
    return f"""
[[sources]]
type = "replay"
name = "line"
path = "{path}"
speed = 1.0
block = 10
progress = false
"""


@pytest.mark.slow
def test_broker_killed_and_restarted_mid_stream_loses_no_alert(broker, tmp_path, model_path):
    faults = [(1.5, 1.8), (3.5, 3.8), (5.5, 5.8), (7.0, 7.3)]
    samples = recording(8.5, RATE, faults, seed=5)
    np.savez(tmp_path / "line.npz", samples=samples, rate=np.float64(RATE), sensor=np.str_("line"))
    t = np.arange(len(samples)) / RATE
    expected = expected_events(model_path, ["line"], [samples], [t])
    assert len(expected) == 2 * len(faults)
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        sources=replay_source(tmp_path / "line.npz"),
    )
    sub = Subscriber(broker.port, ["streamlstm/#"])
    time.sleep(1.2)  # mosquitto saves sessions every second: let it save this subscription
    daemon = DaemonProcess(site, tmp_path)
    try:
        wait_until(lambda: unique_alerts(sub), 60, "the first alert")
        broker.stop(signal.SIGKILL)  # no goodbye: sessions as of the last autosave
        time.sleep(1.5)  # the replay keeps deciding alerts meanwhile
        broker.start()
        assert daemon.process.wait(40) == 0, daemon.log()
        wait_until(lambda: len(unique_alerts(sub)) >= len(expected), 20, "every alert")
    finally:
        daemon.stop(signal.SIGKILL)
    assert as_events(unique_alerts(sub)) == expected
    status = sub.payloads("streamlstm/status")
    assert status[-2:] == [b"online", b"offline"] and status.count(b"online") >= 2
    assert "disconnected" in daemon.log()
    sub.close()


def test_sigkill_with_alerts_pending_then_restart_delivers_spool_and_restores_state(
    broker, tmp_path, model_path
):
    samples = recording(12.0, RATE, [(5.0, 5.3), (8.0, 8.3)], seed=7)
    np.savez(tmp_path / "line.npz", samples=samples, rate=np.float64(RATE), sensor=np.str_("line"))
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        snapshot_interval_s=0.3,
        sources=replay_source(tmp_path / "line.npz"),
    )
    sub = Subscriber(broker.port, ["streamlstm/#"])
    time.sleep(1.2)
    first = DaemonProcess(site, tmp_path, "first")
    spool = tmp_path / "spool"
    try:
        wait_until(
            lambda: b"online" in sub.payloads("streamlstm/status"), 60, "the daemon to come online"
        )
        broker.stop(signal.SIGTERM)  # no PUBACKs from now on: alerts stay spooled
        wait_until(lambda: len(list(spool.glob("*.json"))) >= 2, 30, "two spooled alerts")
        first.stop(signal.SIGKILL)
    finally:
        first.stop(signal.SIGKILL)
    spooled = sorted(json.loads(p.read_text())["seq"] for p in spool.glob("*.json"))
    before = snapshot.load(tmp_path / "state.npz")
    assert samples_of(before, "line") > 0
    broker.start()
    second = DaemonProcess(site, tmp_path, "second")
    try:
        wait_until(
            lambda: set(spooled) <= {a["seq"] for a in sub.json("/alert")}, 60, "the spooled alerts"
        )
        wait_until(lambda: "restored 1 sensors" in second.log(), 10, "the snapshot to be restored")
        offline_before = sub.payloads("streamlstm/status").count(b"offline")
        second.stop(signal.SIGKILL)  # the broker publishes the Last Will
        wait_until(
            lambda: sub.payloads("streamlstm/status").count(b"offline") > offline_before,
            15,
            "the Last Will",
        )
    finally:
        second.stop(signal.SIGKILL)
    delivered = [a for a in sub.json("/alert") if a["seq"] in spooled]
    assert {a["kind"] for a in delivered} == {"start", "end"}
    new_seqs = [a["seq"] for a in sub.json("/alert") if a["seq"] not in spooled]
    assert all(s > max(spooled) for s in new_seqs)  # no seq reused after the crash
    sub.close()


def test_sighup_reloads_weights_keeping_state_and_refuses_a_broken_config(
    broker, tmp_path, model_path
):
    port = free_port()
    site = site_config(
        tmp_path, broker_port=broker.port, model=model_path, metrics_port=port, sources=MQTT_SOURCE
    )
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    samples = recording(15.0, RATE, [], seed=3)

    def send(start: int, count: int) -> None:
        for block in range(start, start + count, 100):
            batch = {
                "t": block / RATE,
                "rate": RATE,
                "samples": samples[block : block + 100].tolist(),
            }
            pub.publish("sensors/pump/accel", json.dumps(batch), qos=1)

    try:
        wait_until(lambda: "subscribed to" in daemon.log(), 60, "the daemon to subscribe")
        send(0, 500)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 500, 20, "500 samples")
        retrained = tmp_path / "retrained.npz"
        retrained.write_bytes(model_path.read_bytes()[:-1])  # corrupt weights first: refused
        site.write_text(site.read_text().replace(str(model_path), str(retrained)))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "reload refused" in daemon.log(), 20, "the corrupt weights to be refused"
        )
        make_model(retrained)  # same shape, new weights
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "sensor state kept across the reload" in daemon.log(), 20, "the reload")
        send(500, 500)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 1000, 20, "1000 samples")
        site.write_text("[daemon\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: daemon.log().count("reload refused") == 2, 20, "the broken TOML to be refused"
        )
        send(1000, 500)
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 1500, 20, "1500 samples")
    finally:
        pub.disconnect()
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    state = snapshot.load(tmp_path / "state.npz")
    assert state["model_sha256"] == hashlib.sha256(retrained.read_bytes()).hexdigest()
    assert samples_of(state, "pump") == 1500
