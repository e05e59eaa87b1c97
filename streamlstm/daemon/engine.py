"""The running daemon: source threads -> :class:`FrameQueue` -> one compute loop -> sinks.

Sources run on their own I/O threads and only decode bytes into frames. A single compute
loop (the main thread) takes micro-batches from the queue (``batch_samples`` samples or
``batch_wait_ms`` after the first frame), steps them through the detector, turns events
into sequenced alert records and hands them to every sink. One writer of model state
means no locks on the hot path and a consistent snapshot at any point between batches.

Signals only set flags, handled between batches: SIGTERM/SIGINT drain (stop sources,
process what is queued, flush sinks, snapshot, exit 0); SIGHUP reloads the config and
weights, keeping sensor state when the new detector accepts it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._ratelimit import RateLimitedLog
from ..errors import ConfigError, StreamLSTMError
from ..sinks import SensorState, Sink, alert_record
from ..sinks.spool import SeqCounter
from ..sources import Frame, Source
from . import config as config_module
from . import snapshot, systemd
from .framequeue import FrameQueue
from .intake import TimePolicy, TimestampGate
from .metrics import Metrics, MetricsServer, Sample
from .pipeline import LoadedModel, Pipeline, load_model, make_detector, sample_width
from .plot import ReplayPlot
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
DEFAULT_STATE_INTERVAL_S = 10.0
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
    (
        "streamlstm_connect_failures_total",
        "counter",
        "failed connection attempts (broker unreachable or refusing), by component",
    ),
    (
        "streamlstm_broker_refusals_total",
        "counter",
        "messages the broker refused (PUBACK reason code), by kind (alert, other) and reason",
    ),
    ("streamlstm_publish_errors_total", "counter", "messages the MQTT client refused to send"),
    ("streamlstm_dead_threads", "gauge", "threads that died unexpectedly (must be 0)"),
    ("streamlstm_snapshot_failures_total", "counter", "snapshots that could not be written"),
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


def build_sources(config: dict[str, Any], width: int) -> list[Source]:
    """One source object per ``[[sources]]`` table (imports only the kinds used)."""
    sources: list[Source] = []
    for table in config["sources"]:
        kind = table["type"]
        if kind == "serial":
            from ..sources.serial import SerialSource

            sources.append(SerialSource(table, width))
        elif kind == "mqtt":
            from ..sources.mqtt import MQTTSource

            sources.append(MQTTSource(table, width, config["mqtt"]))
        elif kind == "replay":
            from ..sources.replay import ReplaySource

            sources.append(ReplaySource(table, width))
        else:
            from ..sources.demo import DemoSource

            sources.append(DemoSource(table, width))
    return sources


def build_sinks(config: dict[str, Any]) -> list[Sink]:
    """One sink object per ``[[sinks]]`` table."""
    sinks: list[Sink] = []
    for table in config["sinks"]:
        if table["type"] == "stdout":
            from ..sinks.stdout import StdoutSink

            sinks.append(StdoutSink(table))
        elif table["type"] == "jsonl":
            from ..sinks.jsonl import JSONLSink

            sinks.append(JSONLSink(table))
        else:
            from ..sinks.mqtt import MQTTSink

            sinks.append(MQTTSink(table, config["mqtt"]))
    return sinks


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
        ("streamlstm_reconnects_total", "counter", "reconnections, by component"),
        ("streamlstm_connected", "gauge", "1 while the component is connected"),
        ("streamlstm_queue_frames", "gauge", "frames waiting for the compute loop"),
        ("streamlstm_dropped_samples_total", "counter", "samples dropped by the full queue"),
        ("streamlstm_spooled_alerts", "gauge", "alerts not yet acknowledged by the broker"),
        ("streamlstm_sensors", "gauge", "sensors known"),
        ("streamlstm_snapshots_total", "counter", "snapshots written"),
        *INTAKE_METRICS,
    ]:
        metrics.describe(name, kind, text)
    # Counters exist from the start: rate() over a scrape series needs the zero.
    for name in (
        "streamlstm_samples_total",
        "streamlstm_rejected_samples_total",
        "streamlstm_snapshots_total",
    ):
        metrics.inc(name, 0)


class Daemon:
    """Everything a ``streamlstm run`` owns; :meth:`run` blocks until a clean stop."""

    def __init__(self, config: dict[str, Any], *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        _describe(self.metrics)
        self.loaded: LoadedModel = load_model(config["model"]["path"])
        self.pipeline: Pipeline = make_detector(self.loaded.model, config["detector"])
        self.sensors: dict[str, SensorState] = {}
        self._changed: set[str] = set()
        self.queue = FrameQueue(
            config["daemon"]["queue_frames"],
            config["daemon"]["backpressure"],
            config["daemon"]["queue_bytes"],
        )
        self.gate = TimestampGate(time_policy(config["daemon"]))
        self.thread_watch = ThreadWatch()
        self.thread_watch.install()
        self._finished: set[str] = set()  # sources whose run() returned (input ended)
        self._stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        self.sources: list[Source] = build_sources(
            config, sample_width(self.pipeline, self.loaded.model)
        )
        self._source_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sinks: list[Sink] = []
        self.seq = SeqCounter(self._seq_path(config))
        self._plots = [
            ReplayPlot(s.plot_path, s.sensors)
            for s in self.sources
            if getattr(s, "plot_path", None)
        ]
        self._restore()
        self.sinks = build_sinks(config)
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
        self._finished = set()
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
                self._finished.add(source.name)
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
                if not thread.is_alive() and source.name not in self._finished:
                    faults.append(f"source {source.name}: thread ended")
        return faults

    def _stop_sources(self, timeout: float = 5.0) -> None:
        self._source_stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _sources_done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    # -- the compute loop --------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or, with ``exit_when_sources_end``, until every source ended)."""
        settings = self.config["daemon"]
        self._start_sources()
        systemd.notify("READY=1")
        log.info(
            "running: %d source(s), %d sink(s), model %s (sha256 %s)",
            len(self.sources),
            len(self.sinks),
            self.loaded.model_id,
            self.loaded.sha256[:12],
        )
        watchdog = systemd.watchdog_interval()
        next_watchdog = next_snapshot = next_states = time.monotonic()
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
            if now >= next_snapshot:
                self.write_snapshot()
                next_snapshot = now + self.config["daemon"]["snapshot_interval_s"]
            if watchdog is not None and now >= next_watchdog:
                systemd.notify("WATCHDOG=1")
                next_watchdog = now + watchdog
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
        scores, status = self.pipeline.last_scores, self.pipeline.last_status
        self.metrics.inc("streamlstm_samples_total", len(sensors))
        rejected = int(np.count_nonzero(status))
        if rejected:
            self.metrics.inc("streamlstm_rejected_samples_total", rejected)
        begin = 0
        for frame in frames:
            end = begin + len(frame.t)
            self._latency_hist.observe(decided - frame.received)
            if frame.t[-1] > 1e9:
                self._age_hist.observe(decided - float(frame.t[-1]))
            state = self.sensors.get(frame.sensor)
            if state is None:
                state = self.sensors[frame.sensor] = SensorState(frame.sensor)
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

    def _deliver(self, events: Iterable[Any], decided: float) -> None:
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
        for sink in self.sinks:
            sink.alerts(records)
        for plot in self._plots:
            for record in records:
                plot.alert(record)
        # State topics follow alerts at once, not at the next interval.
        self._publish_states({r["sensor"] for r in records})

    def _state_interval(self) -> float:
        for table in self.config["sinks"]:
            if table["type"] == "mqtt":
                return float(table["state_interval_s"])
        return DEFAULT_STATE_INTERVAL_S

    def _publish_states(self, only: set[str] | None = None) -> None:
        names = self._changed if only is None else only
        states = {name: self.sensors[name] for name in sorted(names) if name in self.sensors}
        for sink in self.sinks:
            sink.states(states)
        self._changed -= names

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self) -> None:
        path = self.config["daemon"]["snapshot_path"]
        if path is None:
            return
        state = {
            "model_sha256": self.loaded.sha256,
            "detector": dict(self.pipeline.export_state()),
            "sensors": {
                name: [s.t, s.score, s.alert, s.samples, s.rejected]
                for name, s in self.sensors.items()
            },
        }
        try:
            snapshot.save(path, state)
        except (OSError, snapshot.SnapshotError) as exc:
            log.error("snapshot to %s failed: %s", path, exc)
            self.metrics.inc("streamlstm_snapshot_failures_total")
            return
        self.metrics.inc("streamlstm_snapshots_total")

    def _restore(self) -> None:
        path = self.config["daemon"]["snapshot_path"]
        if path is None or not Path(path).exists():
            return
        try:
            state = snapshot.load(path)
            self.pipeline.import_state(state["detector"])
        except (StreamLSTMError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "snapshot %s does not fit this model (%s); starting from fresh state", path, exc
            )
            return
        for name, (t, score, alert, samples, rejected) in state.get("sensors", {}).items():
            self.sensors[name] = SensorState(
                name,
                float(t if t is not None else math.nan),
                float(score if score is not None else math.nan),
                bool(alert),
                int(samples),
                int(rejected),
            )
        log.info("restored %d sensors from %s", len(self.sensors), path)

    # -- reload and shutdown -----------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config file and weights; keep sensor state when the detector accepts it."""
        log.info("SIGHUP: reloading %s", self.config_path or "the built-in configuration")
        try:
            new = config_module.load(self.config_path)
            loaded = load_model(new["model"]["path"])
            pipeline = make_detector(loaded.model, new["detector"])
        except (ConfigError, StreamLSTMError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        try:
            pipeline.import_state(self.pipeline.export_state())
            log.info("sensor state kept across the reload")
        except (StreamLSTMError, KeyError, TypeError, ValueError) as exc:
            log.warning("sensor state reset by the reload (%s)", exc)
        self.pipeline, self.loaded = pipeline, loaded
        log.info("now running model %s (sha256 %s)", loaded.model_id, loaded.sha256[:12])
        if new["sources"] != self.config["sources"] or new["mqtt"] != self.config["mqtt"]:
            self._stop_sources()
            self.sources = build_sources(new, sample_width(pipeline, loaded.model))
            self._start_sources()
        if new["sinks"] != self.config["sinks"] or new["mqtt"] != self.config["mqtt"]:
            for sink in self.sinks:
                sink.close()
            self.sinks = build_sinks(new)
        self.queue.capacity = new["daemon"]["queue_frames"]
        self.queue.policy = new["daemon"]["backpressure"]
        self.queue.max_bytes = new["daemon"]["queue_bytes"]
        self.gate.policy = time_policy(new["daemon"])
        self.config = new

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
        self.write_snapshot()
        threshold = getattr(getattr(self.pipeline, "params", None), "threshold", None)
        for plot in self._plots:
            plot.save(threshold)
        for sink in self.sinks:
            try:
                sink.close()
            except (OSError, StreamLSTMError) as exc:
                log.error("closing a sink failed: %s", exc)
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
        for sink in self.sinks:
            health = getattr(sink, "health", None)
            if health is None:
                continue
            refusals, publish_errors, connect_failures = health()
            out += [
                ("streamlstm_broker_refusals_total", (("kind", kind), ("reason", r)), n)
                for (kind, r), n in refusals.items()
            ]
            out.append(("streamlstm_publish_errors_total", (), publish_errors))
            out.append(
                (
                    "streamlstm_connect_failures_total",
                    (("component", "sink:mqtt"),),
                    connect_failures,
                )
            )
        return out

    def _collect(self) -> list[Sample]:
        out: list[Sample] = [
            ("streamlstm_queue_frames", (), len(self.queue)),
            ("streamlstm_dropped_samples_total", (), self.queue.dropped_samples),
            ("streamlstm_sensors", (), len(self.sensors)),
            *self._collect_intake(),
        ]
        for source in self.sources:
            errors, samples, reconnects, connected = source.stats.snapshot()
            label = ("source", source.name)
            out += [
                ("streamlstm_parse_errors_total", (label, ("reason", r)), n)
                for r, n in errors.items()
            ]
            out += [
                ("streamlstm_source_samples_total", (label,), samples),
                (
                    "streamlstm_reconnects_total",
                    (("component", f"source:{source.name}"),),
                    reconnects,
                ),
                ("streamlstm_connected", (("component", f"source:{source.name}"),), int(connected)),
            ]
        for sink in self.sinks:
            spool = getattr(sink, "spool", None)
            if spool is not None:
                out += [
                    ("streamlstm_spooled_alerts", (), len(spool)),
                    ("streamlstm_reconnects_total", (("component", "sink:mqtt"),), sink.reconnects),
                    ("streamlstm_connected", (("component", "sink:mqtt"),), int(sink.connected)),
                ]
        return out
