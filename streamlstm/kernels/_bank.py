"""Compiled micro-batch step of many streams (a bank).

A micro-batch is ``M`` (row, sample) pairs in arrival order; one row may appear several
times. Samples are grouped by row with per-row linked lists built in one O(M) pass (no
sort, no allocation: the link buffers are the caller's), then rows are stepped in
parallel and each row's samples in arrival order.
"""

from __future__ import annotations

from numba import get_thread_id, njit, prange

from ._network import JIT, step

NO_SAMPLE = -1


@njit(inline="always", **JIT)
def _group_by_row(rows, row_last, heads, links):
    """Link each sample to the next sample of the same row; return the number of rows.

    ``heads[g]`` is the first sample of group ``g`` and ``links[i]`` the next sample of
    sample ``i``'s row (or -1). ``row_last`` (one entry per bank row, all -1 on entry)
    is left all -1 again.
    """
    groups = 0
    for i in range(rows.shape[0]):
        row = rows[i]
        last = row_last[row]
        if last == NO_SAMPLE:
            heads[groups] = i
            groups += 1
        else:
            links[last] = i
        row_last[row] = i
        links[i] = NO_SAMPLE
    for i in range(rows.shape[0]):
        row_last[rows[i]] = NO_SAMPLE
    return groups


@njit(**JIT)
def bank_step_serial(params, layout, states, rows, samples, outs, status, scratch, links):
    """Step a micro-batch on the calling thread; arguments as :func:`bank_step`."""
    row_last, heads, nxt = links[0], links[1], links[2]
    groups = _group_by_row(rows, row_last, heads, nxt)
    for g in range(groups):
        i = heads[g]
        while i != NO_SAMPLE:
            status[i] = step(params, layout, states[rows[i]], samples[i], outs[i], scratch[0])
            i = nxt[i]


@njit(parallel=True, **JIT)
def bank_step(params, layout, states, rows, samples, outs, status, scratch, links):
    """Step a micro-batch of ``M`` samples, rows in parallel, each row's samples in order.

    ``states``: ``(capacity, S)``; ``rows``: ``(M,)`` int64 state rows; ``samples``:
    ``(M, D)``; ``outs``: ``(M, O)``; ``status``: ``(M,)`` int8 codes (see
    :mod:`.layout`); ``scratch``: ``(threads, scratch_size)``; ``links``: int64 work
    buffer ``(3, max(capacity, M))`` whose first row is all -1.
    """
    row_last, heads, nxt = links[0], links[1], links[2]
    groups = _group_by_row(rows, row_last, heads, nxt)
    for g in prange(groups):
        work = scratch[get_thread_id()]
        i = heads[g]
        while i != NO_SAMPLE:
            status[i] = step(params, layout, states[rows[i]], samples[i], outs[i], work)
            i = nxt[i]
