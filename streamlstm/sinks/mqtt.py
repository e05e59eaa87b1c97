"""MQTT sink: alerts (QoS 1, spooled), retained per-sensor state, retained daemon status.

Topics (templates from the config):

* ``alert_topic`` (``streamlstm/{sensor}/alert``): one alert record per message, QoS 1,
  not retained; every record is in the on-disk :class:`~.spool.Spool` until PUBACK;
* ``state_topic`` (``streamlstm/{sensor}/state``): retained :class:`SensorState` JSON;
* ``status_topic`` (``streamlstm/status``): retained ``online``, with a Last Will of
  ``offline`` (the broker publishes it if the daemon dies) and an explicit ``offline``
  on a clean exit;
* optional Home Assistant discovery: a retained ``binary_sensor`` config per sensor under
  ``{discovery_prefix}/binary_sensor/...``, re-sent when Home Assistant announces
  ``online`` on ``{discovery_prefix}/status``.

Delivery failures never lose an alert and never stop the others:

* the broker acknowledges an alert with a failure reason code (PUBACK >= 0x80, e.g. 135
  "Not authorized" from an ACL, 151 "Quota exceeded"): the spool file stays, the refusal
  is counted by reason (``refusals``) and logged (rate-limited), and the alert is sent
  again every ``refused_retry_s`` seconds and at every start, so that it goes out once the
  broker's configuration is fixed. Newer alerts are not held back meanwhile (the
  broker's refusal is per message), so a retried alert may arrive after newer ones;
  ``seq`` gives the order;
* the client refuses to publish one record (an exception from ``publish``): it is counted
  in ``publish_errors``, logged, kept in the spool; the other records still go out;
* no exception from a paho callback escapes into paho's network thread.

``protocol = "3.1.1"`` (a broker without MQTT 5, such as nats-server's MQTT listener)
loses what only MQTT 5 has: a PUBACK carries no reason code, so the broker cannot refuse
one alert (an ACL-denied alert counts as delivered: ``refusals`` stays 0 and
``refused_retry_s`` has no effect), and the session has no expiry (``clean_session``
false: the broker keeps it until it is told otherwise). Everything else is the same.

In a fleet (``spool_by_daemon``) alerts of many partitions, each with its own ``seq``,
share one sink: each ``daemon`` spools in a folder of its own, and :meth:`MQTTSink.pending`
gives one daemon's unacknowledged alerts, which the fleet carries in the partition's
snapshot so that the partition's next owner sends them if this worker cannot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import paho.mqtt.client as paho

from .. import _mqtt
from .._ratelimit import RateLimitedLog
from ..daemon.config import BrokerConfig, MQTTSinkConfig, section_values
from . import SensorState
from .spool import Spool

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

ONLINE, OFFLINE = b"online", b"offline"
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


def topic_for(template: str, sensor: str) -> str:
    """Fill ``{sensor}``, replacing the characters MQTT reserves in topic levels."""
    return template.replace("{sensor}", re.sub(r"[/+#\x00]", "_", sensor) or "_")


def spool_folder(daemon: str) -> str:
    """The folder name of one daemon's spool (``fleet/p3`` -> ``fleet_p3``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", daemon) or "_"


