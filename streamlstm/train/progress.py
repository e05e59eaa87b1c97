"""A dependency-free progress line on stderr for long training runs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one status line at most ``rate`` times a second on a terminal; elsewhere
    (a log file, CI) it prints only the line :meth:`done` finishes with."""

    def __init__(
        self, *, stream: TextIO | None = None, enabled: bool = True, rate: float = 5.0
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._period = 1.0 / rate
        self._last = 0.0

    def update(self, text: str) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last >= self._period:
            self._last = now
            self.stream.write("\r" + text[:120].ljust(120))
            self.stream.flush()

    def done(self, text: str) -> None:
        if not self.enabled:
            return
        prefix = "\r" if self.live else ""
        self.stream.write(prefix + text.ljust(120 if self.live else 0) + "\n")
        self.stream.flush()


def bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"
