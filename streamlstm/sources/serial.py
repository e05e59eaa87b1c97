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

import numpy as np
import serial

from ..daemon.config import SerialSourceConfig, section_values
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
    """Reads one serial port, as its :class:`~streamlstm.daemon.config.SerialSourceConfig`
    (``settings``) says; ``width`` values per sample.

    Sensor ids: the fixed ``sensor``; or, for CSV/TSV, the ``sensor_column``; for JSON
    lines, a ``"sensor"`` key; for binary frames, ``sensor`` (or the source name)
    followed by the frame's channel number, e.g. ``bench-3``. CSV/TSV lines need
    ``columns`` (where the sample's values are, 0-based).
    """

    def __init__(
        self,
        *,
        port: str,
        width: int,
        name: str = "serial",
        baud: int = SerialSourceConfig.baud,
        bytesize: int = SerialSourceConfig.bytesize,
        parity: str = SerialSourceConfig.parity,
        stopbits: float = SerialSourceConfig.stopbits,
        format: str = SerialSourceConfig.format,
        sensor: str | None = None,
        max_line: int = SerialSourceConfig.max_line,
        reopen_min_s: float = SerialSourceConfig.reopen_min_s,
        reopen_max_s: float = SerialSourceConfig.reopen_max_s,
        columns: tuple[int, ...] | None = None,
        time_column: int | None = None,
        sensor_column: int | None = None,
    ) -> None:
        self.settings = SerialSourceConfig(
            name=name,
            port=port,
            baud=baud,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            format=format,
            sensor=sensor,
            max_line=max_line,
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
            columns=None if columns is None else tuple(columns),
            time_column=time_column,
            sensor_column=sensor_column,
        )
        self.name = name
        self.stats = SourceStats()
        self._width = width
        binary = format == "binary"
        self._records = Delimited(b"\0" if binary else b"\n", max_line)
        self._lines = None
        if format in ("csv", "tsv"):
            assert columns is not None  # the settings' checks require them here
            self._lines = LineFormat(
                tuple(columns), "," if format == "csv" else "\t", time_column, sensor_column
            )

    @classmethod
    def from_config(cls, settings: SerialSourceConfig, width: int) -> SerialSource:
        """The source a validated ``[[sources]]`` table of type serial describes."""
        return cls(width=width, **section_values(settings))

    def _open(self) -> serial.Serial:
        c = self.settings
        return serial.Serial(
            c.port,
            c.baud,
            bytesize=c.bytesize,
            parity=PARITY[c.parity],
            stopbits=c.stopbits,
            timeout=0.05,
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read until ``stop``; never raises for device trouble (it retries instead)."""
        delay = self.settings.reopen_min_s
        lost = False
        while not stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError) as exc:
                log.warning(
                    "%s: cannot open %s (%s); retrying in %.1f s",
                    self.name,
                    self.settings.port,
                    exc,
                    delay,
                )
                stop.wait(delay)
                delay = min(2 * delay, self.settings.reopen_max_s)
                continue
            if lost:
                self.stats.reconnected()
                log.info("%s: reopened %s", self.name, self.settings.port)
            self.stats.connected = True
            delay = self.settings.reopen_min_s
            try:
                self._read(port, emit, stop)
            except (serial.SerialException, OSError) as exc:
                lost = True
                log.warning("%s: lost %s (%s)", self.name, self.settings.port, exc)
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
        fixed = self.settings.sensor
        if self._lines is not None:
            sample, t, sensor = self._lines.parse(record)
            return Frame(
                check_sensor_id(sensor or fixed or ""),
                np.array([received if t is None else t]),
                sample[None, :],
                received,
                t is not None,
            )
        if self.settings.format == "json":
            block = decode_json(record, self._width, max_samples=self.settings.max_line)
            sensor = block.sensor or fixed
            if sensor is None:
                raise ParseError("schema", "no 'sensor' key and no fixed sensor configured")
        else:
            channel, block = decode_frame(record, self._width)
            sensor = f"{fixed or self.name}-{channel}"
        times = sample_times(len(block.samples), start=block.t, rate=block.rate, received=received)
        return Frame(check_sensor_id(sensor), times, block.samples, received, block.t is not None)
