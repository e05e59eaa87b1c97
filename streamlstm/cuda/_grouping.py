"""Host-side grouping of a micro-batch by state row, into the CSR index the GPU kernel reads.

Runs on the CPU (``@njit``) because the host already holds the rows and must upload an
index anyway; one O(M) pass, no sort, no allocation (the buffers are the bank's).
"""

from __future__ import annotations

import numpy as np
from numba import njit

NO_GROUP = -1


@njit(cache=True, nogil=True)
def group_csr(
    rows: np.ndarray, row_group: np.ndarray, index: np.ndarray, scratch: np.ndarray
) -> int:
    """Write the CSR grouping of ``rows`` into ``index``; return the number of groups ``G``.

    ``rows``: ``(M,)`` int64 state rows in arrival order; ``row_group``: ``(capacity,)``
    int64, all -1 on entry and on return; ``index``: int32, at least ``2M + 1`` long;
    ``scratch``: int64 ``(2, M + 1)``. On return ``index`` holds ``[group_rows (G) |
    offsets (G + 1) | order (M)]``: group ``g`` is row ``group_rows[g]``, its samples are
    ``order[offsets[g]:offsets[g + 1]]`` in arrival order. Groups follow first sight.

    When every row is distinct (``G == M``, the usual one-sample-per-sensor tick) only
    ``group_rows`` is written: the batch is then a block of one step, and the kernel
    needs neither offsets nor order.
    """
    m = rows.shape[0]
    group_of, counts = scratch[0], scratch[1]
    groups = 0
    for i in range(m):
        row = rows[i]
        g = row_group[row]
        if g == NO_GROUP:
            g = groups
            row_group[row] = g
            index[g] = row
            counts[g] = 0
            groups += 1
        counts[g] += 1
        group_of[i] = g
    if groups == m:
        for g in range(groups):
            row_group[index[g]] = NO_GROUP
        return groups
    offsets = groups
    order = 2 * groups + 1
    total = 0
    for g in range(groups):
        index[offsets + g] = total
        total += counts[g]
        counts[g] = index[offsets + g]  # becomes the fill cursor of group g
    index[offsets + groups] = total
    for i in range(m):
        g = group_of[i]
        index[order + counts[g]] = i
        counts[g] += 1
    for g in range(groups):
        row_group[index[g]] = NO_GROUP
    return groups
