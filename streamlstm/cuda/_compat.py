"""Import ``numba.cuda`` safely: the numpy 2.x shim, and no failure without CUDA.

numba-cuda 0.30.4 registers an overload for ``np.row_stack`` when its array typing loads
(``numba/cuda/np/arrayobj.py``). NumPy deprecated ``row_stack`` in 2.0 as an alias of
``vstack`` and later releases drop it (reported failing with numpy 2.5.2 on an H100
machine: ``AttributeError: module 'numpy' has no attribute 'row_stack'``). Before
numba-cuda loads we restore the alias, and only when it is missing, so numpy versions
that still have it are left exactly as they are. Verified here with numba 0.68.1,
numba-cuda 0.30.4, numpy 2.4.6 (``row_stack`` present: shim inactive) and with the
attribute removed to mimic numpy >= 2.5 (shim active, kernels compile to PTX).
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from ..errors import CudaUnavailableError


def apply_numpy_shim() -> bool:
    """Alias ``np.row_stack`` to ``np.vstack`` if numpy lacks it; return whether it did."""
    if hasattr(np, "row_stack"):
        return False
    np.row_stack = np.vstack  # type: ignore[attr-defined]
    return True


def simulator_enabled() -> bool:
    """Whether ``NUMBA_ENABLE_CUDASIM`` asks for the CUDA simulator (read before import)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def import_cuda() -> ModuleType:
    """``numba.cuda`` with the shim applied, or :class:`CudaUnavailableError` if not installed."""
    apply_numpy_shim()
    try:
        from numba import cuda
    except ImportError as exc:
        raise CudaUnavailableError(
            f"numba-cuda is not installed ({exc}); "
            "install the extra: pip install 'streamlstm[cuda]'"
        ) from None
    return cuda


def is_available() -> bool:
    """True when a CUDA GPU (or the simulator) can run the CUDA bank; never raises."""
    try:
        cuda = import_cuda()
        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit means "not available", not a crash
        return False


def require_cuda() -> ModuleType:
    """``numba.cuda`` if a GPU or the simulator is usable, else :class:`CudaUnavailableError`."""
    cuda = import_cuda()
    try:
        available = cuda.is_available()
    except Exception as exc:
        raise CudaUnavailableError(f"CUDA driver error: {exc}") from None
    if not available:
        raise CudaUnavailableError(
            "no CUDA GPU is available (numba.cuda.is_available() is False); use "
            "device='cpu', or set NUMBA_ENABLE_CUDASIM=1 before import to use the simulator"
        )
    return cuda
