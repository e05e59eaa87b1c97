"""Many streams of one model: sensor id -> state row, stepped a micro-batch at a time."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numba
import numpy as np

from . import kernels
from ._samples import as_sample, as_samples
from ._sensor_rows import SensorRows
from .errors import ShapeError
from .kernels import layout as L
from .model import Model
from .packing import packed
from .stream import join_state, split_state

#: Below this many samples a micro-batch is stepped on the calling thread: waking the
#: thread pool costs about a microsecond, more than a handful of steps.
PARALLEL_THRESHOLD = 64


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
        self._params, self._layout = pk.params, pk.layout
        self._dtype = model.dtype
        self.threads = numba.get_num_threads() if threads is None else int(threads)
        if not 1 <= self.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}")
        super().__init__()
        self._states = np.zeros((capacity, pk.state_size), self._dtype)
        self._rejected = np.zeros(capacity, np.int64)
        self._scratch = np.zeros((numba.config.NUMBA_NUM_THREADS, kernels.TILE_STREAMS,
                                  pk.scratch_size), self._dtype)
        self._links = np.full((3, capacity), -1, np.int64)
        self.last_status = np.zeros(0, np.int8)

    # -- sensors and rows -------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._states.shape[0]

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        states = np.zeros((capacity, self._states.shape[1]), self._dtype)
        states[:old] = self._states
        self._states = states
        self._rejected = np.concatenate([self._rejected, np.zeros(capacity - old, np.int64)])
        self._ensure_links(capacity)

    def _ensure_links(self, size: int) -> None:
        if self._links.shape[1] < size:
            self._links = np.full((3, max(size, 2 * self._links.shape[1])), -1, np.int64)

    def _clear_row(self, row: int) -> None:
        self._states[row] = 0
        self._rejected[row] = 0

    def _clear_rows(self, rows: np.ndarray) -> None:
        self._states[rows] = 0
        self._rejected[rows] = 0

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
        if rows.size and (rows.min() < 0 or rows.max() >= self.capacity):
            raise ShapeError("rows: out of range for this bank")
        outs = np.empty((samples.shape[0], self.model.output_size), self._dtype)
        status = np.empty(samples.shape[0], np.int8)
        self._ensure_links(samples.shape[0])
        args = (self._params, self._layout, self._states, rows, samples, outs, status,
                self._scratch, self._links)
        if self.threads > 1 and samples.shape[0] >= PARALLEL_THRESHOLD:
            numba.set_num_threads(self.threads)
            kernels.bank_step(*args)
        else:
            kernels.bank_step_serial(*args)
        bad = status != L.OK
        if bad.any():
            np.add.at(self._rejected, rows[bad], 1)
        self.last_status = status
        return outs

    # -- state access -----------------------------------------------------------------
    def rejected(self, sensor: Hashable) -> int:
        """How many samples of ``sensor`` were rejected (NaN/Inf or overflow)."""
        return int(self._rejected[self._rows[sensor]])

    def state(self, sensor: Hashable) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Per-layer copies of ``(h, c)`` for ``sensor`` (see :attr:`Stream.state`)."""
        return split_state(self.model, self._states[self._rows[sensor]].copy())

    def set_state(self, sensor: Hashable, h: Any, c: Any) -> None:
        """Overwrite ``sensor``'s state (allocating its row if new)."""
        vector = join_state(self.model, h, c)
        row = self.row(sensor)  # may grow (replace) self._states: look it up first
        self._states[row] = vector

    def reset(self, sensor: Hashable | None = None) -> None:
        """Zero one sensor's state, or every sensor's."""
        if sensor is None:
            self._states[:] = 0
        else:
            self._states[self._rows[sensor]] = 0

    def export_state(self) -> dict[str, Any]:
        """A snapshot of every sensor's state: ``{"sensors": [...], "states": (n, S) array}``."""
        sensors = list(self._rows)
        rows = np.asarray([self._rows[s] for s in sensors], np.int64)
        return {"sensors": sensors, "states": self._states[rows].copy(),
                "state_size": self._states.shape[1]}

    def import_state(self, snapshot: Mapping[str, Any]) -> None:
        """Restore sensors from :meth:`export_state` output (other sensors are kept)."""
        sensors = list(snapshot["sensors"])
        states = as_samples(snapshot["states"], self._dtype, self._states.shape[1],
                            what="snapshot states")
        if len(sensors) != states.shape[0]:
            raise ShapeError(f"snapshot: {len(sensors)} sensors for {states.shape[0]} states")
        if not np.all(np.isfinite(states)):
            raise ShapeError("snapshot: non-finite state values")
        rows = self.rows(sensors)  # may grow (replace) self._states: look them up first
        self._states[rows] = states

    def state_vector(self, sensor: Hashable) -> np.ndarray:
        """A copy of ``sensor``'s flat ``(S,)`` state row."""
        return self._states[self._rows[sensor]].copy()

    def set_state_vector(self, sensor: Hashable, vector: Any) -> None:
        """Overwrite ``sensor``'s flat state row."""
        vector = as_sample(vector, self._dtype, self._states.shape[1])
        if not np.all(np.isfinite(vector)):
            raise ShapeError("state: non-finite values")
        row = self.row(sensor)  # may grow (replace) self._states: look it up first
        self._states[row] = vector
