"""The MQTT source and sink on their own, against a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace

import numpy as np
from mqtt_helpers import Broker, Subscriber, publisher, require_tool, wait_until

from streamlstm.daemon.config import BrokerConfig, MQTTSinkConfig, TLSConfig, validate
from streamlstm.daemon.telemetry import source_samples
from streamlstm.sinks import SensorState
from streamlstm.sinks.mqtt import MQTTSink
from streamlstm.sinks.spool import SeqCounter, Spool
from streamlstm.sources.mqtt import MQTTSource, topic_pattern


def mqtt_settings(port: int, client_id: str = "t-daemon") -> BrokerConfig:
    return validate(
        {"mqtt": {"host": "127.0.0.1", "port": port, "client_id": client_id, "keepalive_s": 5}}
    ).mqtt


def test_topic_templates_capture_the_sensor():
    subscription, pattern = topic_pattern("site/{sensor}/accel")
    assert subscription == "site/+/accel"
    assert pattern.fullmatch("site/pump-3/accel").group(1) == "pump-3"
    assert pattern.fullmatch("site/a/b/accel") is None
    subscription, pattern = topic_pattern("acc-{sensor}")
    assert subscription == "+" and pattern.fullmatch("acc-7").group(1) == "7"
    assert pattern.fullmatch("gyro-7") is None


def test_source_decodes_every_payload_kind_and_counts_garbage_per_reason(broker):
    frames, lock, stop = [], threading.Lock(), threading.Event()

    def run_source(kind: str, extra: dict) -> MQTTSource:
        table = validate(
            {
                "sources": [
                    {
                        "type": "mqtt",
                        "name": kind,
                        "topic": f"{kind}/{{sensor}}/accel",
                        "payload": kind,
                        "qos": 1,
                        "max_samples": 50,
                        **extra,
                    }
                ]
            }
        ).sources[0]
        source = MQTTSource.from_config(table, 3, mqtt_settings(broker.port, f"src-{kind}"))

        def emit(batch):
            with lock:
                frames.extend(batch)

        threading.Thread(target=source.run, args=(emit, stop), daemon=True).start()
        wait_until(lambda: source.stats.connected, 10, f"the {kind} source to connect")
        return source

    sources = {
        "json": run_source("json", {}),
        "csv": run_source("csv", {"columns": [1, 2, 3], "time_column": 0}),
        "float32": run_source("float32", {"rate": 100.0}),
    }
    pub = publisher(broker.port)
    try:
        good = [
            ("json/a/accel", b'{"t": 5, "rate": 10, "samples": [[1,2,3],[4,5,6]]}'),
            ("csv/b/accel", b"7,1,2,3\n8,4,5,6\n"),
            ("float32/c/accel", np.arange(6, dtype="<f4").tobytes()),
        ]
        bad = [
            ("json/x/accel", b"\xff\xfe"),
            ("json/x/accel", b"{"),
            ("json/x/accel", b""),
            ("json/x/accel", b'{"samples": [[1,2]]}'),
            ("json/x/accel", json.dumps({"samples": [[0, 0, 0]] * 51}).encode()),
            ("json/x/accel", b"[" * 1_000_000),  # refused unparsed
            ("csv/x/accel", b"1,2\n"),
            ("csv/x/accel", b"1,a,2,3\n"),
            ("float32/x/accel", b"\x00" * 13),
        ]
        for topic, payload in bad[:4] + good + bad[4:]:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: len(frames) == 3, 10, "the three good messages")
        wait_until(
            lambda: sum(sum(s.stats.parse_errors.values()) for s in sources.values()) == len(bad),
            10,
            "every bad message to be counted",
        )
    finally:
        stop.set()
        pub.disconnect()
    by_sensor = {f.sensor: f for f in frames}
    assert by_sensor["a"].samples.tolist() == [[1, 2, 3], [4, 5, 6]]
    np.testing.assert_allclose(by_sensor["a"].t, [5.0, 5.1])
    assert by_sensor["b"].samples.tolist() == [[1, 2, 3], [4, 5, 6]] and by_sensor["b"].t[0] == 7.0
    assert by_sensor["c"].samples.tolist() == [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_allclose(
        np.diff(by_sensor["c"].t), [0.01], atol=1e-6
    )  # host time, spread by rate
    assert dict(sources["json"].stats.parse_errors) == {
        "encoding": 1,
        "json": 1,
        "empty": 1,
        "width": 1,
        "oversize": 2,
    }
    assert dict(sources["csv"].stats.parse_errors) == {"columns": 1, "number": 1}
    assert dict(sources["float32"].stats.parse_errors) == {"length": 1}


def record(seq: int, sensor: str = "s1", kind: str = "start") -> dict:
    return {
        "schema": "streamlstm.alert/1",
        "seq": seq,
        "daemon": "t",
        "sensor": sensor,
        "kind": kind,
        "t": 1.0,
        "published": 2.0,
        "score": 3.0,
        "threshold": 1.0,
        "peak": 3.0,
        "duration": 0.0,
        "model": {"id": "m", "sha256": "0" * 64},
    }


def sink_config(tmp_path, **overrides) -> MQTTSinkConfig:
    return validate(
        {"sinks": [{"type": "mqtt", "spool_dir": str(tmp_path / "spool"), **overrides}]}
    ).sinks[0]


def test_sink_publishes_spools_until_acknowledged_and_says_offline_on_exit(broker, tmp_path):
    sub = Subscriber(broker.port, ["streamlstm/#", "homeassistant/#"])
    sink = MQTTSink.from_config(
        sink_config(tmp_path, homeassistant=True), mqtt_settings(broker.port)
    )
    try:
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.alerts([record(1), record(2, kind="end")])
        sink.states({"s1": SensorState("s1", t=1.0, score=0.5, alert=False, samples=10)})
        assert sink.flush(10)
        wait_until(lambda: len(sub.json("/alert")) == 2, 10, "two alerts")
        wait_until(lambda: sub.json("/config"), 10, "the Home Assistant discovery")
        assert len(sink.spool) == 0
    finally:
        sink.close()
    wait_until(lambda: sub.payloads("streamlstm/status")[-1:] == [b"offline"], 10, "offline")
    assert sub.payloads("streamlstm/status")[0] == b"online"
    assert [a["seq"] for a in sub.json("/alert")] == [1, 2]
    assert sub.json("streamlstm/s1/state")[0]["samples"] == 10
    discovery = sub.json("/config")[0]
    assert discovery["availability_topic"] == "streamlstm/status"
    assert discovery["state_topic"] == "streamlstm/s1/state"
    sub.close()


def test_spooled_alerts_of_a_previous_run_go_out_first(broker, tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(record(7))
    spool.put(record(8, kind="end"))
    sub = Subscriber(broker.port, ["streamlstm/+/alert"])
    sink = MQTTSink.from_config(sink_config(tmp_path), mqtt_settings(broker.port))
    try:
        wait_until(lambda: len(sub.json("/alert")) == 2, 10, "the spooled alerts")
        assert sink.flush(10)
    finally:
        sink.close()
    assert [a["seq"] for a in sub.json("/alert")] == [7, 8]
    assert len(Spool(tmp_path / "spool")) == 0
    sub.close()


def test_home_assistant_coming_online_gets_the_discovery_again(broker, tmp_path):
    sub = Subscriber(broker.port, ["homeassistant/binary_sensor/#"])
    sink = MQTTSink.from_config(
        sink_config(tmp_path, homeassistant=True), mqtt_settings(broker.port)
    )
    pub = publisher(broker.port, "home-assistant")
    try:
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.states({"s1": SensorState("s1"), "s2": SensorState("s2")})
        wait_until(lambda: len(sub.payloads()) == 2, 10, "two discovery messages")
        pub.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        wait_until(lambda: len(sub.payloads()) == 4, 10, "the re-announcement")
    finally:
        pub.disconnect()
        sink.close()
        sub.close()


def test_forgotten_sensors_lose_their_retained_state_and_discovery(broker, tmp_path):
    sub = Subscriber(broker.port, ["streamlstm/+/state", "homeassistant/binary_sensor/#"])
    sink = MQTTSink.from_config(
        sink_config(tmp_path, homeassistant=True), mqtt_settings(broker.port)
    )
    try:
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.states({"s1": SensorState("s1", samples=3), "s2": SensorState("s2", samples=4)})
        wait_until(lambda: len(sub.payloads("homeassistant/")) == 2, 10, "two announcements")
        sink.forget(["s1", "never-seen"])
        wait_until(lambda: b"" in sub.payloads("homeassistant/"), 10, "the discovery removal")
        wait_until(lambda: sub.payloads("streamlstm/s1/")[-1:] == [b""], 10, "the state removal")
        assert len(sub.payloads("homeassistant/")) == 3  # nothing for the unknown id
        late = Subscriber(broker.port, ["streamlstm/+/state"], client_id="late-subscriber")
        wait_until(lambda: late.json("/state"), 10, "the retained states")
        time.sleep(0.3)
        assert [m["sensor"] for m in late.json("/state")] == ["s2"]
        late.close()
        sink.states({"s1": SensorState("s1", samples=1)})  # back: announced again
        wait_until(lambda: len(sub.json("/config")) == 3, 10, "the new announcement")
    finally:
        sink.close()
        sub.close()


def test_seq_numbers_never_repeat_across_restarts(tmp_path):
    first = SeqCounter(tmp_path / "seq")
    taken = [first.take() for _ in range(5)]
    second = SeqCounter(tmp_path / "seq")  # a crash: nothing was saved on exit
    assert second.take() > max(taken)
    assert taken == [1, 2, 3, 4, 5]


def test_password_from_environment_is_used_and_a_wrong_one_refused(tmp_path, monkeypatch):
    require_tool(shutil.which("mosquitto_passwd"), "mosquitto-clients")
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "daemon", "s3cret"], check=True)
    passwords.chmod(0o600)
    broker = Broker(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    try:
        settings = replace(mqtt_settings(broker.port), username="daemon", password_env="MQTT_PW")
        monkeypatch.setenv("MQTT_PW", "wrong")
        refused = MQTTSink.from_config(sink_config(tmp_path / "a"), settings)
        monkeypatch.setenv("MQTT_PW", "s3cret")
        accepted = MQTTSink.from_config(sink_config(tmp_path / "b"), settings)
        wait_until(lambda: accepted.connected, 10, "the right password to be accepted")
        assert not refused.connected
        (tmp_path / "pw").write_text("s3cret\n")
        from_file = MQTTSink.from_config(
            sink_config(tmp_path / "c"),
            replace(
                settings,
                password_env=None,
                password_file=str(tmp_path / "pw"),
                client_id="t-file",
            ),
        )
        wait_until(lambda: from_file.connected, 10, "the password file to be used")
        for sink in (refused, accepted, from_file):
            sink.close(timeout=0.5)
    finally:
        broker.stop()


def test_tls_with_a_private_certificate_authority(tmp_path):
    require_tool(shutil.which("openssl"), "openssl")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    broker = Broker(
        tmp_path,
        f"allow_anonymous true\ncafile {tmp_path}/ca.crt\n"
        f"certfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n",
    )
    broker.start()
    try:
        settings = replace(
            mqtt_settings(broker.port), tls=TLSConfig(ca_file=str(tmp_path / "ca.crt"))
        )
        sink = MQTTSink.from_config(sink_config(tmp_path / "a"), settings)
        wait_until(lambda: sink.connected, 10, "a TLS connection")
        sink.close(timeout=1)
        untrusting = MQTTSink.from_config(
            sink_config(tmp_path / "b"),
            replace(mqtt_settings(broker.port), tls=TLSConfig(), client_id="t-untrusting"),
        )
        time.sleep(1.0)  # its handshake fails: the broker's CA is not a system CA
        assert not untrusting.connected
        untrusting.close(timeout=0.1)
    finally:
        broker.stop()


# -- hostile input and broker faults (issue 12) --------------------------------------------
def json_source(broker_port: int, name: str = "plant", **extra) -> MQTTSource:
    table = validate(
        {
            "sources": [
                {"type": "mqtt", "name": name, "topic": "sensors/{sensor}/accel", "qos": 1, **extra}
            ]
        }
    ).sources[0]
    return MQTTSource.from_config(table, 3, mqtt_settings(broker_port, f"src-{name}"))


def test_a_message_that_raised_in_the_callback_no_longer_stops_intake(broker):
    # Issue 12, item 1: a 400-digit "t" raised OverflowError in paho's network thread;
    # intake was dead from then on, with nothing counted.
    frames, stop = [], threading.Event()
    source = json_source(broker.port)

    def emit(batch):
        if batch[0].sensor == "boom":
            raise RuntimeError("a bug that one message exposes")
        frames.extend(batch)

    thread = threading.Thread(target=source.run, args=(emit, stop), daemon=True)
    thread.start()
    wait_until(lambda: source.stats.connected, 10, "the source to connect")
    digits = "1" + "0" * 400
    poison = [
        ("sensors/x/accel", f'{{"t": {digits}, "samples": [[1,2,3]]}}'.encode()),
        ("sensors/x/accel", f'{{"rate": {digits}, "samples": [[1,2,3]]}}'.encode()),
        ("sensors/boom/accel", b'{"samples": [[1,2,3]]}'),
        ("sensors/" + "y" * 65_519 + "/accel", b'{"samples": [[1,2,3]]}'),
    ]
    pub = publisher(broker.port)
    try:
        for topic, payload in poison:
            if shutil.which("mosquitto_pub") and len(topic) < 1000:  # as the issue reproduced it
                port = str(broker.port)
                subprocess.run(
                    ["mosquitto_pub", "-p", port, "-q", "1", "-t", topic, "-m", payload],
                    check=True,
                    timeout=10,
                )
            else:
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.publish("sensors/ok/accel", b'{"samples": [[4,5,6]]}', qos=1).wait_for_publish(5)
        wait_until(lambda: frames, 10, "the good message after the poison ones")
    finally:
        stop.set()
        pub.disconnect()
        thread.join(10)
    assert [f.sensor for f in frames] == ["ok"]
    assert dict(source.stats.parse_errors) == {"number": 2, "internal": 1, "sensor_id": 1}
    assert source.stats.reconnects == 0


def test_sink_publishes_every_record_it_can_and_keeps_the_others(broker, tmp_path):
    # Issue 12, item 2: client.publish raised for a topic-invalid id in states(),
    # alerts() and MQTTSink.__init__ (spooled alert: a crash loop at every start).
    unencodable, too_long = "\ud800", "y" * 65_519
    spool = Spool(tmp_path / "spool")
    spool.put(record(1, sensor=unencodable))
    spool.put(record(2, sensor="s1"))
    sub = Subscriber(broker.port, ["streamlstm/#"])
    sink = MQTTSink.from_config(sink_config(tmp_path), mqtt_settings(broker.port))
    try:
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.alerts([record(3, sensor=too_long), record(4, sensor="s2")])
        sink.states({unencodable: SensorState(unencodable), "s3": SensorState("s3", samples=5)})
        sink.flush(5)
        wait_until(lambda: len(sub.json("/alert")) == 2, 10, "the two valid alerts")
        wait_until(lambda: sub.json("s3/state"), 10, "the valid state")
    finally:
        sink.close(timeout=1)
        sub.close()
    assert sorted(a["seq"] for a in sub.json("/alert")) == [2, 4]
    assert sink.publish_errors == 3
    assert sorted(r["seq"] for r in Spool(tmp_path / "spool").pending()) == [1, 3]  # kept


def test_every_id_the_intake_accepts_is_published_without_upsetting_the_broker(broker, tmp_path):
    from streamlstm.sources import check_sensor_id
    from streamlstm.sources.parsers import ParseError

    candidates = [
        "plain",
        "with/slash",
        "ümlaut-é",
        "\U0001f600",
        "\U0010fffd",
        "x" * 256,
        "a+b",
        "c#",
        "\x00",
        "\x01",
        "\x7f",
        "\x9f",
        "\ufdd0",
        "\ufffe",
        "\U0001ffff",
        "\ud800",
    ]
    accepted = []
    for sensor in candidates:
        with contextlib.suppress(ParseError):
            accepted.append(check_sensor_id(sensor))
    assert accepted == candidates[:6]
    sub = Subscriber(broker.port, ["streamlstm/+/state"])
    sink = MQTTSink.from_config(sink_config(tmp_path), mqtt_settings(broker.port))
    try:
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.states({s: SensorState(s) for s in accepted})
        wait_until(lambda: len(sub.json("/state")) == len(accepted), 10, "every state")
        assert sink.connected and sink.reconnects == 0 and sink.publish_errors == 0
    finally:
        sink.close(timeout=1)
        sub.close()
    assert sorted(m["sensor"] for m in sub.json("/state")) == sorted(accepted)


def test_alert_refused_by_the_broker_acl_stays_spooled_until_allowed(tmp_path):
    # Issue 12, item 3: a PUBACK with reason 135 (not authorised) was taken as delivery
    # and the spool file deleted.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite streamlstm/status\ntopic readwrite streamlstm/+/state\n")
    broker = Broker(tmp_path, f"allow_anonymous true\nacl_file {acl}\n")
    broker.start()
    try:
        sink = MQTTSink.from_config(
            sink_config(tmp_path, refused_retry_s=0.3), mqtt_settings(broker.port)
        )
        wait_until(lambda: sink.connected, 10, "the sink to connect")
        sink.alerts([record(1)])
        assert not sink.flush(5)  # acknowledged, but refused
        assert sink.refusals == {("alert", "Not authorized"): 1}
        assert [r["seq"] for r in sink.spool.pending()] == [1]
        time.sleep(0.5)

        def refused_again() -> bool:
            sink.states({})  # the compute loop calls this regularly: it retries refused alerts
            return sink.refusals[("alert", "Not authorized")] >= 2

        wait_until(refused_again, 10, "a second refusal")
        assert len(sink.spool) == 1
        # The administrator fixes the ACL; mosquitto re-reads it on SIGHUP.
        acl.write_text(acl.read_text() + "topic readwrite streamlstm/+/alert\n")
        sub = Subscriber(broker.port, ["streamlstm/+/alert"])
        broker.process.send_signal(signal.SIGHUP)

        def delivered() -> bool:
            sink.states({})
            return bool(sub.json("/alert"))

        wait_until(delivered, 15, "the alert once allowed")
        wait_until(lambda: (sink.states({}), len(sink.spool) == 0)[1], 10, "the spool to empty")
        assert [a["seq"] for a in sub.json("/alert")] == [1]
        sink.close(timeout=1)
        sub.close()
    finally:
        broker.stop()


def test_after_step_acks_leave_unacknowledged_messages_with_the_broker(broker):
    # Issue 12, item 9: with ack = "after-step", a message is acknowledged only when the
    # daemon calls frame.ack (after the step); until then the broker redelivers it.
    def run(emit):
        stop = threading.Event()
        source = json_source(broker.port, ack="after-step", receive_maximum=10)
        thread = threading.Thread(target=source.run, args=(emit, stop), daemon=True)
        thread.start()
        wait_until(lambda: source.stats.connected, 10, "the source to connect")
        return stop, thread

    first: list = []
    stop, thread = run(first.extend)
    pub = publisher(broker.port)
    for i in range(25):
        payload = f'{{"t": {i}, "sample": [1,2,3]}}'
        pub.publish("sensors/s/accel", payload, qos=1).wait_for_publish(5)
    # receive_maximum: the broker hands out 10 and holds the rest until some are acked.
    wait_until(lambda: len(first) == 10, 10, "ten unacknowledged messages")
    time.sleep(0.3)
    assert len(first) == 10
    for frame in first[:4]:
        frame.ack()
    wait_until(lambda: len(first) == 25, 10, "the others after some acks")
    stop.set()  # a stop (or crash) with 10 messages handled but not acknowledged
    thread.join(10)
    second: list = []
    stop, thread = run(second.extend)
    wait_until(lambda: len(second) >= 10, 10, "the unacknowledged messages again")
    for frame in list(second):
        frame.ack()
    wait_until(lambda: len(second) == 21, 10, "every unacknowledged message")
    for frame in second[10:]:
        frame.ack()
    time.sleep(0.3)
    stop.set()
    thread.join(10)
    pub.disconnect()
    assert sorted(f.t[0] for f in second) == list(range(4, 25))  # nothing acked came back


def test_a_rate_other_than_the_models_is_counted_and_warned_once_per_sensor(broker, caplog):
    """The README's example once sent rate 1000 to a 50 Hz model; nothing noticed."""
    table = validate(
        {
            "sources": [
                {"type": "mqtt", "name": "plant", "topic": "sensors/{sensor}/accel", "qos": 1}
            ]
        }
    ).sources[0]
    source = MQTTSource.from_config(
        table, 3, mqtt_settings(broker.port, "src-rate"), model_rate=50.0
    )
    frames, stop = [], threading.Event()
    thread = threading.Thread(target=source.run, args=(frames.extend, stop), daemon=True)
    thread.start()
    wait_until(lambda: source.stats.connected, 10, "the source to connect")
    messages = [("a", 1000), ("a", 1000), ("b", 1000), ("a", 50), ("b", 50.2)]
    pub = publisher(broker.port)
    try:
        with caplog.at_level("WARNING", logger="streamlstm.sources.mqtt"):
            for sensor, rate in messages:
                payload = json.dumps({"rate": rate, "samples": [[0.0, 0.0, 1.0]]}).encode()
                pub.publish(f"sensors/{sensor}/accel", payload, qos=1).wait_for_publish(5)
            wait_until(lambda: len(frames) == len(messages), 10, "every message")
    finally:
        stop.set()
        pub.disconnect()
        thread.join(10)
    assert len(frames) == 5  # still stepped: only reported
    counts = source.stats.snapshot()
    assert counts.rate_mismatches == 3
    assert counts.parse_errors == {}  # stepped, so not a parse error
    warned = [r.getMessage() for r in caplog.records if "trained at" in r.getMessage()]
    assert len(warned) == 2
    assert "sensor a sends 1000 samples/s but the model was trained at 50" in warned[0]


