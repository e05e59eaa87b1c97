"""The running daemon: source threads -> :class:`FrameQueue` -> one compute loop -> sinks.

Sources run on their own I/O threads and only decode bytes into frames. A single compute
loop (the main thread) takes micro-batches from the queue (``batch_samples`` samples or
``batch_wait_ms`` after the first frame), steps them through the detector, turns events
into sequenced alert records and hands them to every sink. One writer of model state
means no locks on the hot path and a consistent snapshot at any point between batches.

Signals only set flags, handled between batches: SIGTERM/SIGINT drain (stop sources,
process what is queued, flush sinks, snapshot, exit 0); SIGHUP reloads the config and
weights, keeping sensor state when the new detector accepts it. A reload is all or nothing:
everything new is built first, and the running set is swapped only if all of it built.

Faults degrade, they do not stop the daemon: a failing sink is counted and logged while
the others go on; a bad snapshot at start is set aside and the daemon starts fresh;
snapshots are written on their own thread from a copy. The systemd watchdog is fed only
while every check in :attr:`Daemon.health_checks` passes (the daemon's own threads).
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _mqtt
from .._ratelimit import RateLimitedLog
from ..errors import ConfigError, StreamLSTMError
from ..sinks import SensorState, Sink, alert_record
from ..sinks.spool import SeqCounter
from ..sources import Frame, Source
from . import config as config_module
from . import snapshot, systemd
from .framequeue import FrameQueue
from .intake import TimePolicy, TimestampGate
from .lastseen import LastSeen
from .metrics import Metrics, MetricsServer, Sample
from .pipeline import (
    LoadedModel,
    Pipeline,
    compile_kernels,
    load_model,
    make_detector,
    sample_width,
)
from .plot import ReplayPlot, sample_channels
from .threadwatch import ThreadWatch

log = logging.getLogger("streamlstm.daemon")
_limited = RateLimitedLog(log)

STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (
    5e-4,
    1e-3,
    2e-3,
    3e-3,
    4e-3,
    5e-3,
    6e-3,
    8e-3,
    1e-2,
    1.2e-2,
    1.5e-2,
    2e-2,
    2.5e-2,
    3e-2,
    4e-2,
    5e-2,
    7.5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
SNAPSHOT_BUCKETS = (1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DEFAULT_STATE_INTERVAL_S = 10.0
#: How often thread health is checked (and the watchdog fed, at most this often).
HEALTH_INTERVAL_S = 1.0
#: Rows a snapshot copies per turn of the compute loop (about 26 MB with the default model).
SNAPSHOT_ROWS_PER_TURN = 16_384
#: How long shutdown waits for the last snapshot to be written.
FINAL_SNAPSHOT_TIMEOUT_S = 300.0

#: A health check returns what is wrong, or None; the watchdog is fed only while all pass.
HealthCheck = Callable[[], "str | None"]

# -- intake and I/O health (issue 12) ------------------------------------------------------
INTAKE_METRICS = [
    ("streamlstm_queue_bytes", "gauge", "bytes of frames waiting for the compute loop"),
    ("streamlstm_dropped_frames_total", "counter", "frames dropped by the full queue"),
    (
        "streamlstm_refused_frames_total",
        "counter",
        "frames dropped for their device time (redelivered, time_backwards, time_future, "
        "time_nonfinite), by reason",
    ),
    ("streamlstm_refused_samples_total", "counter", "samples in those frames, by reason"),
    ("streamlstm_clock_resets_total", "counter", "sensors whose clock restarted, followed"),
    ("streamlstm_gaps_total", "counter", "device-time gaps: samples that never arrived"),
    ("streamlstm_gap_samples_total", "counter", "samples missing in those gaps"),
    ("streamlstm_dead_threads", "gauge", "threads that died unexpectedly (must be 0)"),
]
#: Connections and the MQTT sink's delivery (:func:`sink_samples`; fleet workers too).
CONNECTION_METRICS = [
    (
        "streamlstm_connect_failures_total",
        "counter",
        "failed connection attempts (broker unreachable or refusing), by component",
    ),
    ("streamlstm_reconnects_total", "counter", "reconnections, by component"),
    ("streamlstm_connected", "gauge", "1 while the component is connected"),
    (
        "streamlstm_broker_refusals_total",
        "counter",
        "messages the broker refused (PUBACK reason code), by kind (alert, other) and reason",
    ),
    ("streamlstm_publish_errors_total", "counter", "messages the MQTT client refused to send"),
    ("streamlstm_spooled_alerts", "gauge", "alerts not yet acknowledged by the broker"),
]


def time_policy(settings: dict[str, Any]) -> TimePolicy:
    """The ``[daemon]`` timestamp tolerances as a :class:`TimePolicy`."""
    return TimePolicy(
        settings["time_future_s"], settings["redelivery_window_s"], settings["clock_reset_s"]
    )


def acknowledge(frames: list[Frame]) -> None:
    """Acknowledge manually acked frames (at-least-once MQTT intake) once handled."""
    for frame in frames:
        if frame.ack is not None:
            frame.ack()


def build_sources(
    config: dict[str, Any], width: int, model_rate: float | None = None
) -> list[Source]:
    """One source object per ``[[sources]]`` table (imports only the kinds used);
    ``model_rate`` (samples/s) is what MQTT sources compare each message's rate with."""
    sources: list[Source] = []
    for table in config["sources"]:
        kind = table["type"]
        if kind == "serial":
            from ..sources.serial import SerialSource

            sources.append(SerialSource(table, width))
        elif kind == "mqtt":
            from ..sources.mqtt import MQTTSource

            sources.append(MQTTSource(table, width, config["mqtt"], model_rate))
        elif kind == "replay":
            from ..sources.replay import ReplaySource

            sources.append(ReplaySource(table, width))
        else:
            from ..sources.demo import DemoSource

            sources.append(DemoSource(table, width))
    return sources


