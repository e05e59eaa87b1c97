"""The serial source on real pseudo-terminal pairs: formats, garbage, unplug and replug."""

from __future__ import annotations

import contextlib
import os
import threading
import tty
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import wait_until

from streamlstm.daemon.config import validate
from streamlstm.sources.parsers import encode_frame
from streamlstm.sources.serial import SerialSource


class Device:
    """The device end of a pty; the daemon opens ``link``, a stable symlink to the slave
    (as udev's /dev/serial/by-id links are), which :meth:`replug` points at a new pty."""

    def __init__(self, folder: Path) -> None:
        self.link = folder / "ttyTEST"
        self.master = -1
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)  # the daemon opens it by name
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, self.link)
        self.master = master

    def unplug(self) -> None:
        os.close(self.master)
        self.link.unlink()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)


def serial_config(port: Path, **overrides) -> dict:
    table = {
        "type": "serial",
        "name": "bench",
        "port": str(port),
        "baud": 115200,
        "format": "csv",
        "columns": [1, 2, 3],
        "time_column": 0,
        "sensor": "bench1",
        "reopen_min_s": 0.05,
        "reopen_max_s": 0.2,
        "max_line": 200,
        **overrides,
    }
    table = {k: v for k, v in table.items() if v is not None}  # TOML has no null: None = absent
    return validate({"sources": [table]}).sources[0]


