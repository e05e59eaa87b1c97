"""Alert records appended to a file, one JSON object per line."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SinkError
from . import SensorState


class JSONLSink:
    """Appends each alert record as a line to ``path``; ``fsync`` makes each write durable."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._path = Path(config["path"])
        self._fsync = config.get("fsync", False)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8")
        except OSError as exc:
            raise SinkError(
                f"{self._path}: cannot open for appending ({exc.strerror or exc})"
            ) from None

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def states(self, states: Mapping[str, SensorState]) -> None:
        """States are not logged: the file is an alert log."""

    def forget(self, sensors: Sequence[str]) -> None:
        """Nothing is kept per sensor (an open alert's end is in the alert log)."""

    def close(self) -> None:
        self._file.close()
