"""Connecting to NATS, and creating (or finding) the fleet's stream and buckets.

Everything is created idempotently by whichever worker starts first. With MQTT intake the
samples stream *sources* ``$MQTT_msgs`` (the stream nats-server's MQTT listener stores
QoS 1 messages in) rather than subscribing to the partition subjects: MQTT's PUBACK only
covers ``$MQTT_msgs``, so a stream that merely subscribed could lose acknowledged
messages with a cluster node. ``$MQTT_msgs`` drops messages nothing has shown interest
in, and nats-server creates it only when the first MQTT client connects; so a worker
connects once itself, then sets up the source before any sensor publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
import paho.mqtt.client as paho
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from .. import _mqtt
from .._ratelimit import RateLimitedLog
from ..daemon.config import BrokerConfig
from ..errors import StreamLSTMError
from .config import MQTT_MSGS_STREAM, FleetSettings

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

#: Errors a leader election or a restarting server causes for a moment: try again later.
RETRYABLE: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,  # a JetStream publish met no responders
)
#: Key in the state bucket recording the fleet's fixed partition count.
FLEET_KEY = "fleet"
#: How long a starting worker waits for nats-server to create ``$MQTT_msgs``.
MQTT_STREAMS_WAIT_S = 15.0


class FleetError(StreamLSTMError):
    """The fleet cannot run as configured (another partition count, no MQTT streams)."""


@dataclass
class FleetStores:
    """The connection and the stores a worker (or ``fleet status``) uses."""

    nc: NATS
    js: JetStreamContext
    leases: KeyValue
    state: KeyValue
    objects: ObjectStore


async def connect(settings: FleetSettings, *, name: str, persistent: bool = True) -> NATS:
    """A connection; ``persistent``: it waits for the servers and reconnects forever (a
    restarting server is an outage, not an end), else one attempt per server."""

    async def error_cb(exc: Exception) -> None:
        _limited(
            logging.WARNING,
            "nats",
            "nats: %s%s",
            exc or type(exc).__name__,
            " (retrying)" if persistent else "",
        )

    return await nats.connect(
        list(settings.servers),
        name=name,
        max_reconnect_attempts=-1 if persistent else 1,  # 0 would mean forever too
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=persistent,
        error_cb=error_cb,
    )


async def open_stores(nc: NATS, settings: FleetSettings, *, create: bool) -> FleetStores:
    """The three buckets (created when missing if ``create``)."""
    js = nc.jetstream(timeout=5.0)
    storage, replicas = StorageType.FILE, settings.replicas

    async def bucket(name: str, ttl: float | None) -> KeyValue:
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise FleetError(f"bucket {name!r} does not exist (no worker ran yet)") from None
        # direct=False: reads go to the stream leader. A direct get may be answered by a
        # replica that lags behind, and a stale record would make claims fail for nothing.
        config = KeyValueConfig(
            bucket=name, history=1, ttl=ttl, storage=storage, replicas=replicas, direct=False
        )
        return await js.create_key_value(config)

    leases = await bucket(settings.leases_bucket, settings.lease_ttl_s)
    state = await bucket(settings.state_bucket, None)
    try:
        objects = await js.object_store(settings.objects_bucket)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        if not create:
            raise FleetError(f"object store {settings.objects_bucket!r} does not exist") from None
        # nats-py 2.16 overwrites config.bucket with its ``bucket`` argument: pass both.
        objects = await js.create_object_store(
            settings.objects_bucket,
            config=ObjectStoreConfig(
                bucket=settings.objects_bucket, storage=storage, replicas=replicas
            ),
        )
    return FleetStores(nc, js, leases, state, objects)


async def check_partitions(state: KeyValue, settings: FleetSettings) -> None:
    """Record the partition count on first start; refuse a worker configured otherwise."""
    record = json.dumps({"partitions": settings.partitions}).encode()
    try:
        await state.create(FLEET_KEY, record)
        return
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    entry = await state.get(FLEET_KEY)
    fixed = json.loads(entry.value or b"{}").get("partitions")
    if fixed != settings.partitions:
        raise FleetError(
            f"fleet.partitions = {settings.partitions}, but this fleet was "
            f"created with {fixed} partitions (fixed for the fleet's life)"
        )


async def ensure_stream(
    js: JetStreamContext, settings: FleetSettings, broker: BrokerConfig
) -> None:
    """Create the samples stream if missing (sourcing ``$MQTT_msgs`` for MQTT intake, which
    nats-server creates once a client connects to its MQTT listener, ``broker``)."""
    try:
        await js.stream_info(settings.stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    common: dict[str, Any] = dict(
        name=settings.stream,
        retention=RetentionPolicy.LIMITS,
        max_age=settings.stream_max_age_s,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        description=f"streamlstm fleet {settings.name}: samples in "
        f"{settings.partitions} partitions",
    )
    if settings.intake == "nats":
        await js.add_stream(StreamConfig(subjects=[f"{settings.subject_root}.>"], **common))
        log.info("created stream %s on %s.>", settings.stream, settings.subject_root)
        return
    await _wait_for_mqtt_streams(js, broker)
    source = StreamSource(name=MQTT_MSGS_STREAM, filter_subject=f"{settings.subject_root}.>")
    try:
        await js.add_stream(StreamConfig(sources=[source], **common))
    except nats.js.errors.BadRequestError:  # another worker created it meanwhile
        await js.stream_info(settings.stream)
    log.info(
        "created stream %s sourcing %s (%s.>)",
        settings.stream,
        MQTT_MSGS_STREAM,
        settings.subject_root,
    )


async def _wait_for_mqtt_streams(js: JetStreamContext, broker: BrokerConfig) -> None:
    """Make nats-server create ``$MQTT_msgs`` (by connecting to its MQTT listener once)."""
    deadline = time.monotonic() + MQTT_STREAMS_WAIT_S
    probed = False
    while True:
        try:
            await js.stream_info(MQTT_MSGS_STREAM)
            return
        except nats.js.errors.NotFoundError:
            pass
        if not probed:
            probed = await asyncio.to_thread(_touch_mqtt_listener, broker)
        if time.monotonic() > deadline:
            raise FleetError(
                f"nats-server has no {MQTT_MSGS_STREAM} stream after "
                f"{MQTT_STREAMS_WAIT_S:g} s: is its MQTT listener enabled at "
                f"{broker.host}:{broker.port} ([mqtt] host/port)?"
            )
        await asyncio.sleep(0.1)


def _touch_mqtt_listener(settings: BrokerConfig) -> bool:
    """Connect an MQTT 3.1.1 client once (nats-server then creates its MQTT streams)."""
    client = _mqtt.make_client(settings, "fleet-setup", protocol=paho.MQTTv311, keep_session=False)
    try:
        client.connect(settings.host, settings.port, keepalive=10)
        client.loop(timeout=1.0)
        client.disconnect()
    except OSError as exc:
        log.warning(
            "cannot reach the MQTT listener at %s:%d (%s)", settings.host, settings.port, exc
        )
        return False
    return True
