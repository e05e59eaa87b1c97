"""Snapshots, the frame queue's backpressure, metrics exposition, sd_notify."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request

import numpy as np
import pytest

from streamlstm.daemon import snapshot, systemd
from streamlstm.daemon.framequeue import FrameQueue
from streamlstm.daemon.metrics import Metrics, MetricsServer
from streamlstm.sources import Frame


def test_snapshot_round_trip_keeps_arrays_types_and_int_keys(tmp_path):
    state = {
        "detector": {
            "version": 1,
            "sensors": ["a", 7],
            "states": np.arange(6, dtype=np.float32).reshape(2, 3),
            "fstate": np.array([[np.nan, 1.0]]),
            "flags": np.int64(3),
        },
        "by_id": {7: [1.5, None, True, "x"]},
    }
    path = tmp_path / "s.npz"
    snapshot.save(path, state)
    back = snapshot.load(path)
    assert back["detector"]["sensors"] == ["a", 7] and back["detector"]["flags"] == 3
    assert back["detector"]["states"].dtype == np.float32
    np.testing.assert_array_equal(back["detector"]["states"], state["detector"]["states"])
    assert np.isnan(back["detector"]["fstate"][0, 0])
    assert back["by_id"] == {7: [1.5, None, True, "x"]}
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temp file left behind


def test_snapshot_refuses_pickles_and_foreign_files(tmp_path):
    with pytest.raises(snapshot.SnapshotError, match="object arrays"):
        snapshot.save(tmp_path / "s.npz", {"x": np.array([{"a": 1}], dtype=object)})
    np.savez(tmp_path / "pickled.npz", __tree__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(snapshot.SnapshotError, match="unreadable"):
        snapshot.load(tmp_path / "pickled.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", __tree__=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(snapshot.SnapshotError, match=r"not a streamlstm\.snapshot/1"):
        snapshot.load(tmp_path / "other.npz")


def frame(n: int, sensor: str = "s") -> Frame:
    return Frame(sensor, np.zeros(n), np.zeros((n, 3), np.float32), 0.0)


def test_full_queue_drops_the_oldest_and_counts_it():
    queue = FrameQueue(3, "drop-oldest")
    queue.put([frame(1, "a"), frame(2, "b"), frame(3, "c"), frame(4, "d")])
    assert queue.dropped_frames == 1 and queue.dropped_samples == 1
    batch = queue.take(max_samples=5, wait=0.0, idle=0.0)
    assert [f.sensor for f in batch] == ["b", "c"]  # stops once 5 samples are gathered
    assert [f.sensor for f in queue.take(100, 0.0, 0.0)] == ["d"]


def test_block_policy_waits_for_room_and_loses_nothing():
    queue = FrameQueue(2, "block")
    producer = threading.Thread(target=queue.put, args=([frame(1, str(i)) for i in range(6)],))
    producer.start()
    seen = []
    for _ in range(100):
        seen += [f.sensor for f in queue.take(1, 0.0, 0.05)]
        if len(seen) == 6:
            break
    producer.join(5)
    assert seen == [str(i) for i in range(6)] and queue.dropped_frames == 0


def test_metrics_exposition_over_http():
    metrics = Metrics()
    metrics.describe("x_total", "counter", "things")
    metrics.describe("lat_seconds", "histogram", "latency")
    metrics.describe("up", "gauge", "connected")
    metrics.inc("x_total", 2, (("reason", 'a"b'),))
    hist = metrics.histogram("lat_seconds", (0.01, 0.1))
    for value in (0.005, 0.05, 0.5):
        hist.observe(value)
    metrics.collector(lambda: [("up", (("component", "sink"),), 1)])
    server = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        server.close()
    assert '# TYPE x_total counter\nx_total{reason="a\\"b"} 2' in text
    assert (
        'lat_seconds_bucket{le="0.01"} 1\nlat_seconds_bucket{le="0.1"} 2\n'
        'lat_seconds_bucket{le="+Inf"} 3' in text
    )
    assert "lat_seconds_count 3" in text and 'up{component="sink"} 1' in text


def test_sd_notify_reaches_the_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1")
        assert listener.recv(64) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 2.0
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")
