"""Serial-port source (pyserial): text lines (CSV/TSV/JSON) or binary COBS frames.

The port is reopened with exponential backoff whenever it disappears (USB adapter
unplugged: ``SerialException``/``OSError``); every successful reopening is counted in
``stats.reconnects`` and logged. Each record gets the host receive time in
:attr:`Frame.received`; the device time, when the format carries one, goes in ``Frame.t``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import serial

from . import Emit, Frame, SourceStats, check_sensor_id, sample_times
from .parsers import Delimited, LineFormat, ParseError, decode_frame, decode_json

log = logging.getLogger(__name__)

PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}


class SerialSource:
    """Reads one serial port; ``config`` is a validated ``[[sources]]`` table of type serial.

    Sensor ids: the fixed ``sensor``; or, for CSV/TSV, the ``sensor_column``; for JSON
    lines, a ``"sensor"`` key; for binary frames, ``sensor`` (or the source name)
    followed by the frame's channel number, e.g. ``bench-3``.
    """

    def __init__(self, config: dict[str, Any], width: int) -> None:
        self.name = config["name"]
        self.stats = SourceStats()
        self._config = config
        self._width = width
        self._format = config["format"]
        binary = self._format == "binary"
        self._records = Delimited(b"\0" if binary else b"\n", config["max_line"])
        self._lines = None
        if self._format in ("csv", "tsv"):
            self._lines = LineFormat(
                tuple(config["columns"]),
                "," if self._format == "csv" else "\t",
                config["time_column"],
                config["sensor_column"],
            )

    def _open(self) -> serial.Serial:
        c = self._config
        return serial.Serial(
            c["port"],
            c["baud"],
            bytesize=c["bytesize"],
            parity=PARITY[c["parity"]],
            stopbits=c["stopbits"],
            timeout=0.05,
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read until ``stop``; never raises for device trouble (it retries instead)."""
        delay = self._config["reopen_min_s"]
        lost = False
        while not stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError) as exc:
                log.warning(
                    "%s: cannot open %s (%s); retrying in %.1f s",
                    self.name,
                    self._config["port"],
                    exc,
                    delay,
                )
                stop.wait(delay)
                delay = min(2 * delay, self._config["reopen_max_s"])
                continue
            if lost:
                self.stats.reconnected()
                log.info("%s: reopened %s", self.name, self._config["port"])
            self.stats.connected = True
            delay = self._config["reopen_min_s"]
            try:
                self._read(port, emit, stop)
            except (serial.SerialException, OSError) as exc:
                lost = True
                log.warning("%s: lost %s (%s)", self.name, self._config["port"], exc)
            finally:
                self.stats.connected = False
                self._records.reset()
                port.close()

    def _read(self, port: serial.Serial, emit: Emit, stop: threading.Event) -> None:
        while not stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if not data:
                continue
            received = time.time()
            oversize = self._records.oversize
            records = self._records.feed(data)
            if self._records.oversize > oversize:
                self.stats.error("oversize", self._records.oversize - oversize)
            frames = self._frames(records, received)
            if frames:
                emit(frames)

    def _frames(self, records: list[bytes], received: float) -> list[Frame]:
        frames: list[Frame] = []
        for record in records:
            try:
                frames.append(self._decode(record.rstrip(b"\r"), received))
            except Exception as exc:  # one record never stops the port
                self.stats.dropped(self.name, exc)
        self.stats.received(sum(len(f.t) for f in frames))
        return frames

    def _decode(self, record: bytes, received: float) -> Frame:
        fixed = self._config["sensor"]
        if self._lines is not None:
            sample, t, sensor = self._lines.parse(record)
            return Frame(
                check_sensor_id(sensor or fixed),
                np.array([received if t is None else t]),
                sample[None, :],
                received,
                t is not None,
            )
        if self._format == "json":
            block = decode_json(record, self._width, max_samples=self._config["max_line"])
            sensor = block.sensor or fixed
            if sensor is None:
                raise ParseError("schema", "no 'sensor' key and no fixed sensor configured")
        else:
            channel, block = decode_frame(record, self._width)
            sensor = f"{fixed or self.name}-{channel}"
        times = sample_times(len(block.samples), start=block.t, rate=block.rate, received=received)
        return Frame(check_sensor_id(sensor), times, block.samples, received, block.t is not None)
