"""Big and hostile fleets (issue 12, item 7): a cap on sensors, idle sensors evicted, state
topics optional. Eviction exactness in-process; the daemon as a subprocess on a real
mosquitto."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from daemon_helpers import DaemonProcess, make_model, recording, site_config
from mqtt_helpers import Subscriber, free_port, publisher, wait_until

import streamlstm as sl
from streamlstm import formats
from streamlstm.daemon import snapshot
from streamlstm.daemon.config import validate
from streamlstm.daemon.metrics import scrape
from streamlstm.errors import ConfigError

RATE = 100.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


def test_evicted_rows_are_reused_and_a_returning_sensor_starts_fresh(model_path):
    model = formats.load(model_path)
    x = recording(2.0, RATE, [(1.0, 1.2)], seed=3)
    t = np.arange(len(x)) / RATE
    detector = sl.Detector(model, capacity=2)
    for sensor in ("a", "b", "c"):
        detector.update([sensor] * 100, x[:100], t[:100])
    kept = {s: detector.bank.state_vector(s) for s in ("a", "c")}
    capacity = detector.bank.capacity
    assert detector.evict(["b", "unknown"]) == []  # no alert was open on "b"
    assert detector.sensors == ["a", "c"]
    detector.update(["d"] * 100, x[:100], t[:100])  # takes b's row: no growth
    assert detector.bank.capacity == capacity
    for sensor, state in kept.items():  # the others are untouched
        np.testing.assert_array_equal(detector.bank.state_vector(sensor), state)
    # A snapshot now (rows no longer in sensor order) restores every sensor exactly.
    restored = sl.Detector(model)
    restored.import_state(detector.export_state())
    assert restored.sensors == ["a", "c", "d"]
    for sensor in ("a", "c", "d"):
        np.testing.assert_array_equal(
            restored.bank.state_vector(sensor), detector.bank.state_vector(sensor)
        )
    # "b" comes back: exactly as a sensor never seen before.
    events = detector.update(["b"] * len(x), x, t)
    fresh = sl.Detector(model)
    reference = fresh.update(["b"] * len(x), x, t)
    assert [(e.kind, e.t) for e in events] == [(e.kind, e.t) for e in reference]
    np.testing.assert_array_equal(detector.last_scores, fresh.last_scores)
    assert detector.rejected("b") == 0


def test_state_topic_false_turns_state_topics_off():
    config = validate({"sinks": [{"type": "mqtt", "state_topic": False}]})
    assert config.sinks[0].state_topic is None
    with pytest.raises(ConfigError, match="homeassistant: needs state topics"):
        validate({"sinks": [{"type": "mqtt", "state_topic": False, "homeassistant": True}]})
    with pytest.raises(ConfigError, match="state_topic: must be a topic template or false"):
        validate({"sinks": [{"type": "mqtt", "state_topic": True}]})


MQTT_SOURCE = """
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{sensor}/accel"
payload = "json"
qos = 1
"""


def _send(pub, sensor: str, samples: np.ndarray, start: float) -> None:
    batch = {"t": start, "rate": RATE, "samples": samples.tolist()}
    pub.publish(f"sensors/{sensor}/accel", json.dumps(batch), qos=1)


def test_sensor_cap_refuses_new_ids_and_counts_them_without_state_topics(
    broker, tmp_path, model_path
):
    port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=port,
        sources=MQTT_SOURCE,
        extra_daemon="max_sensors = 3\n",
    )
    no_states = 'spool_dir = "spool"\nstate_topic = false'
    site.write_text(site.read_text().replace('spool_dir = "spool"', no_states))
    sub = Subscriber(broker.port, ["streamlstm/#"])
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    samples = recording(1.0, RATE, [], seed=2)
    try:
        wait_until(lambda: "subscribed to" in daemon.log(), 60, "the daemon to subscribe")
        for index in range(8):  # eight ids, one message each: only the first three get rows
            _send(pub, f"id{index}", samples[:50], 0.0)
        wait_until(
            lambda: scrape(port).get("streamlstm_sensor_limit_samples_total") == 250, 20, "refusals"
        )
        _send(pub, "id1", samples[50:], 0.5)  # a known sensor goes on being served
        wait_until(lambda: scrape(port).get("streamlstm_samples_total") == 200, 20, "200 samples")
        metrics = scrape(port)
        time.sleep(1.0)  # a few state intervals (0.5 s): nothing may appear
    finally:
        pub.disconnect()
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    assert metrics["streamlstm_sensors"] == 3
    assert daemon.log().count("max_sensors (3) reached") == 1
    assert sub.payloads("streamlstm/status") and not [
        t for t, _, _ in sub.messages if t.endswith("/state")
    ]
    state = snapshot.load(tmp_path / "state.npz")
    assert state["detector"]["sensors"] == ["id0", "id1", "id2"]
    sub.close()


def test_idle_sensors_are_evicted_and_come_back_fresh(broker, tmp_path, model_path):
    port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=port,
        sources=MQTT_SOURCE,
        extra_daemon="sensor_idle_s = 1.0\n",
    )
    sub = Subscriber(broker.port, ["streamlstm/+/state", "streamlstm/+/alert"])
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    samples = recording(20.0, RATE, [(0.6, 1.0)], seed=4)  # "quiet" goes silent in a burst
    try:
        wait_until(lambda: "subscribed to" in daemon.log(), 60, "the daemon to subscribe")
        _send(pub, "quiet", samples[:100], 0.0)
        wait_until(lambda: scrape(port).get("streamlstm_sensors") == 1, 20, "the first sensor")
        wait_until(lambda: sub.json("/alert"), 20, "quiet's alert")
        # "busy" keeps talking every 0.2 s; "quiet" says nothing for over a second.
        for step in range(10):
            _send(pub, "busy", samples[200 + step * 20 : 220 + step * 20], step * 0.2)
            time.sleep(0.2)
        wait_until(lambda: scrape(port).get("streamlstm_expired_sensors_total") == 1, 20, "expiry")
        assert scrape(port)["streamlstm_sensors"] == 1
        # Its open alert ended when it went (at its last sample), and its retained state
        # was deleted (an empty retained message): a new subscriber finds none.
        wait_until(lambda: len(sub.json("/alert")) == 2, 10, "the eviction's end")
        start, end = sub.json("/alert")
        assert (start["sensor"], start["kind"], "reason" in start) == ("quiet", "start", False)
        assert (end["sensor"], end["kind"], end["reason"]) == ("quiet", "end", "evicted")
        assert end["t"] == pytest.approx(0.99) and end["seq"] == start["seq"] + 1
        wait_until(lambda: sub.payloads("streamlstm/quiet/state")[-1:] == [b""], 10, "deletion")
        late = Subscriber(broker.port, ["streamlstm/+/state"], client_id="late-subscriber")
        time.sleep(0.5)  # retained messages arrive right after the subscription
        assert not late.payloads("streamlstm/quiet/") and late.payloads("streamlstm/busy/")
        late.close()
        _send(pub, "quiet", samples[100:150], 1.0)  # back: a new row, a fresh start
        wait_until(lambda: scrape(port).get("streamlstm_sensors") == 2, 20, "the return")
        # Its retained state counts from zero again: 50 samples, not 150.
        wait_until(
            lambda: (
                [m["samples"] for m in sub.json("/state") if m["sensor"] == "quiet"][-1:] == [50]
            ),
            10,
            "the returning sensor's fresh state",
        )
        # Both go quiet: both expire, and the snapshot at exit holds neither.
        wait_until(lambda: scrape(port).get("streamlstm_expired_sensors_total") == 3, 20, "expiry")
    finally:
        pub.disconnect()
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    assert "1 sensor(s) idle for 1 s expired (first: quiet)" in daemon.log()
    state = snapshot.load(tmp_path / "state.npz")
    assert state["detector"]["sensors"] == [] and state["sensors"]["names"] == []
    sub.close()
