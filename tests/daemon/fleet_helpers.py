"""Fleet scenarios' shared parts (issue 14): a nats-server with named worker processes,
the sensors' signals, publishing them, and the delivery-contract checks (test helpers;
the fixtures are imported by the test modules that use them)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from daemon_helpers import REPO, DaemonProcess, recording
from mqtt_helpers import free_port, wait_until
from nats_helpers import (
    NatsServer,
    Publisher,
    applied_sequences,
    fleet_settings,
    journal_events,
    owned_by,
    partition_states,
    payload,
    stream_count,
    stream_partitions,
    worker_site,
)

from streamlstm.daemon.config import load
from streamlstm.daemon.metrics import scrape
from streamlstm.daemon.pipeline import make_detector
from streamlstm.detect.state import AnyDetectorState
from streamlstm.sources import sample_times

PARTITIONS = 4
SENSORS = [f"s{i}" for i in range(8)]
ROUNDS = 50  # messages per sensor
PER_MESSAGE = 8  # samples per message
RATE = 100.0
TTL = 3.0  # seconds; short for fast tests, long enough for a loaded CI machine
ROUND_PAUSE_S = 0.06


def fleet_signals() -> dict[str, np.ndarray]:
    """Each sensor's samples: noise with a burst (so alerts happen), one seed per sensor."""
    seconds = ROUNDS * PER_MESSAGE / RATE
    return {s: recording(seconds, RATE, [(1.5, 2.0)], seed=i) for i, s in enumerate(SENSORS)}


class Fleet:
    """A nats-server and named worker processes in one folder."""

    def __init__(self, folder: Path, model: Path, **site: object) -> None:
        self.folder = folder
        self.model = model
        self.server = NatsServer(folder / "nats", PARTITIONS)
        self.server.start()
        self.site = site
        self.workers: dict[str, DaemonProcess] = {}
        self.sites: dict[str, Path] = {}
        self.metrics_ports: dict[str, int] = {}

    def start(self, name: str, prelude: str = "", **site: object) -> None:
        """Start worker ``name`` (``site``: its own worker_site options over the fleet's;
        ``prelude``: see DaemonProcess)."""
        self.metrics_ports[name] = free_port()
        self.sites[name] = worker_site(
            self.folder,
            name,
            self.server,
            self.model,
            partitions=PARTITIONS,
            lease_ttl_s=TTL,
            metrics_port=self.metrics_ports[name],
            **{**self.site, **site},
        )
        self.workers[name] = DaemonProcess(self.sites[name], self.folder, name, prelude=prelude)

    def scrape(self, name: str) -> dict[str, float]:
        return scrape(self.metrics_ports[name])

    def status(self) -> dict:
        """``streamlstm fleet status --json`` as a subprocess."""
        site = next(iter(self.sites.values()))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamlstm.cli",
                "fleet",
                "status",
                "--config",
                str(site),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def owned(self) -> dict[str, set[int]]:
        return owned_by(journal_events(self.folder))

    def wait_owned(self, expected: dict[str, int], timeout: float = 120) -> None:
        def done() -> bool:
            for name, process in self.workers.items():
                assert process.process.poll() is None or name not in expected, process.log()
            owned = self.owned()
            return all(len(owned.get(n, ())) == k for n, k in expected.items())

        wait_until(done, timeout, f"partitions owned as {expected}")

    def close(self) -> None:
        for process in self.workers.values():
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait(10)
        self.server.stop()


def publish_all(publisher: Publisher, signals, action_at: int | None = None, action=None) -> None:
    for round_ in range(ROUNDS):
        if round_ == action_at:
            action()
        for sensor in SENSORS:
            block = signals[sensor][round_ * PER_MESSAGE : (round_ + 1) * PER_MESSAGE]
            publisher.publish(sensor, payload(round_ * PER_MESSAGE / RATE, RATE, block))
        time.sleep(ROUND_PAUSE_S)
    wait_until(lambda: publisher.acked >= publisher.published, 60, "every PUBACK")


def wait_all_applied(fleet: Fleet, expected_messages: int) -> dict[int, list[int]]:
    """Wait until the journals cover every stream sequence; returns the partitions' seqs."""
    settings = fleet_settings(next(iter(fleet.sites.values())))
    # The stream sources $MQTT_msgs: it may lag behind the PUBACKs for a moment.
    wait_until(
        lambda: stream_count(settings) >= expected_messages,
        60,
        "the stream to hold every acknowledged message",
    )
    partitions = stream_partitions(settings)
    stored = sum(map(len, partitions.values()))
    assert stored == expected_messages, f"{stored} in stream, {expected_messages} acknowledged"

    def covered() -> bool:
        applied = applied_sequences(journal_events(fleet.folder), partitions)
        return all(
            {s for s, _ in applied.get(p, [])} == set(seqs) for p, seqs in partitions.items()
        )

    wait_until(covered, 90, "every stream sequence applied")
    return partitions