def build_sinks(config: dict[str, Any], *, spool_by_daemon: bool = False) -> list[Sink]:
    """One sink object per ``[[sinks]]`` table, all or none.

    The MQTT sink (which connects as it is built) is built last, so that another sink
    failing to build never leaves an extra MQTT connection behind; sinks built before a
    failure are closed again and the error is raised. ``spool_by_daemon``: see
    :class:`~streamlstm.sinks.mqtt.MQTTSink` (a fleet worker's alerts of many partitions).
    """
    tables = config["sinks"]
    built: dict[int, Sink] = {}
    try:
        for index in sorted(range(len(tables)), key=lambda i: tables[i]["type"] == "mqtt"):
            built[index] = _build_sink(tables[index], config["mqtt"], spool_by_daemon)
    except BaseException:
        for sink in built.values():
            sink.close()
        raise
    return [built[index] for index in range(len(tables))]


def _build_sink(table: dict[str, Any], broker: dict[str, Any], spool_by_daemon: bool) -> Sink:
    if table["type"] == "stdout":
        from ..sinks.stdout import StdoutSink

        return StdoutSink(table)
    if table["type"] == "jsonl":
        from ..sinks.jsonl import JSONLSink

        return JSONLSink(table)
    from ..sinks.mqtt import MQTTSink

    return MQTTSink(table, broker, spool_by_daemon=spool_by_daemon)


def check_broker_settings(config: dict[str, Any]) -> None:
    """Read the broker password and TLS files now (a client is made, not connected), so a
    reload fails as a whole instead of leaving a source that cannot connect."""
    if any(table["type"] == "mqtt" for table in (*config["sources"], *config["sinks"])):
        _mqtt.make_client(config["mqtt"], "check")


def sink_samples(sinks: Sequence[Sink]) -> list[Sample]:
    """The MQTT sink's delivery health, read at scrape time (:data:`CONNECTION_METRICS`)."""
    from ..sinks.mqtt import MQTTSink

    out: list[Sample] = []
    component = (("component", "sink:mqtt"),)
    for sink in sinks:
        if not isinstance(sink, MQTTSink):
            continue
        refusals, publish_errors, connect_failures = sink.health()
        out += [
            ("streamlstm_broker_refusals_total", (("kind", kind), ("reason", r)), n)
            for (kind, r), n in refusals.items()
        ]
        out += [
            ("streamlstm_publish_errors_total", (), publish_errors),
            ("streamlstm_connect_failures_total", component, connect_failures),
            ("streamlstm_spooled_alerts", (), sink.spooled()),
            ("streamlstm_reconnects_total", component, sink.reconnects),
            ("streamlstm_connected", component, int(sink.connected)),
        ]
    return out