class Collector:
    def __init__(self, source: SerialSource) -> None:
        self.frames = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.emit, self.stop), daemon=True)
        self.thread.start()
        wait_until(lambda: source.stats.connected, 5, "the port to open")

    def emit(self, frames) -> None:
        with self.lock:
            self.frames += frames

    def samples(self) -> np.ndarray:
        with self.lock:
            return (
                np.concatenate([f.samples for f in self.frames])
                if self.frames
                else np.zeros((0, 3))
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def device(tmp_path):
    dev = Device(tmp_path)
    yield dev
    with contextlib.suppress(OSError):  # already closed by unplug()
        os.close(dev.master)


def test_csv_lines_with_device_time_and_garbage_counted_per_reason(device):
    source = SerialSource.from_config(serial_config(device.link), 3)
    rx = Collector(source)
    try:
        device.write(b"1.5,1,2,3\n2.5,4,5,6\r\n")
        device.write(b"3.5,1,2\n")  # too few columns
        device.write(b"\xff\xfe,1,2,3\n")  # not UTF-8
        device.write(b"\n")  # empty
        device.write(b"4.5,x,2,3\n")  # not a number
        device.write(b"9" * 500 + b"\n")  # longer than max_line
        device.write(b"5.5,7,8,")  # torn across two reads
        device.write(b"9\n")
        wait_until(lambda: len(rx.samples()) == 3, 5, "three good samples")
        wait_until(lambda: sum(source.stats.parse_errors.values()) == 5, 5, "five errors")
    finally:
        rx.close()
    assert rx.samples().tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [f.t[0] for f in rx.frames] == [1.5, 2.5, 5.5]
    assert all(f.sensor == "bench1" and f.received > 1e9 for f in rx.frames)
    assert dict(source.stats.parse_errors) == {
        "columns": 1,
        "encoding": 1,
        "empty": 1,
        "number": 1,
        "oversize": 1,
    }


def test_binary_frames_resynchronise_after_torn_and_corrupt_frames(device):
    source = SerialSource.from_config(
        serial_config(
            device.link,
            format="binary",
            columns=None,
            time_column=None,
            sensor="acc",
            max_line=4096,
        ),
        3,
    )
    rx = Collector(source)
    good = [
        encode_frame(c, np.full((4, 3), c, np.float32), t=100.0 + c, rate=1000.0) for c in range(3)
    ]
    corrupt = bytearray(good[1])
    corrupt[8] ^= 0x40
    try:
        device.write(good[0][:10])  # a frame torn by a reset of the device
        device.write(b"\0")
        device.write(bytes(corrupt))  # bit flip: CRC (or stuffing) catches it
        device.write(good[0] + b"\x03\x01" + good[1])  # line noise glued to a frame's start
        device.write(good[2])
        wait_until(lambda: len(rx.frames) == 2, 5, "the intact frames")
        wait_until(lambda: sum(source.stats.parse_errors.values()) >= 3, 5, "three bad frames")
    finally:
        rx.close()
    assert [f.sensor for f in rx.frames] == ["acc-0", "acc-2"]
    np.testing.assert_allclose(rx.frames[1].t, 102.0 + np.arange(4) / 1000.0)
    assert rx.frames[1].samples.tolist() == [[2.0] * 3] * 4
    assert set(source.stats.parse_errors) <= {"length", "crc", "cobs", "schema"}


def test_json_lines_carry_their_own_sensor_ids(device):
    source = SerialSource.from_config(
        serial_config(device.link, format="json", columns=None, time_column=None, sensor=None), 3
    )
    rx = Collector(source)
    try:
        device.write(b'{"sensor": "a", "t": 10, "rate": 100, "samples": [[1,2,3],[4,5,6]]}\n')
        device.write(b'{"sample": [1,2,3]}\n')  # no sensor anywhere
        device.write(b'{"sensor": "b", "sample": [1, "x", 3]}\n')
        device.write(b'{"sensor": "b", "sample": [7,8,9]}\n')
        wait_until(lambda: len(rx.frames) == 2, 5, "two frames")
        wait_until(lambda: sum(source.stats.parse_errors.values()) == 2, 5, "two errors")
    finally:
        rx.close()
    assert [f.sensor for f in rx.frames] == ["a", "b"]
    np.testing.assert_allclose(rx.frames[0].t, [10.0, 10.01])
    assert dict(source.stats.parse_errors) == {"schema": 2}


def test_unplugged_device_is_reopened_and_counted(device):
    source = SerialSource.from_config(serial_config(device.link), 3)
    rx = Collector(source)
    try:
        device.write(b"1,1,1,1\n")
        wait_until(lambda: len(rx.samples()) == 1, 5, "the first sample")
        device.unplug()
        wait_until(lambda: not source.stats.connected, 5, "the loss to be noticed")
        device.plug()
        wait_until(lambda: source.stats.connected, 5, "the port to be reopened")
        device.write(b"2,2,2,2\n")
        wait_until(lambda: len(rx.samples()) == 2, 5, "a sample after the reopen")
    finally:
        rx.close()
    assert source.stats.reconnects == 1
    assert rx.samples()[-1].tolist() == [2, 2, 2]


def test_unusable_sensor_ids_are_refused_at_intake_and_counted(device):
    # Issue 12, item 2: '"sensor": "\ud800"' on a serial JSON line reached the MQTT sink,
    # whose publish raised (crash loop once spooled). Refused here, reading goes on.
    source = SerialSource.from_config(
        serial_config(
            device.link, format="json", columns=None, time_column=None, sensor=None, max_line=800
        ),
        3,
    )
    rx = Collector(source)
    try:
        device.write(b'{"sensor": "\\ud800", "sample": [1,2,3]}\n')
        device.write(b'{"sensor": "a+b", "sample": [1,2,3]}\n')
        device.write(b'{"sensor": "' + b"x" * 300 + b'", "sample": [1,2,3]}\n')
        device.write(b'{"sensor": "ok/1", "sample": [4,5,6]}\n')
        wait_until(lambda: len(rx.frames) == 1, 5, "the good line")
        wait_until(lambda: source.stats.parse_errors["sensor_id"] == 3, 5, "three refusals")
    finally:
        rx.close()
    assert [f.sensor for f in rx.frames] == ["ok/1"]
    assert dict(source.stats.parse_errors) == {"sensor_id": 3}
