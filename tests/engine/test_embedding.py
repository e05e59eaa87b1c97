"""The compiled step called from a user's own ``@njit`` code (the README's numba example)."""

from __future__ import annotations

import numpy as np
from numba import njit

import streamlstm as sl
from streamlstm import kernels


@njit(cache=True)
def next_step_errors(params, layout, state, scratch, xs, predictions):
    """Predict each next sample; return per-step squared errors and the rejected count."""
    errors = np.zeros(xs.shape[0] - 1)
    rejected = 0
    for t in range(xs.shape[0]):
        if kernels.step(params, layout, state, xs[t], predictions[t], scratch) != kernels.OK:
            rejected += 1
            continue
        if t + 1 < xs.shape[0]:
            errors[t] = np.sum((predictions[t] - xs[t + 1]) ** 2)
    return errors, rejected


def test_user_njit_function_matches_stream_step_exactly():
    model = sl.random_model(3, [32, 16], output_size=3, seed=11)
    xs = np.random.default_rng(0).normal(0, 1, (5000, 3)).astype(np.float32)
    xs[1234, 1] = np.nan  # one bad sample: skipped by both, state untouched

    embedded = model.stream()
    predictions = np.empty_like(xs)
    errors, rejected = next_step_errors(*embedded.kernel_args(), xs, predictions)

    reference = model.stream(on_invalid="skip")
    want = np.stack([reference.step(x) for x in xs])
    np.testing.assert_array_equal(predictions, want)
    np.testing.assert_array_equal(embedded.state_vector, reference.state_vector)
    assert rejected == 1 == reference.rejected
    good = np.flatnonzero(np.isfinite(want[:-1]).all(axis=1) & np.isfinite(xs[1:]).all(axis=1))
    np.testing.assert_allclose(
        errors[good], ((want[:-1] - xs[1:]) ** 2).sum(axis=1)[good], rtol=1e-6
    )
    # The stream object saw the embedded steps: it carries on from the same state.
    np.testing.assert_array_equal(embedded.step(xs[0]), reference.step(xs[0]))


def test_kernel_args_are_the_live_state():
    stream = sl.random_model(2, [8], kind="gru", dtype=np.float64).stream()
    params, layout, state, scratch = stream.kernel_args()
    out = np.empty(8)
    assert kernels.step(params, layout, state, np.ones(2), out, scratch) == kernels.OK
    np.testing.assert_array_equal(stream.state_vector, state)
    assert stream.state_vector.any()


@njit(cache=True)
def step_batch(params, layout, states, scratch, links, rows, samples, outs):
    """A user's compiled code stepping a micro-batch of a bank; returns the status codes."""
    status = np.empty(samples.shape[0], np.int8)
    kernels.bank_step_serial(params, layout, states, rows, samples, outs, status, scratch, links)
    return status


def test_bank_kernel_args_drive_bank_step_from_user_njit_code():
    model = sl.random_model(3, [16], output_size=3, seed=4)
    xs = np.random.default_rng(1).normal(0, 1, (40, 3)).astype(np.float32)
    ids = [i % 7 for i in range(40)]
    embedded, reference = model.bank(capacity=2), model.bank(capacity=2)
    rows = embedded.rows(ids)  # grows the bank: its kernel arguments are read after this
    outs = np.empty((40, 3), np.float32)
    status = step_batch(*embedded.kernel_args(len(rows)), rows, xs, outs)
    np.testing.assert_array_equal(outs, reference.step(ids, xs))
    assert (status == kernels.OK).all()
    for s in range(7):  # the bank's own states advanced
        np.testing.assert_array_equal(embedded.state_vector(s), reference.state_vector(s))
    states = embedded.kernel_args().states
    assert states is embedded.row_table["states"] and states.shape[0] == embedded.capacity


def test_group_by_row_links_each_rows_samples_in_arrival_order():
    rows = np.array([4, 1, 4, 0, 1, 4], np.int64)
    links = np.full((3, 8), -1, np.int64)
    row_last, heads, nxt = links
    count = kernels.group_by_row(rows, row_last, heads, nxt)
    chains = []
    for head in heads[:count].tolist():
        chain, i = [], head
        while i != kernels.NO_SAMPLE:
            chain.append(i)
            i = nxt[i]
        chains.append(chain)
    assert chains == [[0, 2, 5], [1, 4], [3]]
    assert (row_last == -1).all()  # the per-row slots are left clear for the next batch
