"""Test-session setup shared by every test module.

The CUDA tests run on numba-cuda's simulator unless asked otherwise. numba-cuda reads
``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported, and nothing imports
it before this file runs (streamlstm loads it lazily), so setting it here is enough and
touches nothing else: the CPU ``@njit`` kernels do not read it. On a GPU machine run
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_cuda_bank.py`` to test the real device.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_collection_modifyitems(config, items):
    """Mark tests by what they need, so ``-m "not mqtt"`` and the like select by layer.

    ``mqtt``: a real mosquitto (the ``broker`` fixture, or a module that starts its own
    ``Broker``); ``cuda``: the CUDA bank (simulator or GPU). Marks only select: a test
    whose broker is missing still fails (see ``tests/daemon/mqtt_helpers.require_tool``).
    """
    import pytest

    for item in items:
        module = getattr(item, "module", None)
        if "broker" in getattr(item, "fixturenames", ()) or hasattr(module, "Broker"):
            item.add_marker(pytest.mark.mqtt)
        if module is not None and module.__name__.rpartition(".")[2].startswith("test_cuda"):
            item.add_marker(pytest.mark.cuda)
