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

:class:`Daemon` orchestrates; its parts have modules of their own: :mod:`.registry` builds
sources and sinks, :mod:`.sensortable` keeps the per-sensor records, :mod:`.snapshotter`
schedules snapshots and restores them, :mod:`.telemetry` defines and reads the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._ratelimit import RateLimitedLog
from ..errors import ConfigError, StreamLSTMError
from ..sinks import SensorState, Sink, alert_record
from ..sinks.spool import SeqCounter
from ..sources import Frame, Source
from . import config as config_module
from . import systemd
from .config import MQTTSinkConfig, SiteConfig
from .framequeue import FrameQueue
from .intake import TimestampGate, time_policy
from .lastseen import LastSeen
from .metrics import MetricsServer, Sample
from .pipeline import (
    LoadedModel,
    Pipeline,
    compile_kernels,
    load_model,
    make_detector,
    sample_width,
)
from .plot import ReplayPlot, sample_channels
from .registry import build_sinks, build_sources, check_broker_settings, seq_path
from .sensortable import (
    DEFAULT_STATE_INTERVAL_S,
    batch_arrays,
    forget_sensors,
    last_sample_times,
    record_alert,
    record_batch,
    within_sensor_limit,
)
from .snapshotter import Snapshotter, restore_snapshot
from .telemetry import (
    LATENCY_BUCKETS,
    STEP_BUCKETS,
    daemon_metrics,
    error_reason,
    intake_samples,
    sink_samples,
    source_samples,
)
from .threadwatch import ThreadWatch

log = logging.getLogger("streamlstm.daemon")
_limited = RateLimitedLog(log)

#: How often thread health is checked (and the watchdog fed, at most this often).
HEALTH_INTERVAL_S = 1.0

#: A health check returns what is wrong, or None; the watchdog is fed only while all pass.
HealthCheck = Callable[[], "str | None"]


def acknowledge(frames: list[Frame]) -> None:
    """Acknowledge manually acked frames (at-least-once MQTT intake) once handled."""
    for frame in frames:
        if frame.ack is not None:
            frame.ack()