def test_a_reload_to_a_model_of_another_rate_checks_messages_against_the_new_rate(broker, tmp_path):
    from daemon_helpers import make_model

    from streamlstm import formats
    from streamlstm.daemon import config as config_module
    from streamlstm.daemon.engine import Daemon

    calibrated = formats.load(make_model(tmp_path / "model.npz"))
    for name, rate in (("fast.npz", 1000.0), ("slow.npz", 50.0)):
        formats.save(calibrated.replace(sample_rate=rate), tmp_path / name)
    site = tmp_path / "site.toml"
    site.write_text(f"""
[model]
path = "{tmp_path / "fast.npz"}"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{{sensor}}/accel"
[[sinks]]
type = "stdout"
""")
    daemon = Daemon(config_module.load(site), config_path=str(site))
    try:
        message = json.dumps({"rate": 50, "samples": [[0.0, 0.0, 1.0]]}).encode()
        daemon.sources[0].decode("sensors/a/accel", message, time.time())
        assert daemon.sources[0].stats.snapshot().rate_mismatches == 1
        site.write_text(site.read_text().replace("fast.npz", "slow.npz"))
        daemon.reload()
        assert daemon.metrics.value("streamlstm_reloads_total", (("result", "ok"),)) == 1
        daemon.sources[0].decode("sensors/a/accel", message, time.time())
        assert daemon.sources[0].stats.snapshot().rate_mismatches == 0  # 50 is now right
    finally:
        daemon.shutdown()


