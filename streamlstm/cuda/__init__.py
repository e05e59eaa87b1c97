"""The CUDA bank: many streams stepped on a GPU with numba.cuda (extra ``streamlstm[cuda]``).

Importing this package never needs CUDA; :class:`CudaBank` loads numba-cuda (with the
numpy compatibility shim of :mod:`._compat`) when first used, and raises
:class:`~streamlstm.errors.CudaUnavailableError` without a GPU. Set
``NUMBA_ENABLE_CUDASIM=1`` before the first import to run it on the CUDA simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._compat import is_available, simulator_enabled

if TYPE_CHECKING:
    from .bank import CudaBank

#: ``device="auto"`` picks the GPU for banks of at least this many streams. An estimate
#: until measured (``python benchmarks/bench_cuda.py`` prints the crossover): a GPU step
#: costs a fixed ~40-60 us of launch and transfers, the CPU bank 0.33 us per H=64
#: stream-step on one core and 0.18 on two (bench_core), so the GPU should win from
#: 150-300 streams up; 512 leaves a margin for the estimate.
AUTO_MIN_STREAMS = 512

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
    raise AttributeError(name)


__all__ = ["AUTO_MIN_STREAMS", "DEVICES", "CudaBank", "choose_device", "is_available"]
