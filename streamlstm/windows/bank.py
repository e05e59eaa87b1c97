"""Window models on live streams: a ring of the last ``W`` samples per sensor, and every ``K``
samples each sensor's window evaluated from the zero state, exactly as it was trained.

:class:`WindowBank` takes micro-batches of ``(sensor id, sample)`` pairs like
:class:`streamlstm.Bank`; compiled code pushes them into the rings and copies out the
windows they complete, and all of a micro-batch's windows are evaluated together
(:mod:`streamlstm.kernels._window`). :func:`evaluate_windows` evaluates windows you
already hold, as a batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from .._samples import as_samples
from .._sensor_rows import SensorRows
from .._threads import run_shares, share_bounds
from ..errors import ShapeError
from ..kernels import _window as K
from ..kernels.layout import OK
from ..model import Model
from ..window_spec import WindowSpec
from .packing import WindowPacked, WindowWork, packed_windows

#: The least work one thread takes when a batch of windows is split across threads, in
#: weight reads (steps times the model's weights, plus :data:`STEP_OVERHEAD` per step):
#: about 75 µs on the 2-core development machine, where handing a share to a thread costs
#: about 50 µs. A share is never fewer windows than the kernel runs in lockstep.
SHARE_MIN_WORK = 3_000_000
#: A step's fixed cost, in weight reads (about 0.13 µs there; a weight read is 0.026 ns).
STEP_OVERHEAD = 5_000
#: Memory for the windows of one micro-batch (copies and outputs); a larger micro-batch is
#: evaluated in several rounds.
WINDOW_BUFFER_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class WindowOutputs:
    """The windows one :meth:`WindowBank.push` completed, in completion order.

    ``values``: ``(N, O)`` per window, or ``(N, W, O)`` for ``output="every"``;
    ``end_index``: each window's last sample, counted per sensor from 0 (since its first
    sample or its last :meth:`WindowBank.reset`);
    ``batch_index``: where that sample was in the pushed micro-batch (for its time);
    ``inputs``: the windows themselves ``(N, W, D)`` (``output="every"`` only, to score
    reconstructions); ``skipped``: windows not evaluated because they held a rejected
    (NaN/Inf) sample; ``failed``: windows whose evaluation overflowed to NaN/Inf (left out).
    """

    spec: WindowSpec
    sensors: list[Hashable]
    end_index: np.ndarray
    batch_index: np.ndarray
    values: np.ndarray
    inputs: np.ndarray | None
    skipped: int
    failed: int

    def __len__(self) -> int:
        return len(self.sensors)

    @property
    def predicted(self) -> np.ndarray:
        """Index of the largest output per window (the class of a classifier)."""
        if self.spec.per_step:
            raise ShapeError("predicted: output 'every' has no per-window class")
        return np.argmax(self.values, axis=1) if len(self) else np.zeros(0, np.int64)

    @property
    def labels(self) -> list[str]:
        """The class name of :attr:`predicted` per window (needs ``spec.classes``)."""
        if not self.spec.classes:
            raise ShapeError("labels: the window spec names no classes")
        return [self.spec.classes[i] for i in self.predicted]

    @property
    def reconstruction_error(self) -> np.ndarray:
        """``(N,)`` mean squared error of an autoencoder's output against its input window."""
        if self.inputs is None or self.values.shape[-1] != self.inputs.shape[-1]:
            raise ShapeError(
                "reconstruction_error: needs output 'every' and as many outputs as inputs"
            )
        return np.mean((self.values - self.inputs) ** 2, axis=(1, 2))


class _Round(NamedTuple):
    """The good windows of one evaluation round of a push, copied out of the buffers."""

    at: np.ndarray
    end_index: np.ndarray
    values: np.ndarray
    inputs: np.ndarray | None
    failed: int


