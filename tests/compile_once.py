"""One compile of a kernel across the suite's worker processes.

pytest-xdist workers share Numba's on-disk cache but not their compiles: two workers that
need the same kernel at the same time both compile it (the tiled step, 10-20 s, was
compiled 9 times for its 6 kinds and dtypes in one cold run). :func:`install` wraps
``Dispatcher.compile`` in a file lock per function and signature, so the second worker
waits for the first and then finds the kernel in the cache, as any later run would; its
core goes to the other workers meanwhile. The compiled code is the same either way.

Locks nest along the call graph (a kernel's compile takes its callees' locks), which has
no cycles, so they cannot deadlock across processes; within one, Numba's compiler lock is
taken first. A worker that dies holding a lock releases it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _lock_dir() -> Path:
    """One folder per user and cache location: runs of other checkouts do not wait on it."""
    from numba import config

    where = config.CACHE_DIR or str(Path(__file__).resolve().parents[1])
    digest = hashlib.sha1(where.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"streamlstm-compile-locks-{os.getuid()}-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def install() -> None:
    """Wrap ``numba.core.dispatcher.Dispatcher.compile`` for this process (idempotent)."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.dispatcher import Dispatcher

    compile_ = Dispatcher.compile
    if getattr(compile_, "compiles_once", False):
        return
    locks = _lock_dir()
    held: set[str] = set()  # keys this process holds (one thread compiles at a time)

    @functools.wraps(compile_)
    def compile_once(self: Any, sig: Any) -> Callable[..., Any]:
        func = self.py_func
        name = f"{func.__module__}.{func.__qualname__}:{sig}"
        key = hashlib.sha1(name.encode()).hexdigest()
        # Numba's own lock first: threads of one process never hold a file lock while
        # waiting for it, and a recursive compile of the same key does not wait on itself.
        with global_compiler_lock:
            if key in held:
                return compile_(self, sig)
            with open(locks / key, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                held.add(key)
                try:
                    return compile_(self, sig)
                finally:
                    held.discard(key)

    compile_once.compiles_once = True  # type: ignore[attr-defined]
    Dispatcher.compile = compile_once  # type: ignore[method-assign]
