"""Durable bookkeeping for at-least-once alerts: the spool directory and the seq counter.

An alert is written to ``<spool>/<seq>.json`` (temp file, fsync, rename, fsync of the
folder) *before* it is handed to the MQTT client, and deleted when the broker
acknowledges it (PUBACK). Whatever is still there after a crash is published again at the
next start, so it may arrive twice; subscribers dedupe on ``seq``.

Sequence numbers are reserved in blocks written to ``<spool>/seq`` the same durable way,
so a restarted daemon never reuses a number (it may skip some: gaps are harmless).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .._files import atomic_write

SEQ_BLOCK = 1000


class SeqCounter:
    """Alert sequence numbers, increasing across restarts when ``path`` is given."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._next = 1
        self._reserved = 0
        self.unreserved = 0  # numbers handed out while the reservation could not be written
        if path is not None and path.exists():
            try:
                self._next = self._reserved = int(path.read_text().strip())
            except ValueError:
                raise OSError(
                    f"{path}: corrupt sequence counter; remove it to restart at 1"
                ) from None

    def take(self) -> int:
        """The next sequence number.

        If a new block cannot be reserved on disk (a full disk), numbers go on from the
        wall clock in microseconds, far above any persisted count, so that no restart
        reuses them; the reservation is retried at the next call.
        """
        if self._path is not None and self._next >= self._reserved:
            try:
                atomic_write(self._path, [f"{self._next + SEQ_BLOCK}\n".encode()])
                self._reserved = self._next + SEQ_BLOCK
            except OSError:
                self.unreserved += 1
                self._next = max(self._next, time.time_ns() // 1000)
        seq = self._next
        self._next += 1
        return seq


class Spool:
    """Alert records not yet acknowledged by the broker, one file each."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _file(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}.json"

    def put(self, record: dict[str, Any]) -> None:
        atomic_write(self._file(record["seq"]), [json.dumps(record).encode()])

    def done(self, seq: int) -> None:
        self._file(seq).unlink(missing_ok=True)

    def pending(self) -> list[dict[str, Any]]:
        """Spooled records in seq order (unreadable files are set aside as ``*.bad``)."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                path.rename(path.with_suffix(".bad"))
        return records

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
