"""Issue 14: alerts over MQTT from fleet workers. The sink on its own (one spool folder
per partition's ``daemon``, MQTT 3.1.1), then whole fleets (a real nats-server, worker
processes) delivering to a real mosquitto (MQTT 5) or to nats-server's own MQTT listener
(MQTT 3.1.1): after a SIGKILL takeover every alert arrives, and exactly once after dedupe
by ``(daemon, seq)``, with per-partition ``seq`` numbers without gaps."""

from __future__ import annotations

import time
from collections import defaultdict

import paho.mqtt.client as paho
import pytest
from fleet_helpers import (
    PARTITIONS,
    ROUNDS,
    TTL,
    check_contract,
    deduplicated,
    publish_all,
    reference_run,
    stop_all,
    takeover_times,
    wait_all_applied,
)
from mqtt_helpers import Broker, Subscriber, wait_until
from nats_helpers import Publisher, fleet_settings, partition_states

from streamlstm.daemon.config import validate
from streamlstm.sinks.mqtt import MQTTSink


def alert(daemon: str, seq: int, kind: str = "start") -> dict:
    return {
        "schema": "streamlstm.alert/1",
        "seq": seq,
        "daemon": daemon,
        "sensor": "s1",
        "kind": kind,
        "t": float(seq),
        "published": 2.0,
        "score": 3.0,
        "threshold": 1.0,
        "peak": 3.0,
        "duration": 0.0,
        "model": {"id": "m", "sha256": "0" * 64},
    }


def test_a_fleet_sink_spools_each_partition_apart_and_speaks_mqtt_3_1_1(tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    sub = Subscriber(broker.port, ["streamlstm/+/alert"])
    broker.stop()  # the subscription is kept (persistence); alerts stay spooled meanwhile
    config = validate(
        {
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "w1", "keepalive_s": 5},
            "sinks": [{"type": "mqtt", "spool_dir": str(tmp_path / "spool"), "protocol": "3.1.1"}],
        }
    )
    sink = MQTTSink.from_config(config.sinks[0], config.mqtt, spool_by_daemon=True)
    # Two partitions number their alerts independently: the same seq twice.
    sink.alerts([alert("f/p0", 1), alert("f/p1", 1), alert("f/p0", 2, "end")])
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["f_p0", "f_p1"]
    assert [(a["daemon"], a["seq"]) for a in sink.pending("f/p0")] == [("f/p0", 1), ("f/p0", 2)]
    assert sink.pending("f/p2") == [] and sink.spooled() == 3
    sink.close(timeout=0.5)  # unacknowledged: they stay in the spool
    broker.start()
    again = MQTTSink.from_config(config.sinks[0], config.mqtt, spool_by_daemon=True)
    try:
        wait_until(lambda: len(sub.json("/alert")) == 3, 30, "the spooled alerts")
        assert again.flush(10) and again.spooled() == 0
        assert again.pending("f/p0") == [] and again.pending("f/p1") == []
    finally:
        again.close()
        sub.close()
        broker.stop()
    got = sorted((a["daemon"], a["seq"], a["kind"]) for a in sub.json("/alert"))
    assert got == [("f/p0", 1, "start"), ("f/p0", 2, "end"), ("f/p1", 1, "start")]
    # mosquitto logs the protocol level and clean-session flag: p2 = 3.1.1, c0 = kept.
    assert " as w1-out (p2, c0," in (tmp_path / "mosquitto.log").read_text()


def check_alerts(records: list[dict], expected: list[tuple[str, str, float]]) -> int:
    """After dedupe by (daemon, seq), exactly the reference detector's alerts, each
    partition's seq 1..n without gaps; returns how many duplicates were dropped."""
    unique = deduplicated(records)
    assert sorted(unique.values()) == sorted(expected)
    by_daemon: dict[str, list[int]] = defaultdict(list)
    for daemon, seq in unique:
        by_daemon[daemon].append(seq)
    for daemon, seqs in by_daemon.items():
        assert daemon.startswith("streamlstm/p")
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), daemon
    return len(records) - len(unique)


def mosquitto_sink(broker: Broker) -> str:
    return f"""
[[sinks]]
type = "mqtt"
host = "127.0.0.1"
port = {broker.port}
spool_dir = "{{name}}-spool"
"""


