"""Compiled micro-batch step of many streams (a bank).

A micro-batch is ``M`` (row, sample) pairs in arrival order; one row may appear several
times. Samples are grouped by row with per-row linked lists built in one O(M) pass (no
sort, no allocation: the link buffers are the caller's), then rows are stepped in
parallel and each row's samples in arrival order.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import get_thread_id, njit, prange

from ._network import JIT, TILE_STREAMS, forward, step_of_kind, step_tile_of_kind
from .layout import ANY_KIND

#: Ends a row's chain of samples in the links :func:`group_by_row` writes.
NO_SAMPLE = -1


@njit(**JIT)
def group_by_row(rows, row_last, heads, links):
    """Group a micro-batch by state row: link each sample to the next sample of its row.

    Returns the number of groups ``G`` (distinct rows, in order of first sight).
    ``heads[g]`` is the first sample of group ``g`` and ``links[i]`` the next sample of
    sample ``i``'s row (or :data:`NO_SAMPLE`), so walking a group from its head visits
    its samples in arrival order. ``row_last`` (one entry per bank row, all -1 on entry)
    is left all -1 again. One O(M) pass, no sort, no allocation: ``row_last``, ``heads``
    and ``links`` are the three rows of the ``links`` buffer of
    :meth:`streamlstm.Bank.kernel_args`.
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
def _step_groups(
    params, layout, states, rows, samples, outs, status, scratch, heads, nxt, first, last, kind
):
    """Step groups ``first..last-1`` (distinct rows), four at a time in lockstep.

    Four groups advance together through their chains, one sample each per round, via
    :func:`step_tile`; rounds where fewer than four groups still have samples (and the
    remainder groups) fall back to :func:`step`. Each row's samples stay in order.
    Consecutive tiles walk the weights in opposite directions (see :mod:`.layout`).
    Out of line (a call per chunk of groups): compiled once for the serial and the
    parallel kernel, not typed again inside each. ``kind``: see
    :func:`~._network.step_of_kind`.
    """
    g = first
    reverse = forward(layout)
    while g + TILE_STREAMS <= last:
        i0, i1, i2, i3 = heads[g], heads[g + 1], heads[g + 2], heads[g + 3]
        while i0 != NO_SAMPLE and i1 != NO_SAMPLE and i2 != NO_SAMPLE and i3 != NO_SAMPLE:
            status[i0], status[i1], status[i2], status[i3] = step_tile_of_kind(
                params,
                layout,
                states[rows[i0]],
                states[rows[i1]],
                states[rows[i2]],
                states[rows[i3]],
                samples[i0],
                samples[i1],
                samples[i2],
                samples[i3],
                outs[i0],
                outs[i1],
                outs[i2],
                outs[i3],
                scratch,
                reverse,
                kind,
            )
            reverse = not reverse
            i0, i1, i2, i3 = nxt[i0], nxt[i1], nxt[i2], nxt[i3]
        for i in (i0, i1, i2, i3):
            while i != NO_SAMPLE:
                status[i] = step_of_kind(
                    params, layout, states[rows[i]], samples[i], outs[i], scratch[0], kind
                )
                i = nxt[i]
        g += TILE_STREAMS
    for h in range(g, last):
        i = heads[h]
        while i != NO_SAMPLE:
            status[i] = step_of_kind(
                params, layout, states[rows[i]], samples[i], outs[i], scratch[0], kind
            )
            i = nxt[i]


#: Groups (sensors) one parallel task of :func:`bank_step` takes: a multiple of the tile,
#: large enough to amortise the task's start. A micro-batch of fewer sensors is one task,
#: so it runs on one thread whatever the kernel (``Bank`` then takes the serial one).
SENSORS_PER_TASK = 8 * TILE_STREAMS


@functools.cache
def bank_step_in_order(kind: int) -> Any:
    """A micro-batch stepped sample by sample in arrival order, for models of one ``kind``:
    ``(params, layout, states, rows, samples, outs, status, scratch)`` as
    :func:`bank_step`, without grouping or tiles.

    What :func:`bank_step_serial` does for a batch of fewer sensors than a tile
    (:data:`~._network.TILE_STREAMS`), bit for bit, but compiled from the stream's
    :func:`~._network.step_of_kind` alone: a few sensors never compile the tiled kernel.
    """

    @njit(**JIT)
    def step_in_order(params, layout, states, rows, samples, outs, status, scratch):
        work = scratch[0, 0]
        for i in range(rows.shape[0]):
            status[i] = step_of_kind(
                params, layout, states[rows[i]], samples[i], outs[i], work, kind
            )

    return step_in_order


@functools.cache
def bank_kernels(kind: int) -> tuple[Any, Any]:
    """``(bank_step_serial, bank_step)`` compiled for models of one ``kind`` (see
    :func:`~._network.kernel_kind`), the only kind a bank's first step then compiles. For
    :data:`.layout.ANY_KIND` these are the public :func:`bank_step_serial` and
    :func:`bank_step`."""
    # Closures over ``kind``, an int: Numba compiles them with ``kind`` as a constant and
    # caches one entry per kind (its cache key hashes the closure's cells).

    @njit(**JIT)
    def bank_step_serial(params, layout, states, rows, samples, outs, status, scratch, links):
        """Step a micro-batch on the calling thread; arguments as :func:`bank_step`."""
        row_last, heads, nxt = links[0], links[1], links[2]
        groups = group_by_row(rows, row_last, heads, nxt)
        # First group np.int64(0), not 0: Numba would compile _step_groups once more for
        # the literal 0 than for the parallel kernel's int64.
        _step_groups(
            params,
            layout,
            states,
            rows,
            samples,
            outs,
            status,
            scratch[0],
            heads,
            nxt,
            np.int64(0),
            groups,
            kind,
        )

    @njit(parallel=True, **JIT)
    def bank_step(params, layout, states, rows, samples, outs, status, scratch, links):
        """Step a micro-batch of ``M`` samples, rows in parallel, each row's samples in order.

        ``states``: ``(capacity, S)``; ``rows``: ``(M,)`` int64 state rows; ``samples``:
        ``(M, D)``; ``outs``: ``(M, O)``; ``status``: ``(M,)`` int8 codes (see
        :mod:`.layout`); ``scratch``: ``(threads, 4, scratch_size)``; ``links``: int64 work
        buffer ``(3, max(capacity, M))`` whose first row is all -1.
        """
        row_last, heads, nxt = links[0], links[1], links[2]
        groups = group_by_row(rows, row_last, heads, nxt)
        for chunk in prange((groups + SENSORS_PER_TASK - 1) // SENSORS_PER_TASK):
            first = chunk * SENSORS_PER_TASK
            _step_groups(
                params,
                layout,
                states,
                rows,
                samples,
                outs,
                status,
                scratch[get_thread_id()],
                heads,
                nxt,
                first,
                min(first + SENSORS_PER_TASK, groups),
                kind,
            )

    return bank_step_serial, bank_step


bank_step_serial, bank_step = bank_kernels(ANY_KIND)
