"""One shared array per block on numba-cuda's CUDA simulator, whichever thread asks first.

The simulator runs a block's CUDA threads as Python threads, and its
``cuda.shared.array`` looks an allocation up by call site and creates it when absent, a
check-then-set that two threads can both pass: each then fills its own array, and the
slots the other threads load stay ``np.empty`` garbage. The step kernels stage their
weights in shared memory this way, so, at the short GIL slices the CUDA tests run at, a
launch now and then read garbage weights (seen: outputs of 4.7e16 in
``test_state_round_trip[keras/lstm-cuda-sim]``, about one run in three of the
conformance cases on the simulator). A real GPU has one shared array per block.
:func:`install` makes the look-up atomic; nothing else of the simulator changes.
"""

from __future__ import annotations

import sys
import threading
import traceback

import numpy as np
from numba.core import types
from numba.np import numpy_support

_LOCK = threading.Lock()


def install() -> None:
    """Replace the simulator's ``FakeCUDAShared.array`` with an atomic get-or-create."""
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or refused
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        # The allocation is named by its call site, as the simulator names it.
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1])[0:2]
        with _LOCK:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array
