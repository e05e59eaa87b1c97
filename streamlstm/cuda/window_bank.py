"""Window models on the GPU: the :class:`~streamlstm.windows.WindowBank` with its windows
evaluated by the CUDA window kernel (:mod:`.window_tiles`).

The per-sensor rings stay on the host, where the micro-batch arrives: compiled host code
pushes the samples and copies out the completed windows exactly as the CPU bank does,
then every window one push completed is uploaded and evaluated in one kernel launch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model import Model
from ..window_spec import WindowSpec
from ..windows.bank import WindowBank
from ._compat import require_cuda, simulator_enabled
from .tiles import SIMULATOR_TILE_THREADS, TILE_THREADS
from .window_tiles import window_kernel


class CudaWindowBank(WindowBank):
    """A :class:`~streamlstm.windows.WindowBank` whose windows run on a CUDA GPU.

    Same API, semantics and results (within float rounding) as the CPU window bank:
    per-sensor rings of the last ``W`` samples, every ``K`` samples a window evaluated
    from the zero state, windows holding a rejected sample skipped and counted. The
    windows a :meth:`push` completes are evaluated in one launch (several only when they
    overflow the bank's window buffers, as on the CPU); weights are uploaded once.

    ``block_size``: threads per block (default 256; 16 on the simulator). Raises
    :class:`~streamlstm.errors.CudaUnavailableError` without a GPU (or the simulator),
    and :class:`~streamlstm.errors.ShapeError` for a model too large for the kernel's
    shared-memory tiles.
    """

    def __init__(
        self,
        model: Model,
        capacity: int = 1024,
        *,
        spec: WindowSpec | None = None,
        block_size: int | None = None,
    ) -> None:
        if block_size is not None and not 1 <= block_size <= 1024:
            raise ValueError("block_size must be in 1..1024")
        cuda = require_cuda()
        super().__init__(model, capacity, spec=spec, threads=1)
        self._cuda = cuda
        self._kernel = window_kernel(model, self.spec)
        self._device_stream = cuda.stream()
        self._weights = cuda.to_device(self._kernel.weights, stream=self._device_stream)
        self._simulated = simulator_enabled()
        if block_size is None:
            block_size = SIMULATOR_TILE_THREADS if self._simulated else TILE_THREADS
        self._block = block_size
        self._device_room = 0
        self._device: tuple[Any, Any, Any, Any] | None = None
        self._status_host = np.zeros(0, np.int32)
        #: Kernel launches so far, and the windows of the latest one (for tests, benchmarks).
        self.launches = 0
        self.last_launch = 0

    def _reserve_device(self, count: int) -> tuple[Any, Any, Any, Any]:
        """Device buffers ``(windows, seqs, outs, status)`` for ``count`` windows (rounded up
        to whole tiles; doubled when grown)."""
        if self._device is not None and count <= self._device_room:
            return self._device
        k, cuda, stream = self._kernel, self._cuda, self._device_stream
        room = max(count, 2 * self._device_room)
        room = -(-room // k.streams) * k.streams
        steps, n_in, n_out = self.spec.length, self.model.input_size, self.model.output_size
        self._device = (
            cuda.device_array(room * steps * n_in, self._dtype, stream=stream),
            cuda.device_array(k.seq_size(room, steps), self._dtype, stream=stream),
            cuda.device_array(room * k.rows * n_out, self._dtype, stream=stream),
            cuda.device_array(room, np.int32, stream=stream),
        )
        self._status_host = np.zeros(room, np.int32)
        self._device_room = room
        return self._device

    def _evaluate_batch(self, windows: np.ndarray, outs: np.ndarray, status: np.ndarray) -> None:
        """Upload ``windows``, evaluate them in one launch, download ``outs`` and ``status``."""
        count = windows.shape[0]
        if count == 0:
            return
        windows_dev, seqs_dev, outs_dev, status_dev = self._reserve_device(count)
        stream, k = self._device_stream, self._kernel
        n_x, n_y = windows.size, outs.size
        windows_dev[:n_x].copy_to_device(windows.reshape(-1), stream=stream)
        launch = k.kernel[k.launch_shape(count), self._block, stream]
        launch(self._weights, windows_dev, seqs_dev, outs_dev, status_dev, count, self._device_room)
        outs_dev[:n_y].copy_to_host(outs.reshape(-1), stream=stream)
        status_dev[:count].copy_to_host(self._status_host[:count], stream=stream)
        stream.synchronize()
        status[:] = self._status_host[:count]
        self.launches += 1
        self.last_launch = count