def test_subscribed_is_said_on_the_brokers_answer_and_a_refusal_is_an_error(broker, caplog):
    """'subscribed' was logged when the SUBSCRIBE went out: a publisher that waited for it
    could publish before the broker had the subscription (the messages were lost; seen in
    CI), and a subscription the broker refused would have been reported as made."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    source = json_source(broker.port, "plant")
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(list.extend, stop), daemon=True)
    with caplog.at_level("INFO", logger="streamlstm.sources.mqtt"):
        thread.start()
        try:
            wait_until(lambda: "subscribed to sensors/+/accel" in caplog.text, 10, "the SUBACK")
        finally:
            stop.set()
            thread.join(10)
        said = next(r for r in caplog.records if "subscribed to" in r.message)
        assert said.funcName == "_on_subscribe"  # the broker's answer, not the request
        # mosquitto grants every subscription (its ACLs filter deliveries), so a refusal
        # is fed to the callback as paho would deliver it.
        caplog.clear()
        refused = ReasonCode(PacketTypes.SUBACK, identifier=0x87)
        source._on_subscribe(None, None, 1, [refused], None)
    refusal = next(r for r in caplog.records if "refused the subscription" in r.message)
    assert refusal.levelname == "ERROR" and "Not authorized" in refusal.message
    assert "no samples will come" in refusal.message
    assert "subscribed to" not in caplog.text
    # ... and counted, for the metrics endpoint.
    assert ("streamlstm_subscribe_refusals_total", (("component", "source:plant"),), 1) in (
        source_samples([source])
    )
