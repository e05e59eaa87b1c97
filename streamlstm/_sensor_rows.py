"""Sensor id -> state row bookkeeping shared by the CPU and GPU banks."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from ._id_table import EMPTY, IdTable, table_key
from .errors import ShapeError


class SensorRows:
    """Hands out one state row per sensor id (str or int) on first sight, reuses forgotten ones.

    The bank that inherits this owns the row storage: it provides :attr:`capacity`,
    ``_grow(capacity)`` (called with twice the capacity when every row is taken) and
    ``_clear_row(row)`` (called when a sensor is forgotten); it may override
    ``_clear_rows(rows)`` to clear many rows at once.

    The dict ``_rows`` is the source of truth. Integer ids are mirrored in an
    :class:`~streamlstm._id_table.IdTable`, so that :meth:`rows` of an integer array is one
    compiled pass; other ids (str) are looked up by the dict at C speed.
    """

    def __init__(self) -> None:
        self._rows: dict[Hashable, int] = {}
        self._free: list[int] = []  # rows released by forget(), reused first
        self._next_row = 0  # rows from here on were never handed out
        self._int_ids = IdTable()
        self._int_id_of_row: dict[int, int] = {}  # the table's entries, by row

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

    def distinct_rows(self, sensors: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        """Rows for ``sensors`` (block mode), which must be distinct: checked before any row
        is allocated, so a refused call leaves no new sensor behind."""
        ids = sensors.tolist() if isinstance(sensors, np.ndarray) else list(sensors)
        if len(set(ids)) != len(ids):
            raise ShapeError("run: sensors must be distinct (use step for repeated sensors)")
        return self.rows(sensors)

    def known_row(self, sensor: Hashable) -> int:
        """The state row of a known ``sensor``; :class:`KeyError` if unknown (never allocates)."""
        return self._rows[sensor]

    def assigned_rows(self) -> tuple[list[Hashable], np.ndarray]:
        """Known sensor ids in row-allocation order (:attr:`sensors`) and their rows."""
        return list(self._rows), np.fromiter(self._rows.values(), np.int64, len(self._rows))

    def rows(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """State rows for a sequence of sensor ids, allocating new ones as needed.

        New sensors get rows in order of first appearance. An integer NumPy array is looked
        up by compiled code (a few ns per id); any other sequence by the dict.
        """
        if isinstance(sensors, np.ndarray) and sensors.ndim == 1 and sensors.dtype.kind in "iu":
            ids = _as_int64(sensors)
            if ids is not None:
                rows = self._int_ids.lookup(ids)
                missing = np.flatnonzero(rows == EMPTY)
                for i in missing.tolist():
                    rows[i] = self.row(sensors[i])
                return rows
        if not isinstance(sensors, (list, tuple, np.ndarray)):
            sensors = list(sensors)
        try:
            return np.fromiter(map(self._rows.__getitem__, sensors), np.int64, len(sensors))
        except KeyError:  # new sensors
            return np.fromiter(map(self.row, sensors), np.int64, len(sensors))

    def forget(self, sensor: Hashable) -> None:
        """Drop ``sensor``: its row is cleared and reused by the next new sensor."""
        row = self._rows.pop(sensor)
        self._unmirror(row)
        self._clear_row(row)
        self._free.append(row)

    def forget_many(self, sensors: Iterable[Hashable]) -> np.ndarray:
        """Drop several sensors at once (unknown ids are ignored); returns their freed rows."""
        pop = self._rows.pop
        rows = np.fromiter((r for r in (pop(s, -1) for s in sensors) if r >= 0), np.int64)
        if self._int_id_of_row:
            for row in rows.tolist():
                self._unmirror(row)
        self._clear_rows(rows)
        self._free += rows.tolist()
        return rows

    def _unmirror(self, row: int) -> None:
        key = self._int_id_of_row.pop(row, None)
        if key is not None:
            self._int_ids.delete(key)

    def _allocate(self, sensor: Hashable) -> int:
        if self._free:
            row = self._free.pop()
        else:
            if self._next_row == self.capacity:
                self._grow(2 * self.capacity)
            row = self._next_row
            self._next_row += 1
        self._rows[sensor] = row
        key = table_key(sensor)
        if key is not None:
            self._int_ids.insert(key, row)
            self._int_id_of_row[row] = key
        return row


def stored_sensor_ids(what: str, value: Any) -> list[Hashable]:
    """A sensor list read from storage, checked before any row is allocated for it: a list
    of distinct ids, each a str or an int (Python's or NumPy's); :class:`ShapeError`
    naming ``what`` otherwise."""
    if not isinstance(value, list):
        raise ShapeError(f"{what}: sensors must be a list, got {type(value).__name__}")
    if not all(type(s) in (str, int) or isinstance(s, np.integer) for s in value):
        raise ShapeError(f"{what}: a sensor id is neither a string nor an integer")
    if len(set(value)) != len(value):
        raise ShapeError(f"{what}: a sensor id appears twice")
    return value


def _as_int64(ids: np.ndarray) -> np.ndarray | None:
    """An integer id array as contiguous int64, or None if some id does not fit int64."""
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        return None
    return np.ascontiguousarray(ids, dtype=np.int64)
