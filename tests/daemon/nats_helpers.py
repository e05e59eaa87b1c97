"""A real nats-server per test (JetStream, MQTT listener, partition mapping), fleet worker
sites, an MQTT 3.1.1 publisher counting PUBACKs, and readers of the stream, the journals
and the partition snapshots (test helpers, not fixtures)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import numpy as np
import paho.mqtt.client as paho
from daemon_helpers import DETECTOR_OPTIONS
from mqtt_helpers import free_port, require_tool, wait_until

from streamlstm.daemon.config import load
from streamlstm.daemon.sensortable import SensorColumns
from streamlstm.detect.state import DetectorState
from streamlstm.fleet.config import FleetSettings
from streamlstm.fleet.connection import RETRYABLE, open_stores
from streamlstm.fleet.snapshots import PartitionSnapshot, SnapshotStore

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
TOPIC = "sensors/{sensor}/accel"


class NatsServer:
    """nats-server on 127.0.0.1 (client and MQTT ports free), JetStream stored in ``folder``,
    MQTT topics ``sensors/<id>/accel`` mapped to ``part.<partition(P)>.sensors.<id>.accel``."""

    def __init__(self, folder: Path, partitions: int) -> None:
        require_tool(NATS_SERVER, "nats-server")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port, self.mqtt_port = free_port(), free_port()
        self.config = folder / "nats.conf"
        mapping = f"part.{{{{partition({partitions},1)}}}}.sensors.{{{{wildcard(1)}}}}.accel"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\nserver_name: test-{self.port}\n"
            f'jetstream {{ store_dir: "{folder}/js" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
            "accounts { FLEET { jetstream: enabled, users: [{user: fleet, password: fleet}],\n"
            f'  mappings: {{ "sensors.*.accel": "{mapping}" }} }} }}\n'
            "no_auth_user: fleet\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log = folder / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self._log, "ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: self._accepts(self.port) and self._accepts(self.mqtt_port),
            15,
            "nats-server to listen",
        )

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)
        self.process = None

    def log(self) -> str:
        return self._log.read_text(errors="replace")


def worker_site(
    folder: Path,
    name: str,
    server: NatsServer,
    model: Path,
    *,
    partitions: int,
    lease_ttl_s: float = 2.0,
    snapshot_interval_s: float = 0.5,
    inline_snapshot_bytes: int = 262144,
    metrics_port: int | None = None,
    sinks: str = "",
    daemon: str = "",
) -> Path:
    """A worker's site.toml: JSONL alerts (and ``sinks``, more ``[[sinks]]`` tables),
    journal ``<name>.journal`` in ``folder``; ``daemon``: more ``[daemon]`` lines."""
    options = ", ".join(f"{k} = {v}" for k, v in DETECTOR_OPTIONS.items())
    metrics = f"metrics_port = {metrics_port}\n" if metrics_port else ""
    text = f"""
[daemon]
log_level = "info"
{metrics}{daemon}
[model]
path = "{model}"

[detector]
options = {{ {options} }}

[mqtt]
host = "127.0.0.1"
port = {server.mqtt_port}
client_id = "{name}"

[[sources]]
type = "mqtt"
topic = "{TOPIC}"

[[sinks]]
type = "jsonl"
path = "{name}-alerts.jsonl"
{sinks}