@pytest.mark.slow
def test_alerts_a_killed_worker_could_not_deliver_come_from_its_partitions_next_owner(
    fleet, signals, tmp_path
):
    """mosquitto (MQTT 5) is down while every alert is decided, and the snapshots cover
    everything when w1 is killed: its partitions' alerts exist only in w1's spool and in
    the snapshots, so w2 must send them (nothing is replayed)."""
    broker = Broker(tmp_path)
    broker.start()
    sub = Subscriber(broker.port, ["streamlstm/#"])
    f = fleet()
    spools = {}
    for name in ("w1", "w2"):
        f.start(name, sinks=mosquitto_sink(broker).replace("{name}", name))
        spools[name] = f.folder / f"{name}-spool"
        f.wait_owned({"w1": PARTITIONS} if name == "w1" else {"w1": 2, "w2": 2})
    wait_until(
        lambda: {"w1", "w2"} <= {t.split("/")[-1] for t, p, _ in sub.messages if p == b"online"},
        30,
        "both workers online",
    )
    broker.stop()
    publisher = Publisher(f.server.mqtt_port)
    publish_all(publisher, signals)
    partitions = wait_all_applied(f, publisher.acked)
    settings = fleet_settings(f.sites["w1"])

    def snapshots_cover_all() -> bool:
        states = partition_states(settings)
        return all(states[p][0].seq == seqs[-1] for p, seqs in partitions.items())

    wait_until(snapshots_cover_all, 60, "snapshots covering every message")
    stranded = sorted(p.name for p in spools["w1"].iterdir() if any(p.glob("*.json")))
    assert stranded, "w1 decided no alert: the scenario proves nothing"
    metrics = f.scrape("w1")
    assert metrics["streamlstm_spooled_alerts"] == len(list(spools["w1"].rglob("*.json")))
    assert metrics['streamlstm_connected{component="sink:mqtt"}'] == 0
    f.workers["w1"].process.kill()
    f.wait_owned({"w2": PARTITIONS}, timeout=60)
    broker.start()
    _, expected = reference_run(f, signals)
    wait_until(lambda: len(deduplicated(sub.json("/alert"))) >= len(expected), 60, "every alert")
    stop_all(f)
    time.sleep(0.5)  # anything sent twice arrives now
    check_alerts(sub.json("/alert"), expected)
    assert "alert(s) its previous owner had not delivered" in f.workers["w2"].log()
    assert not any(spools["w2"].rglob("*.json"))  # all acknowledged
    check_contract(f, partitions, planned=False)
    sub.close()
    broker.stop()


def test_alerts_over_nats_mqtt_listener_arrive_once_after_dedupe_across_a_sigkill(fleet, signals):
    """The sink speaks MQTT 3.1.1 to nats-server itself; w1 is killed mid-stream, before
    it ever snapshots (a long snapshot interval): w2 replays its partitions from the
    start and decides w1's alerts again with the same (daemon, seq), so some arrive twice
    and dedupe leaves each once; w1's Last Will says it is offline."""
    sink = '[[sinks]]\ntype = "mqtt"\nprotocol = "3.1.1"\nspool_dir = "{name}-spool"\n'
    f = fleet(snapshot_interval_s=300.0)
    sub = Subscriber(
        f.server.mqtt_port, ["streamlstm/#"], client_id="alerts", protocol=paho.MQTTv311
    )
    for name in ("w1", "w2"):
        f.start(name, sinks=sink.replace("{name}", name))
        f.wait_owned({"w1": PARTITIONS} if name == "w1" else {"w1": 2, "w2": 2})
    status = "streamlstm/status/"
    wait_until(
        lambda: {f"{status}w1", f"{status}w2"} <= {t for t, p, _ in sub.messages if p == b"online"},
        30,
        "both workers online",
    )
    publisher = Publisher(f.server.mqtt_port)
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.time())
        f.workers["w1"].process.kill()

    publish_all(publisher, signals, ROUNDS // 2, kill)
    partitions = wait_all_applied(f, publisher.acked)
    taken = takeover_times(f, "w1", killed[0])
    assert len(taken) == PARTITIONS // 2 and max(taken) <= TTL + 2.0, taken
    _, expected = reference_run(f, signals)
    wait_until(lambda: len(deduplicated(sub.json("/alert"))) >= len(expected), 60, "every alert")
    wait_until(lambda: sub.payloads(f"{status}w1")[-1:] == [b"offline"], 30, "w1's Last Will")
    stop_all(f)
    time.sleep(0.5)
    duplicates = check_alerts(sub.json("/alert"), expected)
    assert duplicates > 0, "w1 delivered no alert before it died: no replay was checked"
    assert sub.payloads(f"{status}w2")[-1:] == [b"offline"]  # said on its clean exit
    check_contract(f, partitions, planned=False)
    sub.close()
    print(f"alert duplicates dropped by dedupe: {duplicates}")
