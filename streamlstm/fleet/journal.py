"""An optional audit trail (``[fleet] journal_path``): one JSON line per ownership event
and per applied batch, written before the batch is acknowledged.

With it, an operator (or a test) can prove the delivery contract after the fact: every
stream sequence applied, nothing applied twice within an epoch, and every sequence
applied in two epochs lying after the later epoch's snapshot point.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO


class Journal:
    """Appends events to a JSONL file (flushed per line); a no-op without a path."""

    def __init__(self, path: str | None, worker: str) -> None:
        self._worker = worker
        self._file: TextIO | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, event: str, partition: int, epoch: int, **fields: Any) -> None:
        if self._file is None:
            return
        line = {
            "event": event,
            "worker": self._worker,
            "partition": partition,
            "epoch": epoch,
            "time": time.time(),
            **fields,
        }
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
