"""Snapshots, the frame queue's backpressure, metrics exposition, sd_notify."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
import zipfile

import numpy as np
import pytest
from snapshot_helpers import compressed_bomb

from streamlstm.daemon import snapshot, systemd
from streamlstm.daemon.framequeue import FrameQueue
from streamlstm.daemon.metrics import Metrics, MetricsServer
from streamlstm.sources import Frame

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    with pytest.raises(snapshot.SnapshotError, match=r"not a streamlstm\.snapshot/2"):
        snapshot.load(tmp_path / "other.npz")


def test_snapshot_stores_string_lists_as_arrays_and_reads_version_1(tmp_path):
    names = ["pump", "fan-ü", "\ud800 lone surrogate", "", "x" * 300]
    snapshot.save(tmp_path / "s.npz", {"sensors": names, "mixed": ["a", 1]})
    with zipfile.ZipFile(tmp_path / "s.npz") as archive:
        tree = np.lib.format.read_array(archive.open("__tree__.npy"))
    assert b"pump" not in tree.tobytes()  # the names are in arrays, not in the JSON tree
    back = snapshot.load(tmp_path / "s.npz")
    assert back == {"sensors": names, "mixed": ["a", 1]}
    old = b'{"format": "streamlstm.snapshot/1", "state": {"sensors": ["a", "b"]}}'
    np.savez(tmp_path / "v1.npz", __tree__=np.frombuffer(old, np.uint8))
    assert snapshot.load(tmp_path / "v1.npz") == {"sensors": ["a", "b"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "unreadable snapshot"),
        (b"PK\x05\x06" + bytes(18), "no __tree__"),
        (b"not a zip at all", "unreadable snapshot"),
    ],
)
def test_empty_and_malformed_snapshots_are_snapshot_errors(tmp_path, content, message):
    (tmp_path / "s.npz").write_bytes(content)
    with pytest.raises(snapshot.SnapshotError, match=message):
        snapshot.load(tmp_path / "s.npz")


def test_a_compressed_snapshot_member_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.npz"
    compressed_bomb(path, 1 << 30)
    assert path.stat().st_size < 2 << 20
    # In a fresh interpreter, measuring the growth of the peak RSS over the load alone (an
    # exec'd child starts from its parent's peak on Linux: the whole suite's, late in a run).
    script = (
        "import resource, sys\n"
        "from streamlstm.daemon import snapshot\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    snapshot.load(sys.argv[1])\n"
        "except snapshot.SnapshotError as exc:\n"
        "    print('refused:', exc)\n"
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "refused:" in out.stdout and "'extra' is encrypted or uses compression" in out.stdout
    growth_mb = int(out.stdout.split("maxrss_kb")[1]) / 1024
    assert growth_mb < 100, out.stdout  # inflating the member would take 1024 MB


def test_snapshot_array_header_claiming_more_than_its_member_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    snapshot.save(path, {"states": np.zeros((4, 4), np.float32)})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    # Rewrite the array's .npy header (same length) to claim 10^12 elements: NumPy would
    # allocate that before noticing that the member is short.
    data = bytearray(members["a0.npy"])
    start = data.index(b"{'descr': '<f4'")
    end = data.index(b"\n", start)
    claim = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    data[start:end] = claim.ljust(end - start)
    members["a0.npy"] = bytes(data)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(snapshot.SnapshotError, match="header claims shape"):
        snapshot.load(path)


def test_snapshot_writer_survives_failures_and_writes_the_newest_job(tmp_path):
    written, failed = [], []
    target = tmp_path / "s.npz"
    writer = snapshot.SnapshotWriter(
        target, lambda size, seconds: written.append(size), failed.append
    )
    try:
        writer.submit(lambda: {"n": 1})
        assert writer.flush(10) and len(written) == 1

        def broken():
            raise OSError(28, "No space left on device")

        writer.submit(broken)
        assert writer.flush(10) and len(failed) == 1 and writer.alive
        writer.submit(lambda: {"n": 2})
        assert writer.flush(10)
        assert snapshot.load(target) == {"n": 2}
    finally:
        assert writer.close(10)
    writer._thread.join(5)
    assert not writer.alive


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
