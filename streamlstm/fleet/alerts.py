"""A worker's sinks: alerts of many partitions, and what travels with a partition.

The sinks are the daemon's (``[[sinks]]``), built as one worker runs them: the MQTT
sink's client id is the worker id, its retained status and Last Will are
``<status_topic>/<worker id>``, and it spools each partition's alerts (each partition
numbers its own ``seq``) in a folder of its own. :meth:`WorkerSinks.unacknowledged` is
what a partition snapshot carries, :meth:`WorkerSinks.resend` what the next owner does
with it. One sink's failure is counted and logged, and never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._ratelimit import RateLimitedLog
from ..daemon.config import MQTTSinkConfig, SiteConfig
from ..daemon.metrics import Metrics, Sample
from ..daemon.registry import build_sinks
from ..daemon.telemetry import sink_samples
from ..sinks import SensorState, Sink
from ..sinks.mqtt import MQTTSink

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


def worker_sinks_config(config: SiteConfig, worker_id: str) -> SiteConfig:
    """The site config with the sinks as worker ``worker_id`` runs them."""
    sinks = tuple(
        replace(settings, status_topic=f"{settings.status_topic}/{worker_id}")
        if isinstance(settings, MQTTSinkConfig)
        else settings
        for settings in config.sinks
    )
    return replace(config, sinks=sinks, mqtt=replace(config.mqtt, client_id=worker_id))


class WorkerSinks:
    """Every ``[[sinks]]`` table's sink, for worker ``worker_id``."""

    def __init__(self, config: SiteConfig, worker_id: str, metrics: Metrics) -> None:
        self._metrics = metrics
        self.sinks = build_sinks(worker_sinks_config(config, worker_id), spool_by_daemon=True)
        self._named = [
            (settings.name, sink) for settings, sink in zip(config.sinks, self.sinks, strict=True)
        ]
        self._spooling = [(n, s) for n, s in self._named if isinstance(s, MQTTSink)]

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        """Hand newly decided alerts to every sink."""
        self._call(self._named, "alerts", records)

    def states(self, states: Mapping[str, SensorState]) -> None:
        self._call(self._named, "states", states)

    def forget(self, sensors: Sequence[str]) -> None:
        """Tell every sink that these (evicted) sensors are gone."""
        self._call(self._named, "forget", sensors)

    def unacknowledged(self, daemon: str) -> list[dict[str, Any]]:
        """The alerts of ``daemon`` (a partition) not yet acknowledged by the broker, in
        ``seq`` order (raises if a spool cannot be read: a snapshot without them could
        lose them)."""
        records: dict[int, dict[str, Any]] = {}
        for _, sink in self._spooling:
            assert isinstance(sink, MQTTSink)
            records.update((r["seq"], r) for r in sink.pending(daemon))
        return [records[seq] for seq in sorted(records)]

    def resend(self, daemon: str, carried: Any) -> int:
        """Send the alerts a partition's snapshot carried (its previous owner's
        unacknowledged ones) through the spooling sinks; returns how many. Anything in
        ``carried`` that is not an alert record of ``daemon`` is ignored."""
        records = [
            r
            for r in (carried if isinstance(carried, list) else [])
            if isinstance(r, dict) and r.get("daemon") == daemon and isinstance(r.get("seq"), int)
        ]
        if records:
            self._call(self._spooling, "alerts", records)
        return len(records)

    def samples(self) -> list[Sample]:
        """The sinks' delivery health, for metrics."""
        return sink_samples(self.sinks)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing a sink failed: %s", exc)

    def _call(self, sinks: Sequence[tuple[str, Sink]], what: str, argument: Any) -> None:
        for name, sink in sinks:
            try:
                getattr(sink, what)(argument)
            except Exception as exc:  # one sink's failure never stops the others
                self._metrics.inc(
                    "streamlstm_sink_errors_total",
                    labels=(("sink", name), ("reason", type(exc).__name__)),
                )
                _limited(logging.ERROR, f"sink:{name}:{what}", "sink %s failed: %s", name, exc)
