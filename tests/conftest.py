"""Test-session setup shared by every test module.

The CUDA tests run on numba-cuda's simulator unless asked otherwise. numba-cuda reads
``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported, and nothing imports
it before this file runs (streamlstm loads it lazily), so setting it here is enough and
touches nothing else: the CPU ``@njit`` kernels do not read it. On a GPU machine run
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_cuda_bank.py`` to test the real device.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