class MQTTSink:
    """Publishes alerts, states and status, as its
    :class:`~streamlstm.daemon.config.MQTTSinkConfig` (``settings``) says, to ``broker``
    (the ``[mqtt]`` table; default: localhost:1883), whose address the sink's own
    ``host``/``port``, where given, replace (the result is :attr:`broker`).

    ``spool_by_daemon``: one spool folder per alert ``daemon`` (a fleet worker's sink).
    """

    def __init__(
        self,
        *,
        broker: BrokerConfig | None = None,
        spool_by_daemon: bool = False,
        name: str = "mqtt",
        alert_topic: str = MQTTSinkConfig.alert_topic,
        state_topic: str | None = MQTTSinkConfig.state_topic,
        status_topic: str = MQTTSinkConfig.status_topic,
        state_interval_s: float = MQTTSinkConfig.state_interval_s,
        spool_dir: str = MQTTSinkConfig.spool_dir,
        homeassistant: bool = MQTTSinkConfig.homeassistant,
        discovery_prefix: str = MQTTSinkConfig.discovery_prefix,
        host: str | None = None,
        port: int | None = None,
        protocol: str = MQTTSinkConfig.protocol,
        refused_retry_s: float = MQTTSinkConfig.refused_retry_s,
    ) -> None:
        self.settings = config = MQTTSinkConfig(
            name=name,
            alert_topic=alert_topic,
            state_topic=state_topic,
            status_topic=status_topic,
            state_interval_s=state_interval_s,
            spool_dir=spool_dir,
            homeassistant=homeassistant,
            discovery_prefix=discovery_prefix,
            host=host,
            port=port,
            protocol=protocol,
            refused_retry_s=refused_retry_s,
        )
        broker = broker or BrokerConfig()
        self.broker = broker = dataclasses.replace(
            broker,
            host=broker.host if host is None else host,
            port=broker.port if port is None else port,
        )
        self.spool = Spool(spool_dir)
        self._spool_by_daemon = spool_by_daemon
        self._spools: dict[str, Spool] = {}
        self._lock = threading.Lock()  # guards _known_sensors (network and compute threads)
        # Alerts handed to paho and not yet acknowledged. Polled from the compute thread
        # rather than tracked in on_publish: paho calls on_publish holding its own message
        # lock, which publish() needs too, so a lock shared with on_publish can deadlock.
        self._in_flight: list[tuple[paho.MQTTMessageInfo, dict[str, Any]]] = []
        # mid -> failure reason code of a PUBACK; written by on_publish (network thread),
        # which paho calls before is_published() turns true. Plain dict operations only.
        self._failed_acks: dict[int, Any] = {}
        # (daemon, seq) -> (record, retry at)
        self._refused: dict[tuple[str, int], tuple[dict[str, Any], float]] = {}
        # ("alert" or "other", reason) -> count; "other": state, status, discovery messages
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.publish_errors = 0
        self.connect_failures = 0
        self._known_sensors: set[str] = set()
        self.connected = False
        self.reconnects = 0
        self._ever_connected = False
        self.client = _mqtt.make_client(broker, "out", protocol=PROTOCOLS[protocol])
        if protocol != "5":
            log.info(
                "mqtt sink: MQTT 3.1.1 to %s:%s: the broker cannot refuse single alerts "
                "(PUBACKs carry no reason code), so refusals are not counted",
                broker.host,
                broker.port,
            )
        self.client.will_set(config.status_topic, OFFLINE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        _mqtt.connect_async(self.client, broker)
        self.client.loop_start()
        # A previous run's unacknowledged alerts go first, in order.
        self._send(self._spooled())

    @classmethod
    def from_config(
        cls, settings: MQTTSinkConfig, broker: BrokerConfig, *, spool_by_daemon: bool = False
    ) -> MQTTSink:
        """The sink a validated ``[[sinks]]`` table of type mqtt describes, publishing to
        ``broker`` (``[mqtt]``)."""
        return cls(broker=broker, spool_by_daemon=spool_by_daemon, **section_values(settings))

    # -- paho callbacks (network thread): nothing may escape from them --------------------
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.connect_failures += 1
            _limited(
                logging.WARNING, "refused", "mqtt sink: broker refused the connection: %s", reason
            )
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        log.info("mqtt sink: connected to %s:%s", self.broker.host, self.broker.port)
        try:
            client.publish(self.settings.status_topic, ONLINE, qos=1, retain=True)
            if self.settings.homeassistant:
                client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
                with self._lock:
                    sensors = sorted(self._known_sensors)
                self._announce(sensors)
        except Exception as exc:
            self._publish_failed("status", exc)
        # Last: "connected" means subscribed and announced (tests and states() rely on it).
        self.connected = True

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.connect_failures += 1
        _limited(
            logging.WARNING,
            "unreachable",
            "mqtt sink: cannot reach the broker at %s:%s; alerts stay spooled, retrying",
            self.broker.host,
            self.broker.port,
        )

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected:
            log.warning("mqtt sink: disconnected (%s); paho reconnects with backoff", reason)
        self.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            if message.payload == ONLINE:  # Home Assistant restarted: it forgot the discovery
                with self._lock:
                    sensors = sorted(self._known_sensors)
                self._announce(sensors)
        except Exception as exc:
            self._publish_failed("discovery", exc)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._failed_acks[mid] = reason

    # -- the daemon's calls (compute thread) ---------------------------------------------
    def _publish_failed(self, what: str, exc: Exception) -> None:
        self.publish_errors += 1
        _limited(
            logging.ERROR,
            f"publish/{what}/{type(exc).__name__}",
            "mqtt sink: could not publish %s (%s: %s)",
            what,
            type(exc).__name__,
            exc,
        )

    def _send(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            try:
                topic = topic_for(self.settings.alert_topic, record["sensor"])
                payload = json.dumps(record, separators=(",", ":"))
                info = self.client.publish(topic, payload, qos=1)
            except Exception as exc:  # this record stays spooled; others go on
                self._publish_failed(f"alert seq {record.get('seq')} (kept in the spool)", exc)
                continue
            if info.rc == paho.MQTT_ERR_NO_CONN:
                # paho keeps a QoS 1 message published while disconnected and sends it on
                # reconnect; only this return code says otherwise (is_published() would raise).
                info.rc = paho.MQTT_ERR_SUCCESS
            self._in_flight.append((info, record))

    def _reap(self) -> None:
        """Delete the spool files of alerts the broker accepted; keep refused ones."""
        waiting = []
        for info, record in self._in_flight:
            seq = record["seq"]
            try:
                acknowledged = info.is_published()
            except (RuntimeError, ValueError) as exc:  # paho refused it: next start resends it
                log.error("mqtt sink: alert seq %d not sent (%s); it stays spooled", seq, exc)
                continue
            if not acknowledged:
                waiting.append((info, record))
                continue
            reason = self._failed_acks.pop(info.mid, None)
            if reason is None:
                self._spool(record).done(seq)
            else:
                self._refuse(record, reason)
        self._in_flight = waiting
        in_flight = {info.mid for info, _ in waiting}
        for mid in [m for m in list(self._failed_acks) if m not in in_flight]:
            # Refusals of state, status or discovery messages: counted, nothing to keep.
            reason = self._failed_acks.pop(mid, None)
            if reason is not None:
                self.refusals[("other", str(reason))] += 1
                _limited(
                    logging.WARNING,
                    f"refused-other/{reason}",
                    "mqtt sink: broker refused a state/status message: %s",
                    reason,
                )
        self._retry_refused()

    def _refuse(self, record: dict[str, Any], reason: Any) -> None:
        self.refusals[("alert", str(reason))] += 1
        retry = self.settings.refused_retry_s
        self._refused[(str(record.get("daemon")), record["seq"])] = (
            record,
            time.monotonic() + retry,
        )
        _limited(
            logging.ERROR,
            f"refused-alert/{reason}",
            "mqtt sink: broker refused alert seq %d on %s: %s; it stays in %s and is "
            "sent again every %g s",
            record["seq"],
            topic_for(self.settings.alert_topic, record["sensor"]),
            reason,
            self._spool(record).directory,
            retry,
        )

    def _retry_refused(self) -> None:
        now = time.monotonic()
        due = [key for key, (_, at) in self._refused.items() if at <= now]
        if due:
            self._send([self._refused.pop(key)[0] for key in sorted(due)])

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        """Spool (durably) then publish; the spool file goes when the broker acknowledges."""
        for record in records:
            self._spool(record).put(record)
        self._send(records)
        self._reap()

    def pending(self, daemon: str) -> list[dict[str, Any]]:
        """``daemon``'s alerts the broker has not acknowledged yet, in ``seq`` order."""
        self._reap()
        return self._spool({"daemon": daemon}).pending()

    def _spool(self, record: Mapping[str, Any]) -> Spool:
        if not self._spool_by_daemon:
            return self.spool
        daemon = str(record.get("daemon"))
        spool = self._spools.get(daemon)
        if spool is None:
            spool = self._spools[daemon] = Spool(self.spool.directory / spool_folder(daemon))
        return spool

    def _all_spools(self) -> list[Spool]:
        """The spool, or every daemon's spool folder on disk when spooling by daemon."""
        if not self._spool_by_daemon:
            return [self.spool]
        return [Spool(p) for p in sorted(self.spool.directory.iterdir()) if p.is_dir()]

    def spooled(self) -> int:
        """How many alerts wait in the spool (of every daemon when spooling by daemon)."""
        return sum(len(spool) for spool in self._all_spools())

    def _spooled(self) -> list[dict[str, Any]]:
        """Every spooled alert, daemon by daemon when spooling by daemon."""
        return [record for spool in self._all_spools() for record in spool.pending()]

    def health(self) -> tuple[dict[tuple[str, str], int], int, int]:
        """``(refusals by (kind, reason), publish errors, connection failures)`` for metrics."""
        return dict(self.refusals), self.publish_errors, self.connect_failures

    def states(self, states: Mapping[str, SensorState]) -> None:
        """Publish retained states (and announce new sensors); also reaps acknowledged alerts."""
        self._reap()
        new = []
        for sensor, state in states.items():
            if self.settings.state_topic is not None:
                try:
                    self.client.publish(
                        topic_for(self.settings.state_topic, sensor),
                        json.dumps(state.record(), separators=(",", ":")),
                        qos=1,
                        retain=True,
                    )
                except Exception as exc:  # one state never stops the others
                    self._publish_failed(f"the state of {sensor[:40]!r}", exc)
            with self._lock:
                if sensor not in self._known_sensors:
                    self._known_sensors.add(sensor)
                    new.append(sensor)
        if self.settings.homeassistant and new and self.connected:
            self._announce(new)

    def forget(self, sensors: Sequence[str]) -> None:
        """Clear the retained state (and Home Assistant discovery) of evicted sensors: an
        empty retained message deletes one, so nobody reads a state the daemon dropped.
        A sensor that comes back is announced again."""
        for sensor in sensors:
            with self._lock:
                if sensor not in self._known_sensors:
                    continue
                self._known_sensors.discard(sensor)
            topics = []
            if self.settings.state_topic is not None:
                topics.append(topic_for(self.settings.state_topic, sensor))
            if self.settings.homeassistant:
                topics.append(self._discovery_topic(sensor))
            for topic in topics:
                try:
                    self.client.publish(topic, b"", qos=1, retain=True)
                except Exception as exc:  # one sensor never stops the others
                    self._publish_failed(f"the removal of {sensor[:40]!r}", exc)

    def _object_id(self, sensor: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.broker.client_id}_{sensor}")

    def _discovery_topic(self, sensor: str) -> str:
        return f"{self.settings.discovery_prefix}/binary_sensor/{self._object_id(sensor)}/config"

    def _announce(self, sensors: Sequence[str]) -> None:
        daemon = self.broker.client_id
        for sensor in sensors:
            object_id = self._object_id(sensor)
            config = {
                "name": f"{sensor} anomaly",
                "unique_id": f"streamlstm_{object_id}",
                "object_id": object_id,
                "device_class": "problem",
                "state_topic": topic_for(self.settings.state_topic or "", sensor),
                "value_template": "{{ 'ON' if value_json.alert else 'OFF' }}",
                "json_attributes_topic": topic_for(self.settings.state_topic or "", sensor),
                "availability_topic": self.settings.status_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {
                    "identifiers": [f"streamlstm_{daemon}"],
                    "name": f"streamlstm {daemon}",
                    "manufacturer": "streamlstm",
                },
            }
            try:
                self.client.publish(
                    self._discovery_topic(sensor),
                    json.dumps(config),
                    qos=1,
                    retain=True,
                )
            except Exception as exc:
                self._publish_failed(f"the discovery of {sensor[:40]!r}", exc)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every alert to be acknowledged; True if all were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self._in_flight:
                return not self._refused
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Flush alerts, publish a retained ``offline``, disconnect (unsent alerts stay spooled)."""
        if not self.flush(timeout):
            log.warning(
                "mqtt sink: %d alerts unacknowledged and %d refused at exit; they stay in %s",
                len(self._in_flight),
                len(self._refused),
                self.spool.directory,
            )
        if self.connected:
            info = self.client.publish(self.settings.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("mqtt sink: could not publish the offline status")
        self.client.disconnect()
        self.client.loop_stop()
