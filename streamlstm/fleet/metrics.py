"""The metrics a fleet worker exports (through the daemon's Prometheus registry)."""

from __future__ import annotations

from ..daemon.metrics import Metrics
from ..daemon.telemetry import CONNECTION_METRICS, described_metrics

FLEET_METRICS = [
    ("streamlstm_fleet_owned_partitions", "gauge", "partitions this worker owns"),
    (
        "streamlstm_fleet_consumer_lag",
        "gauge",
        "messages waiting in an owned partition's consumer, by partition",
    ),
    (
        "streamlstm_fleet_handoffs_total",
        "counter",
        "partitions taken over (direction=in) or handed off (direction=out)",
    ),
    (
        "streamlstm_fleet_lease_losses_total",
        "counter",
        "partitions lost because the lease or a snapshot write was refused",
    ),
    (
        "streamlstm_fleet_refused_writes_total",
        "counter",
        "lease renewals or snapshot writes refused by their revision check, by kind",
    ),
    (
        "streamlstm_fleet_replayed_messages_total",
        "counter",
        "messages applied again after a crash (after the snapshot point, up to the deposed "
        "owner's ack floor)",
    ),
    ("streamlstm_fleet_messages_total", "counter", "stream messages applied"),
    (
        "streamlstm_fleet_partition_failures_total",
        "counter",
        "partitions given up after an unexpected error in their processing (logged)",
    ),
    ("streamlstm_samples_total", "counter", "samples stepped through the detector"),
    (
        "streamlstm_expired_sensors_total",
        "counter",
        "idle sensors evicted (sensor_idle_s, counted on the stream's clock)",
    ),
    ("streamlstm_alerts_total", "counter", "alert events by kind"),
    ("streamlstm_snapshots_total", "counter", "partition snapshots written"),
    ("streamlstm_snapshot_failures_total", "counter", "partition snapshots not written"),
    ("streamlstm_snapshot_bytes", "gauge", "size of the last snapshot, by partition"),
    (
        "streamlstm_snapshot_restore_failures_total",
        "counter",
        "snapshots found unusable on takeover (the partition starts fresh), by reason",
    ),
    ("streamlstm_sink_errors_total", "counter", "failed sink calls, by sink and reason"),
    ("streamlstm_parse_errors_total", "counter", "malformed messages dropped, by reason"),
    (
        "streamlstm_rate_mismatches_total",
        "counter",
        "messages whose sample rate is not the model's (stepped all the same)",
    ),
    (
        "streamlstm_sensor_limit_samples_total",
        "counter",
        "samples of new sensors refused: their partition holds daemon.max_sensors sensors",
    ),
    (
        "streamlstm_refused_frames_total",
        "counter",
        "frames dropped for their device time, by reason",
    ),
    *CONNECTION_METRICS,
]


def fleet_metrics() -> Metrics:
    """A registry with the fleet's metrics described and its counters at zero."""
    return described_metrics(
        FLEET_METRICS,
        (
            "streamlstm_fleet_handoffs_total",
            "streamlstm_fleet_lease_losses_total",
            "streamlstm_fleet_messages_total",
            "streamlstm_samples_total",
            "streamlstm_expired_sensors_total",
        ),
    )
