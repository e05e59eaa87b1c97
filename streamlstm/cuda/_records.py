"""Host-side unpacking of the output records a step kernel writes (``O`` outputs + status).

One compiled pass instead of a strided numpy copy plus a cast: at a million streams the
numpy version cost several times the kernel itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.layout import OK


@njit(cache=True, nogil=True)
def split_records(records: np.ndarray, outs: np.ndarray, status: np.ndarray) -> int:
    """Copy ``records[:, :O]`` into ``outs`` and the status column into ``status`` (int8).

    ``records``: ``(M, O + 1)``; ``outs``: ``(M, O)``; ``status``: ``(M,)``. Returns how
    many records are not :data:`~streamlstm.kernels.layout.OK`.
    """
    m, n_out = outs.shape
    bad = 0
    for i in range(m):
        for j in range(n_out):
            outs[i, j] = records[i, j]
        code = np.int8(records[i, n_out])
        status[i] = code
        if code != OK:
            bad += 1
    return bad
