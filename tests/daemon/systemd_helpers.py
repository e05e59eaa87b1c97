"""A unix datagram socket standing in for systemd's notify socket (a test helper)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifySocket:
    """A unix datagram socket standing in for systemd: records (time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self.on_ready: list = []
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            message = data.decode()
            if message == "READY=1":
                for callback in self.on_ready:
                    callback()
            with self._lock:
                self.messages.append((time.monotonic(), message))

    def times(self, message: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m == message]

    def texts(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
