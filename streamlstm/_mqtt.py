"""A configured paho-mqtt 2.x client, shared by the MQTT source and sink.

Persistent sessions (MQTT 5, fixed client id, ``clean_start=False`` with a session
expiry) so that QoS 1/2 messages survive a reconnect; TLS and a password read from a file
or an environment variable, never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ConfigError

if TYPE_CHECKING:
    from .daemon.config import BrokerConfig


def read_password(settings: BrokerConfig) -> str | None:
    """The broker password from ``password_file`` (first line) or ``password_env``."""
    if settings.password_file:
        try:
            return Path(settings.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigError(f"mqtt.password_file: cannot read a password ({exc})") from None
    if settings.password_env:
        name = settings.password_env
        if name not in os.environ:
            raise ConfigError(f"mqtt.password_env: environment variable {name} is not set")
        return os.environ[name]
    return None


def make_client(
    settings: BrokerConfig,
    suffix: str,
    *,
    manual_ack: bool = False,
    protocol: paho.MQTTProtocolVersion = paho.MQTTv5,
    keep_session: bool = True,
) -> paho.Client:
    """A client for the broker ``settings`` (``[mqtt]``) with id ``{client_id}-{suffix}``,
    auth and TLS set, not yet connected.

    ``manual_ack``: received QoS 1/2 messages are acknowledged by ``client.ack`` only.
    ``protocol``: MQTT 5 unless a broker only speaks 3.1.1 (nats-server's MQTT listener).
    ``keep_session``: an MQTT 3.1.1 client asks the broker to keep its session
    (``clean_session`` false); a one-off connection says False.
    """
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"{settings.client_id}-{suffix}",
        # MQTT 3.1.1 keeps the session with clean_session=False (MQTT 5: clean_start).
        clean_session=None if protocol == paho.MQTTv5 else not keep_session,
        protocol=protocol,
        manual_ack=manual_ack,
    )
    # Our callbacks catch everything themselves; this is the second line of defence, so
    # that a bug in one never ends paho's network thread (and with it all traffic).
    client.suppress_exceptions = True
    password = read_password(settings)
    if settings.username is not None:
        client.username_pw_set(settings.username, password)
    tls = settings.tls
    if tls is not None:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    # Large bursts are normal for a batch publisher; paho's default caps them at 20.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def connect_properties(settings: BrokerConfig, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties keeping the session for ``session_expiry_s`` after a disconnect.

    ``receive_maximum``: at most this many QoS 1/2 messages unacknowledged at once; the
    broker holds the rest (flow control for manually acknowledged intake).
    """
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry_s
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    return properties


def connect_async(
    client: paho.Client, settings: BrokerConfig, receive_maximum: int | None = None
) -> None:
    """Start connecting in the background (paho retries with backoff by itself).

    An MQTT 3.1.1 client sends no CONNECT properties: no session expiry (the broker keeps
    its session) and no receive maximum.
    """
    if client.protocol != paho.MQTTv5:
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        return
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=False,
        properties=connect_properties(settings, receive_maximum),
    )
