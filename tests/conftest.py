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

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Tests are grouped by layer (engine, formats, windows, detect, cuda, cli, daemon); the
# helpers they share (reference networks, ONNX graphs, window streams, the daemon's brokers
# and processes) live here and in daemon/, importable from every folder.
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS / "daemon")]


def pytest_collection_modifyitems(config, items):
    """Mark tests by what they need, so ``-m "not mqtt"`` and the like select by layer.

    ``mqtt``: a real mosquitto (the ``broker`` fixture, or a module that starts its own
    ``Broker``); ``cuda``: the tests in ``cuda/`` and the conformance cases on the CUDA
    simulator. ``slow`` is set by hand on tests of 10 s or more on a warm cache.
    Marks only select: a test whose broker is missing still fails (see
    ``tests/daemon/mqtt_helpers.require_tool``).
    """
    import pytest

    for item in items:
        module = getattr(item, "module", None)
        if "broker" in getattr(item, "fixturenames", ()) or hasattr(module, "Broker"):
            item.add_marker(pytest.mark.mqtt)
        if Path(str(item.fspath)).parent.name == "cuda" or "cuda-sim" in item.nodeid:
            item.add_marker(pytest.mark.cuda)
