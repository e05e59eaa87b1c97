"""MQTT source (paho-mqtt 2.x): subscribes to a topic template and decodes each message.

The template names the sensor's place in the topic, ``sensors/{sensor}/accel``; the
subscription replaces that level with ``+`` and the sensor id is read back from each
message's topic. Payloads: ``json`` batches, ``csv`` text lines, or raw ``float32``
(see :mod:`.parsers`). The client keeps a persistent session (fixed client id,
``clean_start=False``) so that QoS 1/2 samples published while the daemon was
reconnecting are delivered when it is back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from .. import _mqtt
from . import Emit, Frame, SourceStats, sample_times
from .parsers import Block, LineFormat, ParseError, decode_csv, decode_float32, decode_json

log = logging.getLogger(__name__)


def topic_pattern(template: str) -> tuple[str, re.Pattern[str]]:
    """``sensors/{sensor}/accel`` -> (subscription filter, regex capturing the sensor id)."""
    levels = template.split("/")
    subscription = "/".join("+" if "{sensor}" in level else level for level in levels)
    head, tail = template.split("{sensor}")
    return subscription, re.compile(f"{re.escape(head)}([^/]+){re.escape(tail)}")


class MQTTSource:
    """One subscription; ``config``: a validated ``[[sources]]`` table, ``broker``: ``[mqtt]``."""

    def __init__(self, config: dict[str, Any], width: int, broker: dict[str, Any]) -> None:
        self.name = config["name"]
        self.stats = SourceStats()
        self._config = config
        self._broker = broker
        self._width = width
        self._subscription, self._pattern = topic_pattern(config["topic"])
        self._lines = None
        if config["payload"] == "csv":
            self._lines = LineFormat(tuple(config["columns"]), ",", config["time_column"], None)
        self._emit: Emit | None = None
        self._ever_connected = False
        # Refuse huge payloads before parsing them: 32 characters per number is generous
        # for text, and memory stays bounded whatever a publisher sends.
        self._max_bytes = config["max_samples"] * width * 32 + 1024

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Connect, subscribe and deliver messages until ``stop``."""
        self._emit = emit
        client = _mqtt.make_client(self._broker, f"in-{self.name}")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        _mqtt.connect_async(client, self._broker)
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
            log.warning("%s: broker refused the connection: %s", self.name, reason)
            return
        if self._ever_connected:
            self.stats.reconnected()
        self._ever_connected = True
        self.stats.connected = True
        client.subscribe(self._subscription, qos=self._config["qos"])
        log.info("%s: subscribed to %s", self.name, self._subscription)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.stats.connected:
            log.warning("%s: disconnected from the broker (%s)", self.name, reason)
        self.stats.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = time.time()
        try:
            frame = self._decode(message.topic, message.payload, received)
        except ParseError as exc:
            self.stats.error(exc.reason)
            return
        self.stats.received(len(frame.t))
        assert self._emit is not None
        self._emit([frame])

    def decode_block(self, payload: bytes) -> Block:
        """Decode one payload according to the configured ``payload`` kind."""
        limit = self._config["max_samples"]
        if self._config["payload"] == "json":
            return decode_json(payload, self._width, max_samples=limit)
        if self._lines is not None:
            return decode_csv(payload, self._lines, max_samples=limit)
        return decode_float32(payload, self._width, max_samples=limit)

    def _decode(self, topic: str, payload: bytes, received: float) -> Frame:
        match = self._pattern.fullmatch(topic)
        if match is None:
            raise ParseError("topic", f"topic {topic!r} does not match the template")
        if len(payload) > self._max_bytes:
            raise ParseError("oversize", f"{len(payload)} bytes")
        block = self.decode_block(payload)
        rate = block.rate or self._config["rate"]
        times = sample_times(len(block.samples), start=block.t, rate=rate, received=received)
        return Frame(match.group(1), times, block.samples, received)
