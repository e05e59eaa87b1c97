"""The GPU bank: many streams of one model with their state resident on the device."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from .._samples import as_sample, as_samples
from .._sensor_rows import SensorRows
from ..banks import BankState
from ..errors import ShapeError
from ..kernels import layout as L
from ..model import Model
from ..packing import CUDA, packed
from ..stream import join_state, split_state
from ._compat import require_cuda, simulator_enabled
from ._grouping import NO_GROUP, group_csr
from ._records import split_records
from .kernels import (
    BLOCK_SIZE,
    SIMULATOR_BLOCK_SIZE,
    buffer_layout,
    grid_1d,
    grid_2d,
    state_kernels,
    step_kernel,
)
from .launch import LAUNCH_PATHS, StepLauncher, step_launcher
from .tiles import SIMULATOR_TILE_THREADS, TILE_THREADS, tile_kernel

#: Step kernels a bank can use: ``tiled`` (a block per tile of streams, :mod:`.tiles`;
#: ``auto`` picks it whenever the model's tiles fit in shared memory) or ``per-stream``
#: (a thread per stream, :mod:`.kernels`).
KERNELS = ("auto", "tiled", "per-stream")


class CudaBank(SensorRows):
    """A :class:`~streamlstm.bank.Bank` whose state rows live on a CUDA GPU.

    Same API and semantics as the CPU bank: sensor ids get a row on first sight,
    :meth:`step` takes a micro-batch in arrival order (a sensor may appear several times;
    its samples run in that order), a NaN/Inf sample is skipped and counted, and a step
    whose result overflows leaves the state as it was. :meth:`export_state` returns the
    CPU bank's snapshot layout, so a snapshot moves between CPU and GPU banks.

    Per call the host uploads the samples and a row index and downloads predictions and
    status codes; weights are uploaded once and ``(h, c)`` never leaves the device. On
    the device the state is stored transposed, ``[S, capacity]``, for coalesced access.
    :meth:`run` is the block mode: ``T`` samples per sensor in one launch.

    ``kernel`` chooses the step kernel (:data:`KERNELS`). ``block_size`` (threads per
    block; default 256 tiled, 128 per-stream) and ``max_registers`` (per thread, default:
    the compiler's choice; per-stream kernel only) are launch tunables that
    ``bench_cuda.py`` measures. ``launch`` chooses the host launch path
    (:data:`~streamlstm.cuda.launch.LAUNCH_PATHS`; ``packed``, the default, skips most of
    numba-cuda's per-launch Python work and falls back to ``dispatcher`` where it is
    unsupported; :attr:`launch_path` says which is in use). Raises
    :class:`~streamlstm.errors.CudaUnavailableError` if no GPU (or simulator).
    """

    def __init__(
        self,
        model: Model,
        capacity: int = 1024,
        *,
        block_size: int | None = None,
        max_registers: int | None = None,
        kernel: str = "auto",
        launch: str = "packed",
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if block_size is not None and not 1 <= block_size <= 1024:
            raise ValueError("block_size must be in 1..1024")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if launch not in LAUNCH_PATHS:
            raise ValueError(f"launch must be one of {LAUNCH_PATHS}, got {launch!r}")
        if kernel == "tiled" and max_registers is not None:
            raise ValueError("max_registers applies to the per-stream kernel only")
        cuda = require_cuda()
        self._cuda = cuda
        self.model = model
        pk = packed(model, CUDA)
        self._params = pk.params
        self._dtype = model.dtype
        self._n_in, self._n_out = model.input_size, model.output_size
        self._n_state = pk.state_size
        tiled = None
        if kernel != "per-stream" and max_registers is None:
            tiled = tile_kernel(pk.layout, self._dtype, pk.params.size)
            if tiled is None and kernel == "tiled":
                raise ValueError(
                    f"{model.name}: the state of even the smallest tile of "
                    "streams exceeds shared memory; use kernel='per-stream'"
                )
        self._step = tiled or step_kernel(
            pk.layout, self._dtype, pk.params.size, max_registers=max_registers
        )
        #: The step kernel in use: ``"tiled"`` or ``"per-stream"``.
        self.kernel = "tiled" if tiled is not None else "per-stream"
        self._record = self._n_in + self._step.io_width  # I/O numbers per sample
        self._moves = state_kernels()
        self._stream = cuda.stream()
        self._simulated = simulator_enabled()
        if block_size is None:
            if tiled is not None:
                block_size = SIMULATOR_TILE_THREADS if self._simulated else TILE_THREADS
            else:
                block_size = SIMULATOR_BLOCK_SIZE if self._simulated else BLOCK_SIZE
        self._block = block_size
        super().__init__()
        self._rejected = np.zeros(capacity, np.int64)
        self._row_group = np.full(capacity, NO_GROUP, np.int64)
        self._group_scratch = np.zeros((2, 1), np.int64)
        self._launch_choice = launch
        #: The launch path in use: ``"packed"`` or ``"dispatcher"`` (known after a launch).
        self.launch_path = launch if not self._simulated else "dispatcher"
        # Launchers per grid size, bound to the current buffers (cleared when they change).
        self._launchers: dict[int, StepLauncher] = {}
        self._views: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._buffer: Any = None
        self._capacity = self._io_slots = self._io_base = 0
        # Host (pinned) and device buffers, allocated by _reserve_index/_allocate_buffer.
        self._index_host: Any = None
        self._index_dev: Any = None
        self._io_host: Any = None
        self._allocate_buffer(capacity, 64)
        self._reserve_index(129)
        self.last_status = np.zeros(0, np.int8)
        #: ``(groups, samples, steps)`` of the latest kernel launch, for benchmarks.
        self.last_launch = (0, 0, 0)

    # -- device buffers ---------------------------------------------------------------
    def _allocate_buffer(self, capacity: int, io_slots: int) -> None:
        """(Re)allocate the device float buffer for ``capacity`` rows and ``io_slots`` samples.

        The weights are uploaded again and the existing rows copied over on the device.
        """
        cuda, stream = self._cuda, self._stream
        base, io_base = buffer_layout(self._params.size, self._n_state, capacity)
        buffer = cuda.device_array(io_base + io_slots * self._record, self._dtype, stream=stream)
        if self._params.size:
            buffer[: self._params.size].copy_to_device(self._params, stream=stream)
        blocks, threads = grid_1d(io_base - base)
        self._moves.fill[blocks, threads, stream](buffer, base, io_base, 0)
        if self._buffer is not None and self._capacity:
            blocks2, threads2 = grid_2d(self._capacity, self._n_state)
            self._moves.copy_states[blocks2, threads2, stream](
                self._buffer,
                base,
                self._capacity,
                buffer,
                base,
                capacity,
                self._n_state,
                self._capacity,
            )
        self._buffer, self._capacity, self._io_slots, self._io_base = (
            buffer,
            capacity,
            io_slots,
            io_base,
        )
        if self._io_host is None or self._io_host.size < io_slots * self._record:
            self._io_host = cuda.pinned_array(io_slots * self._record, self._dtype)
        self._views.clear()
        self._launchers.clear()
        stream.synchronize()

    def _reserve_index(self, size: int) -> None:
        if self._index_host is None or self._index_host.size < size:
            size = max(size, 2 * (0 if self._index_host is None else self._index_host.size))
            self._index_host = self._cuda.pinned_array(size, np.int32)
            self._index_dev = self._cuda.device_array(size, np.int32, stream=self._stream)
            self._views.clear()
            self._launchers.clear()

    def _reserve(self, index_size: int, samples: int) -> None:
        """Grow (doubling) the index buffers and the I/O part of the float buffer."""
        self._reserve_index(index_size)
        if samples > self._io_slots:
            self._allocate_buffer(self._capacity, max(samples, 2 * self._io_slots))

    def _device_views(self, index_size: int, samples: int) -> tuple[Any, Any, Any]:
        """Device slices for one batch shape, cached: slicing a device array costs microseconds."""
        key = (index_size, samples)
        views = self._views.get(key)
        if views is None:
            if len(self._views) > 16:
                self._views.clear()
            n_x = samples * self._n_in
            at = self._io_base
            views = self._views[key] = (
                self._index_dev[:index_size],
                self._buffer[at : at + n_x],
                self._buffer[at + n_x : at + samples * self._record],
            )
        return views

    def _launcher(self, groups: int) -> StepLauncher:
        """``launch(capacity, groups, samples, steps)`` for ``groups`` streams on the bank's
        buffers, reused across calls of one grid size until the buffers are reallocated."""
        blocks = self._step.launch_shape(groups, self._block)
        if self._simulated:
            # The simulator's kernel[...] reconfigures and returns the kernel itself, so a
            # cached launcher would run with whatever configuration was set last.
            return self._new_launcher(blocks, "dispatcher")
        launcher = self._launchers.get(blocks)
        if launcher is None:
            if len(self._launchers) > 64:
                self._launchers.clear()
            launcher = self._launchers[blocks] = self._new_launcher(blocks, self._launch_choice)
        return launcher

    def _new_launcher(self, blocks: int, path: str) -> StepLauncher:
        launcher, self.launch_path = step_launcher(
            self._step.kernel,
            blocks,
            self._block,
            self._stream,
            self._buffer,
            self._index_dev,
            path,
        )
        return launcher

    def _launch(self, groups: int, samples: int, steps: int, index_size: int) -> np.ndarray:
        """Upload index and samples, run the kernel, return the ``(samples, O + 1)`` records."""
        stream = self._stream
        index_dev, x_dev, y_dev = self._device_views(index_size, samples)
        n_x = samples * self._n_in
        n_end = samples * self._record
        index_dev.copy_to_device(self._index_host[:index_size], stream=stream)
        x_dev.copy_to_device(self._io_host[:n_x], stream=stream)
        self.last_launch = (groups, samples, steps)
        self._launcher(groups)(self._capacity, groups, samples, steps)
        y_dev.copy_to_host(self._io_host[n_x:n_end], stream=stream)
        stream.synchronize()
        return self._io_host[n_x:n_end].reshape(samples, self._step.io_width)

    # -- sensors and rows -------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        self._allocate_buffer(capacity, self._io_slots)
        self._rejected = np.concatenate([self._rejected, np.zeros(capacity - old, np.int64)])
        self._row_group = np.concatenate(
            [self._row_group, np.full(capacity - old, NO_GROUP, np.int64)]
        )

    def _clear_row(self, row: int) -> None:
        self._zero_rows(np.asarray([row], np.int64))
        self._rejected[row] = 0

    # -- stepping ---------------------------------------------------------------------
    def step(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """Apply a micro-batch: ``samples[i]`` (``(D,)``) belongs to ``sensors[i]``.

        Returns ``(M, O)`` predictions in the order given (NaN rows for rejected samples).
        """
        return self.step_rows(self.rows(sensors), samples)

    def step_rows(self, rows: np.ndarray, samples: Any) -> np.ndarray:
        """:meth:`step` with state rows from :meth:`rows` instead of ids (skips the lookup)."""
        samples = as_samples(samples, self._dtype, self._n_in)
        rows = self._checked_rows(rows, samples.shape[0])
        m = samples.shape[0]
        if m == 0:
            self.last_status = np.zeros(0, np.int8)
            return np.empty((0, self._n_out), self._dtype)
        self._reserve(2 * m + 1, m)
        if self._group_scratch.shape[1] < m + 1:
            self._group_scratch = np.zeros((2, 2 * m + 1), np.int64)
        groups = group_csr(rows, self._row_group, self._index_host, self._group_scratch)
        self._io_host[: m * self._n_in] = samples.ravel()
        if groups == m:  # every sensor once: a one-step block, no offsets or order to send
            records = self._launch(groups, m, 1, m)
        else:
            records = self._launch(groups, m, 0, 2 * groups + 1 + m)
        return self._finish(records, rows)

    def run(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """Block mode: ``T`` samples for each of ``N`` distinct sensors in one launch.

        ``samples``: ``(N, T, D)``, each sensor's samples in time order. Returns ``(N, T, O)``
        predictions; :attr:`last_status` is ``(N, T)``. Equivalent to ``T`` calls of
        :meth:`step`, but the state stays in registers between a sensor's samples.
        """
        try:
            values = np.asarray(samples, dtype=self._dtype)
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"samples: cannot convert to {self._dtype} ({exc})") from None
        if values.ndim != 3 or values.shape[0] != len(sensors) or values.shape[2] != self._n_in:
            raise ShapeError(
                f"samples: expected shape ({len(sensors)}, T, {self._n_in}), got {values.shape}"
            )
        rows = self.distinct_rows(sensors)
        n, steps = values.shape[0], values.shape[1]
        if n == 0 or steps == 0:
            self.last_status = np.zeros((n, steps), np.int8)
            return np.empty((n, steps, self._n_out), self._dtype)
        m = n * steps
        self._reserve(n, m)
        self._index_host[:n] = rows
        # Time-major on the device: thread g reads sample (t, g), neighbours adjacent.
        self._io_host[: m * self._n_in].reshape(steps, n, self._n_in)[:] = values.transpose(1, 0, 2)
        records = self._launch(n, m, steps, n)
        by_time = records.reshape(steps, n, self._step.io_width).transpose(1, 0, 2)
        outs = np.ascontiguousarray(by_time[:, :, : self._n_out])
        status = by_time[:, :, self._n_out].astype(np.int8)
        bad = status != L.OK
        if bad.any():
            np.add.at(self._rejected, np.broadcast_to(rows[:, None], status.shape)[bad], 1)
        self.last_status = status
        return outs

    def _checked_rows(self, rows: np.ndarray, count: int) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.shape != (count,):
            raise ShapeError(f"rows: expected shape ({count},), got {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.capacity):
            raise ShapeError("rows: out of range for this bank")
        return rows

    def _finish(self, records: np.ndarray, rows: np.ndarray) -> np.ndarray:
        outs = np.empty((records.shape[0], self._n_out), self._dtype)
        status = np.empty(records.shape[0], np.int8)
        if split_records(records, outs, status):
            np.add.at(self._rejected, rows[status != L.OK], 1)
        self.last_status = status
        return outs

    def synchronize(self) -> None:
        """Wait for the bank's device work (every public method already does)."""
        self._stream.synchronize()

    @property
    def stream(self) -> Any:
        """The CUDA stream all of the bank's transfers and launches are queued on (record
        CUDA events on it to time them)."""
        return self._stream

    def repeat_launch(self) -> Callable[[], None]:
        """A call that launches the step kernel again as the latest :meth:`step` or
        :meth:`run` did (:attr:`last_launch`: the same rows and samples, already on the
        device), with no transfer and no wait: for timing the kernel alone. Each call
        steps those rows' state once more; valid until the bank grows."""
        groups, samples, steps = self.last_launch
        launch, capacity = self._launcher(groups), self._capacity
        return lambda: launch(capacity, groups, samples, steps)

    # -- state access -----------------------------------------------------------------
    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((rows.size, self._n_state), self._dtype)
        if rows.size == 0 or self._n_state == 0:
            return out
        cuda = self._cuda
        rows_dev = cuda.to_device(rows, stream=self._stream)
        out_dev = cuda.device_array(out.shape, self._dtype, stream=self._stream)
        blocks, threads = grid_2d(rows.size, self._n_state)
        self._moves.gather[blocks, threads, self._stream](
            self._buffer, self._step.state_base, self._capacity, rows_dev, out_dev
        )
        out_dev.copy_to_host(out, stream=self._stream)
        self._stream.synchronize()
        return out

    def _scatter(self, rows: np.ndarray, values: np.ndarray) -> None:
        if rows.size == 0 or self._n_state == 0:
            return
        cuda = self._cuda
        rows_dev = cuda.to_device(rows, stream=self._stream)
        values_dev = cuda.to_device(np.ascontiguousarray(values), stream=self._stream)
        blocks, threads = grid_2d(rows.size, self._n_state)
        self._moves.scatter[blocks, threads, self._stream](
            self._buffer, self._step.state_base, self._capacity, rows_dev, values_dev
        )
        self._stream.synchronize()

    def _zero_rows(self, rows: np.ndarray) -> None:
        rows_dev = self._cuda.to_device(rows, stream=self._stream)
        blocks, threads = grid_2d(rows.size, self._n_state)
        self._moves.zero_rows[blocks, threads, self._stream](
            self._buffer, self._step.state_base, self._capacity, self._n_state, rows_dev
        )
        self._stream.synchronize()

    def rejected(self, sensor: Hashable) -> int:
        """How many samples of ``sensor`` were rejected (NaN/Inf or overflow)."""
        return int(self._rejected[self._rows[sensor]])

    def state(self, sensor: Hashable) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Per-layer copies of ``(h, c)`` for ``sensor`` (see :attr:`Stream.state`)."""
        return split_state(self.model, self.state_vector(sensor))

    def set_state(self, sensor: Hashable, h: Any, c: Any) -> None:
        """Overwrite ``sensor``'s state (allocating its row if new)."""
        vector = join_state(self.model, h, c)
        self._scatter(np.asarray([self.row(sensor)], np.int64), vector[None, :])

    def reset(self, sensor: Hashable | None = None) -> None:
        """Zero one sensor's state, or every sensor's."""
        if sensor is None:
            base = self._step.state_base
            blocks, threads = grid_1d(self._io_base - base)
            self._moves.fill[blocks, threads, self._stream](self._buffer, base, self._io_base, 0)
            self._stream.synchronize()
        else:
            self._zero_rows(np.asarray([self._rows[sensor]], np.int64))

    def export_state(self) -> BankState:
        """A copy of every sensor's state, as :meth:`Bank.export_state
        <streamlstm.bank.Bank.export_state>` gives it (so either bank restores the other's)."""
        sensors = list(self._rows)
        rows = np.asarray([self._rows[s] for s in sensors], np.int64)
        return BankState(sensors, self._gather(rows))

    def import_state(self, state: BankState) -> None:
        """Restore sensors from any bank's :meth:`export_state` output (other sensors are
        kept); the state rows are checked (width, finite values) before any is written."""
        states = state.checked_states(self._dtype, self._n_state)
        self._scatter(self.rows(state.sensors), states)

    def state_vector(self, sensor: Hashable) -> np.ndarray:
        """A copy of ``sensor``'s flat ``(S,)`` state row."""
        return self._gather(np.asarray([self._rows[sensor]], np.int64))[0]

    def set_state_vector(self, sensor: Hashable, vector: Any) -> None:
        """Overwrite ``sensor``'s flat state row."""
        vector = as_sample(vector, self._dtype, self._n_state)
        if not np.all(np.isfinite(vector)):
            raise ShapeError("state: non-finite values")
        self._scatter(np.asarray([self.row(sensor)], np.int64), vector[None, :])