def check_contract(fleet: Fleet, partitions: dict[int, list[int]], *, planned: bool) -> int:
    """Nothing applied twice in an epoch; duplicates only as replays after a snapshot point
    (none at all if ``planned``). Returns the number of duplicate applications."""
    events = journal_events(fleet.folder)
    applied = applied_sequences(events, partitions)
    starts = {(e.partition, e.epoch): e.fields["from_seq"] for e in events if e.kind == "acquired"}
    handed_off = {(e.partition, e.epoch) for e in events if e.kind == "released"}
    duplicates = 0
    for partition, pairs in applied.items():
        per_epoch = Counter(pairs)
        assert max(per_epoch.values()) == 1, f"partition {partition}: twice in one epoch"
        epochs_of: dict[int, list[int]] = defaultdict(list)
        for seq, epoch in pairs:
            epochs_of[seq].append(epoch)
        for seq, epochs in epochs_of.items():
            ordered = sorted(epochs)
            for earlier, later in itertools.pairwise(ordered):
                duplicates += 1
                # A replay: the earlier epoch ended without a handoff (crash, lost lease)
                # and the later one started from a snapshot before this sequence.
                assert (partition, earlier) not in handed_off, (partition, seq)
                assert starts[(partition, later)] < seq
    if planned:
        assert duplicates == 0
    return duplicates


def stop_all(fleet: Fleet) -> None:
    for process in fleet.workers.values():
        if process.process.poll() is None:
            assert process.stop(signal.SIGTERM, timeout=60) == 0, process.log()


def reference_run(fleet: Fleet, signals) -> tuple[AnyDetectorState, list[tuple[str, str, float]]]:
    """One uninterrupted detector fed every sensor's whole signal: its final state and its
    alerts as ``(sensor, kind, t)``."""
    config = load(next(iter(fleet.sites.values())))
    from streamlstm import formats

    reference = make_detector(formats.load(fleet.model), config.detector)
    expected_events = []
    for sensor in SENSORS:
        x = signals[sensor]
        t = np.concatenate(
            [
                sample_times(PER_MESSAGE, start=r * PER_MESSAGE / RATE, rate=RATE, received=0.0)
                for r in range(ROUNDS)
            ]
        )
        expected_events += [
            (sensor, e.kind, round(e.t, 6)) for e in reference.update([sensor] * len(x), x, t)
        ]
    return reference.export_state(), expected_events


def deduplicated(records: list[dict]) -> dict[tuple[str, int], tuple[str, str, float]]:
    """Alert records by ``(daemon, seq)``; one key with two different alerts fails."""
    out: dict[tuple[str, int], tuple[str, str, float]] = {}
    for r in records:
        key, value = (r["daemon"], r["seq"]), (r["sensor"], r["kind"], round(r["t"], 6))
        assert out.setdefault(key, value) == value, "one (daemon, seq), two alerts"
    return out


def check_final_state(fleet: Fleet, signals) -> None:
    """Every sensor's final snapshot equals one detector fed its whole signal, and the
    alerts (deduplicated by (daemon, seq)) are exactly that detector's."""
    settings = fleet_settings(next(iter(fleet.sites.values())))
    want, expected_events = reference_run(fleet, signals)
    found = {}
    for _record, state in partition_states(settings).values():
        assert state is not None
        got = state.detector
        samples = dict(zip(state.sensors.names, state.sensors.samples, strict=True))
        for index, sensor in enumerate(got.sensors):
            found[sensor] = (got, index, samples[sensor])
    assert sorted(found) == sorted(SENSORS)
    for sensor in SENSORS:
        got, index, samples = found[sensor]
        row = want.sensors.index(sensor)
        assert samples == ROUNDS * PER_MESSAGE
        for name in ("states", "istate", "fstate", "preds", "rings", "rejected"):
            np.testing.assert_array_equal(
                getattr(got, name)[index], getattr(want, name)[row], err_msg=f"{sensor} {name}"
            )
    records = [
        json.loads(line)
        for path in fleet.folder.glob("*-alerts.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert sorted(deduplicated(records).values()) == sorted(expected_events)


def takeover_times(fleet: Fleet, victim: str, since: float) -> list[float]:
    """Seconds from ``since`` to each acquisition of a partition ``victim`` held."""
    events = journal_events(fleet.folder)
    held = {e.partition for e in events if e.kind == "acquired" and e.worker == victim}
    return [
        e.fields["time"] - since
        for e in events
        if e.kind == "acquired"
        and e.worker != victim
        and e.partition in held
        and e.fields["time"] > since
    ]
