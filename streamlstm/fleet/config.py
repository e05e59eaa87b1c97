"""The ``[fleet]`` settings as a typed value, and the subject names derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..daemon.config import FleetConfig, SiteConfig, section_values

#: Subjects nats-server gives MQTT-originated messages in ``$MQTT_msgs``.
MQTT_MSGS_STREAM = "$MQTT_msgs"
MQTT_MSGS_PREFIX = "$MQTT.msgs."


@dataclass(frozen=True, kw_only=True)
class FleetSettings(FleetConfig):
    """The ``[fleet]`` section (:class:`~streamlstm.daemon.config.FleetConfig`; see
    ``contrib/fleet/worker.example.toml`` for its keys) with the worker id resolved."""

    worker_id: str

    @classmethod
    def from_config(cls, config: SiteConfig) -> FleetSettings:
        """From a validated site config with a ``[fleet]`` section; the worker id defaults
        to ``[mqtt] client_id``."""
        if config.fleet is None:
            raise ValueError("the site config has no [fleet] section")
        worker_id = config.fleet.worker_id or config.mqtt.client_id
        return cls(**{**section_values(config.fleet), "worker_id": worker_id})

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
