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
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import paho.mqtt.client as paho

from .. import _mqtt
from . import SensorState
from .spool import Spool

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"


def topic_for(template: str, sensor: str) -> str:
    """Fill ``{sensor}``, replacing the characters MQTT reserves in topic levels."""
    return template.replace("{sensor}", re.sub(r"[/+#\x00]", "_", sensor) or "_")


class MQTTSink:
    """Publishes to ``broker`` (the ``[mqtt]`` table) as ``config`` (a ``[[sinks]]`` table) says."""

    def __init__(self, config: Mapping[str, Any], broker: Mapping[str, Any]) -> None:
        self._config = config
        self._broker = broker
        self.spool = Spool(config["spool_dir"])
        self._lock = threading.Lock()  # guards _known_sensors (network and compute threads)
        # Alerts handed to paho and not yet acknowledged. Polled from the compute thread
        # rather than tracked in on_publish: paho calls on_publish holding its own message
        # lock, which publish() needs too, so a lock shared with on_publish can deadlock.
        self._in_flight: list[tuple[paho.MQTTMessageInfo, int]] = []
        self._known_sensors: set[str] = set()
        self.connected = False
        self.reconnects = 0
        self._ever_connected = False
        self.client = _mqtt.make_client(dict(broker), "out")
        self.client.will_set(config["status_topic"], OFFLINE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        _mqtt.connect_async(self.client, dict(broker))
        self.client.loop_start()
        # A previous run's unacknowledged alerts go first, in order.
        self._send(self.spool.pending())

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt sink: broker refused the connection: %s", reason)
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.connected = True
        log.info("mqtt sink: connected to %s:%s", self._broker["host"], self._broker["port"])
        client.publish(self._config["status_topic"], ONLINE, qos=1, retain=True)
        if self._config["homeassistant"]:
            client.subscribe(f"{self._config['discovery_prefix']}/status", qos=1)
            with self._lock:
                sensors = sorted(self._known_sensors)
            self._announce(sensors)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected:
            log.warning("mqtt sink: disconnected (%s); paho reconnects with backoff", reason)
        self.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.payload == ONLINE:  # Home Assistant restarted: it forgot the discovery
            with self._lock:
                sensors = sorted(self._known_sensors)
            self._announce(sensors)

    # -- the daemon's calls (compute thread) ---------------------------------------------
    def _send(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            topic = topic_for(self._config["alert_topic"], record["sensor"])
            payload = json.dumps(record, separators=(",", ":"))
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == paho.MQTT_ERR_NO_CONN:
                # paho keeps a QoS 1 message published while disconnected and sends it on
                # reconnect; only this return code says otherwise (is_published() would raise).
                info.rc = paho.MQTT_ERR_SUCCESS
            self._in_flight.append((info, record["seq"]))

    def _reap(self) -> None:
        """Delete the spool files of alerts the broker has acknowledged."""
        waiting = []
        for info, seq in self._in_flight:
            try:
                acknowledged = info.is_published()
            except (RuntimeError, ValueError) as exc:  # paho refused it: next start resends it
                log.error("mqtt sink: alert seq %d not sent (%s); it stays spooled", seq, exc)
                continue
            if acknowledged:
                self.spool.done(seq)
            else:
                waiting.append((info, seq))
        self._in_flight = waiting

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        """Spool (durably) then publish; the spool file goes when the broker acknowledges."""
        for record in records:
            self.spool.put(record)
        self._send(records)
        self._reap()

    def states(self, states: Mapping[str, SensorState]) -> None:
        """Publish retained states (and announce new sensors); also reaps acknowledged alerts."""
        self._reap()
        new = []
        for sensor, state in states.items():
            if self._config["state_topic"] is not None:
                self.client.publish(
                    topic_for(self._config["state_topic"], sensor),
                    json.dumps(state.record(), separators=(",", ":")),
                    qos=1,
                    retain=True,
                )
            with self._lock:
                if sensor not in self._known_sensors:
                    self._known_sensors.add(sensor)
                    new.append(sensor)
        if self._config["homeassistant"] and new and self.connected:
            self._announce(new)

    def _announce(self, sensors: Sequence[str]) -> None:
        prefix = self._config["discovery_prefix"]
        daemon = self._broker["client_id"]
        for sensor in sensors:
            object_id = re.sub(r"[^A-Za-z0-9_-]", "_", f"{daemon}_{sensor}")
            config = {
                "name": f"{sensor} anomaly",
                "unique_id": f"streamlstm_{object_id}",
                "object_id": object_id,
                "device_class": "problem",
                "state_topic": topic_for(self._config["state_topic"] or "", sensor),
                "value_template": "{{ 'ON' if value_json.alert else 'OFF' }}",
                "json_attributes_topic": topic_for(self._config["state_topic"] or "", sensor),
                "availability_topic": self._config["status_topic"],
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {
                    "identifiers": [f"streamlstm_{daemon}"],
                    "name": f"streamlstm {daemon}",
                    "manufacturer": "streamlstm",
                },
            }
            self.client.publish(
                f"{prefix}/binary_sensor/{object_id}/config", json.dumps(config), qos=1, retain=True
            )

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every alert to be acknowledged; True if all were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self._in_flight:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Flush alerts, publish a retained ``offline``, disconnect (unsent alerts stay spooled)."""
        if not self.flush(timeout):
            log.warning(
                "mqtt sink: %d alerts unacknowledged at exit; they stay in %s",
                len(self._in_flight),
                self.spool.directory,
            )
        if self.connected:
            info = self.client.publish(self._config["status_topic"], OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("mqtt sink: could not publish the offline status")
        self.client.disconnect()
        self.client.loop_stop()
