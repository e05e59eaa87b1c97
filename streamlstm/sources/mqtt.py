"""MQTT source (paho-mqtt 2.x): subscribes to a topic template and decodes each message.

The template names the sensor's place in the topic, ``sensors/{sensor}/accel``; the
subscription replaces that level with ``+`` and the sensor id is read back from each
message's topic. Payloads: ``json`` batches, ``csv`` text lines, or raw ``float32``
(see :mod:`.parsers`). The client keeps a persistent session (fixed client id,
``clean_start=False``) so that QoS 1/2 samples published while the daemon was
reconnecting are delivered when it is back.

Acknowledgement (``ack``): ``on-receive`` (default) acknowledges a message as soon as it
is decoded and queued, so frames still queued are lost if the daemon is killed.
``after-step`` (QoS 1 only) uses paho's manual acks: each frame carries an ``ack`` that
the daemon calls after stepping it (or after deliberately dropping it), and
``receive_maximum`` (MQTT 5 Receive Maximum) asks the broker to leave at most that many
messages unacknowledged and hold the rest (mosquitto 2.0.11 honours it only until the
first acknowledgement). Cost:
acknowledgements wait for the queue and the step, so throughput is capped at
``receive_maximum`` messages per queue-plus-step latency, and after a crash up to
``receive_maximum`` messages come again (the daemon drops those it already stepped by
their device time; messages without a ``t`` cannot be recognised and are stepped again).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from .. import _mqtt
from .._ratelimit import RateLimitedLog
from ..daemon.config import BrokerConfig, MQTTSourceConfig, section_values
from . import Emit, Frame, SourceStats, check_sensor_id, sample_times
from .parsers import Block, LineFormat, ParseError, decode_csv, decode_float32, decode_json

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


def topic_pattern(template: str) -> tuple[str, re.Pattern[str]]:
    """``sensors/{sensor}/accel`` -> (subscription filter, regex capturing the sensor id)."""
    levels = template.split("/")
    subscription = "/".join("+" if "{sensor}" in level else level for level in levels)
    head, tail = template.split("{sensor}")
    return subscription, re.compile(f"{re.escape(head)}([^/]+){re.escape(tail)}")


#: Relative difference between a message's ``rate`` and the model's that is reported.
RATE_TOLERANCE = 0.01
#: Sensors warned about by name; past that, mismatches are only counted (bounded memory).
RATE_WARNED_SENSORS = 1000


class MQTTSource:
    """One subscription, as its :class:`~streamlstm.daemon.config.MQTTSourceConfig`
    (``settings``) says, to the broker ``broker`` (``[mqtt]``; default: localhost:1883);
    ``width`` values per sample; ``model_rate``: the model's sample rate (samples/s), which
    each message's ``rate`` is compared with (None: unknown)."""

    def __init__(
        self,
        *,
        topic: str,
        width: int,
        broker: BrokerConfig | None = None,
        model_rate: float | None = None,
        name: str = "mqtt",
        payload: str = MQTTSourceConfig.payload,
        qos: int = MQTTSourceConfig.qos,
        rate: float | None = None,
        max_samples: int = MQTTSourceConfig.max_samples,
        ack: str = MQTTSourceConfig.ack,
        receive_maximum: int = MQTTSourceConfig.receive_maximum,
        columns: tuple[int, ...] | None = None,
        time_column: int | None = None,
        sensor_column: int | None = None,
    ) -> None:
        self.settings = MQTTSourceConfig(
            name=name,
            topic=topic,
            payload=payload,
            qos=qos,
            rate=rate,
            max_samples=max_samples,
            ack=ack,
            receive_maximum=receive_maximum,
            columns=None if columns is None else tuple(columns),
            time_column=time_column,
            sensor_column=sensor_column,
        )
        self.name = name
        self._model_rate = model_rate
        self._rate_warned: set[str] = set()
        self.stats = SourceStats()
        self.broker = broker or BrokerConfig()
        self._width = width
        self._subscription, self._pattern = topic_pattern(topic)
        self._lines = None
        if payload == "csv":
            assert columns is not None  # the settings' checks require them here
            self._lines = LineFormat(tuple(columns), ",", time_column, None)
        self._emit: Emit | None = None
        self._ever_connected = False
        self._manual_ack = ack == "after-step"
        self._client: paho.Client | None = None
        # Refuse huge payloads before parsing them: 32 characters per number is generous
        # for text, and memory stays bounded whatever a publisher sends.
        self._max_bytes = max_samples * width * 32 + 1024

    @classmethod
    def from_config(
        cls,
        settings: MQTTSourceConfig,
        width: int,
        broker: BrokerConfig,
        model_rate: float | None = None,
    ) -> MQTTSource:
        """The source a validated ``[[sources]]`` table of type mqtt describes."""
        return cls(width=width, broker=broker, model_rate=model_rate, **section_values(settings))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Connect, subscribe and deliver messages until ``stop``."""
        self._emit = emit
        client = _mqtt.make_client(self.broker, f"in-{self.name}", manual_ack=self._manual_ack)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        receive_maximum = self.settings.receive_maximum if self._manual_ack else None
        _mqtt.connect_async(client, self.broker, receive_maximum)
        client.loop_start()
        try:
            stop.wait()
        finally:
            self.stats.connected = False  # a wanted disconnect: not worth a warning
            client.disconnect()
            client.loop_stop()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.stats.connect_failed()
            _limited(
                logging.WARNING,
                f"{self.name}/refused",
                "%s: broker refused the connection: %s",
                self.name,
                reason,
            )
            return
        if self._ever_connected:
            self.stats.reconnected()
        self._ever_connected = True
        self.stats.connected = True
        try:
            client.subscribe(self._subscription, qos=self.settings.qos)
        except (ValueError, OSError) as exc:  # paho refused the filter: a bug, made visible
            log.error("%s: cannot subscribe to %s: %s", self.name, self._subscription, exc)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        """The broker's answer (SUBACK): only now do messages on the topic come."""
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            self.stats.subscribe_refused()
            _limited(
                logging.ERROR,
                f"{self.name}/subscribe",
                "%s: broker refused the subscription to %s (%s): no samples will come from it",
                self.name,
                self._subscription,
                ", ".join(str(reason) for reason in refused),
            )
            return
        log.info("%s: subscribed to %s", self.name, self._subscription)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.stats.connect_failed()
        _limited(
            logging.WARNING,
            f"{self.name}/unreachable",
            "%s: cannot reach the broker at %s:%s; retrying with backoff",
            self.name,
            self.broker.host,
            self.broker.port,
        )

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.stats.connected:
            log.warning("%s: disconnected from the broker (%s)", self.name, reason)
        self.stats.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # paho's network thread serves every message: nothing may escape from here.
        received = time.time()
        try:
            frame = self._decode(message, received)
            self.stats.received(len(frame.t))
            assert self._emit is not None
            self._emit([frame])
        except Exception as exc:  # counted and logged, see SourceStats.dropped
            self.stats.dropped(self.name, exc)
            self._acknowledge(message)

    def _rate_mismatch(self, sensor: str, rate: float) -> None:
        """Count a message whose sample rate is not the model's (its samples are still
        stepped: the sender may be right and the model wrong); warn once per sensor."""
        self.stats.rate_mismatch()
        if sensor in self._rate_warned or len(self._rate_warned) >= RATE_WARNED_SENSORS:
            return
        self._rate_warned.add(sensor)
        log.warning(
            "%s: sensor %s sends %g samples/s but the model was trained at %g; "
            "its scores mean little until the rates agree (counted in "
            "streamlstm_rate_mismatches_total)",
            self.name,
            sensor,
            rate,
            self._model_rate,
        )

    def _acknowledge(self, message: paho.MQTTMessage) -> None:
        """Manual ack of a message dropped here (it is handled: a redelivery would fail too)."""
        if self._manual_ack and message.qos > 0 and self._client is not None:
            self._client.ack(message.mid, message.qos)

    def decode_block(self, payload: bytes | bytearray) -> Block:
        """Decode one payload according to the configured ``payload`` kind."""
        limit = self.settings.max_samples
        if self.settings.payload == "json":
            return decode_json(payload, self._width, max_samples=limit)
        if self._lines is not None:
            return decode_csv(payload, self._lines, max_samples=limit)
        return decode_float32(payload, self._width, max_samples=limit)

    def _decode(self, message: paho.MQTTMessage, received: float) -> Frame:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            raise ParseError("topic", "topic is not UTF-8") from None
        frame = self.decode(topic, message.payload, received)
        if self._manual_ack and message.qos > 0 and self._client is not None:
            ack = functools.partial(self._client.ack, message.mid, message.qos)
            frame = dataclasses.replace(frame, ack=ack)
        return frame

    def decode(self, topic: str, payload: bytes | bytearray, received: float) -> Frame:
        """One message -> a frame of the sensor the topic names (:class:`ParseError` if
        the topic does not match the template or the payload is bad)."""
        match = self._pattern.fullmatch(topic)
        if match is None:
            raise ParseError("topic", f"topic {topic!r} does not match the template")
        sensor = check_sensor_id(match.group(1))
        if len(payload) > self._max_bytes:
            raise ParseError("oversize", f"{len(payload)} bytes")
        block = self.decode_block(payload)
        rate = block.rate or self.settings.rate
        if rate and self._model_rate and abs(rate - self._model_rate) > RATE_TOLERANCE * rate:
            self._rate_mismatch(sensor, rate)
        times = sample_times(len(block.samples), start=block.t, rate=rate, received=received)
        return Frame(sensor, times, block.samples, received, block.t is not None)
