"""Issue 14: ``streamlstm run`` as a fleet worker on NATS JetStream. A real nats-server
(JetStream, MQTT listener, partition mapping) per test, workers as real subprocesses,
sensors publishing MQTT QoS 1. Each scenario checks the delivery contract from the
stream, the workers' journals and the final snapshots: MQTT-acknowledged == in stream,
every sequence applied, nothing applied twice in one epoch, every duplicate a replay
after the later epoch's snapshot point, final per-sensor state bit-exact against one
uninterrupted detector, alerts identical after dedupe by ``(daemon, seq)``."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time

import nats
import numpy as np
import pytest
from daemon_helpers import DaemonProcess
from fleet_helpers import (
    PARTITIONS,
    PER_MESSAGE,
    RATE,
    ROUNDS,
    SENSORS,
    TTL,
    check_contract,
    check_final_state,
    publish_all,
    stop_all,
    takeover_times,
    wait_all_applied,
)
from mqtt_helpers import wait_until
from nats_helpers import (
    NatsServer,
    Publisher,
    fleet_settings,
    journal_events,
    marked_state,
    partition_states,
    payload,
    state_mark,
    worker_site,
)
from systemd_helpers import NotifySocket

from streamlstm.fleet.connection import FleetError, check_partitions, open_stores
from streamlstm.fleet.leases import LeaseRefused, Leases
from streamlstm.fleet.snapshots import SnapshotStore, WriteRefused


def test_sigkill_of_one_of_two_workers_loses_nothing_and_replays_after_the_snapshot(fleet, signals):
    f = fleet()
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    f.start("w2")
    f.wait_owned({"w1": PARTITIONS // 2, "w2": PARTITIONS // 2})
    publisher = Publisher(f.server.mqtt_port)
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.time())
        f.workers["w1"].process.kill()

    publish_all(publisher, signals, ROUNDS // 2, kill)
    partitions = wait_all_applied(f, publisher.acked)
    duplicates = check_contract(f, partitions, planned=False)
    taken = takeover_times(f, "w1", killed[0])
    assert len(taken) == PARTITIONS // 2 and max(taken) <= TTL + 2.0, taken
    stop_all(f)
    check_final_state(f, signals)
    print(f"duplicates replayed: {duplicates}, takeover {max(taken):.2f} s")


def test_sigterm_hands_off_with_zero_duplicates(fleet, signals):
    f = fleet(inline_snapshot_bytes=0)  # snapshots through the object store
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    f.start("w2")
    f.wait_owned({"w1": PARTITIONS // 2, "w2": PARTITIONS // 2})
    publisher = Publisher(f.server.mqtt_port)
    codes: list[int] = []
    publish_all(
        publisher,
        signals,
        ROUNDS // 2,
        lambda: codes.append(f.workers["w1"].stop(signal.SIGTERM, timeout=60)),
    )
    assert codes == [0]
    partitions = wait_all_applied(f, publisher.acked)
    check_contract(f, partitions, planned=True)
    stop_all(f)
    check_final_state(f, signals)


def test_a_joining_worker_takes_its_share_without_duplicates(fleet, signals):
    f = fleet()
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    publisher = Publisher(f.server.mqtt_port)

    def join() -> None:  # publishing resumes once the fleet has rebalanced
        f.start("w2")
        f.wait_owned({"w1": PARTITIONS // 2, "w2": PARTITIONS // 2})

    publish_all(publisher, signals, ROUNDS // 3, join)
    partitions = wait_all_applied(f, publisher.acked)
    check_contract(f, partitions, planned=True)
    half = PARTITIONS // 2
    for name, moved in (("w1", "out"), ("w2", "in")):
        metrics = f.scrape(name)
        assert metrics["streamlstm_fleet_owned_partitions"] == half
        assert metrics[f'streamlstm_fleet_handoffs_total{{direction="{moved}"}}'] == half
        assert metrics["streamlstm_fleet_lease_losses_total"] == 0
        lags = [v for k, v in metrics.items() if k.startswith("streamlstm_fleet_consumer_lag")]
        assert lags == [0] * half
    applied = sum(f.scrape(n)["streamlstm_fleet_messages_total"] for n in ("w1", "w2"))
    assert applied == publisher.acked  # each message once: planned handoffs replay nothing
    wait_until(
        lambda: all(p["lag"] == 0 for p in f.status()["partitions"]),
        30,
        "fleet status to show no lag",
    )
    status = f.status()
    assert status["workers"] == 2 and status["stream_messages"] == publisher.acked
    owned = f.owned()
    for row in status["partitions"]:
        assert row["owner"] in owned and row["partition"] in owned[row["owner"]]
        assert row["epoch"] == (2 if row["owner"] == "w2" else 1)
        last = partitions[row["partition"]][-1]  # covered by the consumer or the snapshot
        assert row["acked_seq"] == last or row["snapshot_seq"] == last
        assert row["snapshot_store"] == "inline" and row["snapshot_age_s"] < 60
    stop_all(f)
    check_final_state(f, signals)


@pytest.mark.slow
def test_a_paused_worker_is_fenced_off_when_it_resumes(fleet, signals):
    f = fleet()
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    f.start("w2")
    f.wait_owned({"w1": PARTITIONS // 2, "w2": PARTITIONS // 2})
    publisher = Publisher(f.server.mqtt_port)
    stopped: list[float] = []

    def pause() -> None:
        stopped.append(time.time())
        f.workers["w1"].process.send_signal(signal.SIGSTOP)

    publish_all(publisher, signals, ROUNDS // 2, pause)
    f.wait_owned({"w2": PARTITIONS}, timeout=30)
    resumed = time.time()
    f.workers["w1"].process.send_signal(signal.SIGCONT)
    wait_until(
        lambda: (
            len([e for e in journal_events(f.folder) if e.worker == "w1" and e.kind == "lost"])
            == PARTITIONS // 2
        ),
        30,
        "the zombie to notice its leases are gone",
    )
    partitions = wait_all_applied(f, publisher.acked)
    check_contract(f, partitions, planned=False)
    events = journal_events(f.folder)
    # The zombie applied and wrote nothing after it resumed.
    late = [
        e
        for e in events
        if e.worker == "w1" and e.fields["time"] > resumed and e.kind in ("applied", "snapshot")
    ]
    assert late == []
    taken = takeover_times(f, "w1", stopped[0])
    assert max(taken) <= TTL + 2.0, taken
    zombie = f.scrape("w1")
    assert zombie["streamlstm_fleet_lease_losses_total"] == PARTITIONS // 2
    assert zombie['streamlstm_fleet_refused_writes_total{kind="lease"}'] >= 1
    assert zombie["streamlstm_fleet_owned_partitions"] == 0
    stop_all(f)
    check_final_state(f, signals)


@pytest.mark.slow
def test_workers_ride_out_a_nats_server_restart(fleet, signals):
    f = fleet()
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    f.start("w2")
    f.wait_owned({"w1": PARTITIONS // 2, "w2": PARTITIONS // 2})
    publisher = Publisher(f.server.mqtt_port)

    def restart() -> None:  # a crash, down past the TTL: every lease expires meanwhile
        f.server.stop(signal.SIGKILL)
        time.sleep(TTL + 1.0)
        f.server.start()
        # Publish only once reconnected: paho sends what was published while disconnected
        # after newer messages (a sensor's own reordering, not the fleet's).
        wait_until(publisher.client.is_connected, 30, "the sensors to reconnect")

    publish_all(publisher, signals, ROUNDS // 2, restart)
    partitions = wait_all_applied(f, publisher.acked)
    lost = [e for e in journal_events(f.folder) if e.kind == "lost"]
    assert sorted(e.partition for e in lost) == list(range(PARTITIONS))  # and taken again
    check_contract(f, partitions, planned=False)
    stop_all(f)
    check_final_state(f, signals)


def test_a_worker_evicts_idle_sensors_on_the_streams_clock(fleet, signals):
    """sensor_idle_s in a worker: a sensor silent for longer goes before the next message
    stored after that (the stream's timestamps, not the worker's clock), and the
    snapshot no longer holds it."""
    f = fleet(daemon="sensor_idle_s = 1.5\n")
    f.start("w1")
    f.wait_owned({"w1": PARTITIONS})
    settings = fleet_settings(f.sites["w1"])
    publisher = Publisher(f.server.mqtt_port)
    block = signals["s0"][:PER_MESSAGE]
    for sensor in SENSORS:
        publisher.publish(sensor, payload(0.0, RATE, block))
    wait_until(lambda: publisher.acked >= publisher.published, 30, "every PUBACK")
    time.sleep(2.0)  # every sensor idle for longer than sensor_idle_s
    assert f.scrape("w1")["streamlstm_expired_sensors_total"] == 0  # no message: no clock
    publisher.publish("s1", payload(1.0, RATE, block))  # s1's partition moves its clock on
    wait_until(lambda: f.scrape("w1")["streamlstm_expired_sensors_total"] >= 1, 30, "an eviction")

    def evicted_in_snapshots() -> dict[str, int] | None:
        """Sensor -> samples over every partition's snapshot, once s1's shows the
        eviction (s1 itself was idle too: it came back fresh)."""
        samples = {}
        for _record, state in partition_states(settings).values():
            assert state is not None
            names = state.sensors.names
            samples.update(zip(names, state.sensors.samples, strict=True))
            if "s1" in names and [name for name, _ in state.last_seen] != ["s1"]:
                return None
        return samples if samples.get("s1") == PER_MESSAGE else None

    samples = wait_until(evicted_in_snapshots, 30, "a snapshot after the eviction")
    expired = f.scrape("w1")["streamlstm_expired_sensors_total"]
    # Only s1's partition had a message, so only its sensors went (s1 included).
    assert len(samples) == len(SENSORS) - expired + 1 and expired < len(SENSORS)
    assert all(n == PER_MESSAGE for n in samples.values())
    stop_all(f)


#: Makes the 15th batch a worker steps raise, as a bug in processing would.
FAULT_ON_15TH_STEP = """
from streamlstm.fleet import partitions
_step, _calls = partitions.OwnedPartition._step, []
def _faulty(self, frames, applied):
    _calls.append(self.partition)
    if len(_calls) == 15:
        raise RuntimeError(f"injected fault in partition {self.partition}")
    return _step(self, frames, applied)
