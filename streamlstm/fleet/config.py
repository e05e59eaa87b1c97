"""The ``[fleet]`` settings as a typed value, and the subject names derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Subjects nats-server gives MQTT-originated messages in ``$MQTT_msgs``.
MQTT_MSGS_STREAM = "$MQTT_msgs"
MQTT_MSGS_PREFIX = "$MQTT.msgs."


@dataclass(frozen=True)
class FleetSettings:
    """Validated ``[fleet]`` keys (see ``contrib/site.example.toml`` for their meaning)."""

    servers: tuple[str, ...]
    partitions: int
    intake: str
    partition_prefix: str
    name: str
    worker_id: str
    stream: str
    stream_max_age_s: float
    replicas: int
    leases_bucket: str
    state_bucket: str
    objects_bucket: str
    inline_snapshot_bytes: int
    lease_ttl_s: float
    snapshot_interval_s: float
    fetch_batch: int
    journal_path: str | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FleetSettings:
        """From a validated site config; the worker id defaults to ``[mqtt] client_id``."""
        table = dict(config["fleet"])
        table["servers"] = tuple(table["servers"])
        table["worker_id"] = table["worker_id"] or config["mqtt"]["client_id"]
        return cls(**table)

    @property
    def subject_root(self) -> str:
        """Where partition subjects start: ``$MQTT.msgs.part`` (MQTT intake) or ``part``."""
        head = MQTT_MSGS_PREFIX if self.intake == "mqtt" else ""
        return f"{head}{self.partition_prefix}"

    def partition_subject(self, partition: int) -> str:
        """The subject filter of one partition's samples."""
        return f"{self.subject_root}.{partition}.>"

    def topic_of(self, subject: str) -> tuple[int, str]:
        """``$MQTT.msgs.part.3.sensors.s1.accel`` -> ``(3, "sensors/s1/accel")``."""
        root = self.subject_root + "."
        if not subject.startswith(root):
            raise ValueError(f"subject {subject!r} is not under {root}")
        partition, _, rest = subject[len(root) :].partition(".")
        return int(partition), rest.replace(".", "/")

    @property
    def renew_interval_s(self) -> float:
        """Leases are renewed four times per TTL."""
        return self.lease_ttl_s / 4

    @property
    def overdue_s(self) -> float:
        """A lease not renewed for this long is treated as lost (two renewals missed, half
        the TTL: the owner stops well before the server could let another worker in)."""
        return self.lease_ttl_s / 2

    def fair_share(self, workers: int) -> int:
        """Partitions one of ``workers`` live workers should own."""
        return math.ceil(self.partitions / max(1, workers))
