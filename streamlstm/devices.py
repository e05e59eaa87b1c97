"""Device choice: which bank holds a model's streams, on ``"cpu"``, ``"cuda"`` or ``"auto"``.

:meth:`Model.bank <streamlstm.model.Model.bank>` and :meth:`Model.windows
<streamlstm.model.Model.windows>` hand their ``device`` argument here, so the model module
knows nothing of the banks or the GPU. The bank modules are imported when a bank is made
(the GPU ones only for ``"cuda"``, or for ``"auto"`` when the GPU is chosen): importing
this module needs neither numba.cuda nor a GPU. Which device ``"auto"`` picks is
:func:`streamlstm.cuda.choose_device`'s decision (measured crossover, real GPUs only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cuda import DEVICES, choose_device

if TYPE_CHECKING:
    from .bank import Bank
    from .cuda.bank import CudaBank
    from .cuda.window_bank import CudaWindowBank
    from .model import Model
    from .window_spec import WindowSpec
    from .windows import WindowBank

#: Devices a window bank runs on (no ``"auto"``: window models have no measured crossover).
WINDOW_DEVICES = ("cpu", "cuda")


def make_bank(model: Model, capacity: int, *, threads: int | None, device: str) -> Bank | CudaBank:
    """The bank :meth:`Model.bank <streamlstm.model.Model.bank>` returns for ``device``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = choose_device(capacity)
    if device == "cuda":
        from .cuda.bank import CudaBank

        return CudaBank(model, capacity=capacity)
    from .bank import Bank

    return Bank(model, capacity=capacity, threads=threads)


def make_window_bank(
    model: Model, capacity: int, *, spec: WindowSpec | None, threads: int | None, device: str
) -> WindowBank | CudaWindowBank:
    """The window bank :meth:`Model.windows <streamlstm.model.Model.windows>` returns."""
    if device not in WINDOW_DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if threads is not None:
            raise ValueError("threads applies to device='cpu' only")
        from .cuda.window_bank import CudaWindowBank

        return CudaWindowBank(model, capacity=capacity, spec=spec)
    from .windows import WindowBank

    return WindowBank(model, capacity=capacity, spec=spec, threads=threads)
