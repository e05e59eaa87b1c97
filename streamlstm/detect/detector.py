"""The detector: a bank of streams plus per-sensor detector state, stepped by one fused kernel."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numba
import numpy as np

from .._samples import as_timed_batch
from ..bank import Bank, runs_in_parallel
from ..errors import ConfigError, ShapeError
from ..model import Model
from ..packing import packed
from . import _kernel as K
from .calibration_record import Calibration
from .durations import step_seconds
from .events import EVICTED, RESET, AlertEvent, EventKind, eviction_times
from .features import FeatureSpec, compute_features
from .params import DetectorParams, pack_params, params_from, scoring_from
from .state import AnyDetectorState, DetectorState, wrong_kind

#: The state a :class:`RowCopy` builds (a detector's typed state).
S = TypeVar("S", covariant=True)

#: The detector's arrays in its bank's row table (next to the bank's ``states``, ``rejected``).
_DETECTOR_ROWS = ("istate", "fstate", "preds", "levels", "rings")
#: The row arrays the fused kernel takes, in its argument order.
_KERNEL_ROWS = (*_DETECTOR_ROWS, "rejected")
_KINDS: dict[int, EventKind] = {K.EVENT_START: "start", K.EVENT_END: "end"}


class RowCopy(Generic[S]):
    """A copy of a detector's per-row state made in slices, between updates.

    From :meth:`Detector.copy_rows`: :meth:`advance` copies the next rows of every per-row
    array (all of a row's arrays at once, so each sensor's copy is consistent); once
    :attr:`done`, :meth:`state` (callable on any thread) gives what
    :meth:`Detector.export_state` would have given when the copy began, except that each
    sensor's state is as of the slice that copied it. Rows must not change hands meanwhile:
    no :meth:`Detector.forget` or :meth:`Detector.evict` until the copy is done.
    ``build(sensors, arrays)`` makes the detector's state of the sensors' rows picked out.
    """

    def __init__(
        self,
        sensors: list[Hashable],
        rows: np.ndarray,
        bound: int,
        live: Callable[[], dict[str, np.ndarray]],
        build: Callable[[list[Hashable], dict[str, np.ndarray]], S],
    ) -> None:
        self.sensors, self.rows, self.bound = sensors, rows, bound
        self._live = live  # the arrays themselves are replaced when the detector grows
        self._build = build
        self.arrays = {
            name: np.empty((bound, *array.shape[1:]), array.dtype) for name, array in live().items()
        }
        self.copied = 0

    @property
    def done(self) -> bool:
        return self.copied >= self.bound

    def advance(self, max_rows: int) -> bool:
        """Copy up to ``max_rows`` more rows; True once every row is copied."""
        stop = min(self.bound, self.copied + max_rows)
        for name, array in self._live().items():
            self.arrays[name][self.copied : stop] = array[self.copied : stop]
        self.copied = stop
        return self.done

    def state(self) -> S:
        """:meth:`Detector.export_state`'s output, the sensors' rows picked out."""
        if not self.done:
            raise RuntimeError("RowCopy.state() before the copy is done")
        count = len(self.rows)
        if np.array_equal(self.rows, np.arange(count)):  # no row ever freed: a view will do
            picked = {name: array[:count] for name, array in self.arrays.items()}
        else:
            picked = {name: array[self.rows] for name, array in self.arrays.items()}
        return self._build(self.sensors, picked)


class Detector:
    """Per-sensor anomaly scores and debounced alerts over one model (high score = anomalous).

    ``Detector(model, params=None, capacity=1024, threads=None, **overrides)`` reads its
    parameters (:attr:`params`, a :class:`~streamlstm.detect.params.DetectorParams`) from
    ``model.calibration``, parsed once into :attr:`calibration` (a
    :class:`~streamlstm.detect.calibration_record.Calibration`; see
    :mod:`streamlstm.detect.params`), or all of them from ``params`` when given (e.g.
    another detector's, or ``dataclasses.replace(det.params, warmup=0)``). Keyword
    ``overrides`` then change single ones: any of ``threshold, margin, alpha,
    hysteresis`` and the durations ``warmup_steps``, ``debounce_steps``, ``quiet_steps``
    (or their seconds forms ``warmup_s``, ``debounce_s``, ``quiet_s``;
    :mod:`streamlstm.detect.durations`).
    Events carry ``model_id``: ``model.metadata["model_id"]`` if set, else
    the model's name and the start of its weights' sha256. A model whose metadata declares
    ``features`` is fed windowed features computed from the raw samples
    (:mod:`streamlstm.detect.features`).

    :meth:`update` takes a micro-batch in arrival order and returns the alert events it
    caused, in the same order; :meth:`prime` feeds known-normal data without raising
    alerts (a warm-up), and :meth:`commission` also makes it each sensor's own level
    reference. Each sensor has a recurrent state row (a
    :class:`~streamlstm.bank.Bank` row) and detector state next to it (arrays in the
    bank's :attr:`~streamlstm.bank.Bank.row_table`), read with
    :meth:`score` (smoothed score, residual scale), :meth:`alerting`, :meth:`rejected`
    and :meth:`filled`. Channels masked at calibration (dead or frozen in the normal
    data, or named by the user) are fed their calibration fill value and never scored
    (:attr:`masked_channels`); a NaN in another channel is filled with the model's own
    prediction, left out of that sample's score and counted (:meth:`filled`). A sample
    with no usable channel, an infinite value in a scored channel, a NaN/Inf timestamp,
    or (feature and direct-score models) any NaN/Inf is rejected and counted without
    touching the state: NaN never reaches the recurrent state.

    >>> import numpy as np, streamlstm as sl
    >>> from streamlstm.detect import calibrate
    >>> rng = np.random.default_rng(0)
    >>> model = calibrate(sl.random_model(2, [8], output_size=2), rng.normal(size=(500, 2)),
    ...                   quantile=0.999)
    >>> det = sl.Detector(model, warmup_steps=5)
    >>> det.update(["a", "a"], [[0.0, 0.1], [50.0, -50.0]], [0.0, 0.02])
    []
    >>> det.last_scores.shape
    (2,)
    """

    def __init__(
        self,
        model: Model,
        *,
        params: DetectorParams | None = None,
        capacity: int = 1024,
        threads: int | None = None,
        **overrides: Any,
    ) -> None:
        if model.window is not None:
            raise ShapeError(
                f"model {model.name!r} is a window model "
                f"({model.window.describe()}): detect with "
                "streamlstm.detect.WindowDetector"
            )
        self.model = model
        self.calibration = Calibration.from_model(model)
        self.params: DetectorParams = params_from(
            self.calibration, overrides, step_seconds(model), base=params
        )
        self.features = FeatureSpec.from_metadata(model.metadata)
        if self.features is None:
            self.axes = model.input_size
        else:
            n_stats = len(self.features.stats)
            if model.input_size % n_stats:
                raise ConfigError(
                    f"model input width {model.input_size} is not a multiple of "
                    f"its {n_stats} declared feature statistics"
                )
            self.axes = model.input_size // n_stats
        self._scoring = scoring_from(self.calibration)
        self._dparams = pack_params(self.params, self._scoring)
        # Name plus weight digest: tells apart two models relabelled with the same name.
        self.model_id = str(model.metadata.get("model_id") or f"{model.name}@{model.sha256[:12]}")
        self.bank = Bank(model, capacity, threads=threads)
        self._dtype = model.dtype
        slots = numba.config.NUMBA_NUM_THREADS
        self._xbuf = np.zeros((slots, model.input_size), self._dtype)
        self._obuf = np.zeros((slots, model.output_size), self._dtype)
        self._ebuf = np.zeros((slots, model.input_size), np.float64)
        pk = packed(model)
        self._scratch = np.zeros((slots, pk.scratch_size), self._dtype)
        self._kernel_kind = pk.kernel_kind  # its kernels compile this kind of cell only
        self._codes = np.zeros(0, np.int64) if self.features is None else self.features.codes
        self._hop = 1 if self.features is None else self.features.hop
        self._ring_shape = (1, 1) if self.features is None else (self.features.window, self.axes)
        self._register_rows()
        self.last_scores = np.zeros(0, np.float64)
        self.last_status = np.zeros(0, np.int8)

    # -- per-row arrays -------------------------------------------------------------------
    def _register_rows(self) -> None:
        """Add the detector's per-sensor arrays (:data:`_DETECTOR_ROWS`) to the bank's row
        table: grown with the bank's states, cleared with them when a sensor is forgotten."""
        table = self.bank.row_table
        fresh_fstate = np.zeros(K.N_FLOAT)
        fresh_fstate[K.F_BELOW] = np.nan
        table.register("istate", (K.N_INT,), np.int64)
        table.register("fstate", (K.N_FLOAT,), np.float64, fill=fresh_fstate)
        table.register("preds", (self.model.output_size,), self._dtype)
        table.register("levels", (self.model.input_size,), np.float64)
        table.register("rings", self._ring_shape, np.float64)
        self._kernel_rows_at = 0  # the capacity _kernel_rows_cache was read at (0: not yet)
        self._kernel_rows_cache: tuple[np.ndarray, ...] = ()

    def _kernel_rows(self) -> tuple[np.ndarray, ...]:
        """The row arrays the fused kernel takes (:data:`_KERNEL_ROWS`), read from the row
        table again only when it has grown (which replaces them)."""
        table = self.bank.row_table
        if self._kernel_rows_at != table.capacity:
            self._kernel_rows_cache = tuple(table.arrays(_KERNEL_ROWS).values())
            self._kernel_rows_at = table.capacity
        return self._kernel_rows_cache

    # -- stepping -------------------------------------------------------------------------
    @property
    def masked_channels(self) -> tuple[str, ...]:
        """Input channels never scored (masked at calibration), by name."""
        names = self.model.channels or tuple(f"c{k}" for k in range(self.model.input_size))
        return tuple(n for n, m in zip(names, self._scoring.mask, strict=False) if m == 0.0)

    def prime(
        self, sensor_ids: Sequence[Hashable] | np.ndarray, samples: Any, timestamps: Any
    ) -> None:
        """Feed known-normal samples to warm sensors up: scores and recurrent state advance
        (and count towards ``warmup``), no alert starts or ends."""
        self.update(sensor_ids, samples, timestamps, alert=False)

    def commission(
        self, sensor_ids: Sequence[Hashable] | np.ndarray, samples: Any, timestamps: Any
    ) -> None:
        """Declare known-normal samples each sensor's own level reference.

        The samples are fed as by :meth:`prime` (no alert starts or ends); then each
        sensor's level term is re-centred on the mean of its model inputs over them, so it
        scores the distance from that sensor's commissioned normal, not from the
        calibration data's (the spread stays the calibration's). Use it when a sensor is
        installed, or after a planned change of operating point, on data known to be
        normal: a fault present while commissioning becomes the sensor's normal level. A
        channel with no finite value in a sensor's samples keeps the calibrated centre.
        The reference is part of the snapshot; :meth:`reset` and :meth:`forget` clear
        it. Needs a level term (``calibrate(..., level=True)``) without drift adaptation
        (whose bound is measured from the calibrated centre).
        """
        scoring = self._scoring
        if scoring.level_center.size == 0:
            raise ConfigError(
                f"commission re-centres the level term; model {self.model.name!r} has "
                "none: calibrate it with level=True (`streamlstm calibrate --level`)"
            )
        if scoring.level_scale.size:
            raise ConfigError(
                "commission sets each sensor's level reference, which drift adaptation "
                "(level_alpha) would pull back within its bound of the calibrated centre: "
                "calibrate with level_alpha=0 to commission sensors"
            )
        array, times = as_timed_batch(sensor_ids, samples, timestamps, self._dtype, self.axes)
        indices: dict[Hashable, list[int]] = {}
        timed = np.isfinite(times)  # a sample without a time is rejected, not stepped
        for i, sensor in enumerate(sensor_ids):
            indices.setdefault(sensor, [])
            if timed[i]:
                indices[sensor].append(i)
        references = {}
        for sensor, where in indices.items():
            inputs = self._model_inputs(array[where])
            finite = np.isfinite(inputs)
            count = finite.sum(axis=0)
            total = np.where(finite, inputs, 0.0).sum(axis=0)
            mean = np.divide(total, count, out=scoring.level_center.copy(), where=count > 0)
            references[sensor] = np.where(scoring.mask != 0.0, mean - scoring.level_center, 0.0)
        # The reference is set before the samples are fed, so that their scores (and the
        # smoothed score the next sample starts from) are already read against it.
        rows = self.bank.rows(list(references))  # may grow the row table: read it after
        levels = self.bank.row_table["levels"]
        for row, reference in zip(rows, references.values(), strict=True):
            levels[row] = reference
        self.prime(sensor_ids, array, times)

    def _model_inputs(self, samples: np.ndarray) -> np.ndarray:
        """The model inputs the level term sees for one sensor's ``samples`` (float64; NaN
        where a raw value is missing, none for windows holding a non-finite sample)."""
        values = samples.astype(np.float64)
        if self.features is None:
            # As the kernel: an infinite scored value rejects the whole sample.
            scored = self._scoring.mask != 0.0
            values[np.isinf(values[:, scored]).any(axis=1)] = np.nan
            return values
        complete = values[np.isfinite(values).all(axis=1)]
        features = compute_features(complete, self.features)
        return features.astype(self._dtype).astype(np.float64)

    def update(
        self,
        sensor_ids: Sequence[Hashable] | np.ndarray,
        samples: Any,
        timestamps: Any,
        *,
        alert: bool = True,
    ) -> list[AlertEvent]:
        """Feed a micro-batch; return the alert events it caused, in arrival order
        (``alert=False``: see :meth:`prime`).

        ``sensor_ids``: ``M`` ids (str or int); ``samples``: ``(M, A)`` in sensor units
        (``A`` raw axes: the model's input width, or its feature front end's axes);
        ``timestamps``: ``(M,)`` seconds. :attr:`last_scores` then holds each sample's
        smoothed score (NaN for a rejected sample or before a sensor has any score) and
        :attr:`last_status` the kernels' status codes.
        """
        samples, times = as_timed_batch(sensor_ids, samples, timestamps, self._dtype, self.axes)
        count = samples.shape[0]
        bank = self.bank
        rows = bank.rows(sensor_ids)  # may grow the bank: its arrays are read after this
        scores = np.empty(count, np.float64)
        status = np.empty(count, np.int8)
        ev_kind = np.empty(count, np.int8)
        ev_peak = np.empty(count, np.float64)
        ev_duration = np.empty(count, np.float64)
        params, layout, states, _, links = bank.kernel_args(count)
        scoring = self._scoring
        args = (
            (params, layout, states),
            (rows, samples, times),
            (
                self._dparams,
                scoring.center,
                scoring.whiten,
                scoring.level_center,
                scoring.level_whiten,
                scoring.level_scale,
                scoring.mask,
                scoring.fill,
            ),
            (self._codes, self._hop),
            1 if alert else 0,
            self._kernel_rows(),
            (self._xbuf, self._obuf, self._ebuf, self._scratch),
            (scores, status, ev_kind, ev_peak, ev_duration),
            links,
        )
        serial, parallel = K.detect_kernels(self._kernel_kind)
        if runs_in_parallel(bank.threads, rows):
            numba.set_num_threads(bank.threads)
            parallel(*args)
        else:
            serial(*args)
        self.last_scores = scores
        self.last_status = status
        hits = np.flatnonzero(ev_kind)
        if hits.size == 0:
            return []
        return [
            self._event(
                sensor_ids[int(i)],
                int(ev_kind[i]),
                float(times[i]),
                float(scores[i]),
                float(ev_peak[i]),
                float(ev_duration[i]),
            )
            for i in hits
        ]

    def _event(
        self,
        sensor: Hashable,
        kind: int,
        t: float,
        score: float,
        peak: float,
        duration: float,
        reason: str | None = None,
    ) -> AlertEvent:
        if isinstance(sensor, np.generic):
            sensor = sensor.item()
        threshold = self.params.threshold if kind == K.EVENT_START else self.params.end_threshold
        return AlertEvent(
            sensor,
            _KINDS[kind],
            t,
            float(score),
            threshold,
            float(peak),
            float(duration),
            self.model_id,
            reason=reason,
        )

    # -- sensors --------------------------------------------------------------------------
    @property
    def sensors(self) -> list[Hashable]:
        """Known sensor ids, in first-seen order."""
        return self.bank.sensors

    def rejected(self, sensor: Hashable) -> int:
        """How many samples of ``sensor`` were rejected (NaN/Inf sample or timestamp, overflow)."""
        return self.bank.rejected(sensor)

    def filled(self, sensor: Hashable) -> int:
        """How many of ``sensor``'s samples had a missing (NaN) channel filled in."""
        return int(self.bank.row_table["istate"][self.bank.known_row(sensor), K.I_FILLED])

    def alerting(self, sensor: Hashable) -> bool:
        """Whether ``sensor`` has an open alert."""
        return bool(self.bank.row_table["istate"][self.bank.known_row(sensor), K.I_ALERT])

    def score(self, sensor: Hashable) -> float:
        """``sensor``'s current smoothed score (NaN before its first score); residual models
        score on the residual scale (about 1 on normal data), see :mod:`streamlstm.detect`."""
        row = self.bank.known_row(sensor)
        table = self.bank.row_table
        return (
            float(table["fstate"][row, K.F_SCORE])
            if table["istate"][row, K.I_HAS_SCORE]
            else np.nan
        )

    def forget(self, sensor: Hashable, t: float = np.nan) -> list[AlertEvent]:
        """Drop ``sensor``: :meth:`evict` for one known sensor (an unknown one raises); the
        ``end`` event of its open alert, if any, at ``t``."""
        self.bank.known_row(sensor)
        return self.evict([sensor], [t])

    def evict(
        self, sensors: Sequence[Hashable], t: Sequence[float] | None = None
    ) -> list[AlertEvent]:
        """Drop many sensors at once (ids not known are ignored); their rows are reused.

        Returns an ``end`` event with ``reason`` :data:`~.events.EVICTED` for each alert
        open on them, at ``t[i]`` (e.g. each sensor's last sample time; NaN if not given),
        so that no consumer keeps an alert open for a sensor nobody watches any more.
        """
        events = self._ends(sensors, eviction_times(len(sensors), t), EVICTED)
        self.bank.forget_many(sensors)
        return events

    def reset(self, sensor: Hashable | None = None, t: float = np.nan) -> list[AlertEvent]:
        """Back to a fresh state (warm-up again) for one sensor, or all of them. Returns an
        ``end`` event with ``reason`` :data:`~.events.RESET` for each open alert, at ``t``."""
        rows = slice(None) if sensor is None else self.bank.known_row(sensor)
        sensors = [sensor] if sensor is not None else self._alerting()
        events = self._ends(sensors, [t] * len(sensors), RESET)
        self.bank.reset(sensor)
        self.bank.row_table.clear(rows, _DETECTOR_ROWS)
        return events

    def _alerting(self) -> list[Hashable]:
        """The sensors with an open alert."""
        sensors, rows = self.bank.assigned_rows()
        open_alert = self.bank.row_table["istate"][rows, K.I_ALERT] != 0
        return [s for s, alerting in zip(sensors, open_alert, strict=True) if alerting]

    def _ends(
        self, sensors: Sequence[Hashable], times: Sequence[float], reason: str
    ) -> list[AlertEvent]:
        """The ``end`` events, for ``reason``, of the open alerts among ``sensors``."""
        table = self.bank.row_table
        events = []
        for sensor, at in zip(sensors, times, strict=True):
            if sensor not in self.bank:
                continue
            row = self.bank.known_row(sensor)
            if table["istate"][row, K.I_ALERT]:
                score, peak, start = table["fstate"][row, [K.F_SCORE, K.F_PEAK, K.F_START]]
                events.append(self._event(sensor, K.EVENT_END, at, score, peak, at - start, reason))
        return events

    # -- snapshots ------------------------------------------------------------------------
    def export_state(self) -> DetectorState:
        """Every sensor's recurrent and detector state (copies of its arrays);
        :meth:`import_state` restores it bit for bit."""
        copy = self.copy_rows()
        copy.advance(copy.bound)
        return copy.state()

    def copy_rows(self) -> RowCopy[DetectorState]:
        """Begin a :class:`RowCopy`: :meth:`export_state` in slices, so that a daemon with a
        million sensors can snapshot them without stopping its compute loop for the copy."""
        sensors, rows = self.bank.assigned_rows()

        def build(sensors: list[Hashable], arrays: dict[str, Any]) -> DetectorState:
            return DetectorState(self.model_id, sensors, **arrays)

        return RowCopy(sensors, rows, self.bank.row_bound, self._row_arrays, build)

    def _row_arrays(self) -> dict[str, np.ndarray]:
        return self.bank.row_table.arrays(DetectorState.ROW_ARRAYS)

    def import_state(self, state: AnyDetectorState) -> None:
        """Restore sensors from :meth:`export_state` output (sensors not in it are kept).

        Checked against the model before anything changes (:class:`ShapeError`): every
        array's row shape, and finite values; a version 2 state restores zero levels.
        """
        if not isinstance(state, DetectorState):
            raise wrong_kind("detector snapshot", state, DetectorState)
        n = len(state.sensors)
        arrays = {name: array for name, array in state.arrays().items() if array is not None}
        # Version 2, written before drift adaptation existed, has no levels: zero.
        arrays.setdefault("levels", np.zeros((n, self.model.input_size)))
        for name, live in self._row_arrays().items():
            shape = (n, *live.shape[1:])
            if arrays[name].shape != shape:
                raise ShapeError(
                    f"detector snapshot: {name} has shape {arrays[name].shape}, "
                    f"expected {shape} (a different model?)"
                )
        for name in ("states", "preds", "levels", "rings"):
            if not np.all(np.isfinite(arrays[name])):
                raise ShapeError(f"detector snapshot: non-finite values in {name}")
        rows = self.bank.rows(state.sensors)  # may grow the bank: its arrays are read after this
        for name, array in self._row_arrays().items():
            array[rows] = arrays[name]
