"""Alert records appended to a file, one JSON object per line."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..daemon.config import JSONLSinkConfig, section_values
from ..errors import SinkError
from . import SensorState


class JSONLSink:
    """Appends each alert record as a line to ``path``; ``fsync`` makes each write durable."""

    def __init__(
        self, *, path: str, name: str = "jsonl", fsync: bool = JSONLSinkConfig.fsync
    ) -> None:
        self.settings = JSONLSinkConfig(name=name, path=path, fsync=fsync)
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8")
        except OSError as exc:
            raise SinkError(
                f"{self._path}: cannot open for appending ({exc.strerror or exc})"
            ) from None

    @classmethod
    def from_config(cls, settings: JSONLSinkConfig) -> JSONLSink:
        """The sink a validated ``[[sinks]]`` table of type jsonl describes."""
        return cls(**section_values(settings))

    def alerts(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.settings.fsync:
            os.fsync(self._file.fileno())

    def states(self, states: Mapping[str, SensorState]) -> None:
        """States are not logged: the file is an alert log."""

    def forget(self, sensors: Sequence[str]) -> None:
        """Nothing is kept per sensor (an open alert's end is in the alert log)."""

    def close(self) -> None:
        self._file.close()
