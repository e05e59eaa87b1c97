"""The CUDA simulator's shared arrays, made atomic by ``tests/cudasim_shared.py``."""

import os
import threading

import numpy as np
import pytest
from numba.cuda.simulator import kernelapi

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="the simulator's own behaviour"
)


def _one_block(threads: int) -> list[np.ndarray]:
    """What each of a block's ``threads`` gets from one ``cuda.shared.array`` call site."""
    shared = kernelapi.FakeCUDAShared(0)
    start = threading.Barrier(threads)
    got: list[np.ndarray] = []

    def thread() -> None:
        start.wait(timeout=10)
        got.append(shared.array(8, np.float32))

    workers = [threading.Thread(target=thread) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    return got


def test_a_blocks_threads_asking_at_once_get_one_shared_array():
    # Without the fix, 2 blocks of 40 of 128 threads got several arrays (measured).
    for _ in range(40):  # bounded: 40 blocks of 128 threads
        got = _one_block(128)
        assert len(got) == 128 and len({id(a) for a in got}) == 1
    # Two call sites are two arrays, as in the simulator.
    shared = kernelapi.FakeCUDAShared(0)
    first = shared.array(4, np.float32)
    second = shared.array(4, np.float32)
    assert first is not second
