"""Per-sensor arrays that are allocated, grown and cleared together: a bank's row storage.

A bank hands each sensor a row (:class:`~streamlstm._sensor_rows.SensorRows`); every
component that keeps per-sensor data (the bank its recurrent states, a detector its alert
state, your code its own counters) registers an array with the bank's :class:`RowTable`,
whose row ``r`` then belongs to the same sensor in every array. The table grows them all
at once (keeping their rows) and clears a forgotten sensor's row in all of them.

>>> import numpy as np
>>> table = RowTable(2)
>>> table.register("count", (), np.int64)
>>> table.register("last", (3,), np.float64, fill=np.nan)
>>> table.grow(4)
>>> table["last"].shape, bool(np.isnan(table["last"][3]).all())
((4, 3), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RowSpec:
    """One registered array: the shape and dtype of a row, and a fresh row's value."""

    row_shape: tuple[int, ...]
    dtype: np.dtype
    fill: np.ndarray  # shape ``row_shape``: what a new or cleared row holds


class RowTable:
    """Named arrays of ``capacity`` rows each, one row per sensor, grown and cleared together.

    :meth:`grow` replaces the arrays (the rows are copied over): read them from the table
    (``table[name]``) again after anything that may allocate a sensor's row, never keep
    one across such a call.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._specs: dict[str, RowSpec] = {}
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def capacity(self) -> int:
        """Rows in every array."""
        return self._capacity

    def register(self, name: str, row_shape: tuple[int, ...], dtype: Any, *, fill: Any = 0) -> None:
        """Add a ``(capacity, *row_shape)`` array of ``dtype`` whose rows start as ``fill``
        (a scalar, or an array of ``row_shape`` for a different value per column)."""
        if name in self._specs:
            raise ValueError(f"row array {name!r} is registered already")
        dtype = np.dtype(dtype)
        row = np.empty(tuple(row_shape), dtype)
        row[...] = fill
        spec = self._specs[name] = RowSpec(tuple(row_shape), dtype, row)
        self._arrays[name] = self._fresh(spec, self._capacity)

    def __getitem__(self, name: str) -> np.ndarray:
        """The live array ``name`` (replaced by :meth:`grow`)."""
        return self._arrays[name]

    def arrays(self, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The live arrays by name (all, in registration order, or ``names`` in that order)."""
        return dict(self._arrays) if names is None else {n: self._arrays[n] for n in names}

    def grow(self, capacity: int) -> None:
        """Reallocate every array with ``capacity`` rows: existing rows kept, new ones fresh."""
        if capacity < self._capacity:
            raise ValueError(f"cannot shrink a row table from {self._capacity} to {capacity}")
        old = self._capacity
        for name, spec in self._specs.items():
            array = self._fresh(spec, capacity)
            array[:old] = self._arrays[name]
            self._arrays[name] = array
        self._capacity = capacity

    def clear(self, rows: int | slice | np.ndarray, names: tuple[str, ...] | None = None) -> None:
        """Put ``rows`` back to their fresh value in every array (or only in ``names``)."""
        for name in self._arrays if names is None else names:
            self._arrays[name][rows] = self._specs[name].fill

    @staticmethod
    def _fresh(spec: RowSpec, capacity: int) -> np.ndarray:
        array = np.empty((capacity, *spec.row_shape), spec.dtype)
        array[...] = spec.fill
        return array