def _reason(exc: BaseException) -> str:
    """A short metric label for an exception: the errno name (``ENOSPC``) or the class."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def _describe(metrics: Metrics) -> None:
    for name, kind, text in [
        ("streamlstm_samples_total", "counter", "samples stepped through the detector"),
        (
            "streamlstm_rejected_samples_total",
            "counter",
            "samples rejected (NaN/Inf), state untouched",
        ),
        ("streamlstm_alerts_total", "counter", "alert events by kind"),
        ("streamlstm_step_seconds", "histogram", "detector time per micro-batch"),
        (
            "streamlstm_decision_latency_seconds",
            "histogram",
            "host receive of a frame to its alert decision",
        ),
        (
            "streamlstm_sample_age_seconds",
            "histogram",
            "sample timestamp (wall clock) to its alert decision, for sources stamping epoch times",
        ),
        (
            "streamlstm_parse_errors_total",
            "counter",
            "malformed input dropped, by source and reason",
        ),
        ("streamlstm_source_samples_total", "counter", "samples decoded, by source"),
        (
            "streamlstm_rate_mismatches_total",
            "counter",
            "messages whose sample rate is not the model's (stepped all the same), by source",
        ),
        ("streamlstm_queue_frames", "gauge", "frames waiting for the compute loop"),
        ("streamlstm_dropped_samples_total", "counter", "samples dropped by the full queue"),
        ("streamlstm_sensors", "gauge", "sensors known"),
        ("streamlstm_snapshots_total", "counter", "snapshots written"),
        ("streamlstm_snapshot_failures_total", "counter", "snapshots that could not be written"),
        (
            "streamlstm_snapshot_stall_seconds",
            "histogram",
            "compute-loop time spent copying state for a snapshot, per loop turn",
        ),
        (
            "streamlstm_snapshot_write_seconds",
            "histogram",
            "snapshot encoding and writing time (on the writer thread)",
        ),
        ("streamlstm_snapshot_bytes", "gauge", "size of the last snapshot written"),
        (
            "streamlstm_snapshot_restore_failures_total",
            "counter",
            "snapshots found unusable at start and set aside, by reason",
        ),
        ("streamlstm_sink_errors_total", "counter", "failed sink calls, by sink and reason"),
        ("streamlstm_reloads_total", "counter", "SIGHUP reloads, by result (ok, refused)"),
        (
            "streamlstm_sensor_limit_samples_total",
            "counter",
            "samples of new sensors refused because max_sensors was reached",
        ),
        ("streamlstm_expired_sensors_total", "counter", "idle sensors evicted"),
        (
            "streamlstm_seq_unreserved_total",
            "counter",
            "alert seq numbers taken while the seq file could not be written (full disk)",
        ),
        ("streamlstm_healthy", "gauge", "1 while every daemon thread is alive (watchdog fed)"),
        *INTAKE_METRICS,
        *CONNECTION_METRICS,
    ]:
        metrics.describe(name, kind, text)
    # Counters exist from the start: rate() over a scrape series needs the zero.
    for name in (
        "streamlstm_samples_total",
        "streamlstm_rejected_samples_total",
        "streamlstm_snapshots_total",
        "streamlstm_snapshot_failures_total",
        "streamlstm_sensor_limit_samples_total",
        "streamlstm_expired_sensors_total",
    ):
        metrics.inc(name, 0)


def sensor_columns(records: Sequence[SensorState]) -> dict[str, Any]:
    """The daemon's per-sensor records as columns (arrays), for a compact snapshot."""
    return {
        "names": [r.sensor for r in records],
        "t": np.fromiter((r.t for r in records), np.float64, len(records)),
        "score": np.fromiter((r.score for r in records), np.float64, len(records)),
        "alert": np.fromiter((r.alert for r in records), np.bool_, len(records)),
        "samples": np.fromiter((r.samples for r in records), np.int64, len(records)),
        "rejected": np.fromiter((r.rejected for r in records), np.int64, len(records)),
    }


def sensor_records(stored: Any) -> dict[str, SensorState]:
    """:func:`sensor_columns` output (or the older ``{name: [t, score, ...]}``) -> records."""
    if isinstance(stored, dict) and "names" in stored:
        columns = [stored[key] for key in ("t", "score", "alert", "samples", "rejected")]
        rows: Iterable[tuple[Any, ...]] = zip(
            stored["names"], *(np.asarray(c).tolist() for c in columns), strict=True
        )
    else:
        rows = ((name, *fields) for name, fields in stored.items())
    records = {}
    for name, t, score, alert, samples, rejected in rows:
        records[str(name)] = SensorState(
            str(name),
            float(t if t is not None else math.nan),
            float(score if score is not None else math.nan),
            bool(alert),
            int(samples),
            int(rejected),
        )
    return records


