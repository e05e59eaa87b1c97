"""Logging a recurring fault once, then at most once a minute with how often it recurred.

A full disk or a broken sink fails on every batch; the log should say so once and then
keep quiet, while a metric counts every occurrence.
"""

from __future__ import annotations

import logging
import time

#: Seconds between repeated reports of the same fault.
INTERVAL_S = 60.0


class FaultLog:
    """``error(key, message, *args)`` logs the first occurrence of ``key``, then a reminder
    with the count of suppressed repeats at most every :data:`INTERVAL_S` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def error(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        repeats = self._suppressed.pop(key, 0)
        self._last[key] = now
        if repeats:
            message += f" (and {repeats} more time(s) since the last report)"
        self._logger.error(message, *args)
