"""Run one compiled kernel on several shares of a batch at once, on plain Python threads.

The kernels release the GIL (``nogil``), so the calling thread and a small shared pool run
a batch's shares on as many cores, each share with the serial kernel already compiled.
The window evaluator runs this way instead of as a Numba ``parallel=True`` kernel, which
compiled a second copy of the whole evaluator (Numba links and re-optimises every callee
into it): 15 to 21 s per model kind and dtype on a cold first run.

Handing a share to another thread costs tens of microseconds (two thread wake-ups; Numba's
OpenMP pool spins instead, about 2 µs), so this suits coarse shares such as windows; the
bank's and the detector's per-sample kernels keep Numba's pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool, grown to at least ``workers`` threads."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="streamlstm-kernel")
            _pool_workers = workers
        return _pool


def share_bounds(count: int, shares: int, align: int, smallest: int) -> list[int]:
    """Split ``0..count`` into at most ``shares`` contiguous ranges of near-equal size.

    Each range holds at least ``smallest`` items (except when ``count`` is smaller) and
    starts at a multiple of ``align``. Returns the bounds: range ``k`` is
    ``bounds[k]..bounds[k + 1]``.
    """
    shares = max(1, min(shares, count // max(smallest, 1)))
    bounds = [0]
    for k in range(1, shares):
        cut = (count * k // shares) // align * align
        if cut > bounds[-1]:
            bounds.append(cut)
    bounds.append(count)
    return bounds


def run_shares(kernel: Callable[..., Any], shares: Sequence[tuple[Any, ...]]) -> None:
    """Call ``kernel(*share)`` for every share at once: the first on the calling thread,
    the others on the pool. Returns when all are done (even when one raised, so no thread
    is left writing into the batch), then re-raises the first error."""
    if len(shares) == 1:
        kernel(*shares[0])
        return
    pool = _executor(len(shares) - 1)
    pending: list[Future[Any]] = [pool.submit(kernel, *share) for share in shares[1:]]
    try:
        kernel(*shares[0])
    finally:
        errors = [future.exception() for future in pending]
    for error in errors:
        if error is not None:
            raise error