class WindowBank(SensorRows):
    """Per-sensor rings of the last ``W`` samples of one window model; see the module doc.

    ``spec`` overrides the model's :attr:`~streamlstm.Model.window` (one of the two is
    required). Sensor ids get a ring row on first sight; the rings double when full.
    """

    def __init__(
        self,
        model: Model,
        capacity: int = 1024,
        *,
        spec: WindowSpec | None = None,
        threads: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        declared = model.window
        spec = spec if spec is not None else declared
        if spec is None:
            raise ShapeError(
                f"model {model.name!r} declares no window: pass spec=WindowSpec(...)"
                " or convert it with --window/--hop"
            )
        if declared is not None and (
            (spec.final_state, spec.encoder_layers)
            != (declared.final_state, declared.encoder_layers)
        ):
            raise ShapeError(
                f"spec: final_state={spec.final_state}, encoder_layers="
                f"{spec.encoder_layers}, but model {model.name!r} was trained with "
                f"final_state={declared.final_state}, encoder_layers="
                f"{declared.encoder_layers}; keep them (dataclasses.replace(model."
                "window, ...) changes only what you name)"
            )
        spec.check_model(model.output_size, len(model.layers))
        self.model, self.spec = model, spec
        self.threads = numba.get_num_threads() if threads is None else int(threads)
        if not 1 <= self.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}")
        self._packed = packed_windows(model, spec)
        self._dtype = model.dtype
        super().__init__()
        width = model.input_size
        self._ring = np.zeros((capacity, spec.length, width), self._dtype)
        self._counts = np.zeros(capacity, np.int64)
        self._last_bad = np.full(capacity, -1, np.int64)
        self._rejected = np.zeros(capacity, np.int64)
        self._skipped = np.zeros(capacity, np.int64)
        self._failed = np.zeros(capacity, np.int64)
        self._work: WindowWork | None = None  # allocated on the first CPU evaluation
        out_rows = spec.length if spec.per_step else 1
        window_bytes = (spec.length * width + out_rows * model.output_size) * self._dtype.itemsize
        self._max_room = max(K.TILE_STREAMS, WINDOW_BUFFER_BYTES // window_bytes)
        self._room = 0
        self._ensure_room(64)

    # -- sensors and rows -------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._ring.shape[0]

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        ring = np.zeros((capacity, *self._ring.shape[1:]), self._dtype)
        ring[:old] = self._ring
        self._ring = ring
        extra = capacity - old
        self._counts = np.concatenate([self._counts, np.zeros(extra, np.int64)])
        self._last_bad = np.concatenate([self._last_bad, np.full(extra, -1, np.int64)])
        for name in ("_rejected", "_skipped", "_failed"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, np.int64)]))

    def _clear_row(self, row: int) -> None:
        self._ring[row] = 0
        self._counts[row] = 0
        self._last_bad[row] = -1
        self._rejected[row] = self._skipped[row] = self._failed[row] = 0

    def _ensure_room(self, windows: int) -> None:
        """Window buffers for ``windows`` windows of one micro-batch (grown, never shrunk)."""
        if windows <= self._room or self._room == self._max_room:
            return
        room = min(max(windows, 2 * self._room), self._max_room)
        spec, model = self.spec, self.model
        self._windows = np.zeros((room, spec.length, model.input_size), self._dtype)
        self._outs = np.zeros(
            (room, spec.length if spec.per_step else 1, model.output_size), self._dtype
        )
        self._status = np.zeros(room, np.int8)
        self._window_rows = np.zeros(room, np.int64)
        self._window_ends = np.zeros(room, np.int64)
        self._window_at = np.zeros(room, np.int64)
        self._room = room

    # -- pushing ----------------------------------------------------------------------
    def push(self, sensors: Sequence[Hashable] | np.ndarray, samples: Any) -> WindowOutputs:
        """Append a micro-batch (``samples[i]`` of ``sensors[i]``, in arrival order) and
        return the outputs of every window it completed (:class:`WindowOutputs`)."""
        samples = as_samples(samples, self._dtype, self.model.input_size)
        if len(sensors) != samples.shape[0]:
            raise ShapeError(f"sensors: {len(sensors)} ids for {samples.shape[0]} samples")
        rows = self.rows(sensors)
        count = samples.shape[0]
        self._ensure_room(min(count, count // self.spec.hop + len(self)))
        rounds: list[_Round] = []
        start = skipped = 0
        while start < count or not rounds:
            start, written, skipped_now = K.assemble_windows(
                rows,
                samples,
                start,
                self._ring,
                self._counts,
                self._last_bad,
                self._rejected,
                self._skipped,
                self.spec.hop,
                self._windows,
                self._window_rows,
                self._window_ends,
                self._window_at,
            )
            skipped += skipped_now
            rounds.append(self._evaluate(written))
        at = np.concatenate([r.at for r in rounds])
        values = np.concatenate([r.values for r in rounds])
        return WindowOutputs(
            spec=self.spec,
            sensors=[sensors[i] for i in at.tolist()],
            end_index=np.concatenate([r.end_index for r in rounds]),
            batch_index=at,
            values=values if self.spec.per_step else values[:, 0],
            inputs=np.concatenate([r.inputs for r in rounds]) if self.spec.per_step else None,
            skipped=int(skipped),
            failed=sum(r.failed for r in rounds),
        )

    def _evaluate(self, written: int) -> _Round:
        """Evaluate the first ``written`` assembled windows; copy out the good ones."""
        windows, outs = self._windows[:written], self._outs[:written]
        status = self._status[:written]
        self._evaluate_batch(windows, outs, status)
        good = status == OK
        failed = int(written - np.count_nonzero(good))
        if failed:
            np.add.at(self._failed, self._window_rows[:written][~good], 1)
        # Boolean indexing copies: the buffers are reused by the next round and push.
        return _Round(
            at=self._window_at[:written][good],
            end_index=self._window_ends[:written][good],
            values=outs[good],
            inputs=windows[good] if self.spec.per_step else None,
            failed=failed,
        )

    def _evaluate_batch(self, windows: np.ndarray, outs: np.ndarray, status: np.ndarray) -> None:
        """Evaluate assembled ``windows`` into ``outs``/``status`` with the CPU kernels (the
        GPU window bank, :class:`streamlstm.cuda.CudaWindowBank`, overrides this)."""
        if self._work is None:
            self._work = self._packed.allocate_work(
                numba.config.NUMBA_NUM_THREADS, self.spec.length
            )
        _run(self._packed, windows, outs, status, self._work, self.threads)

    def reset(self, sensor: Hashable | None = None) -> None:
        """Restart one sensor's windows, or every sensor's (e.g. after a gap in the data):
        the next window ends ``W`` samples later. The counters are kept."""
        rows = slice(None) if sensor is None else self._rows[sensor]
        self._ring[rows] = 0
        self._counts[rows] = 0
        self._last_bad[rows] = -1

    # -- state for snapshots ------------------------------------------------------------
    def row_arrays(self) -> dict[str, np.ndarray]:
        """The live per-row arrays (ring, counters), indexed by :meth:`row`: read them
        between pushes for a snapshot; restore with :meth:`load_rows`."""
        return {
            "ring": self._ring,
            "counts": self._counts,
            "last_bad": self._last_bad,
            "rejected": self._rejected,
            "skipped": self._skipped,
            "failed": self._failed,
        }

    def load_rows(
        self, sensors: Sequence[Hashable], arrays: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Restore ``sensors`` from :meth:`row_arrays` picked at their rows in a snapshot;
        everything is checked before a row is allocated or written. Returns their rows."""
        live = self.row_arrays()
        checked = {}
        for name, array in live.items():
            value = np.asarray(arrays[name])
            expected = (len(sensors), *array.shape[1:])
            if value.shape != expected:
                raise ShapeError(
                    f"window bank state: {name} has shape {value.shape}, expected {expected}"
                )
            if not np.all(np.isfinite(value)):
                raise ShapeError(f"window bank state: non-finite values in {name}")
            checked[name] = value.astype(array.dtype)
        if np.any(checked["counts"] < 0) or np.any(checked["last_bad"] >= checked["counts"]):
            raise ShapeError("window bank state: inconsistent sample counts")
        rows = self.rows(sensors)
        live = self.row_arrays()  # allocating rows may have grown the arrays
        for name, value in checked.items():
            live[name][rows] = value
        return rows

    # -- counters ---------------------------------------------------------------------
    def sample_count(self, sensor: Hashable) -> int:
        """Samples of ``sensor`` pushed so far (rejected ones included)."""
        return int(self._counts[self._rows[sensor]])

    def rejected(self, sensor: Hashable) -> int:
        """Samples of ``sensor`` that held NaN/Inf."""
        return int(self._rejected[self._rows[sensor]])

    def skipped(self, sensor: Hashable) -> int:
        """Windows of ``sensor`` skipped because they held a rejected sample."""
        return int(self._skipped[self._rows[sensor]])

    def failed(self, sensor: Hashable) -> int:
        """Windows of ``sensor`` whose evaluation overflowed to NaN/Inf."""
        return int(self._failed[self._rows[sensor]])


def evaluate_windows(
    model: Model, windows: Any, *, output: str | None = None, threads: int | None = None
) -> np.ndarray:
    """Evaluate ``(N, T, D)`` windows (sensor units), each from the zero state, as a batch.

    ``output``: a :data:`streamlstm.window_spec.OUTPUTS` mode (default: the model's
    window spec, else ``"last"``); the model's encoder applies, and its final state to a
    per-window output.
    Returns ``(N, O)``, or ``(N, T, O)`` for ``"every"``; a window holding NaN/Inf, or
    whose evaluation overflows, gives NaN.
    """
    declared = model.window or WindowSpec(length=1, hop=1)
    output = declared.output if output is None else output
    spec = WindowSpec(
        length=1,
        hop=1,
        output=output,
        final_state=declared.final_state and output != "every",
        encoder_layers=declared.encoder_layers,
    )
    spec.check_model(model.output_size, len(model.layers))
    windows = np.asarray(windows, dtype=model.dtype)
    if windows.ndim != 3 or windows.shape[2] != model.input_size or windows.shape[1] < 1:
        raise ShapeError(
            f"windows: expected shape (n, steps >= 1, {model.input_size}), got {windows.shape}"
        )
    windows = np.ascontiguousarray(windows)
    pk = packed_windows(model, spec)
    per_step = spec.per_step
    count, steps = windows.shape[:2]
    outs = np.empty((count, steps if per_step else 1, model.output_size), model.dtype)
    status = np.empty(count, np.int8)
    work = pk.allocate_work(numba.config.NUMBA_NUM_THREADS, steps)
    _run(
        pk,
        windows,
        outs,
        status,
        work,
        numba.get_num_threads() if threads is None else int(threads),
    )
    return outs if per_step else outs[:, 0]


def _run(
    pk: WindowPacked,
    windows: np.ndarray,
    outs: np.ndarray,
    status: np.ndarray,
    work: WindowWork,
    threads: int,
) -> None:
    """Evaluate ``windows`` into ``outs``/``status``, on up to ``threads`` threads, each
    a slice of at least :data:`SHARE_MIN_WORK`. Windows are independent (each starts from
    the zero state), so unlike a :class:`~streamlstm.bank.Bank`'s samples, one sensor's
    windows gain from more threads too."""
    kernel = K.window_kernel(pk.kind)
    count, steps = windows.shape[:2]
    per_window = max(steps, 1) * (pk.params.size + pk.stream_params.size + STEP_OVERHEAD)
    smallest = max(K.TILE_STREAMS, -(-SHARE_MIN_WORK // per_window))
    bounds = share_bounds(count, threads, K.TILE_STREAMS, smallest)
    shares = []
    for k in range(len(bounds) - 1):
        part = slice(bounds[k], bounds[k + 1])
        mine = slice(k, k + 1)
        shares.append(
            (
                *pk.model_arrays,
                windows[part],
                outs[part],
                status[part],
                *(array[mine] for array in work),
            )
        )
    run_shares(kernel, shares)
