"""Logging that cannot flood: the first occurrence of each kind at once, then a summary.

A hostile publisher can send thousands of bad messages a second; logging each one would
fill the disk and bury everything else. :class:`RateLimitedLog` logs the first event of
each *key* (a parse-error reason, a broker refusal code) immediately, and afterwards at
most one line per ``interval`` seconds per key, saying how many were left out meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """``log(level, key, message, *args)`` through ``logger``, limited per ``key``.

    At most ``max_keys`` keys are remembered (the oldest is forgotten first), so keys
    built from untrusted data (sensor ids) cannot grow memory without bound.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 256) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed since)

    def __call__(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged less than ``interval`` s ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._keys.get(key, (-1e300, 0))
            if now - last < self._interval:
                self._keys[key] = (last, suppressed + 1)
                return False
            self._keys.pop(key, None)
            if len(self._keys) >= self._max_keys:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more like this in the last {self._interval:.0f} s)"
        self._logger.log(level, message, *args)
        return True
