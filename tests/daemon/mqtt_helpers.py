"""A real mosquitto per test, and a recording MQTT subscriber (test helpers, not fixtures)."""

from __future__ import annotations

import getpass
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def require_tool(path: str | None, install: str) -> str:
    """The tool's path; a missing tool fails the test (skips only when explicitly allowed)."""
    if path is not None and os.path.exists(path):
        return path
    message = f"{install} is not installed: run the tests with `bash scripts/test`"
    if os.environ.get("STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS") == "1":
        pytest.skip(message)
    pytest.fail(message)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as an outgoing connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker_ports() -> Iterator[int]:
    """This xdist worker's own slice of the ports in [10000, ephemeral low), from a random
    start: no other worker draws from it, and a run beside another rarely meets it."""
    low, high = 10_000, _ephemeral_low()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    span = (high - low) // max(workers, 1)
    if span < 1:
        raise RuntimeError(f"the ephemeral port range starts at {high}: no ports are left below it")
    first = low + index * span
    start = random.randrange(span)
    return (first + (start + i) % span for i in range(span))


_PORTS = _worker_ports()


def free_port() -> int:
    """A loopback port nothing listens on, for a server the test starts (or one that is
    meant to be absent). It is below the ephemeral range, so no client's outgoing
    connection can take it between this call and the server's bind, nor while a test
    has its broker stopped; and from this worker's own slice, so no other worker's test
    is given it."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or lingering in TIME_WAIT
            return port
    raise RuntimeError("this test worker has used up its slice of loopback ports")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 20 ms until truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """mosquitto on 127.0.0.1:<free port>, persistence on (saved every second) in ``folder``."""

    def __init__(self, folder: Path, extra: str = "allow_anonymous true\n") -> None:
        require_tool(MOSQUITTO, "mosquitto")
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{extra}"
            # As root, mosquitto drops to user "mosquitto", which cannot write into a
            # private test folder: persistence and the log would silently be lost.
            + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
            + f"persistence true\npersistence_location {folder}/\nautosave_interval 1\n"
            f"log_dest file {folder}/mosquitto.log\nmax_queued_messages 100000\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._accepts, 10, "mosquitto to listen")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


class Subscriber:
    """Records every message on ``topics`` (persistent session: misses nothing once subscribed)."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "test-subscriber",
        protocol: int = paho.MQTTv5,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._topics = topics
        self.subscribed = threading.Event()
        v5 = protocol == paho.MQTTv5
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if v5 else False,  # 3.1.1 (nats-server): a kept session
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            self.client.connect_async("127.0.0.1", port, clean_start=False, properties=properties)
        else:
            self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber could not subscribe"

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def payloads(self, prefix: str = "") -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.startswith(prefix)]

    def json(self, suffix: str) -> list[dict[str, Any]]:
        """Decoded payloads on topics ending in ``suffix`` (empty ones, which delete a
        retained message, left out)."""
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix) and p]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int, client_id: str = "test-publisher") -> paho.Client:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client
