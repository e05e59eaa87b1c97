"""What the daemon measures: the name, type and help text of every metric it exports, the
histogram buckets, and the samples read at scrape time from the parts that keep their own
counts (the frame queue, the timestamp gate, the sources, the MQTT sink).

The compute loop only increments counters and observes histograms; everything else is
read when Prometheus scrapes (:meth:`~.metrics.Metrics.collector`). A fleet worker
exports the connection metrics (:data:`CONNECTION_METRICS`, :func:`sink_samples`) too.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from ..sinks import Sink
from ..sources import Source
from .framequeue import FrameQueue
from .intake import TimestampGate
from .metrics import Metrics, Sample

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
    (
        "streamlstm_subscribe_refusals_total",
        "counter",
        "subscriptions the broker refused (nothing comes from them), by component",
    ),
    ("streamlstm_connected", "gauge", "1 while the component is connected"),
    (
        "streamlstm_broker_refusals_total",
        "counter",
        "messages the broker refused (PUBACK reason code), by kind (alert, other) and reason",
    ),
    ("streamlstm_publish_errors_total", "counter", "messages the MQTT client refused to send"),
    ("streamlstm_spooled_alerts", "gauge", "alerts not yet acknowledged by the broker"),
]
DAEMON_METRICS = [
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
]


def described_metrics(
    definitions: Sequence[tuple[str, str, str]], counters: Sequence[str]
) -> Metrics:
    """A registry with ``definitions`` (name, type, help text) described and ``counters``
    at zero from the start: rate() over a scrape series needs the zero."""
    metrics = Metrics()
    for name, kind, text in definitions:
        metrics.describe(name, kind, text)
    for name in counters:
        metrics.inc(name, 0)
    return metrics


def daemon_metrics() -> Metrics:
    """A registry with the daemon's metrics described and its counters at zero."""
    return described_metrics(
        DAEMON_METRICS,
        (
            "streamlstm_samples_total",
            "streamlstm_rejected_samples_total",
            "streamlstm_snapshots_total",
            "streamlstm_snapshot_failures_total",
            "streamlstm_sensor_limit_samples_total",
            "streamlstm_expired_sensors_total",
        ),
    )


def error_reason(exc: BaseException) -> str:
    """A short metric label for an exception: the errno name (``ENOSPC``) or the class."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def intake_samples(
    queue: FrameQueue, gate: TimestampGate, sources: Sequence[Source], dead_threads: int
) -> list[Sample]:
    """Intake and I/O health (:data:`INTAKE_METRICS`) and the sources' connect failures."""
    counts = gate.counts
    out: list[Sample] = [
        ("streamlstm_queue_bytes", (), queue.bytes),
        ("streamlstm_dropped_frames_total", (), queue.dropped_frames),
        ("streamlstm_clock_resets_total", (), counts.clock_resets),
        ("streamlstm_gaps_total", (), counts.gaps),
        ("streamlstm_gap_samples_total", (), counts.gap_samples),
        ("streamlstm_dead_threads", (), dead_threads),
    ]
    for reason, n in list(counts.frames.items()):
        labels = (("reason", reason),)
        out.append(("streamlstm_refused_frames_total", labels, n))
        out.append(("streamlstm_refused_samples_total", labels, counts.samples[reason]))
    for source in sources:
        component = (("component", f"source:{source.name}"),)
        out.append(("streamlstm_connect_failures_total", component, source.stats.connect_failures))
    return out


def source_samples(sources: Sequence[Source]) -> list[Sample]:
    """Each source's decoding counts and connection state, labelled by source."""
    out: list[Sample] = []
    for source in sources:
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
            ("streamlstm_subscribe_refusals_total", (component,), counts.subscribe_refusals),
            ("streamlstm_connected", (component,), int(counts.connected)),
        ]
    return out


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
