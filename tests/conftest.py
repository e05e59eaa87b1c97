"""Test-session setup shared by every test module.

The CUDA tests run on numba-cuda's simulator unless asked otherwise. numba-cuda reads
``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported, and nothing imports
it before this file runs (streamlstm loads it lazily), so setting it here is enough and
touches nothing else: the CPU ``@njit`` kernels do not read it. On a GPU machine run
``NUMBA_ENABLE_CUDASIM=0 pytest tests/cuda/test_cuda_bank.py`` to test the real device.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Tests are grouped by layer (engine, formats, windows, detect, cuda, cli, daemon); the
# helpers they share (reference networks, ONNX graphs, window streams, the daemon's brokers
# and processes) live here and in daemon/, importable from every folder.
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS / "daemon")]


def pytest_configure(config):
    """Under pytest-xdist, a kernel two workers need at once is compiled by one of them
    (see ``compile_once``). On the CUDA simulator, a block's threads share one shared
    array (see ``cudasim_shared``)."""
    if hasattr(config, "workerinput"):  # an xdist worker
        import compile_once

        compile_once.install()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        import cudasim_shared

        cudasim_shared.install()


def pytest_collection_modifyitems(config, items):
    """Mark tests by what they need, so ``-m "not mqtt"`` and the like select by layer.

    ``mqtt``: a real mosquitto (the ``broker`` fixture, or a module that starts its own
    ``Broker``); ``cuda``: the tests in ``cuda/`` and the cases elsewhere that run on the
    CUDA simulator (``cuda-sim``, ``[cuda]``). ``slow`` is set by hand on tests of 10 s or
    more on a warm cache. Marks only select: a test whose broker is missing still fails (see
    ``tests/daemon/mqtt_helpers.require_tool``).
    """
    for item in items:
        module = getattr(item, "module", None)
        if "broker" in getattr(item, "fixturenames", ()) or hasattr(module, "Broker"):
            item.add_marker(pytest.mark.mqtt)
        on_the_simulator = "cuda-sim" in item.nodeid or item.nodeid.endswith("[cuda]")
        if Path(str(item.fspath)).parent.name == "cuda" or on_the_simulator:
            item.add_marker(pytest.mark.cuda)


#: GIL switch interval for the CUDA tests on the simulator (Python's default is 5 ms).
SIMULATOR_SWITCH_INTERVAL_S = 1e-5


@pytest.fixture(autouse=True)
def _short_gil_slices_on_the_cuda_simulator(request):
    """Let the simulator's threads take the GIL often.

    The simulator runs each CUDA thread as a Python thread, while the launching thread
    polls them in a loop that never waits. At the default 5 ms switch interval, each
    hand-over of the GIL to a CUDA thread can cost the poller a full slice. In a process
    that had compiled kernels cold, as the suite's does, one step of
    ``test_benchmark_model_with_weights_in_global_memory`` took 51 s at 5 ms and 8.4 s at
    0.1 ms; in CI the test took 5.5 min. With a warm cache, ``tests/cuda/test_cuda_bank.py``
    took 105 s at 0.1 ms and 93 s at 0.01 ms (two of its tests: 36.7 s at 0.1 ms, 26.1 s
    at 0.01 ms, 29.4 s at 0.002 ms). Results do not depend on the interval, once the
    simulator's shared arrays are made atomic (``cudasim_shared``): shorter slices made
    its race show more often.
    """
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not simulated or request.node.get_closest_marker("cuda") is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
