"""The row table: per-sensor arrays of a bank grow and clear together, keeping their rows."""

from __future__ import annotations

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.row_table import RowTable


def test_arrays_grow_together_keeping_rows_and_new_rows_are_fresh():
    table = RowTable(2)
    table.register("count", (), np.int64)
    table.register("pair", (2,), np.float64, fill=np.array([0.0, np.nan]))
    table["count"][:] = [5, 6]
    table["pair"][1] = [1.0, 2.0]
    table.grow(5)
    assert table.capacity == 5
    assert table["count"].tolist() == [5, 6, 0, 0, 0]
    np.testing.assert_array_equal(table["pair"][:2], [[0.0, np.nan], [1.0, 2.0]])
    np.testing.assert_array_equal(table["pair"][2:], [[0.0, np.nan]] * 3)
    table.clear(np.array([0, 1]), ("pair",))
    assert table["count"].tolist() == [5, 6, 0, 0, 0]  # not named: kept
    np.testing.assert_array_equal(table["pair"][:2], [[0.0, np.nan]] * 2)
    table.clear(0)
    assert table["count"].tolist() == [0, 6, 0, 0, 0]
    assert list(table.arrays()) == ["count", "pair"]
    with pytest.raises(ValueError, match="registered already"):
        table.register("count", (), np.int64)
    with pytest.raises(ValueError, match="shrink"):
        table.grow(3)


def test_a_bank_grows_and_clears_arrays_registered_by_others_with_its_states():
    model = sl.random_model(3, [8], output_size=3, seed=3)
    bank = model.bank(capacity=2)
    bank.row_table.register("seen", (), np.int64, fill=-1)
    rows = bank.rows(["a", "b"])
    bank.row_table["seen"][rows] = [10, 20]
    bank.step(list(range(10)), np.zeros((10, 3), np.float32))  # grows the bank
    assert bank.row_table.capacity == bank.capacity >= 12
    seen = bank.row_table["seen"]
    assert seen.shape == (bank.capacity,)
    assert seen[rows].tolist() == [10, 20] and (seen[bank.rows(range(10))] == -1).all()
    bank.forget("a")
    assert seen[rows[0]] == -1 and seen[rows[1]] == 20
    assert bank.row_table["states"].shape == (bank.capacity, model.state_size)
