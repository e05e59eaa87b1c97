"""Issue 14: the ``[fleet]`` section (validated with the rest of the site config), the
subjects derived from it, and the shipped worker and cluster examples."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from daemon_helpers import REPO
from mqtt_helpers import free_port, require_tool

from streamlstm.daemon.config import FleetConfig, SiteConfig, load, validate
from streamlstm.errors import ConfigError
from streamlstm.fleet.config import FleetSettings

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "fleet"
SOURCE = {"type": "mqtt", "topic": "sensors/{sensor}/accel"}


def fleet_config(**fleet: object) -> SiteConfig:
    return validate(
        {"mqtt": {"client_id": "w1"}, "sources": [SOURCE], "fleet": {"partitions": 16, **fleet}}
    )


def test_the_worker_example_is_valid_and_names_every_key():
    config = load(CONTRIB / "worker.example.toml")
    settings = FleetSettings.from_config(config)
    assert settings.partitions == 16 and settings.worker_id == "worker-a"
    assert len(settings.servers) == 3 and settings.replicas == 3
    text = (CONTRIB / "worker.example.toml").read_text()
    assert [f.name for f in fields(FleetConfig) if f"{f.name} =" not in text] == []


def test_a_site_without_fleet_is_a_single_daemon():
    assert validate({}).fleet is None


def test_defaults_and_derived_subjects():
    settings = FleetSettings.from_config(fleet_config())
    assert settings.worker_id == "w1"  # the MQTT client id
    assert settings.partition_subject(3) == "$MQTT.msgs.part.3.>"
    assert settings.topic_of("$MQTT.msgs.part.3.sensors.s1.accel") == (3, "sensors/s1/accel")
    with pytest.raises(ValueError):
        settings.topic_of("part.3.sensors.s1.accel")
    direct = FleetSettings.from_config(fleet_config(intake="nats", worker_id="a"))
    assert direct.partition_subject(0) == "part.0.>" and direct.worker_id == "a"
    assert direct.topic_of("part.0.sensors.x.accel") == (0, "sensors/x/accel")
    assert settings.fair_share(3) == 6 and settings.fair_share(0) == 16
    assert settings.overdue_s < settings.lease_ttl_s


@pytest.mark.parametrize(
    "fleet, error",
    [
        ({"partitions": 0}, "fleet.partitions: must be 1..4096"),
        ({"servers": ["localhost:4222"]}, "fleet.servers: must be a non-empty list"),
        ({"stream": "a.b"}, "fleet.stream: must be a non-empty name"),
        ({"intake": "kafka"}, "fleet.intake: must be one of"),
        ({"lease_ttl_s": 0.5}, "fleet.lease_ttl_s: must be >= 1.0"),
        ({"inline_snapshot_bytes": 2_000_000}, "the KV value limit is 1 MB"),
        ({"partitons": 4}, "did you mean 'partitions'?"),
    ],
)
def test_bad_fleet_settings_are_reported(fleet, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        validate({"sources": [SOURCE], "fleet": {"partitions": 4, **fleet}})


def test_a_missing_partition_count_is_reported():
    with pytest.raises(ConfigError, match=r"fleet.partitions: missing \(required\)"):
        validate({"sources": [SOURCE], "fleet": {}})


def test_a_worker_reads_exactly_one_mqtt_source_and_acks_itself():
    with pytest.raises(ConfigError, match="exactly one source, of type 'mqtt'"):
        validate({"sources": [SOURCE, {**SOURCE, "name": "b"}], "fleet": {"partitions": 4}})
    with pytest.raises(ConfigError, match="exactly one source, of type 'mqtt'"):
        validate({"fleet": {"partitions": 4}})  # the demo source
    with pytest.raises(ConfigError, match=r"sources\[0\].ack: the fleet acknowledges"):
        validate({"sources": [{**SOURCE, "ack": "after-step"}], "fleet": {"partitions": 4}})


def test_a_workers_mqtt_sink_speaks_3_1_1_to_nats_or_names_another_broker():
    def sinks(**sink: object) -> SiteConfig:
        return validate(
            {"sources": [SOURCE], "sinks": [{"type": "mqtt", **sink}], "fleet": {"partitions": 4}}
        )

    with pytest.raises(ConfigError, match=r"sinks\[0\].protocol: .* speaks MQTT 3.1.1"):
        sinks()  # [mqtt] is nats-server's listener: MQTT 5 would be refused
    with pytest.raises(ConfigError, match=r"sinks\[0\].homeassistant: not in a fleet"):
        sinks(protocol="3.1.1", homeassistant=True)
    with pytest.raises(ConfigError, match=r"sinks\[0\].protocol: must be one of"):
        sinks(protocol="3")
    assert sinks(protocol="3.1.1").sinks[0].host is None
    mosquitto = sinks(host="alerts.example", port=1884).sinks[0]
    assert (mosquitto.host, mosquitto.port, mosquitto.protocol) == (
        "alerts.example",
        1884,
        "5",
    )


def test_the_cluster_example_is_accepted_by_nats_server(tmp_path):
    server = require_tool(shutil.which("nats-server") or "/usr/sbin/nats-server", "nats-server")
    for node in (1, 2, 3):
        done = subprocess.run(
            [server, "-t", "-c", str(CONTRIB / f"nats-{node}.conf")],
            capture_output=True,
            text=True,
            timeout=30,
            env={"SENSORS_PASSWORD": "s", "WORKERS_PASSWORD": "w", "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        assert "partition(16,1)" in (CONTRIB / f"nats-{node}.conf").read_text()


def fleet_status(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "fleet", "status", "--config", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_fleet_status_says_plainly_when_it_cannot_answer(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(
        '[mqtt]\nclient_id = "w"\n[[sources]]\ntype = "mqtt"\n'
        'topic = "sensors/{sensor}/accel"\n[fleet]\npartitions = 4\n'
        f'servers = ["nats://127.0.0.1:{free_port()}"]\n'
    )
    done = fleet_status(site)  # nothing listens there: one attempt, then a clear error
    assert done.returncode == 1 and done.stdout == ""
    assert "cannot read the fleet's state (NoServersError" in done.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text("[daemon]\n")
    done = fleet_status(plain)
    assert done.returncode == 2 and "has no [fleet] section" in done.stderr
