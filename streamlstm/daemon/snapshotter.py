"""When and how the running daemon's state is snapshotted, and restored at start.

A snapshot is copied on the compute loop a slice per loop turn (:data:`ROWS_PER_TURN`), so
a million sensors never stop the loop for long, then encoded and written on the writer
thread (:class:`~.snapshot.SnapshotWriter`); the last one is written whole at shutdown.
At start, :func:`restore_snapshot` loads the file into the detector, or counts it, logs it
and sets it aside when it is unreadable or does not fit the model (the daemon starts fresh).
The file format is :mod:`.snapshot`'s, what it holds :class:`~.snapshot_state.DaemonSnapshot`
(converted to and from the file's tree here alone); the daemon says when, this module does
the rest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .._ratelimit import RateLimitedLog
from ..detect.detector import RowCopy
from ..detect.state import AnyDetectorState
from ..errors import StreamLSTMError
from ..sinks import SensorState
from . import snapshot
from .metrics import Metrics
from .pipeline import Pipeline
from .sensortable import SensorColumns
from .snapshot_state import DaemonSnapshot
from .telemetry import SNAPSHOT_BUCKETS

log = logging.getLogger("streamlstm.daemon")
_limited = RateLimitedLog(log)

#: Rows a snapshot copies per turn of the compute loop (about 26 MB with the default model).
ROWS_PER_TURN = 16_384
#: How long shutdown waits for the last snapshot to be written.
FINAL_TIMEOUT_S = 300.0


class Snapshotter:
    """The daemon's snapshots to ``path`` (all calls are no-ops when ``path`` is None).

    Only the compute loop calls it; counts go to ``metrics`` (``streamlstm_snapshot*``).
    Building it starts the writer thread.
    """

    def __init__(self, path: str | None, metrics: Metrics) -> None:
        self.path = path
        self._metrics = metrics
        self._stall_hist = metrics.histogram("streamlstm_snapshot_stall_seconds", SNAPSHOT_BUCKETS)
        self._write_hist = metrics.histogram("streamlstm_snapshot_write_seconds", SNAPSHOT_BUCKETS)
        self._copy: RowCopy[AnyDetectorState] | None = None  # being copied, a slice per turn
        self._copy_records: list[SensorState] = []
        self._copy_sha = ""
        self._writer = (
            None if path is None else snapshot.SnapshotWriter(path, self._written, self._failed)
        )

    @property
    def copying(self) -> bool:
        """Whether a snapshot is being copied (detector rows must not change hands then)."""
        return self._copy is not None

    def begin(self, pipeline: Pipeline, records: list[SensorState], model_sha: str) -> None:
        """Begin a snapshot (no-op without a path, or while one is being copied).

        The detector's rows are copied a slice per :meth:`advance`, then the writer thread
        picks the rows out, encodes and writes. ``records`` (the per-sensor records) are
        read on the writer thread, so their counters may be a little newer than the
        detector state.
        """
        if self._writer is None or self._copy is not None:
            return
        started = time.perf_counter()
        self._copy = pipeline.copy_rows()
        self._copy_records = records
        self._copy_sha = model_sha
        self.advance(started)

    def advance(self, started: float | None = None) -> bool:
        """Copy the next slice of a snapshot begun by :meth:`begin` (the compute loop calls
        this once per turn); hands it to the writer when complete. Returns whether a copy
        was in progress."""
        if self._copy is None:
            return False
        started = time.perf_counter() if started is None else started
        copy, records = self._copy, self._copy_records
        done = copy.advance(ROWS_PER_TURN)
        self._stall_hist.observe(time.perf_counter() - started)
        if done:
            self._copy, self._copy_records = None, []
            assert self._writer is not None  # copies start only while a writer runs
            self._writer.submit(_job(copy, records, self._copy_sha))
        return True

    def cancel(self) -> None:
        """Drop a copy in progress (the detector it copies was replaced)."""
        self._copy, self._copy_records = None, []

    def flush(self, timeout: float) -> bool:
        """Wait until the writer is idle; False if it still writes after ``timeout``."""
        return self._writer is None or self._writer.flush(timeout)

    def problem(self) -> str | None:
        """What is wrong with the writer thread, or None (a health check)."""
        if self._writer is None or self._writer.alive:
            return None
        return "the snapshot writer thread died"

    def final(self, pipeline: Pipeline, records: list[SensorState], model_sha: str) -> None:
        """Write the state whole (a copy in progress is superseded) and stop the writer;
        on this thread if the writer thread died."""
        if self._writer is None:
            return
        started = time.perf_counter()
        copy = pipeline.copy_rows()
        copy.advance(copy.bound)
        job = _job(copy, records, model_sha)
        self._stall_hist.observe(time.perf_counter() - started)
        if self._writer.alive:
            self._writer.submit(job)
            if not self._writer.close(FINAL_TIMEOUT_S):
                log.error("the last snapshot was not written in %.0f s", FINAL_TIMEOUT_S)
            return
        try:
            self._written(snapshot.save(self._writer.path, job()), 0.0)
        except Exception as exc:
            self._failed(exc)

    def _written(self, size: int, seconds: float) -> None:
        self._metrics.inc("streamlstm_snapshots_total")
        self._metrics.set("streamlstm_snapshot_bytes", size)
        self._write_hist.observe(seconds)

    def _failed(self, exc: Exception) -> None:
        self._metrics.inc("streamlstm_snapshot_failures_total")
        _limited(logging.ERROR, "snapshot", "snapshot to %s failed: %s", self.path, exc)


def _job(
    copy: RowCopy[AnyDetectorState], records: list[SensorState], model_sha: str
) -> snapshot.Job:
    def build() -> dict[str, Any]:
        state = DaemonSnapshot(model_sha, copy.state(), SensorColumns.from_records(records))
        return state.to_tree()

    return build


def restore_snapshot(
    path: str | None, pipeline: Pipeline, metrics: Metrics, model_sha: str | None = None
) -> dict[str, SensorState]:
    """Load the snapshot at ``path`` into ``pipeline``; its per-sensor records.

    Empty when there is none; a file that is unreadable or does not fit the model is
    counted (``streamlstm_snapshot_restore_failures_total``), logged and moved aside, and
    nothing is loaded. A snapshot written with other weights than ``model_sha`` (the
    running weight file's sha256) that fits the model is loaded, as a SIGHUP reload keeps
    the state, and the change of weights is logged.
    """
    if path is None or not Path(path).exists():
        return {}
    try:
        tree = snapshot.load(path)
    except snapshot.SnapshotError as exc:
        _set_aside(path, "unreadable", str(exc), metrics)
        return {}
    try:
        state = DaemonSnapshot.from_tree(tree)
        records = state.sensors.records()
        pipeline.import_state(state.detector)
    except (StreamLSTMError, AttributeError, KeyError, TypeError, ValueError) as exc:
        _set_aside(path, "mismatch", f"does not fit this model ({exc})", metrics)
        return {}
    log.info("restored %d sensors from %s", len(records), path)
    if model_sha is not None and state.model_sha256 != model_sha:
        log.warning(
            "snapshot %s was written with other weights (sha256 %s, now %s): the sensors'"
            " state carries over to them, as on a reload",
            path,
            state.model_sha256[:12],
            model_sha[:12],
        )
    return records


def _set_aside(path: str, reason: str, detail: str, metrics: Metrics) -> None:
    metrics.inc("streamlstm_snapshot_restore_failures_total", labels=(("reason", reason),))
    try:
        kept = snapshot.set_aside(path)
    except OSError as exc:
        log.error(
            "snapshot %s: %s; could not move it aside (%s); starting from fresh state",
            path,
            detail,
            exc,
        )
        return
    log.error("snapshot %s: %s; moved to %s, starting from fresh state", path, detail, kept)