class Daemon:
    """Everything a ``streamlstm run`` owns; :meth:`run` blocks until a clean stop."""

    def __init__(self, config: SiteConfig, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = daemon_metrics()
        self.loaded: LoadedModel = load_model(config.model.path)
        self.pipeline: Pipeline = make_detector(self.loaded.model, config.detector)
        self._width = sample_width(self.pipeline, self.loaded.model)
        self._changed: set[str] = set()  # sensors whose state the sinks have not seen yet
        self.queue = FrameQueue(
            config.daemon.queue_frames,
            config.daemon.backpressure,
            config.daemon.queue_bytes,
        )
        self.gate = TimestampGate(time_policy(config.daemon))
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
        self.seq = SeqCounter(seq_path(config))
        from ..sources.replay import ReplaySource

        self._plots = [
            ReplayPlot(s.settings.plot, s.sensors, sample_channels(self.loaded.model))
            for s in self.sources
            if isinstance(s, ReplaySource) and s.settings.plot
        ]
        path = config.daemon.snapshot_path
        self.sensors: dict[str, SensorState] = restore_snapshot(
            path, self.pipeline, self.metrics, self.loaded.sha256
        )
        # Sensor -> monotonic time of its last frame, least recently seen first.
        now = time.monotonic()
        self._last_seen = LastSeen((name, now) for name in self.sensors)
        self.sinks = build_sinks(config)
        self.snapshots = Snapshotter(path, self.metrics)
        #: Checks run every second; the systemd watchdog is fed only while all pass.
        #: Sources and sinks with threads of their own may append theirs.
        self.health_checks: list[HealthCheck] = [self._threads_alive, self.snapshots.problem]
        self.metrics.collector(self._collect)
        self._server: MetricsServer | None = None
        port = config.daemon.metrics_port
        if port is not None:
            self._server = MetricsServer(self.metrics, config.daemon.metrics_host, port)
            log.info(
                "metrics on http://%s:%d/metrics",
                config.daemon.metrics_host,
                self._server.port,
            )
        self._step_hist = self.metrics.histogram("streamlstm_step_seconds", STEP_BUCKETS)
        self._latency_hist = self.metrics.histogram(
            "streamlstm_decision_latency_seconds", LATENCY_BUCKETS
        )
        self._age_hist = self.metrics.histogram("streamlstm_sample_age_seconds", LATENCY_BUCKETS)

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
        next_snapshot += self.config.daemon.snapshot_interval_s
        while not self._stop_requested.is_set():
            frames = self.queue.take(
                self.config.daemon.batch_samples,
                self.config.daemon.batch_wait_ms / 1000,
                idle=0.05,
            )
            if frames:
                self.process(frames)
            now = time.monotonic()
            if now >= next_states:
                self._publish_states()
                next_states = now + self._state_interval()
            if not self.snapshots.advance() and now >= next_snapshot:
                self.write_snapshot()
                next_snapshot = now + self.config.daemon.snapshot_interval_s
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
                self.config.daemon.exit_when_sources_end
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
        limit = self.config.daemon.max_sensors
        frames, refused = within_sensor_limit(frames, self.sensors, limit)
        if refused:
            self.metrics.inc("streamlstm_sensor_limit_samples_total", refused)
            _limited(
                logging.ERROR,
                "max_sensors",
                "daemon.max_sensors (%d) reached: samples of new sensors are refused "
                "(streamlstm_sensor_limit_samples_total)",
                limit,
            )
        if not frames:
            return
        sensors, samples, times = batch_arrays(frames)
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
        record_batch(self.sensors, self._changed, frames, scores, status)
        last_seen = self._last_seen
        begin = 0
        for frame in frames:
            end = begin + len(frame.t)
            self._latency_hist.observe(decided - frame.received)
            if frame.t[-1] > 1e9:
                self._age_hist.observe(decided - float(frame.t[-1]))
            last_seen.seen(frame.sensor, seen_at)
            for plot in self._plots:
                plot.observe(frame, scores[begin:end])
            begin = end
        if events:
            self._deliver(events, decided)

    def _deliver(self, events: Iterable[Any], decided: float, *, states: bool = True) -> None:
        """Number the events' alert records and hand them to every sink; then (``states``)
        publish the changed states of their sensors."""
        records = []
        for event in events:
            records.append(
                alert_record(
                    event,
                    seq=self.seq.take(),
                    daemon=self.config.mqtt.client_id,
                    model_id=self.loaded.model_id,
                    model_sha=self.loaded.sha256,
                    published=decided,
                )
            )
            self.metrics.inc("streamlstm_alerts_total", labels=(("kind", event.kind),))
            record_alert(self.sensors, event)
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
            name = self.config.sinks[index].name
            reason = error_reason(exc)
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
        for settings in self.config.sinks:
            if isinstance(settings, MQTTSinkConfig):
                return settings.state_interval_s
        return DEFAULT_STATE_INTERVAL_S

    def _publish_states(self, only: set[str] | None = None) -> None:
        names = self._changed if only is None else only
        states = {name: self.sensors[name] for name in sorted(names) if name in self.sensors}
        for index, sink in enumerate(self.sinks):
            self._call_sink(index, sink.states, states)
        self._changed -= names

    # -- idle sensors ------------------------------------------------------------------------
    def _expiry_interval(self) -> float:
        idle = self.config.daemon.sensor_idle_s
        return 60.0 if not idle else min(60.0, max(0.1, idle / 4))

    def expire_idle_sensors(self, now: float) -> int:
        """Evict sensors without a frame for ``sensor_idle_s`` (0: never); returns how many.

        Their rows are freed for new sensors. A sensor that comes back starts afresh (warm-up
        again): after a gap that long its old recurrent state no longer describes its signal.
        An alert open on one ends (reason ``"evicted"``, at its last sample's time) and the
        sinks forget it (the MQTT sink clears its retained state).
        """
        idle = self.config.daemon.sensor_idle_s
        if not idle or self.snapshots.copying:  # rows must not change hands mid-copy
            return 0
        expired = self._last_seen.expire(now - idle)
        if not expired:
            return 0
        last_t = last_sample_times(self.sensors, expired)
        self._deliver(self.pipeline.evict(expired, last_t), time.time(), states=False)
        forget_sensors(self.sensors, self._changed, expired)
        for index, sink in enumerate(self.sinks):
            self._call_sink(index, sink.forget, expired)
        log.info("%d sensor(s) idle for %g s expired (first: %s)", len(expired), idle, expired[0])
        self.metrics.inc("streamlstm_expired_sensors_total", len(expired))
        return len(expired)

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self) -> None:
        """Begin a snapshot of the detector and the sensor records (see :class:`Snapshotter`:
        copied a slice per loop turn, written on its own thread); no-op without a path."""
        self.snapshots.begin(self.pipeline, list(self.sensors.values()), self.loaded.sha256)

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
            loaded = load_model(new.model.path)
            pipeline = make_detector(loaded.model, new.detector)
            width = sample_width(pipeline, loaded.model)
            if width != self._width:
                raise ConfigError(
                    f"the new model takes {width} values per sample, the running one "
                    f"{self._width}: restart the daemon to change the sample width"
                )
            sources_changed = (
                new.sources != self.config.sources
                or new.mqtt != self.config.mqtt
                # MQTT sources compare each message's rate with the model's
                or loaded.model.sample_rate != self.loaded.model.sample_rate
            )
            sinks_changed = new.sinks != self.config.sinks or new.mqtt != self.config.mqtt
            check_broker_settings(new)
            compile_kernels(loaded.model, new)
            new_sources = (
                build_sources(new, width, loaded.model.sample_rate) if sources_changed else None
            )
            new_sinks = build_sinks(new) if sinks_changed else None
        except Exception as exc:  # anything: the running configuration must survive it
            # logged before it is counted: whoever sees the count finds the reason in the log
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.metrics.inc("streamlstm_reloads_total", labels=(("result", "refused"),))
            return
        try:
            pipeline.import_state(self.pipeline.export_state())
            log.info("sensor state kept across the reload")
        except (StreamLSTMError, KeyError, TypeError, ValueError) as exc:
            log.warning("sensor state reset by the reload (%s)", exc)
        self.pipeline, self.loaded = pipeline, loaded
        self.snapshots.cancel()  # a copy of the old detector is moot
        log.info("now running model %s (sha256 %s)", loaded.model_id, loaded.sha256[:12])
        if new_sources is not None:
            self._stop_sources()
            self.sources = new_sources
            self._start_sources()
        if new_sinks is not None:
            self._close_sinks()
            self.sinks = new_sinks
        self.queue.capacity = new.daemon.queue_frames
        self.queue.policy = new.daemon.backpressure
        self.queue.max_bytes = new.daemon.queue_bytes
        self.gate.policy = time_policy(new.daemon)
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
            frames = self.queue.take(self.config.daemon.batch_samples, 0.0, idle=0.0)
            if not frames:
                break
            self.process(frames)
        self._publish_states()
        self.snapshots.final(self.pipeline, list(self.sensors.values()), self.loaded.sha256)
        threshold = getattr(getattr(self.pipeline, "params", None), "threshold", None)
        for plot in self._plots:
            plot.save(threshold)
        self._close_sinks()
        if self._server is not None:
            self._server.close()
        self.thread_watch.uninstall()
        log.info("stopped cleanly")

    # -- metrics read at scrape time -----------------------------------------------------------
    def _collect(self) -> list[Sample]:
        return [
            ("streamlstm_queue_frames", (), len(self.queue)),
            ("streamlstm_dropped_samples_total", (), self.queue.dropped_samples),
            ("streamlstm_sensors", (), len(self.sensors)),
            ("streamlstm_seq_unreserved_total", (), self.seq.unreserved),
            *intake_samples(self.queue, self.gate, self.sources, len(self.io_faults())),
            *sink_samples(self.sinks),
            *source_samples(self.sources),
        ]
