"""The CUDA bank: many streams stepped on a GPU with numba.cuda (extra ``streamlstm[cuda]``).

Importing this package never needs CUDA; :class:`CudaBank` (and
:class:`CudaWindowBank`, window models) loads numba-cuda (with the
numpy compatibility shim of :mod:`._compat`) when first used, and raises
:class:`~streamlstm.errors.CudaUnavailableError` without a GPU. Set
``NUMBA_ENABLE_CUDASIM=1`` before the first import to run it on the CUDA simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._compat import import_cuda, is_available, simulator_enabled

if TYPE_CHECKING:
    from .bank import CudaBank
    from .window_bank import CudaWindowBank

#: ``device="auto"`` picks the GPU for banks of at least this many streams. Measured
#: (``benchmarks/bench_cuda.py``, H200, H=64, one step from Python, transfers included):
#: the GPU's step costs 0.46-0.56 ms up to 4,096 streams (numba-cuda's launch and the
#: transfers), so the CPU bank wins below that (0.46 ms at 4,096 on a 16-core host); at
#: 16,384 the GPU takes 0.77 ms against 1.71 ms. The crossover lies between; a host with
#: fewer cores than that one crosses over earlier.
AUTO_MIN_STREAMS = 8192

DEVICES = ("cpu", "cuda", "auto")


def choose_device(capacity: int) -> str:
    """``"cuda"`` when a real GPU is present and ``capacity >= AUTO_MIN_STREAMS``, else ``"cpu"``.

    The simulator never counts as a GPU here: it is for tests, not for speed.
    """
    if capacity >= AUTO_MIN_STREAMS and not simulator_enabled() and is_available():
        return "cuda"
    return "cpu"


def __getattr__(name: str) -> Any:
    if name == "CudaBank":
        from .bank import CudaBank

        return CudaBank
    if name == "CudaWindowBank":
        from .window_bank import CudaWindowBank

        return CudaWindowBank
    raise AttributeError(name)


__all__ = [
    "AUTO_MIN_STREAMS",
    "DEVICES",
    "CudaBank",
    "CudaWindowBank",
    "choose_device",
    "import_cuda",
    "is_available",
]
