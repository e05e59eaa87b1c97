"""Sensor id -> row bookkeeping: the compiled integer-id table always agrees with the dict."""

from __future__ import annotations

import numpy as np
import pytest

import streamlstm as sl
from streamlstm._id_table import EMPTY, IdTable

MODEL = sl.random_model(3, [8], output_size=3, seed=3)


def _dict_rows(bank, sensors) -> list[int]:
    """The rows the dict gives, allocating in order of first appearance (the reference)."""
    return [bank.row(s) for s in sensors]


def test_id_table_matches_a_dict_through_inserts_and_deletes():
    rng = np.random.default_rng(0)
    table, reference = IdTable(slots=8), {}
    # Small key range: many collisions and long probe runs, then deletions inside them.
    for step in range(4000):
        key = int(rng.integers(-50, 50)) * 2**40 + int(rng.integers(0, 3))
        if key in reference and rng.random() < 0.5:
            table.delete(key)
            del reference[key]
        elif key not in reference:
            table.insert(key, step)
            reference[key] = step
        probe = np.array([*reference, 2**62, -(2**63), 2**63 - 1], np.int64)
        expected = [reference.get(k, EMPTY) for k in probe.tolist()]
        assert table.lookup(probe).tolist() == expected
        assert len(table) == len(reference)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64])
def test_integer_array_ids_get_the_rows_the_dict_gives(dtype):
    rng = np.random.default_rng(1)
    fast, slow = MODEL.bank(4), MODEL.bank(4)
    for _ in range(30):
        ids = rng.integers(0, 200, size=int(rng.integers(1, 60))).astype(dtype)
        assert fast.rows(ids).tolist() == _dict_rows(slow, list(ids))
        gone = rng.integers(0, 200, size=10).astype(dtype)
        assert fast.forget_many(gone).tolist() == slow.forget_many(list(gone)).tolist()
        known = [s for s in fast.sensors if rng.random() < 0.1]
        for sensor in known:
            fast.forget(sensor)
            slow.forget(sensor)
        assert fast.sensors == slow.sensors
        assert fast.capacity == slow.capacity


def test_ids_outside_int64_and_mixed_kinds_fall_back_to_the_dict():
    bank = MODEL.bank(4)
    huge = np.array([2**64 - 1, 5, 2**63], np.uint64)
    rows = bank.rows(huge)
    assert rows.tolist() == [bank._rows[2**64 - 1], bank._rows[5], bank._rows[2**63]]
    assert bank.rows(np.array([5, 2**64 - 1], np.uint64)).tolist() == [rows[1], rows[0]]
    # Equal keys of other types share the row, whichever form is seen first.
    row = bank.row(7.0)
    assert bank.rows(np.array([7])).tolist() == [row]
    assert bank.rows(["a", 7, np.int64(7), "a"]).tolist() == [
        bank.row("a"),
        row,
        row,
        bank.row("a"),
    ]
    bank.forget(np.int64(7))  # forgets the 7.0 sensor
    assert 7 not in bank
    fresh = bank.rows(np.array([7]))[0]
    assert bank.rows([7]).tolist() == [fresh]
    bank.forget(7.0)  # forgets the int 7 sensor: its table entry must go with it
    reused = bank.row("b")
    assert reused == fresh
    new = bank.rows(np.array([7]))[0]
    assert new != reused and bank.rows(["b"]).tolist() == [reused]


def test_step_with_integer_ids_equals_step_with_rows():
    ids = np.array([10, 3, 10, 99, 3, 10], np.int64)
    samples = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    by_ids, by_rows = MODEL.bank(2), MODEL.bank(2)
    rows = by_rows.rows(list(ids))
    for _ in range(3):
        assert np.array_equal(by_ids.step(ids, samples), by_rows.step_rows(rows, samples))
    for sensor in (10, 3, 99):
        assert np.array_equal(by_ids.state_vector(sensor), by_rows.state_vector(sensor))


def test_ids_from_a_generator_and_unhashable_ids():
    bank = MODEL.bank(4)
    assert bank.rows(s for s in ["x", "y", "x"]).tolist() == [0, 1, 0]
    with pytest.raises(TypeError):
        bank.rows([["not", "hashable"]])
    with pytest.raises(TypeError):
        bank.rows(np.zeros((2, 2), np.int64))


def test_known_row_never_allocates_and_assigned_rows_pairs_ids_with_rows():
    bank = MODEL.bank(2)
    with pytest.raises(KeyError):
        bank.known_row("a")
    assert len(bank) == 0
    bank.rows(["a", 5, "b"])
    bank.forget(5)
    bank.row("c")  # reuses 5's row
    assert bank.known_row("c") == 1
    sensors, rows = bank.assigned_rows()
    assert sensors == bank.sensors == ["a", "b", "c"]
    assert rows.dtype == np.int64 and rows.tolist() == [0, 2, 1] == bank.rows(sensors).tolist()