[fleet]
servers = ["{server.url}"]
partitions = {partitions}
lease_ttl_s = {lease_ttl_s}
snapshot_interval_s = {snapshot_interval_s}
inline_snapshot_bytes = {inline_snapshot_bytes}
fetch_batch = 50
journal_path = "{name}.journal"
"""
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


class Publisher:
    """MQTT 3.1.1 QoS 1 publisher to nats-server; counts the PUBACKs it received."""

    def __init__(self, port: int, client_id: str = "test-sensors") -> None:
        self.acked = 0
        self.published = 0
        self._lock = threading.Lock()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(0.1, 0.5)
        # One message in flight: a sensor's messages stay in order across a broker crash.
        self.client.max_inflight_messages_set(1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *args: Any) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, sensor: str, payload: bytes) -> None:
        self.client.publish(TOPIC.format(sensor=sensor), payload, qos=1)
        self.published += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def payload(t0: float, rate: float, samples: np.ndarray) -> bytes:
    """A JSON batch whose float32 values decode back bit for bit."""
    return json.dumps(
        {"t": t0, "rate": rate, "samples": [[float(v) for v in row] for row in samples]}
    ).encode()


def fleet_settings(site: Path) -> FleetSettings:
    return FleetSettings.from_config(load(site))


async def _stream_subjects(settings: FleetSettings) -> dict[int, str]:
    nc = await nats.connect(list(settings.servers))
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(settings.stream)
        sub = await js.pull_subscribe(">", stream=settings.stream)
        out: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while len(out) < info.state.messages and time.monotonic() < deadline:
            try:
                for message in await sub.fetch(500, timeout=1):
                    out[message.metadata.sequence.stream] = message.subject
                    await message.ack()
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _retrying(read: Any, settings: FleetSettings) -> Any:
    """``asyncio.run(read(settings))``, again while JetStream is not ready (up to 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return asyncio.run(read(settings))
        except RETRYABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _stream_count(settings: FleetSettings) -> int:
    nc = await nats.connect(list(settings.servers))
    try:
        return int((await nc.jetstream(timeout=5).stream_info(settings.stream)).state.messages)
    finally:
        await nc.close()


def stream_count(settings: FleetSettings) -> int:
    """Messages in the samples stream now."""
    return _retrying(_stream_count, settings)


def stream_partitions(settings: FleetSettings) -> dict[int, list[int]]:
    """Partition -> its stream sequences, in order (reads the whole stream)."""
    by_partition: dict[int, list[int]] = defaultdict(list)
    for seq, subject in sorted(_retrying(_stream_subjects, settings).items()):
        by_partition[settings.topic_of(subject)[0]].append(seq)
    return dict(by_partition)


async def _partition_states(
    settings: FleetSettings,
) -> dict[int, tuple[Any, PartitionSnapshot | None]]:
    nc = await nats.connect(list(settings.servers))
    try:
        stores = await open_stores(nc, settings, create=False)
        store = SnapshotStore(stores.state, stores.objects, settings)
        out = {}
        for partition in range(settings.partitions):
            try:
                record, _, state = await store.read(partition)
            except nats.js.errors.KeyNotFoundError:
                continue
            out[partition] = (record, state)
        return out
    finally:
        await nc.close()


def partition_states(settings: FleetSettings) -> dict[int, tuple[Any, PartitionSnapshot | None]]:
    """Partition -> (its snapshot record, decoded state) as the fleet left them."""
    return _retrying(_partition_states, settings)


def marked_state(mark: int) -> PartitionSnapshot:
    """A partition state of no sensors told apart by ``mark``: its last-seen times are
    ``0 .. mark - 1`` (:func:`state_mark`), for tests of the snapshot store alone."""
    rows = {
        name: np.zeros((0, 1), np.int64 if name in ("rejected", "istate") else np.float64)
        for name in DetectorState.ROW_ARRAYS
    }
    return PartitionSnapshot(
        "m",
        DetectorState("m", [], **rows),
        SensorColumns.from_records([]),
        [(f"s{i}", float(i)) for i in range(mark)],
    )


def state_mark(state: PartitionSnapshot | None) -> np.ndarray:
    """The mark of a :func:`marked_state` read back from the store."""
    assert state is not None
    return np.array([t for _, t in state.last_seen])


@dataclass(frozen=True)
class Event:
    kind: str
    worker: str
    partition: int
    epoch: int
    fields: dict[str, Any]


def journal_events(folder: Path) -> list[Event]:
    """Every worker's journal lines, in time order."""
    events = []
    for path in sorted(folder.glob("*.journal")):
        for line in path.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                events.append(
                    Event(
                        data.pop("event"),
                        data.pop("worker"),
                        data.pop("partition"),
                        data.pop("epoch"),
                        data,
                    )
                )
    return sorted(events, key=lambda e: e.fields["time"])


def applied_sequences(
    events: list[Event], partitions: dict[int, list[int]]
) -> dict[int, list[tuple[int, int]]]:
    """Partition -> [(stream seq, epoch)] for every application, checking each journal
    range against the stream (a range holds exactly the partition's sequences in it)."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        if event.kind != "applied":
            continue
        seqs = [
            s
            for s in partitions.get(event.partition, [])
            if event.fields["first"] <= s <= event.fields["last"]
        ]
        assert len(seqs) == event.fields["count"], (event, len(seqs))
        out[event.partition] += [(s, event.epoch) for s in seqs]
    return dict(out)


def owned_by(events: list[Event]) -> dict[str, set[int]]:
    """Worker -> partitions it holds now, by its journal (acquired minus released/lost)."""
    owners: dict[int, str] = {}
    for event in events:
        if event.kind == "acquired":
            owners[event.partition] = event.worker
        elif event.kind in ("released", "lost") and owners.get(event.partition) == event.worker:
            del owners[event.partition]
    out: dict[str, set[int]] = defaultdict(set)
    for partition, worker in owners.items():
        out[worker].add(partition)
    return dict(out)