class Daemon:
    """Everything a ``streamlstm run`` owns; :meth:`run` blocks until a clean stop."""

    def __init__(self, config: dict[str, Any], *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        _describe(self.metrics)
        self.loaded: LoadedModel = load_model(config["model"]["path"])
        self.pipeline: Pipeline = make_detector(self.loaded.model, config["detector"])
        self._width = sample_width(self.pipeline, self.loaded.model)
        self.sensors: dict[str, SensorState] = {}
        # Sensor -> monotonic time of its last frame, least recently seen first.
        self._last_seen = LastSeen()
        self._changed: set[str] = set()
        self.queue = FrameQueue(
            config["daemon"]["queue_frames"],
            config["daemon"]["backpressure"],
            config["daemon"]["queue_bytes"],
        )
        self.gate = TimestampGate(time_policy(config["daemon"]))
        self.thread_watch = ThreadWatch()
        self.thread_watch.install()
        self._stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        self.sources: list[Source] = build_sources(
            config, self._width, self.loaded.model.sample_rate
        )
        self._source_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._finished_sources: set[str] = set()  # sources whose run() returned (input ended)
        self.sinks: list[Sink] = []
        self.seq = SeqCounter(self._seq_path(config))
        from ..sources.replay import ReplaySource

        self._plots = [
            ReplayPlot(s.plot_path, s.sensors, sample_channels(self.loaded.model))
            for s in self.sources
            if isinstance(s, ReplaySource) and s.plot_path
        ]
        self._stall_hist = self.metrics.histogram(
            "streamlstm_snapshot_stall_seconds", SNAPSHOT_BUCKETS
        )
        self._write_hist = self.metrics.histogram(
            "streamlstm_snapshot_write_seconds", SNAPSHOT_BUCKETS
        )
        self._copy: Any = None  # a snapshot being copied, a slice per loop turn
        self._copy_records: list[SensorState] = []
        self._restore()
        self.sinks = build_sinks(config)
        path = config["daemon"]["snapshot_path"]
        self._writer = (
            None
            if path is None
            else snapshot.SnapshotWriter(path, self._snapshot_written, self._snapshot_failed)
        )
        #: Checks run every second; the systemd watchdog is fed only while all pass.
        #: Sources and sinks with threads of their own may append theirs.
        self.health_checks: list[HealthCheck] = [self._threads_alive, self._writer_alive]
        self.metrics.collector(self._collect)
        self._server: MetricsServer | None = None
        port = config["daemon"]["metrics_port"]
        if port is not None:
            self._server = MetricsServer(self.metrics, config["daemon"]["metrics_host"], port)
            log.info(
                "metrics on http://%s:%d/metrics",
                config["daemon"]["metrics_host"],
                self._server.port,
            )
        self._step_hist = self.metrics.histogram("streamlstm_step_seconds", STEP_BUCKETS)
        self._latency_hist = self.metrics.histogram(
            "streamlstm_decision_latency_seconds", LATENCY_BUCKETS
        )
        self._age_hist = self.metrics.histogram("streamlstm_sample_age_seconds", LATENCY_BUCKETS)

    @staticmethod
    def _seq_path(config: dict[str, Any]) -> Path | None:
        for table in config["sinks"]:
            if table["type"] == "mqtt":
                Path(table["spool_dir"]).mkdir(parents=True, exist_ok=True)
                return Path(table["spool_dir"]) / "seq"
        return None

    # -- control (any thread, signal handlers included) ------------------------------------
    def request_stop(self) -> None:
        self._stop_requested.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    # -- sources -----------------------------------------------------------------------------
    def _start_sources(self) -> None:
        self._source_stop = threading.Event()
        self._threads = []
        self._finished_sources = set()
        for source in self.sources:
            thread = threading.Thread(
                target=self._run_source,
                args=(source, self._source_stop),
                name=f"source-{source.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _run_source(self, source: Source, stop: threading.Event) -> None:
        # A bug in one source must not take the others or the daemon down: it is
        # counted, logged (rate-limited) and the source restarted.
        while not stop.is_set():
            try:
                source.run(self.queue.put, stop)
                self._finished_sources.add(source.name)
                return
            except Exception as exc:
                source.stats.error("source_failure")
                if _limited(
                    logging.ERROR,
                    f"source/{source.name}",
                    "source %s failed (%s: %s); restarting it in 1 s",
                    source.name,
                    type(exc).__name__,
                    exc,
                ):
                    log.debug("traceback of the above", exc_info=exc)
                stop.wait(1.0)

    def io_faults(self) -> list[str]:
        """Threads the daemon needs that are dead (empty when healthy; for the watchdog).

        A source thread that ended without its input ending, a sink's network thread
        that stopped, and any thread that died of an exception.
        """
        faults = list(self.thread_watch.dead)
        if not self._source_stop.is_set():
            for source, thread in zip(self.sources, self._threads, strict=False):
                if not thread.is_alive() and source.name not in self._finished_sources:
                    faults.append(f"source {source.name}: thread ended")
        return faults

    def _stop_sources(self, timeout: float = 5.0) -> None:
        self._source_stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _sources_done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    # -- health ------------------------------------------------------------------------------
    def _threads_alive(self) -> str | None:
        faults = self.io_faults()
        return "; ".join(faults) if faults else None

    def _writer_alive(self) -> str | None:
        if self._writer is None or self._writer.alive:
            return None
        return "the snapshot writer thread died"

    def _check_health(self, watchdog: bool) -> None:
        problems = []
        for check in self.health_checks:
            try:
                problem = check()
            except Exception as exc:  # a broken check is a problem, not a crash
                problem = f"health check {check!r} failed ({exc})"
            if problem:
                problems.append(problem)
        self.metrics.set("streamlstm_healthy", 0 if problems else 1)
        if problems:
            _limited(
                logging.ERROR,
                "health",
                "unhealthy: %s%s",
                "; ".join(problems),
                "; no longer feeding the systemd watchdog" if watchdog else "",
            )
        elif watchdog:
            systemd.notify("WATCHDOG=1")

    # -- the compute loop --------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or, with ``exit_when_sources_end``, until every source ended)."""
        settings = self.config["daemon"]
        systemd.notify("STATUS=compiling or loading kernels")
        started = time.monotonic()
        compile_kernels(self.loaded.model, self.config)
        log.info("kernels ready in %.1f s", time.monotonic() - started)
        self._start_sources()
        systemd.notify("READY=1")
        systemd.notify("STATUS=running")
        log.info(
            "running: %d source(s), %d sink(s), model %s (sha256 %s)",
            len(self.sources),
            len(self.sinks),
            self.loaded.model_id,
            self.loaded.sha256[:12],
        )
        watchdog = systemd.watchdog_interval()
        health_every = HEALTH_INTERVAL_S if watchdog is None else min(HEALTH_INTERVAL_S, watchdog)
        next_health = next_snapshot = next_states = next_expiry = time.monotonic()
        next_snapshot += settings["snapshot_interval_s"]
        while not self._stop_requested.is_set():
            frames = self.queue.take(
                self.config["daemon"]["batch_samples"],
                self.config["daemon"]["batch_wait_ms"] / 1000,
                idle=0.05,
            )
            if frames:
                self.process(frames)
            now = time.monotonic()
            if now >= next_states:
                self._publish_states()
                next_states = now + self._state_interval()
            if not self.continue_snapshot() and now >= next_snapshot:
                self.write_snapshot()
                next_snapshot = now + self.config["daemon"]["snapshot_interval_s"]
            if now >= next_expiry:
                self.expire_idle_sensors(now)
                next_expiry = now + self._expiry_interval()
            if now >= next_health:
                self._check_health(watchdog is not None)
                next_health = now + health_every
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            if (
                self.config["daemon"]["exit_when_sources_end"]
                and self._sources_done()
                and not len(self.queue)
            ):
                log.info("all sources ended")
                break
        self.shutdown()
        return 0

    def process(self, frames: list[Frame]) -> None:
        """Check device times, step the admitted frames, then acknowledge all of them."""
        admitted = self.gate.admit(frames, self.sensors)
        if admitted:
            self._step(admitted)
        acknowledge(frames)

    def _step(self, frames: list[Frame]) -> None:
        """Step one micro-batch through the detector and deliver its events."""
        limit = self.config["daemon"]["max_sensors"]
        if len(self.sensors) + len(frames) > limit:
            frames = self._within_sensor_limit(frames, limit)
            if not frames:
                return
        sensors: list[str] = []
        for frame in frames:
            sensors += [frame.sensor] * len(frame.t)
        samples = (
            np.concatenate([f.samples for f in frames]) if len(frames) > 1 else frames[0].samples
        )
        times = np.concatenate([f.t for f in frames]) if len(frames) > 1 else frames[0].t
        started = time.perf_counter()
        events = self.pipeline.update(sensors, samples, times)
        self._step_hist.observe(time.perf_counter() - started)
        decided = time.time()
        seen_at = time.monotonic()
        scores, status = self.pipeline.last_scores, self.pipeline.last_status
        self.metrics.inc("streamlstm_samples_total", len(sensors))
        rejected = int(np.count_nonzero(status))
        if rejected:
            self.metrics.inc("streamlstm_rejected_samples_total", rejected)
        last_seen = self._last_seen
        begin = 0
        for frame in frames:
            end = begin + len(frame.t)
            self._latency_hist.observe(decided - frame.received)
            if frame.t[-1] > 1e9:
                self._age_hist.observe(decided - float(frame.t[-1]))
            state = self.sensors.get(frame.sensor)
            if state is None:
                state = self.sensors[frame.sensor] = SensorState(frame.sensor)
            last_seen.seen(frame.sensor, seen_at)
            state.samples += end - begin
            bad = int(np.count_nonzero(status[begin:end]))
            state.rejected += bad
            if bad < end - begin:
                finite = scores[begin:end][np.isfinite(scores[begin:end])]
                if finite.size:
                    state.score = float(finite[-1])
                state.t = float(frame.t[-1])
            self._changed.add(frame.sensor)
            for plot in self._plots:
                plot.observe(frame, scores[begin:end])
            begin = end
        if events:
            self._deliver(events, decided)

    def _within_sensor_limit(self, frames: list[Frame], limit: int) -> list[Frame]:
        """The frames of known sensors, and of new ones while fewer than ``limit`` are known."""
        kept: list[Frame] = []
        new: set[str] = set()
        refused = 0
        for frame in frames:
            if frame.sensor in self.sensors or frame.sensor in new:
                kept.append(frame)
            elif len(self.sensors) + len(new) < limit:
                new.add(frame.sensor)
                kept.append(frame)
            else:
                refused += len(frame.t)
        if refused:
            self.metrics.inc("streamlstm_sensor_limit_samples_total", refused)
            _limited(
                logging.ERROR,
                "max_sensors",
                "daemon.max_sensors (%d) reached: samples of new sensors are refused "
                "(streamlstm_sensor_limit_samples_total)",
                limit,
            )
        return kept

    def _deliver(self, events: Iterable[Any], decided: float, *, states: bool = True) -> None:
        """Number the events' alert records and hand them to every sink; then (``states``)
        publish the changed states of their sensors."""
        records = []
        for event in events:
            records.append(
                alert_record(
                    event,
                    seq=self.seq.take(),
                    daemon=self.config["mqtt"]["client_id"],
                    model_id=self.loaded.model_id,
                    model_sha=self.loaded.sha256,
                    published=decided,
                )
            )
            self.metrics.inc("streamlstm_alerts_total", labels=(("kind", event.kind),))
            state = self.sensors.setdefault(str(event.sensor), SensorState(str(event.sensor)))
            state.alert = event.kind == "start"
        for index, sink in enumerate(self.sinks):
            self._call_sink(index, sink.alerts, records)
        for plot in self._plots:
            for record in records:
                plot.alert(record)
        # State topics follow alerts at once, not at the next interval.
        if states:
            self._publish_states({r["sensor"] for r in records})

    def _call_sink(self, index: int, call: Callable[[Any], None], argument: Any) -> None:
        """One sink's failure (a full disk, a bug) is counted and logged; the others go on."""
        try:
            call(argument)
        except Exception as exc:
            name = self.config["sinks"][index]["name"]
            reason = _reason(exc)
            self.metrics.inc(
                "streamlstm_sink_errors_total", labels=(("sink", name), ("reason", reason))
            )
            what = call.__name__
            detail = ""
            if what == "alerts":
                seqs = [record["seq"] for record in argument]
                detail = f" (alert seq {seqs[0]}..{seqs[-1]} not delivered there)"
            _limited(
                logging.ERROR,
                f"sink:{name}:{what}:{reason}",
                "sink %s failed: %s%s",
                name,
                exc,
                detail,
            )

    def _state_interval(self) -> float:
        for table in self.config["sinks"]:
            if table["type"] == "mqtt":
                return float(table["state_interval_s"])
        return DEFAULT_STATE_INTERVAL_S

    def _publish_states(self, only: set[str] | None = None) -> None:
        names = self._changed if only is None else only
        states = {name: self.sensors[name] for name in sorted(names) if name in self.sensors}
        for index, sink in enumerate(self.sinks):
            self._call_sink(index, sink.states, states)
        self._changed -= names

    # -- idle sensors ------------------------------------------------------------------------
    def _expiry_interval(self) -> float:
        idle = self.config["daemon"]["sensor_idle_s"]
        return 60.0 if not idle else min(60.0, max(0.1, idle / 4))

    def expire_idle_sensors(self, now: float) -> int:
        """Evict sensors without a frame for ``sensor_idle_s`` (0: never); returns how many.

        Their rows are freed for new sensors. A sensor that comes back starts afresh (warm-up
        again): after a gap that long its old recurrent state no longer describes its signal.
        An alert open on one ends (reason ``"evicted"``, at its last sample's time) and the
        sinks forget it (the MQTT sink clears its retained state).
        """
        idle = self.config["daemon"]["sensor_idle_s"]
        if not idle or self._copy is not None:  # rows must not change hands mid-copy
            return 0
        expired = self._last_seen.expire(now - idle)
        if not expired:
            return 0
        last_t = [self.sensors[n].t if n in self.sensors else math.nan for n in expired]
        self._deliver(self.pipeline.evict(expired, last_t), time.time(), states=False)
        for name in expired:
            self.sensors.pop(name, None)
            self._changed.discard(name)
        for index, sink in enumerate(self.sinks):
            self._call_sink(index, sink.forget, expired)
        self.metrics.inc("streamlstm_expired_sensors_total", len(expired))
        log.info("%d sensor(s) idle for %g s expired (first: %s)", len(expired), idle, expired[0])
        return len(expired)

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self) -> None:
        """Begin a snapshot (no-op without a path, or while one is being copied).

        The compute loop copies the detector's rows a slice per turn
        (:data:`SNAPSHOT_ROWS_PER_TURN`), so a million sensors never stop it for long;
        then the writer thread picks the rows out, encodes and writes. The per-sensor
        records are read on the writer thread, so their counters may be a little newer
        than the detector state.
        """
        if self._writer is None or self._copy is not None:
            return
        started = time.perf_counter()
        self._copy = self.pipeline.copy_rows()
        self._copy_records = list(self.sensors.values())
        self.continue_snapshot(started)

    def continue_snapshot(self, started: float | None = None) -> bool:
        """Copy the next slice of a snapshot begun by :meth:`write_snapshot` (the compute
        loop calls this once per turn); hands it to the writer when complete. Returns
        whether a copy was in progress."""
        if self._copy is None:
            return False
        started = time.perf_counter() if started is None else started
        copy, records = self._copy, self._copy_records
        done = copy.advance(SNAPSHOT_ROWS_PER_TURN)
        self._stall_hist.observe(time.perf_counter() - started)
        if done:
            self._copy, self._copy_records = None, []
            assert self._writer is not None  # copies start only while a writer runs
            self._writer.submit(self._snapshot_job(copy, records))
        return True

    def _snapshot_job(self, copy: Any, records: list[SensorState]) -> snapshot.Job:
        sha = self.loaded.sha256

        def build() -> dict[str, Any]:
            return {
                "model_sha256": sha,
                "detector": copy.state(),
                "sensors": sensor_columns(records),
            }

        return build

    def flush_snapshot(self, timeout: float) -> bool:
        """Wait until the snapshot writer is idle; False if it still writes after ``timeout``."""
        return self._writer is None or self._writer.flush(timeout)

    def _snapshot_written(self, size: int, seconds: float) -> None:
        self.metrics.inc("streamlstm_snapshots_total")
        self.metrics.set("streamlstm_snapshot_bytes", size)
        self._write_hist.observe(seconds)

    def _snapshot_failed(self, exc: Exception) -> None:
        self.metrics.inc("streamlstm_snapshot_failures_total")
        _limited(
            logging.ERROR,
            "snapshot",
            "snapshot to %s failed: %s",
            self.config["daemon"]["snapshot_path"],
            exc,
        )

    def _final_snapshot(self) -> None:
        if self._writer is None:
            return
        started = time.perf_counter()
        copy = self.pipeline.copy_rows()  # a snapshot being copied is superseded
        copy.advance(copy.bound)
        job = self._snapshot_job(copy, list(self.sensors.values()))
        self._stall_hist.observe(time.perf_counter() - started)
        if self._writer.alive:
            self._writer.submit(job)
            if not self._writer.close(FINAL_SNAPSHOT_TIMEOUT_S):
                log.error("the last snapshot was not written in %.0f s", FINAL_SNAPSHOT_TIMEOUT_S)
            return
        try:  # the writer thread died: write on this thread
            self._snapshot_written(snapshot.save(self._writer.path, job()), 0.0)
        except Exception as exc:
            self._snapshot_failed(exc)

    def _restore(self) -> None:
        path = self.config["daemon"]["snapshot_path"]
        if path is None or not Path(path).exists():
            return
        try:
            state = snapshot.load(path)
        except snapshot.SnapshotError as exc:
            self._set_aside(path, "unreadable", str(exc))
            return
        try:
            records = sensor_records(state.get("sensors", {}))
            self.pipeline.import_state(state["detector"])
        except (StreamLSTMError, AttributeError, KeyError, TypeError, ValueError) as exc:
            self._set_aside(path, "mismatch", f"does not fit this model ({exc})")
            return
        self.sensors = records
        now = time.monotonic()
        self._last_seen = LastSeen((name, now) for name in records)
        log.info("restored %d sensors from %s", len(self.sensors), path)

    def _set_aside(self, path: str, reason: str, detail: str) -> None:
        self.metrics.inc("streamlstm_snapshot_restore_failures_total", labels=(("reason", reason),))
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

    # -- reload and shutdown -----------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config file and weights: all or nothing.

        Everything new (model, detector, sources, sinks) is built first; the running set is
        replaced only if all of it built, else a refusal is logged and counted and nothing
        changes. A model taking samples of another width is refused (restart for that).
        """
        log.info("SIGHUP: reloading %s", self.config_path or "the built-in configuration")
        new_sinks: list[Sink] | None = None
        try:
            new = config_module.load(self.config_path)
            loaded = load_model(new["model"]["path"])
            pipeline = make_detector(loaded.model, new["detector"])
            width = sample_width(pipeline, loaded.model)
            if width != self._width:
                raise ConfigError(
                    f"the new model takes {width} values per sample, the running one "
                    f"{self._width}: restart the daemon to change the sample width"
                )
            sources_changed = (
                new["sources"] != self.config["sources"]
                or new["mqtt"] != self.config["mqtt"]
                # MQTT sources compare each message's rate with the model's
                or loaded.model.sample_rate != self.loaded.model.sample_rate
            )
            sinks_changed = (
                new["sinks"] != self.config["sinks"] or new["mqtt"] != self.config["mqtt"]
            )
            check_broker_settings(new)
            compile_kernels(loaded.model, new)
            new_sources = (
                build_sources(new, width, loaded.model.sample_rate) if sources_changed else None
            )
            new_sinks = build_sinks(new) if sinks_changed else None
        except Exception as exc:  # anything: the running configuration must survive it
            self.metrics.inc("streamlstm_reloads_total", labels=(("result", "refused"),))
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        try:
            pipeline.import_state(self.pipeline.export_state())
            log.info("sensor state kept across the reload")
        except (StreamLSTMError, KeyError, TypeError, ValueError) as exc:
            log.warning("sensor state reset by the reload (%s)", exc)
        self.pipeline, self.loaded = pipeline, loaded
        self._copy, self._copy_records = None, []  # a copy of the old detector is moot
        log.info("now running model %s (sha256 %s)", loaded.model_id, loaded.sha256[:12])
        if new_sources is not None:
            self._stop_sources()
            self.sources = new_sources
            self._start_sources()
        if new_sinks is not None:
            self._close_sinks()
            self.sinks = new_sinks
        self.queue.capacity = new["daemon"]["queue_frames"]
        self.queue.policy = new["daemon"]["backpressure"]
        self.queue.max_bytes = new["daemon"]["queue_bytes"]
        self.gate.policy = time_policy(new["daemon"])
        self.config = new
        self.metrics.inc("streamlstm_reloads_total", labels=(("result", "ok"),))

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing a sink failed: %s", exc)

    def shutdown(self) -> None:
        """Drain: stop sources, process what is queued, flush sinks, snapshot."""
        systemd.notify("STOPPING=1")
        self._stop_sources()
        self.queue.close()
        while True:
            frames = self.queue.take(self.config["daemon"]["batch_samples"], 0.0, idle=0.0)
            if not frames:
                break
            self.process(frames)
        self._publish_states()
        self._final_snapshot()
        threshold = getattr(getattr(self.pipeline, "params", None), "threshold", None)
        for plot in self._plots:
            plot.save(threshold)
        self._close_sinks()
        if self._server is not None:
            self._server.close()
        self.thread_watch.uninstall()
        log.info("stopped cleanly")

    # -- metrics read at scrape time -----------------------------------------------------------
    def _collect_intake(self) -> list[Sample]:
        counts = self.gate.counts
        out: list[Sample] = [
            ("streamlstm_queue_bytes", (), self.queue.bytes),
            ("streamlstm_dropped_frames_total", (), self.queue.dropped_frames),
            ("streamlstm_clock_resets_total", (), counts.clock_resets),
            ("streamlstm_gaps_total", (), counts.gaps),
            ("streamlstm_gap_samples_total", (), counts.gap_samples),
            ("streamlstm_dead_threads", (), len(self.io_faults())),
        ]
        for reason, n in list(counts.frames.items()):
            labels = (("reason", reason),)
            out.append(("streamlstm_refused_frames_total", labels, n))
            out.append(("streamlstm_refused_samples_total", labels, counts.samples[reason]))
        for source in self.sources:
            component = (("component", f"source:{source.name}"),)
            out.append(
                ("streamlstm_connect_failures_total", component, source.stats.connect_failures)
            )
        return out + sink_samples(self.sinks)

    def _collect(self) -> list[Sample]:
        out: list[Sample] = [
            ("streamlstm_queue_frames", (), len(self.queue)),
            ("streamlstm_dropped_samples_total", (), self.queue.dropped_samples),
            ("streamlstm_sensors", (), len(self.sensors)),
            ("streamlstm_seq_unreserved_total", (), self.seq.unreserved),
            *self._collect_intake(),
        ]
        for source in self.sources:
            counts = source.stats.snapshot()
            label = ("source", source.name)
            component = ("component", f"source:{source.name}")
            out += [
                ("streamlstm_parse_errors_total", (label, ("reason", r)), n)
                for r, n in counts.parse_errors.items()
            ]
            out += [
                ("streamlstm_source_samples_total", (label,), counts.samples),
                ("streamlstm_rate_mismatches_total", (label,), counts.rate_mismatches),
                ("streamlstm_reconnects_total", (component,), counts.reconnects),
                ("streamlstm_connected", (component,), int(counts.connected)),
            ]
        return out