partitions.OwnedPartition._step = _faulty
"""


def test_a_partition_whose_processing_raises_is_released_and_taken_again(fleet, signals):
    f = fleet()
    f.start("w1", prelude=FAULT_ON_15TH_STEP)
    f.wait_owned({"w1": PARTITIONS})
    publisher = Publisher(f.server.mqtt_port)
    publish_all(publisher, signals)
    partitions = wait_all_applied(f, publisher.acked)
    events = journal_events(f.folder)
    failed = [e for e in events if e.kind == "lost" and e.fields["reason"] == "failure"]
    assert len(failed) == 1, failed
    partition, epoch = failed[0].partition, failed[0].epoch
    # Released (not left to expire): taken again at once, by the next epoch, from the
    # last snapshot; the other partitions never noticed.
    again = [
        e
        for e in events
        if e.kind == "acquired" and e.partition == partition and e.epoch == epoch + 1
    ]
    assert len(again) == 1 and again[0].fields["time"] - failed[0].fields["time"] < TTL
    assert [e for e in events if e.kind == "lost" and e.partition != partition] == []
    metrics = f.scrape("w1")
    assert metrics["streamlstm_fleet_partition_failures_total"] == 1
    assert metrics["streamlstm_fleet_lease_losses_total"] == 0
    assert f"injected fault in partition {partition}" in f.workers["w1"].log()
    check_contract(f, partitions, planned=False)
    stop_all(f)
    check_final_state(f, signals)


def test_a_deposed_owners_writes_are_refused(tmp_path, model_path):
    """The revision checks themselves: after a new claim and a new lease, the old owner's
    snapshot write and lease renewal fail (what protects the state from a zombie)."""
    server = NatsServer(tmp_path / "nats", PARTITIONS)
    server.start()
    try:
        site = worker_site(
            tmp_path, "w", server, model_path, partitions=PARTITIONS, lease_ttl_s=1.0
        )
        settings = fleet_settings(site)

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            try:
                stores = await open_stores(nc, settings, create=True)
                store = SnapshotStore(stores.state, stores.objects, settings)
                leases = Leases(stores.leases, settings)
                old_lease = await leases.acquire(2)
                assert old_lease is not None and await leases.acquire(2) is None
                old = await store.claim(2)
                await store.write(old, 10, 1, marked_state(3))
                await asyncio.sleep(1.5)  # the old owner stalls past the TTL
                new_lease = await leases.acquire(2)
                assert new_lease is not None
                new = await store.claim(2)
                assert new.record.epoch == old.record.epoch + 1 and new.record.seq == 10
                with pytest.raises(WriteRefused):
                    await store.write(old, 20, 2, marked_state(4))
                with pytest.raises(LeaseRefused):
                    await leases.renew(old_lease)
                record, _, state = await store.read(2)
                assert (record.epoch, record.seq) == (new.record.epoch, 10)
                np.testing.assert_array_equal(state_mark(state), np.arange(3))
                await store.write(new, 30, 3, marked_state(5))
                # A release that crossed a renewal still releases our lease...
                crossed = dataclasses.replace(new_lease)
                await leases.renew(new_lease)
                await leases.release(crossed)
                assert await leases.acquire(2) is not None
                # ...and never another worker's.
                others = Leases(stores.leases, dataclasses.replace(settings, worker_id="x"))
                theirs = await others.acquire(3)
                assert theirs is not None
                await leases.release(dataclasses.replace(theirs, revision=theirs.revision - 1))
                assert await leases.acquire(3) is None
                # The partition count is fixed for the fleet's life.
                await check_partitions(stores.state, settings)
                other = dataclasses.replace(settings, partitions=PARTITIONS * 2)
                with pytest.raises(FleetError, match="created with 4 partitions"):
                    await check_partitions(stores.state, other)
            finally:
                await nc.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_claiming_a_partition_deletes_objects_a_crash_orphaned(tmp_path, model_path):
    """A crash between an object's write and its record's update (or before the previous
    object's deletion) leaves objects no record names: the next claim deletes that
    partition's, of earlier epochs only, and keeps the one its record names."""
    server = NatsServer(tmp_path / "nats", PARTITIONS)
    server.start()
    try:
        site = worker_site(
            tmp_path, "w", server, model_path, partitions=PARTITIONS, inline_snapshot_bytes=0
        )
        settings = fleet_settings(site)

        async def names(stores) -> set[str]:
            return {i.name for i in await stores.objects.list(ignore_deletes=True)}

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            try:
                stores = await open_stores(nc, settings, create=True)
                store = SnapshotStore(stores.state, stores.objects, settings)
                first = await store.claim(1)
                await store.write(first, 10, 0, marked_state(3))
                # What crashed writers of partition 1 (epoch 1) left behind, and objects
                # of another partition and of a later epoch, which are not to be touched.
                for stray in ("p1-e1-s20", "p1-e1-s30", "p12-e1-s5", "p1-e9-s1"):
                    await stores.objects.put(stray, b"orphan")
                second = await store.claim(1)
                assert second.record.epoch == 2
                np.testing.assert_array_equal(state_mark(second.state), np.arange(3))
                assert await names(stores) == {"p1-e1-s10", "p12-e1-s5", "p1-e9-s1"}
                await store.write(second, 40, 0, marked_state(4))  # replaces p1-e1-s10
                assert await names(stores) == {"p1-e2-s40", "p12-e1-s5", "p1-e9-s1"}
                _, _, state = await store.read(1)
                np.testing.assert_array_equal(state_mark(state), np.arange(4))
            finally:
                await nc.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_worker_stops_while_waiting_for_nats_and_refuses_another_partition_count(
    tmp_path, model_path
):
    server = NatsServer(tmp_path / "nats", PARTITIONS)
    try:
        # No server yet: the worker waits for one, and SIGTERM still stops it.
        site = worker_site(tmp_path, "early", server, model_path, partitions=PARTITIONS)
        early = DaemonProcess(site, tmp_path, "early")
        wait_until(lambda: "Connect call failed" in early.log(), 120, "a connection attempt")
        assert early.stop(signal.SIGTERM, timeout=30) == 0, early.log()
        assert "stopped before any NATS server answered" in early.log()
        # Under systemd: READY once the fleet's stores are set up, the watchdog fed.
        server.start()
        notify = NotifySocket(tmp_path / "notify.sock")
        first = DaemonProcess(
            site,
            tmp_path,
            "first",
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
        )
        wait_until(lambda: len(notify.times("WATCHDOG=1")) >= 3, 120, "watchdog pings")
        assert "fleet worker early: 4 partitions" in first.log()
        assert notify.times("READY=1")[0] <= notify.times("WATCHDOG=1")[0]
        # A fleet made with 4 partitions refuses a worker configured for 8.
        other = worker_site(tmp_path, "other", server, model_path, partitions=2 * PARTITIONS)
        refused = DaemonProcess(other, tmp_path, "other")
        assert refused.process.wait(120) == 2
        assert "this fleet was created with 4 partitions" in refused.log()
        assert first.stop(signal.SIGTERM, timeout=60) == 0, first.log()
        assert "STOPPING=1" in notify.texts()
        notify.close()
    finally:
        server.stop()
