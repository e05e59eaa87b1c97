"""Sensor id -> state row bookkeeping shared by the CPU and GPU banks."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np


class SensorRows:
    """Hands out one state row per sensor id (str or int) on first sight, reuses forgotten ones.

    The bank that inherits this owns the row storage: it provides :attr:`capacity`,
    ``_grow(capacity)`` (called with twice the capacity when every row is taken) and
    ``_clear_row(row)`` (called when a sensor is forgotten); it may override
    ``_clear_rows(rows)`` to clear many rows at once.
    """

    def __init__(self) -> None:
        self._rows: dict[Hashable, int] = {}
        self._free: list[int] = []  # rows released by forget(), reused first
        self._next_row = 0          # rows from here on were never handed out

    @property
    def capacity(self) -> int:
        raise NotImplementedError

    def _grow(self, capacity: int) -> None:
        raise NotImplementedError

    def _clear_row(self, row: int) -> None:
        raise NotImplementedError

    def _clear_rows(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            self._clear_row(row)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sensor: Hashable) -> bool:
        return sensor in self._rows

    @property
    def row_bound(self) -> int:
        """One past the highest row ever handed out: rows from here on were never used."""
        return self._next_row

    @property
    def sensors(self) -> list[Hashable]:
        """Known sensor ids in row-allocation order."""
        return list(self._rows)

    def row(self, sensor: Hashable) -> int:
        """The state row of ``sensor``, allocated (zero state) on first sight."""
        row = self._rows.get(sensor)
        if row is None:
            row = self._allocate(sensor)
        return row

    def rows(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """State rows for a sequence of sensor ids, allocating new ones as needed."""
        lookup = self._rows.get
        rows = [lookup(s) for s in sensors]
        if None in rows:
            rows = [self.row(s) for s in sensors]
        return np.asarray(rows, np.int64)

    def forget(self, sensor: Hashable) -> None:
        """Drop ``sensor``: its row is cleared and reused by the next new sensor."""
        row = self._rows.pop(sensor)
        self._clear_row(row)
        self._free.append(row)

    def forget_many(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """Drop several sensors at once (unknown ids are ignored); returns their freed rows."""
        pop = self._rows.pop
        rows = np.fromiter((r for r in (pop(s, -1) for s in sensors) if r >= 0), np.int64)
        self._clear_rows(rows)
        self._free += rows.tolist()
        return rows

    def _allocate(self, sensor: Hashable) -> int:
        if self._free:
            row = self._free.pop()
        else:
            if self._next_row == self.capacity:
                self._grow(2 * self.capacity)
            row = self._next_row
            self._next_row += 1
        self._rows[sensor] = row
        return row
