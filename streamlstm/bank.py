"""Many streams of one model: sensor id -> state row, stepped a micro-batch at a time."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from . import kernels
from ._samples import as_sample, as_samples
from ._sensor_rows import SensorRows
from .banks import BankState
from .errors import ShapeError
from .kernels import layout as L
from .model import Model
from .packing import packed
from .row_table import RowTable
from .stream import join_state, split_state


class BankKernelArgs(NamedTuple):
    """The arrays :func:`streamlstm.kernels.bank_step` takes besides the micro-batch
    (``rows``, ``samples``, ``outs``, ``status``), for use from your own ``@njit`` code."""

    params: np.ndarray
    layout: np.ndarray
    states: np.ndarray
    scratch: np.ndarray
    links: np.ndarray


#: Below this many samples a micro-batch is stepped on the calling thread: waking the
#: thread pool costs about a microsecond, more than a handful of steps.
PARALLEL_THRESHOLD = 64


def runs_in_parallel(threads: int, rows: np.ndarray, sensors_per_task: int = 1) -> bool:
    """Whether a micro-batch of sensor ``rows`` takes the parallel kernel: more than one
    thread, at least :data:`PARALLEL_THRESHOLD` samples, and rows far enough apart to hold
    more than ``sensors_per_task`` sensors, the fewest one parallel task takes (the kernels
    run sensors in parallel; one task's sensors gain nothing from the pool). Both kernels
    give the same results, bit for bit."""
    return (
        threads > 1
        and rows.size >= PARALLEL_THRESHOLD
        and int(rows.max()) - int(rows.min()) >= sensors_per_task
    )


class Bank(SensorRows):
    """The states of many streams (sensors) of one model, as rows of one ``(capacity, S)`` array.

    A sensor id (any hashable: str or int) gets a row the first time it is seen; the array
    doubles when full. :meth:`step` takes a micro-batch of ``(sensor id, sample)`` pairs
    in arrival order, where a sensor may appear several times: its samples are applied in
    that order. A NaN/Inf sample is skipped and counted for its sensor without failing the
    batch; its prediction row is NaN and :attr:`last_status` holds the reason.
    """

    def __init__(self, model: Model, capacity: int = 1024, *, threads: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.model = model
        pk = packed(model)
        self._kernel_kind = pk.kernel_kind  # its kernels compile this kind of cell only
        self._dtype = model.dtype
        self.threads = numba.get_num_threads() if threads is None else int(threads)
        if not 1 <= self.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}")
        super().__init__()
        #: Every per-sensor array, row ``r`` of each belonging to the sensor of :meth:`row`
        #: ``r``: the bank's ``"states"`` (``(capacity, S)``, the model's dtype) and
        #: ``"rejected"`` (int64 counts), and whatever a detector or your code registers.
        self.row_table = RowTable(capacity)
        self.row_table.register("states", (pk.state_size,), self._dtype)
        self.row_table.register("rejected", (), np.int64)
        scratch = np.zeros(
            (numba.config.NUMBA_NUM_THREADS, kernels.TILE_STREAMS, pk.scratch_size), self._dtype
        )
        # Rebuilt whenever the states or the link buffer are replaced (grown).
        self._args = BankKernelArgs(
            pk.params,
            pk.layout,
            self.row_table["states"],
            scratch,
            np.full((3, capacity), -1, np.int64),
        )
        self.last_status: np.ndarray = np.zeros(0, np.int8)

    # -- sensors and rows -------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.row_table.capacity

    def _grow(self, capacity: int) -> None:
        self.row_table.grow(capacity)
        self._args = self._args._replace(states=self.row_table["states"])
        self._reserve_links(capacity)

    def _reserve_links(self, size: int) -> None:
        """Links for ``size`` rows or samples (the first of the three is indexed by row)."""
        links = self._args.links
        if links.shape[1] < size:
            self._args = self._args._replace(
                links=np.full((3, max(size, 2 * links.shape[1])), -1, np.int64)
            )

    def _clear_row(self, row: int) -> None:
        self.row_table.clear(row)

    def _clear_rows(self, rows: np.ndarray) -> None:
        self.row_table.clear(rows)

    def kernel_args(self, batch_size: int = 0) -> BankKernelArgs:
        """The live arrays behind this bank, for :func:`streamlstm.kernels.bank_step` (and
        :func:`~streamlstm.kernels.group_by_row`) in ``@njit`` code, with a ``links`` work
        buffer for micro-batches of up to ``batch_size`` samples.

        Allocating a sensor's row (:meth:`row`, :meth:`rows`, :meth:`step`) may grow the
        bank and replace these arrays: call this again after that.
        """
        if batch_size > self._args.links.shape[1]:
            self._reserve_links(batch_size)
        return self._args

    # -- stepping ---------------------------------------------------------------------
    def step(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """Apply a micro-batch: ``samples[i]`` (``(D,)``) belongs to ``sensors[i]``.

        Returns ``(M, O)`` predictions in the order given (NaN rows for rejected samples).
        """
        return self.step_rows(self.rows(sensors), samples)

    def step_rows(self, rows: np.ndarray, samples: Any) -> np.ndarray:
        """:meth:`step` with state rows from :meth:`rows` instead of ids (skips the lookup)."""
        samples = as_samples(samples, self._dtype, self.model.input_size)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.shape != (samples.shape[0],):
            raise ShapeError(f"rows: expected shape ({samples.shape[0]},), got {rows.shape}")
        low, high = (int(rows.min()), int(rows.max())) if rows.size else (0, 0)
        if low < 0 or high >= self.capacity:
            raise ShapeError("rows: out of range for this bank")
        outs = np.empty((samples.shape[0], self.model.output_size), self._dtype)
        status = np.empty(samples.shape[0], np.int8)
        if samples.shape[0] > self._args.links.shape[1]:
            self._reserve_links(samples.shape[0])
        params, layout, states, scratch, links = self._args
        args = (params, layout, states, rows, samples, outs, status, scratch, links)
        if high - low < kernels.TILE_STREAMS - 1:  # too few sensors to fill a tile
            kernels.bank_step_in_order(self._kernel_kind)(*args[:-1])
        elif runs_in_parallel(self.threads, rows, kernels.SENSORS_PER_TASK):
            numba.set_num_threads(self.threads)
            kernels.bank_kernels(self._kernel_kind)[1](*args)
        else:
            kernels.bank_kernels(self._kernel_kind)[0](*args)
        bad = status != L.OK
        if bad.any():
            np.add.at(self.row_table["rejected"], rows[bad], 1)
        self.last_status = status
        return outs

    def run(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> np.ndarray:
        """Block mode: ``T`` samples for each of ``N`` distinct sensors in one compiled call.

        ``samples``: ``(N, T, D)``, each sensor's samples in time order. Returns ``(N, T, O)``
        predictions; :attr:`last_status` is ``(N, T)``. Equivalent to ``T`` calls of
        :meth:`step` (bit for bit), as :meth:`streamlstm.cuda.CudaBank.run`.
        """
        try:
            values = np.asarray(samples, dtype=self._dtype)
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"samples: cannot convert to {self._dtype} ({exc})") from None
        n_in = self.model.input_size
        if values.ndim != 3 or values.shape[0] != len(sensors) or values.shape[2] != n_in:
            raise ShapeError(
                f"samples: expected shape ({len(sensors)}, T, {n_in}), got {values.shape}"
            )
        rows = self.distinct_rows(sensors)
        n, steps = values.shape[0], values.shape[1]
        # Sensor-major: each sensor's T samples follow one another, in time order, so the
        # bank's grouping steps each row's samples in that order.
        outs = self.step_rows(np.repeat(rows, steps), values.reshape(n * steps, n_in))
        self.last_status = self.last_status.reshape(n, steps)
        return outs.reshape(n, steps, self.model.output_size)

    # -- state access -----------------------------------------------------------------
    def rejected(self, sensor: Hashable) -> int:
        """How many samples of ``sensor`` were rejected (NaN/Inf or overflow)."""
        return int(self.row_table["rejected"][self.known_row(sensor)])

    def state(self, sensor: Hashable) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Per-layer copies of ``(h, c)`` for ``sensor`` (see :attr:`Stream.state`)."""
        return split_state(self.model, self.state_vector(sensor))

    def set_state(self, sensor: Hashable, h: Any, c: Any) -> None:
        """Overwrite ``sensor``'s state (allocating its row if new)."""
        vector = join_state(self.model, h, c)
        row = self.row(sensor)  # may grow (replace) the states: look it up first
        self.row_table["states"][row] = vector

    def reset(self, sensor: Hashable | None = None) -> None:
        """Zero one sensor's state, or every sensor's (the rejected counts are kept)."""
        rows = slice(None) if sensor is None else self.known_row(sensor)
        self.row_table.clear(rows, ("states",))

    def export_state(self) -> BankState:
        """A copy of every sensor's state (restore it with :meth:`import_state`)."""
        sensors, rows = self.assigned_rows()
        return BankState(sensors, self.row_table["states"][rows])

    def import_state(self, state: BankState) -> None:
        """Restore sensors from any bank's :meth:`export_state` output (other sensors are
        kept); the state rows are checked (width, finite values) before any is written."""
        states = state.checked_states(self._dtype, self.row_table["states"].shape[1])
        rows = self.rows(state.sensors)  # may grow (replace) the states: look them up first
        self.row_table["states"][rows] = states

    def state_vector(self, sensor: Hashable) -> np.ndarray:
        """A copy of ``sensor``'s flat ``(S,)`` state row."""
        return self.row_table["states"][self.known_row(sensor)].copy()

    def set_state_vector(self, sensor: Hashable, vector: Any) -> None:
        """Overwrite ``sensor``'s flat state row."""
        vector = as_sample(vector, self._dtype, self.row_table["states"].shape[1])
        if not np.all(np.isfinite(vector)):
            raise ShapeError("state: non-finite values")
        row = self.row(sensor)  # may grow (replace) the states: look it up first
        self.row_table["states"][row] = vector
