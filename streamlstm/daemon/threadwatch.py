"""Notices threads that die of an exception anywhere in the process.

Every thread the daemon relies on (source threads, paho's network threads, the metrics
server) is meant to catch what it can; a thread that dies anyway must not go unnoticed,
or the daemon would look alive while intake or delivery has stopped. :class:`ThreadWatch`
chains ``threading.excepthook`` and remembers which threads died and of what.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class ThreadWatch:
    """Install with :meth:`install`; :attr:`dead` lists ``"thread-name: ExceptionType"``."""

    def __init__(self) -> None:
        self.dead: list[str] = []
        self._previous: Any = None
        self._lock = threading.Lock()

    def install(self) -> None:
        """Chain ``threading.excepthook`` (the previous hook still runs)."""
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def uninstall(self) -> None:
        if threading.excepthook == self._hook:
            threading.excepthook = self._previous

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        with self._lock:
            self.dead.append(f"{name}: {args.exc_type.__name__}")
        log.critical("thread %s died of %s: %s", name, args.exc_type.__name__, args.exc_value)
        self._previous(args)
