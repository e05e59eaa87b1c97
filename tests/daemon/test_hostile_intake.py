"""The daemon against hostile intake, as users run it: subprocess, real mosquitto, metrics.

Issue 12: device times (redeliveries, clocks going backwards or into the far future,
gaps of samples that never arrived), a flood of maximum-size payloads against the
byte-bounded queue, an unreachable broker at start, and threads that die.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import DaemonProcess, make_model, site_config
from mqtt_helpers import Broker, free_port, publisher, wait_until

from streamlstm.daemon.intake import TimePolicy, TimestampGate
from streamlstm.daemon.metrics import scrape
from streamlstm.daemon.threadwatch import ThreadWatch
from streamlstm.sinks import SensorState
from streamlstm.sources import Frame

RATE = 100.0
N = 10  # samples per batch


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


def metric(port: int, key: str) -> float:
    return scrape(port).get(key, 0.0)


def batch(t: float, rate: float = RATE, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).normal(size=(N, 3)).round(4).tolist()
    return json.dumps({"t": t, "rate": rate, "samples": samples}).encode()


JSON_SOURCE = """
[[sources]]
type = "mqtt"
name = "plant"
topic = "sensors/{sensor}/accel"
qos = 1
"""


def test_redeliveries_bad_clocks_and_gaps_are_counted_not_stepped(broker, tmp_path, model_path):
    # Issue 12, items 8 and 9: redelivered batches were stepped twice, t = 1e300 was
    # accepted, a batch 1e6 s in the past shortened an alert, and samples the broker
    # dropped showed nowhere.
    metrics_port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=metrics_port,
        sources=JSON_SOURCE,
    )
    start = time.time() - 100.0
    period = N / RATE
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    try:
        wait_until(lambda: b"subscribed" in daemon.log_path.read_bytes(), 60, "the daemon")

        def send(payload: bytes) -> None:
            pub.publish("sensors/s1/accel", payload, qos=1).wait_for_publish(5)

        for k in range(5):
            send(batch(start + k * period, seed=k))
        send(batch(start + 4 * period, seed=4))  # a redelivery
        send(batch(start - 1e6))  # 1e6 s in the past
        send(batch(1e300))  # far future
        send(batch(1.79e308, rate=1e-308))  # times overflow to inf
        send(batch(start + 7 * period, seed=7))  # batches 5 and 6 never arrived
        wait_until(
            lambda: metric(metrics_port, "streamlstm_samples_total") == 6 * N, 60, "six batches"
        )
        wait_until(
            lambda: metric(metrics_port, "streamlstm_gap_samples_total") == 2 * N, 10, "the gap"
        )
        values = scrape(metrics_port)
        refused = {
            re.search(r'reason="(\w+)"', k).group(1): v
            for k, v in values.items()
            if k.startswith("streamlstm_refused_frames_total")
        }
        assert refused == {
            "redelivered": 1,
            "time_backwards": 1,
            "time_future": 1,
            "time_nonfinite": 1,
        }
        assert values["streamlstm_gaps_total"] == 1
        assert daemon.stop() == 0
        # Across a restart: the snapshot keeps the last stepped time per sensor.
        daemon = DaemonProcess(site, tmp_path, "daemon-2")
        wait_until(lambda: b"subscribed" in daemon.log_path.read_bytes(), 60, "the restart")
        send(batch(start + 7 * period, seed=7))  # redelivered after the restart
        send(batch(start + 8 * period, seed=8))
        wait_until(
            lambda: metric(metrics_port, "streamlstm_samples_total") == N, 60, "the new batch"
        )
        wait_until(
            lambda: metric(metrics_port, 'streamlstm_refused_frames_total{reason="redelivered"}'),
            10,
            "the redelivery to be counted",
        )
        assert metric(metrics_port, "streamlstm_gap_samples_total") == 0
    finally:
        pub.disconnect()
        daemon.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "redelivered" in log and "time_future" in log and "samples missing" in log


def test_samples_the_broker_drops_during_an_outage_show_as_a_gap(tmp_path, model_path):
    # Issue 12, item 8: mosquitto logged "Outgoing messages are being dropped" while the
    # daemon was away, and nothing in the daemon said samples were missing.
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Broker(folder)
    broker.config.write_text(
        broker.config.read_text().replace("max_queued_messages 100000", "max_queued_messages 5")
    )
    broker.start()
    metrics_port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=metrics_port,
        sources=JSON_SOURCE,
    )
    start = time.time() - 100.0
    period = N / RATE
    daemon = DaemonProcess(site, tmp_path)
    pub = publisher(broker.port)
    total = 60
    try:
        wait_until(lambda: b"subscribed" in daemon.log_path.read_bytes(), 60, "the daemon")

        def send(k: int) -> None:
            payload = batch(start + k * period, seed=k)
            pub.publish("sensors/s1/accel", payload, qos=1).wait_for_publish(5)

        for k in range(3):
            send(k)
        wait_until(
            lambda: metric(metrics_port, "streamlstm_samples_total") == 3 * N, 60, "three batches"
        )
        daemon.process.send_signal(signal.SIGSTOP)  # the daemon is away; the broker queues
        try:
            for k in range(3, total - 1):
                send(k)
            wait_until(
                lambda: (
                    b"Outgoing messages are being dropped"
                    in (folder / "mosquitto.log").read_bytes()
                ),
                10,
                "mosquitto to drop messages",
            )
        finally:
            daemon.process.send_signal(signal.SIGCONT)
        # The backlog the broker kept comes in; a batch sent while its queue is still full
        # would be dropped too, so the batch revealing the gap goes once it has drained.
        wait_until(
            lambda: metric(metrics_port, "streamlstm_samples_total") > 3 * N, 60, "the backlog"
        )
        time.sleep(1.0)
        send(total - 1)

        def accounted() -> bool:
            values = scrape(metrics_port)
            stepped = values.get("streamlstm_samples_total", 0)
            return stepped + values.get("streamlstm_gap_samples_total", 0) == total * N

        wait_until(accounted, 60, "every sample stepped or counted as missing")
        assert metric(metrics_port, "streamlstm_gap_samples_total") > 0
    finally:
        pub.disconnect()
        daemon.stop()
        broker.stop()
    assert "samples missing" in daemon.log()


def test_a_device_whose_clock_restarted_is_followed_after_clock_reset_s():
    gate = TimestampGate(TimePolicy(future_s=300, redelivery_window_s=60, clock_reset_s=5))
    sensors = {"dev": SensorState("dev", t=50_000.0, period=0.01)}

    def frame(t0: float, received: float) -> Frame:
        t = t0 + 0.01 * np.arange(N)
        return Frame("dev", t, np.zeros((N, 3), np.float32), received)

    # The device rebooted: its uptime clock starts again from 0.
    assert gate.admit([frame(0.0, 1000.0)], sensors) == []
    assert gate.admit([frame(2.0, 1002.0)], sensors) == []
    followed = gate.admit([frame(5.0, 1005.0)], sensors)
    assert len(followed) == 1 and gate.counts.clock_resets == 1
    assert gate.counts.frames == {"time_backwards": 2}
    assert gate.counts.gap_samples == 0
    # Host-stamped frames carry no device time to judge.
    stale = Frame("dev", np.array([1.0]), np.zeros((1, 3), np.float32), 1006.0, False)
    assert gate.admit([stale], sensors) == [stale]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


FLOAT32_SOURCE = """
[[sources]]
type = "mqtt"
name = "flood"
topic = "raw/{sensor}/accel"
payload = "float32"
rate = 1000.0
qos = 1
"""
QUEUE_BYTES = 32 * 2**20
MIB = 1024
SOURCE_SAMPLES = 'streamlstm_source_samples_total{source="flood"}'


def test_a_flood_of_maximum_size_payloads_stays_within_the_byte_bound(broker, tmp_path, model_path):
    # Issue 12, item 6: 4096 maximum-size float32 frames took RSS from 101 MB to 5.35 GB,
    # and it stayed there after the queue drained.
    metrics_port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=metrics_port,
        sources=FLOAT32_SOURCE,
        extra_daemon=f'queue_bytes = {QUEUE_BYTES}\nbackpressure = "drop-oldest"\n',
    )
    site.write_text(site.read_text().replace('backpressure = "block"\n', "", 1))
    payload = np.random.default_rng(0).normal(size=(65536, 3)).astype("<f4").tobytes()
    daemon = DaemonProcess(site, tmp_path)
    pid = daemon.process.pid
    pub = publisher(broker.port)
    try:
        wait_until(lambda: b"subscribed" in daemon.log_path.read_bytes(), 60, "the daemon")
        pub.publish("raw/warm/accel", payload, qos=1)
        wait_until(
            lambda: metric(metrics_port, "streamlstm_samples_total") == 65536, 120, "a first frame"
        )
        baseline = rss_kib(pid, "VmRSS")
        flood = 400  # 315 MB of payload, ten times the bound
        for i in range(flood):
            pub.publish(f"raw/s{i % 8}/accel", payload, qos=1)
        wait_until(
            lambda: metric(metrics_port, SOURCE_SAMPLES) == 65536 * (flood + 1),
            120,
            "the flood to be received",
        )
        wait_until(
            lambda: metric(metrics_port, "streamlstm_queue_frames") == 0, 300, "the queue to drain"
        )
        peak = rss_kib(pid, "VmHWM")
        time.sleep(1.0)
        after = rss_kib(pid, "VmRSS")
        dropped = metric(metrics_port, "streamlstm_dropped_frames_total")
    finally:
        pub.disconnect()
        daemon.stop()
    print(f"RSS baseline {baseline // MIB} MiB, peak {peak // MIB} MiB, after {after // MIB} MiB")
    assert dropped > 0  # the bound was reached, so it is what held memory down
    # The queue holds at most 32 MiB; decoding, one micro-batch and its detector buffers
    # add tens of MB. Without the byte bound this flood peaked at baseline + 500 MB.
    assert peak - baseline < (QUEUE_BYTES // 1024) + 150 * MIB
    assert after - baseline < 100 * MIB  # handed back once drained
    assert daemon.log().count("queue full") == 1  # logged, rate-limited


def test_the_queue_is_bounded_in_bytes_and_acknowledges_what_it_drops():
    from streamlstm.daemon.framequeue import FrameQueue

    acked: list[int] = []

    def frame(i: int, n: int = 1000) -> Frame:
        t = np.full(n, float(i))
        return Frame("s", t, np.zeros((n, 3), np.float32), 0.0, ack=lambda: acked.append(i))

    size = frame(0).nbytes
    queue = FrameQueue(capacity=1000, policy="drop-oldest", max_bytes=3 * size)
    queue.put([frame(i) for i in range(10)])
    assert len(queue) == 3 and queue.bytes == 3 * size
    assert acked == list(range(7)) and queue.dropped_frames == 7
    huge = frame(99, n=100_000)  # larger than the whole bound: taken once the queue is empty
    queue.put([huge])
    assert [f.t[0] for f in queue.take(10**9, 0.0, 0.0)] == [99.0]
    assert queue.bytes == 0
    blocking = FrameQueue(capacity=1000, policy="block", max_bytes=2 * size)
    blocking.put([frame(0), frame(1)])
    done = threading.Event()
    threading.Thread(target=lambda: (blocking.put([frame(2)]), done.set()), daemon=True).start()
    assert not done.wait(0.3)  # waits for room
    assert len(blocking.take(1000, 0.0, 0.0)) == 1
    assert done.wait(5) and len(blocking) == 2 and blocking.dropped_frames == 0


@pytest.mark.slow
def test_an_unreachable_broker_at_start_is_logged_once_and_counted(tmp_path, model_path):
    # Issue 12, item 8: only the connected gauge said so.
    metrics_port = free_port()
    site = site_config(
        tmp_path,
        broker_port=free_port(),  # nothing listens there
        model=model_path,
        metrics_port=metrics_port,
        sources=JSON_SOURCE,
    )
    daemon = DaemonProcess(site, tmp_path)
    try:
        key = 'streamlstm_connect_failures_total{component="source:plant"}'

        def failures() -> float:
            try:
                return metric(metrics_port, key)
            except OSError:
                return 0.0

        wait_until(lambda: failures() >= 3, 60, "three failed attempts")
        sink_key = 'streamlstm_connect_failures_total{component="sink:mqtt"}'
        assert metric(metrics_port, sink_key) >= 1
    finally:
        daemon.stop()
    log = daemon.log()
    assert log.count("plant: cannot reach the broker") == 1
    assert log.count("mqtt sink: cannot reach the broker") == 1


def test_a_failing_snapshot_folder_shows_in_the_metrics(broker, tmp_path, model_path):
    # Issue 12, item 8: a failing snapshot directory logged every interval, no metric.
    metrics_port = free_port()
    site = site_config(
        tmp_path,
        broker_port=broker.port,
        model=model_path,
        metrics_port=metrics_port,
        sources=JSON_SOURCE,
        snapshot_interval_s=0.2,
    )
    (tmp_path / "not-a-folder").write_text("")
    site.write_text(site.read_text().replace('"state.npz"', '"not-a-folder/state.npz"'))
    daemon = DaemonProcess(site, tmp_path)
    try:

        def failures() -> float:
            try:
                return metric(metrics_port, "streamlstm_snapshot_failures_total")
            except OSError:
                return 0.0

        wait_until(lambda: failures() >= 2, 60, "two failed snapshots")
    finally:
        daemon.stop()


def test_a_thread_that_dies_of_an_exception_is_noticed():
    outer = threading.excepthook
    threading.excepthook = lambda args: None  # the chained hook: keep pytest's out of it
    watch = ThreadWatch()
    watch.install()
    try:

        def crash() -> None:
            raise RuntimeError("boom")

        thread = threading.Thread(target=crash, name="paho-like")
        thread.start()
        thread.join(5)
    finally:
        watch.uninstall()
        threading.excepthook = outer
    assert watch.dead == ["paho-like: RuntimeError"]


def test_a_replay_restarted_after_a_failure_resumes_instead_of_replaying(tmp_path):
    # Issue 12, item 1: the daemon restarts a source that raised; a replay restarted from
    # its first sample would step the recording twice.
    from streamlstm.daemon.config import validate
    from streamlstm.sources.replay import ReplaySource

    np.savez(tmp_path / "rec.npz", samples=np.zeros((95, 3), np.float32), rate=100.0)
    table = {"type": "replay", "path": str(tmp_path / "rec.npz"), "block": 10, "progress": False}
    source = ReplaySource.from_config(validate({"sources": [table]}).sources[0], 3)
    emitted: list[Frame] = []

    def emit(frames: list[Frame]) -> None:
        if len(emitted) == 3 and not getattr(emit, "failed", False):
            emit.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("the queue failed once")
        emitted.extend(frames)

    with pytest.raises(RuntimeError):
        source.run(emit, threading.Event())
    source.run(emit, threading.Event())
    starts = [round(float(f.t[0]) * 100) for f in emitted]
    assert starts == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]  # each block once


def test_intake_keys_are_validated():
    from streamlstm.daemon.config import validate
    from streamlstm.errors import ConfigError

    source = {"type": "mqtt", "topic": "s/{sensor}/a", "ack": "after-step"}
    assert validate({"sources": [source]}).sources[0].receive_maximum == 1000
    for raw, message in [
        ({"sources": [{**source, "qos": 2}]}, "sources[0].ack: 'after-step' needs qos = 1"),
        ({"sources": [{**source, "receive_maximum": 0}]}, "receive_maximum: must be 1..65535"),
        ({"daemon": {"queue_bytes": 10}}, "daemon.queue_bytes: must be >= 4096"),
        ({"daemon": {"time_future_s": -1}}, "daemon.time_future_s: must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(raw)


def test_a_failing_source_is_restarted_and_a_dead_one_reported(tmp_path, model_path):
    # Issue 12, item 1: a dead intake thread must be noticed (io_faults feeds the watchdog).
    from streamlstm.daemon.config import validate
    from streamlstm.daemon.engine import Daemon

    np.savez(tmp_path / "rec.npz", samples=np.zeros((20, 3), np.float32), rate=100.0)
    config = validate(
        {
            "model": {"path": str(model_path)},
            "sources": [{"type": "replay", "path": str(tmp_path / "rec.npz"), "progress": False}],
            "sinks": [{"type": "jsonl", "path": str(tmp_path / "alerts.jsonl")}],
        }
    )
    outer = threading.excepthook
    threading.excepthook = lambda args: None  # the chained hook: keep pytest's out of it
    daemon = Daemon(config)
    source = daemon.sources[0]
    calls: list[int] = []

    def flaky(emit, stop) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the source")
        raise SystemExit  # not an Exception: the supervisor lets it end the thread

    source.run = flaky  # type: ignore[method-assign]
    try:
        daemon._start_sources()
        wait_until(lambda: len(calls) == 2, 10, "the restart")
        wait_until(lambda: len(daemon.io_faults()) == 2, 10, "the dead thread to be reported")
        assert daemon.io_faults() == [
            f"source-{source.name}: SystemExit",  # seen by the thread watch
            f"source {source.name}: thread ended",  # seen by the supervisor
        ]
        assert source.stats.parse_errors["source_failure"] == 1
    finally:
        daemon._stop_sources()
        daemon.thread_watch.uninstall()
        threading.excepthook = outer
        for sink in daemon.sinks:
            sink.close()
