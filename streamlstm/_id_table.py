"""Integer sensor id -> state row, in arrays that compiled code looks up a whole batch in.

A Python dict lookup costs 50-100 ns per id from a NumPy array (each element becomes a
scalar object first), a fifth to a third of a bank's stream-step. This table mirrors the
integer ids of a :class:`~streamlstm._sensor_rows.SensorRows` in an open-addressing hash
table (linear probing, backward-shift deletion: no tombstones), so an ``int64`` array of
ids becomes rows in one compiled pass of a few nanoseconds per id. The dict stays the
source of truth; an id the table does not hold is answered by it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Marks an empty slot (rows are >= 0).
EMPTY = -1
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
#: Fibonacci hashing: the multiplier spreads consecutive and strided ids alike.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always", **_JIT)
def _slot(key, shift):
    return np.int64((np.uint64(key) * _GOLDEN) >> shift)


@njit(**_JIT)
def _lookup(keys, values, shift, ids, rows):
    """``rows[i]`` = the row of ``ids[i]``, or ``EMPTY`` where the table has none."""
    mask = keys.shape[0] - 1
    for i in range(ids.shape[0]):
        key = ids[i]
        slot = _slot(key, shift)
        row = EMPTY
        while values[slot] != EMPTY:
            if keys[slot] == key:
                row = values[slot]
                break
            slot = (slot + 1) & mask
        rows[i] = row


@njit(**_JIT)
def _insert(keys, values, shift, key, row):
    """Set ``key``'s row (the table has a free slot)."""
    mask = keys.shape[0] - 1
    slot = _slot(key, shift)
    while values[slot] != EMPTY and keys[slot] != key:
        slot = (slot + 1) & mask
    keys[slot] = key
    values[slot] = row


@njit(**_JIT)
def _delete(keys, values, shift, key):
    """Remove ``key``; return whether it was there. Later keys of its probe run move back
    into the gap, so every remaining key stays reachable from its home slot."""
    mask = keys.shape[0] - 1
    slot = _slot(key, shift)
    while values[slot] != EMPTY and keys[slot] != key:
        slot = (slot + 1) & mask
    if values[slot] == EMPTY:
        return False
    gap = slot
    probe = (gap + 1) & mask
    while values[probe] != EMPTY:
        home = _slot(keys[probe], shift)
        # Move the key back if its home is not in the cyclic range (gap, probe].
        if (probe - home) & mask >= (probe - gap) & mask:
            keys[gap] = keys[probe]
            values[gap] = values[probe]
            gap = probe
        probe = (probe + 1) & mask
    values[gap] = EMPTY
    return True


@njit(**_JIT)
def _insert_all(keys, values, shift, new_keys, new_values):
    for i in range(new_keys.shape[0]):
        _insert(keys, values, shift, new_keys[i], new_values[i])


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def table_key(sensor: object) -> int | None:
    """``sensor`` as a table key: Python and NumPy integers in int64 range (not bools)."""
    if type(sensor) is int or isinstance(sensor, np.integer):
        value = int(sensor)
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
    return None


class IdTable:
    """Integer id -> row; at most half full, doubling as it fills."""

    def __init__(self, slots: int = 64) -> None:
        self._alloc(slots)

    def _alloc(self, slots: int) -> None:
        self._keys = np.zeros(slots, np.int64)
        self._values = np.full(slots, EMPTY, np.int64)
        self._shift = np.uint64(64 - (slots.bit_length() - 1))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of an ``int64`` id array; ``EMPTY`` for ids the table does not hold."""
        rows = np.empty(ids.shape[0], np.int64)
        _lookup(self._keys, self._values, self._shift, ids, rows)
        return rows

    def insert(self, key: int, row: int) -> None:
        if 2 * (self._count + 1) > self._keys.shape[0]:
            self._rehash(2 * self._keys.shape[0])
        _insert(self._keys, self._values, self._shift, key, row)
        self._count += 1

    def delete(self, key: int) -> None:
        if _delete(self._keys, self._values, self._shift, key):
            self._count -= 1

    def _rehash(self, slots: int) -> None:
        used = self._values != EMPTY
        keys, values = self._keys[used], self._values[used]
        self._alloc(slots)
        _insert_all(self._keys, self._values, self._shift, keys, values)
        self._count = len(keys)
