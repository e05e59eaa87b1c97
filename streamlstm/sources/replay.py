"""Replay a recording (CSV/TSV or NPZ) at its recorded rate, scaled, or as fast as possible.

NPZ recordings hold ``samples`` ``(T, D)`` (or ``(T,)`` for one channel) and optionally
``t`` ``(T,)`` seconds, ``rate`` (Hz) and ``sensor`` (a string); they are read with
``allow_pickle=False``. CSV/TSV recordings use the configured ``columns`` (default: the
first ``D`` columns that are not the time column); a header line is skipped.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..daemon.config import ReplaySourceConfig, section_values
from ..errors import SourceError
from . import Emit, Frame, SourceStats, check_sensor_id, sample_times
from .parsers import LineFormat, ParseError


class Recording:
    """A loaded recording: ``samples`` ``(T, D)`` float32 and ``t`` ``(T,)`` float64 seconds."""

    def __init__(self, samples: np.ndarray, t: np.ndarray, sensor: str) -> None:
        self.samples, self.t, self.sensor = samples, t, sensor


def _load_npz(
    path: Path, width: int, rate: float | None
) -> tuple[np.ndarray, np.ndarray | None, float | None, str | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "samples" not in data.files:
                raise SourceError(f"{path}: no 'samples' array (found: {', '.join(data.files)})")
            samples = np.asarray(data["samples"], np.float32)
            t = np.asarray(data["t"], np.float64) if "t" in data.files else None
            if "rate" in data.files and rate is None:
                rate = float(data["rate"])
            sensor = str(data["sensor"]) if "sensor" in data.files else None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable NPZ recording ({exc})") from None
    if samples.ndim == 1:
        samples = samples[:, None]
    return samples, t, rate, sensor


def _load_text(
    path: Path, width: int, columns: Sequence[int] | None, time_column: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    if columns is None:
        columns = [c for c in range(width + 1) if c != time_column][:width]
    fmt = LineFormat(tuple(columns), separator, time_column, None)
    samples, times = [], []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample, t, _ = fmt.parse(line)
        except ParseError as exc:
            if number == 1:  # a header
                continue
            raise SourceError(f"{path}:{number}: {exc}") from None
        samples.append(sample)
        times.append(t)
    if not samples:
        raise SourceError(f"{path}: no samples")
    t_array = None if time_column is None else np.asarray(times, np.float64)
    return np.stack(samples), t_array


def load_recording(
    path: str | Path,
    width: int,
    *,
    columns: Sequence[int] | None = None,
    time_column: int | None = None,
    rate: float | None = None,
    sensor: str | None = None,
) -> Recording:
    """Read a recording; :class:`SourceError` if it is missing, unreadable or of the wrong width.

    ``columns`` and ``time_column``: where a text recording's values are (default: the
    first ``width`` columns that are not the time column); ``rate``: samples/s where the
    file has neither times nor a rate; ``sensor``: its sensor id (default: the file's, or
    its name).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such recording")
    stored = None
    if path.suffix.lower() == ".npz":
        samples, t, rate, stored = _load_npz(path, width, rate)
    else:
        samples, t = _load_text(path, width, columns, time_column)
    if samples.ndim != 2 or samples.shape[1] != width or not len(samples):
        raise SourceError(f"{path}: samples of shape {samples.shape}, the model takes (T, {width})")
    if t is None:
        t = sample_times(len(samples), start=0.0, rate=rate or 1.0, received=0.0)
    if t.shape != (len(samples),):
        raise SourceError(f"{path}: t has shape {t.shape}, expected ({len(samples)},)")
    if not np.isfinite(t).all():
        raise SourceError(f"{path}: t has non-finite times")
    name = sensor or stored or path.stem
    try:
        check_sensor_id(name)
    except ParseError as exc:
        raise SourceError(f"{path}: {exc} (set 'sensor' in the source's table)") from None
    return Recording(samples, t, name)


#: Progress lines come at every tenth of the recording, and at least this often.
PROGRESS_EVERY_S = 30.0


class ReplaySource:
    """Emits a recording, as its :class:`~streamlstm.daemon.config.ReplaySourceConfig`
    (``settings``) says: in blocks of ``block`` samples, ``speed`` 0 = as fast as
    possible; ``recording``: one already loaded (else it is read from ``path``)."""

    def __init__(
        self,
        *,
        path: str,
        width: int,
        name: str = "replay",
        sensor: str | None = None,
        speed: float = ReplaySourceConfig.speed,
        rate: float | None = None,
        block: int = ReplaySourceConfig.block,
        plot: str | None = None,
        progress: bool = ReplaySourceConfig.progress,
        columns: tuple[int, ...] | None = None,
        time_column: int | None = None,
        sensor_column: int | None = None,
        recording: Recording | None = None,
    ) -> None:
        self.settings = ReplaySourceConfig(
            name=name,
            path=path,
            sensor=sensor,
            speed=speed,
            rate=rate,
            block=block,
            plot=plot,
            progress=progress,
            columns=None if columns is None else tuple(columns),
            time_column=time_column,
            sensor_column=sensor_column,
        )
        self.name = name
        self.stats = SourceStats()
        self.recording = recording or load_recording(
            path, width, columns=columns, time_column=time_column, rate=rate, sensor=sensor
        )
        self._next = 0  # first sample not yet emitted: a restarted run() resumes there

    @classmethod
    def from_config(cls, settings: ReplaySourceConfig, width: int) -> ReplaySource:
        """The source a validated ``[[sources]]`` table of type replay describes."""
        return cls(width=width, **section_values(settings))

    @property
    def sensors(self) -> list[str]:
        return [self.recording.sensor]

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit every block (pacing by the recorded times when ``speed`` > 0), then return.

        If ``emit`` raises, the exception propagates; a later call resumes with the block
        that failed instead of replaying the recording from the start.
        """
        rec = self.recording
        total = len(rec.t)
        self.stats.connected = True
        start_wall, start_t = time.monotonic(), rec.t[self._next % total]
        shown, reported = time.monotonic(), 100 * self._next // total
        for begin in range(self._next, total, self.settings.block):
            if stop.is_set():
                break
            end = min(begin + self.settings.block, total)
            if self.settings.speed > 0:
                due = start_wall + (rec.t[begin] - start_t) / self.settings.speed
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            emit([Frame(rec.sensor, rec.t[begin:end], rec.samples[begin:end], time.time())])
            self._next = end
            self.stats.received(end - begin)
            percent = 100 * end // total
            if self.settings.progress and (
                percent // 10 > reported // 10
                or end == total
                or time.monotonic() - shown > PROGRESS_EVERY_S
            ):
                # Whole lines: readable in a log, and an alert printed meanwhile (stdout,
                # often the same terminal) never lands at the end of a progress line.
                shown, reported = time.monotonic(), percent
                sys.stderr.write(f"{self.name}: {end}/{total} samples ({percent}%)\n")
                sys.stderr.flush()
        self.stats.connected = False
