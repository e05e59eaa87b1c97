"""Alerts from window models: class alerts from classifiers, reconstruction scores from
autoencoders, with :class:`~streamlstm.detect.Detector`'s event contract.

A window model (:mod:`streamlstm.windows`) is evaluated on the last ``W`` samples of a
sensor every ``K`` samples, so its verdicts come once per window, not once per sample:

* **classifiers** (window output ``probabilities``, ``log_probabilities``, or ``last`` with
  class names, whose logits are put through softmax): each window's verdict is the most
  probable class other than the normal one if its probability is at least
  ``min_probability``; else the class of the sensor's open alert if that is still the
  most probable class (hysteresis: an alert does not flicker while its probability
  wavers around ``min_probability``); else normal. When the same verdict holds for
  ``consecutive`` windows in a row and differs from the sensor's alert, the alert
  changes: an open alert ends, and one for the new class (if it is not normal) starts;
  events carry the class in ``label``, their ``score`` is that class's probability,
  ``threshold`` is ``min_probability``.
* **autoencoders** (window output ``every``, one output per input): each window's score is
  on the residual scale of :mod:`streamlstm.detect`: the root mean square over the
  window's steps and scored channels of the whitened reconstruction error ``W (x - x̂ -
  centre)``, about 1 on normal data. ``centre``, ``W`` and the threshold come from
  :func:`~streamlstm.detect.calibration.calibrate_reconstruction` (a false-alarm budget,
  as for predictors); the score is smoothed (EWMA) and alerts start and end as in
  :class:`~streamlstm.detect.params.DetectorParams`, counting windows instead of samples.

Samples, rejected samples and snapshots work as for the streaming detector: a window that
holds a NaN/Inf sample (or one with a NaN/Inf timestamp) is skipped and counted.

``device="cuda"`` evaluates the windows on the GPU (:class:`~streamlstm.cuda.CudaWindowBank`);
the rings, counters and alert state stay on the host in the same arrays, so the alerts are
those of the CPU detector (scores within float rounding) and a snapshot of either restores
into the other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .._samples import as_timed_batch
from ..errors import ConfigError, ShapeError
from ..model import Model
from ..windows import WindowBank, WindowOutputs
from .calibration_record import Calibration
from .detector import RowCopy
from .durations import step_seconds
from .events import EVICTED, RESET, AlertEvent, EventKind, eviction_times
from .params import DetectorParams, Scoring, params_from, scoring_from
from .state import AnyDetectorState, WindowDetectorState, wrong_kind

CLASSIFIER_OUTPUTS = ("probabilities", "log_probabilities", "last")
#: The class treated as normal when none is named: this one if the model has it, else the first.
DEFAULT_NORMAL_CLASS = "normal"

# Integer state per sensor (istate columns).
I_WINDOWS = 0  # windows scored since the sensor's first sample or reset
I_ALERT = 1  # 1 while an alert is open
I_LABEL = 2  # classifiers: the open alert's class (-1: none)
I_VERDICT = 3  # classifiers: the last window's verdict (-1: none yet)
I_RUN = 4  # windows in a row with that verdict / above the threshold (debounce)
I_HAS_SCORE = 5  # autoencoders: 1 once the smoothed score has a value
N_INT = 6

# Float state per sensor (fstate columns).
F_SCORE = 0  # autoencoders: smoothed score; classifiers: the last window's score
F_PEAK = 1  # highest score of the open alert
F_START = 2  # timestamp the open alert started
F_BELOW = 3  # autoencoders: when the score went below the end threshold (NaN: not)
N_FLOAT = 4


@dataclasses.dataclass(frozen=True)
class ClassAlertParams:
    """When a window classifier alerts: a class other than ``normal_class`` holds with
    probability ``>= min_probability`` for ``consecutive`` windows in a row."""

    normal_class: str
    min_probability: float = 0.9
    consecutive: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_probability) and 0 < self.min_probability <= 1):
            raise ConfigError(f"min_probability must be in (0, 1], got {self.min_probability}")
        if int(self.consecutive) != self.consecutive or self.consecutive < 1:
            raise ConfigError(f"consecutive must be an integer >= 1, got {self.consecutive}")


def class_names(model: Model) -> tuple[str, ...]:
    """The window classifier's class names (its outputs' indices as text if unnamed)."""
    spec = model.window
    if spec is None:
        raise ShapeError(f"model {model.name!r} declares no window")
    return spec.classes or tuple(str(k) for k in range(model.output_size))


def window_probabilities(spec_output: str, values: np.ndarray) -> np.ndarray:
    """``(N, C)`` class probabilities (float64) from a window classifier's outputs."""
    values = values.astype(np.float64)
    if spec_output == "probabilities":
        return values
    if spec_output == "last":  # logits
        values = values - values.max(axis=1, keepdims=True)
    return np.exp(values) / (
        1.0 if spec_output == "log_probabilities" else np.exp(values).sum(axis=1, keepdims=True)
    )


def reconstruction_scores(out: WindowOutputs, scoring: Scoring) -> np.ndarray:
    """``(N,)`` raw scores (residual scale) of an autoencoder's windows, see the module doc."""
    assert out.inputs is not None
    residual = out.inputs.astype(np.float64) - out.values.astype(np.float64)
    whitened = (residual - scoring.center) @ scoring.whiten.T
    steps = residual.shape[1]
    scored = max(int(np.count_nonzero(scoring.mask)), 1)
    return np.sqrt(np.einsum("nwd,nwd->n", whitened, whitened) / (steps * scored))


class WindowDetector:
    """Per-sensor alerts from one window model; the module doc says how each kind decides.

    ``WindowDetector(model, params=None, capacity=1024, threads=None, device="cpu",
    normal_class=None, min_probability=None, consecutive=None, **overrides)``:
    ``device="cuda"`` evaluates the windows on the GPU (raises
    :class:`~streamlstm.errors.CudaUnavailableError` without one; ``threads`` is for the
    CPU only); the three class options are for classifiers (defaults: ``"normal"`` if the
    model has that class, else its first; 0.9; 3); ``params`` and ``overrides`` as for
    :class:`~streamlstm.detect.Detector` (``threshold, margin, alpha, hysteresis`` and
    durations with their unit, ``warmup_steps``, ``debounce_steps``, ``quiet_steps`` or
    ``*_s``, a step being one window hop: :mod:`streamlstm.detect.durations`) for
    autoencoders, whose
    ``model.calibration`` comes from
    :func:`~streamlstm.detect.calibration.calibrate_reconstruction` (parsed once into
    :attr:`calibration`; ``None`` for classifiers).

    :meth:`update` takes a micro-batch in arrival order and returns the alert events it
    caused, in order (class alerts carry ``label``). :attr:`last_scores` holds each
    sample's window score where the sample completed a window (NaN elsewhere) and
    :attr:`last_status` 1 for a rejected sample (NaN/Inf value or timestamp), else 0.
    """

    def __init__(
        self,
        model: Model,
        *,
        params: DetectorParams | None = None,
        capacity: int = 1024,
        threads: int | None = None,
        device: str = "cpu",
        normal_class: str | None = None,
        min_probability: float | None = None,
        consecutive: int | None = None,
        **overrides: Any,
    ) -> None:
        spec = model.window
        if spec is None:
            raise ShapeError(f"model {model.name!r} declares no window: use streamlstm.Detector")
        self.model, self.spec = model, spec
        self.axes = model.input_size
        self.classifier = spec.output in CLASSIFIER_OUTPUTS
        self.classes: tuple[str, ...] = ()
        self.class_params: ClassAlertParams | None = None
        self.calibration: Calibration | None = None  # autoencoders: model.calibration parsed
        self.params: DetectorParams | None = None
        self._scoring: Scoring | None = None
        class_options = {
            "normal_class": normal_class,
            "min_probability": min_probability,
            "consecutive": consecutive,
        }
        if self.classifier:
            if params is not None:
                raise ConfigError(
                    "params (DetectorParams) are for autoencoders; a window classifier "
                    "takes normal_class, min_probability and consecutive"
                )
            self._set_up_classifier(class_options, overrides)
        else:
            self._set_up_autoencoder(class_options, overrides, params)
        self.model_id = str(model.metadata.get("model_id") or f"{model.name}@{model.sha256[:12]}")
        self.device = device
        self.bank: WindowBank = model.windows(capacity, threads=threads, device=device)
        self._alloc_rows(self.bank.capacity)
        self.last_scores = np.zeros(0, np.float64)
        self.last_status = np.zeros(0, np.int8)

    def _set_up_classifier(self, options: dict[str, Any], overrides: Mapping[str, Any]) -> None:
        model, spec = self.model, self.spec
        if spec.output == "last" and not spec.classes:
            raise ConfigError(
                f"model {model.name!r}: window output 'last' without class "
                "names is a regression head; alerts need class names "
                "(--classes) or output 'probabilities'"
            )
        if overrides:
            raise ConfigError(
                f"window classifier: unknown option(s) {sorted(overrides)} "
                "(known: normal_class, min_probability, consecutive)"
            )
        self.classes = class_names(model)
        given = {k: v for k, v in options.items() if v is not None}
        normal = given.pop("normal_class", None) or (
            DEFAULT_NORMAL_CLASS if DEFAULT_NORMAL_CLASS in self.classes else self.classes[0]
        )
        if normal not in self.classes:
            raise ConfigError(
                f"normal_class {normal!r} is not one of the model's classes "
                f"({', '.join(self.classes)})"
            )
        try:
            self.class_params = ClassAlertParams(normal, **given)
        except TypeError as exc:
            raise ConfigError(f"window classifier options: {exc}") from None
        self._normal = self.classes.index(normal)

    def _set_up_autoencoder(
        self,
        options: dict[str, Any],
        overrides: Mapping[str, Any],
        params: DetectorParams | None,
    ) -> None:
        model = self.model
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for window classifiers, and model "
                f"{model.name!r} is an autoencoder ({self.spec.describe()})"
            )
        if model.output_size != model.input_size:
            raise ConfigError(
                f"model {model.name!r}: window output 'every' is scored as a "
                f"reconstruction of the input, but it has {model.output_size} "
                f"outputs for {model.input_size} inputs"
            )
        calibration = Calibration.from_model(model) if model.calibration else None
        if calibration is None or calibration.score != "reconstruction":
            raise ConfigError(
                f"model {model.name!r} is a window autoencoder without a "
                "reconstruction calibration: run streamlstm.detect."
                "calibrate_reconstruction on normal data first"
            )
        self.calibration = calibration
        self.params = params_from(calibration, overrides, step_seconds(model), base=params)
        self._scoring = scoring_from(calibration)

    # -- per-row arrays -------------------------------------------------------------------
    def _alloc_rows(self, capacity: int) -> None:
        self._istate = np.zeros((capacity, N_INT), np.int64)
        self._fstate = np.zeros((capacity, N_FLOAT), np.float64)
        self._clear_row(slice(None))

    def _sync_capacity(self) -> None:
        old = self._istate.shape[0]
        if self.bank.capacity != old:
            istate, fstate = self._istate, self._fstate
            self._alloc_rows(self.bank.capacity)
            self._istate[:old], self._fstate[:old] = istate, fstate

    def _clear_row(self, row: int | slice | np.ndarray) -> None:
        self._istate[row] = 0
        self._istate[row, I_LABEL] = self._istate[row, I_VERDICT] = -1
        self._fstate[row] = 0.0
        self._fstate[row, F_BELOW] = np.nan

    # -- stepping -------------------------------------------------------------------------
    def prime(
        self, sensor_ids: Sequence[Hashable] | np.ndarray, samples: Any, timestamps: Any
    ) -> None:
        """Feed known-normal samples: windows are scored and counted (towards ``warmup``),
        no alert starts or ends."""
        self.update(sensor_ids, samples, timestamps, alert=False)

    def update(
        self,
        sensor_ids: Sequence[Hashable] | np.ndarray,
        samples: Any,
        timestamps: Any,
        *,
        alert: bool = True,
    ) -> list[AlertEvent]:
        """Feed a micro-batch (``samples`` ``(M, D)`` in sensor units, ``timestamps``
        ``(M,)`` s); return the alert events the windows it completed caused."""
        samples, times = as_timed_batch(
            sensor_ids, samples, timestamps, self.model.dtype, self.axes
        )
        count = samples.shape[0]
        bad = ~np.isfinite(times)
        scoring = self._scoring
        if bad.any() or (scoring is not None and scoring.masked):
            samples = samples.copy()
            samples[bad] = np.nan  # a bad timestamp rejects its sample, as when streaming
            if scoring is not None and scoring.masked:  # masked channels: their normal fill
                masked = scoring.mask == 0.0
                samples[:, masked] = scoring.fill[masked]
        bad |= ~np.isfinite(samples).all(axis=1)
        out = self.bank.push(sensor_ids, samples)
        self._sync_capacity()
        self.last_status = bad.astype(np.int8)
        self.last_scores = np.full(count, np.nan)
        if not len(out):
            return []
        rows = self.bank.rows(out.sensors)
        at = out.batch_index
        if self.classifier:
            probs = window_probabilities(self.spec.output, out.values)
            return self._classify(out.sensors, rows, probs, times[at], at, alert)
        assert self._scoring is not None
        return self._score(
            out.sensors, rows, reconstruction_scores(out, self._scoring), times[at], at, alert
        )

    def _classify(
        self,
        sensors: list[Hashable],
        rows: np.ndarray,
        probs: np.ndarray,
        times: np.ndarray,
        at: np.ndarray,
        alert: bool,
    ) -> list[AlertEvent]:
        """The class alert machine over the windows of one push, in completion order."""
        params = self.class_params
        assert params is not None
        others = probs.copy()
        others[:, self._normal] = -1.0
        candidate = np.argmax(others, axis=1)
        score = others[np.arange(len(candidate)), candidate]
        strong = np.where(score >= params.min_probability, candidate, -1)
        top = np.argmax(probs, axis=1)
        self.last_scores[at] = score
        ist, fst = self._istate, self._fstate
        events: list[AlertEvent] = []
        for i, row in enumerate(rows.tolist()):
            state, floats = ist[row], fst[row]
            state[I_WINDOWS] += 1
            floats[F_SCORE] = score[i]
            label = state[I_LABEL]
            # Hysteresis: an open alert's class holds while it is the most probable one.
            verdict = (
                strong[i]
                if strong[i] >= 0
                else label
                if label >= 0 and top[i] == label
                else self._normal
            )
            if state[I_VERDICT] == verdict:
                state[I_RUN] += 1
            else:
                state[I_VERDICT], state[I_RUN] = verdict, 1
            if label >= 0:
                floats[F_PEAK] = max(floats[F_PEAK], probs[i, label])
            target = -1 if verdict == self._normal else int(verdict)
            if not alert or state[I_RUN] < params.consecutive or target == label:
                continue
            t = float(times[i])
            if label >= 0:
                events.append(
                    self._event(
                        sensors[i],
                        "end",
                        t,
                        float(probs[i, label]),
                        float(floats[F_PEAK]),
                        t - floats[F_START],
                        self.classes[label],
                    )
                )
            if target >= 0:
                floats[F_PEAK], floats[F_START] = probs[i, target], t
                events.append(
                    self._event(
                        sensors[i],
                        "start",
                        t,
                        float(probs[i, target]),
                        float(probs[i, target]),
                        0.0,
                        self.classes[target],
                    )
                )
            state[I_LABEL], state[I_ALERT] = target, int(target >= 0)
        return events

    def _score(
        self,
        sensors: list[Hashable],
        rows: np.ndarray,
        raw: np.ndarray,
        times: np.ndarray,
        at: np.ndarray,
        alert: bool,
    ) -> list[AlertEvent]:
        """The autoencoder's smoothing and alert machine over the windows of one push."""
        params = self.params
        assert params is not None
        ist, fst = self._istate, self._fstate
        events: list[AlertEvent] = []
        for i, row in enumerate(rows.tolist()):
            state, floats = ist[row], fst[row]
            state[I_WINDOWS] += 1
            smoothed = (
                raw[i]
                if not state[I_HAS_SCORE]
                else params.alpha * raw[i] + (1 - params.alpha) * floats[F_SCORE]
            )
            floats[F_SCORE], state[I_HAS_SCORE] = smoothed, 1
            self.last_scores[at[i]] = smoothed
            if state[I_WINDOWS] <= params.warmup:
                state[I_RUN] = 0
                continue
            t = float(times[i])
            if not state[I_ALERT]:
                state[I_RUN] = state[I_RUN] + 1 if smoothed > params.threshold else 0
                if state[I_RUN] >= params.debounce and alert:
                    state[I_ALERT] = 1
                    floats[F_PEAK], floats[F_START], floats[F_BELOW] = smoothed, t, np.nan
                    events.append(self._event(sensors[i], "start", t, smoothed, smoothed, 0.0))
                continue
            floats[F_PEAK] = max(floats[F_PEAK], smoothed)
            if smoothed >= params.end_threshold:
                floats[F_BELOW] = np.nan
                continue
            if np.isnan(floats[F_BELOW]):
                floats[F_BELOW] = t
            if t - floats[F_BELOW] >= params.quiet_time and alert:
                state[I_ALERT] = state[I_RUN] = 0
                floats[F_BELOW] = np.nan
                events.append(
                    self._event(
                        sensors[i], "end", t, smoothed, float(floats[F_PEAK]), t - floats[F_START]
                    )
                )
        return events

    def _event(
        self,
        sensor: Hashable,
        kind: EventKind,
        t: float,
        score: float,
        peak: float,
        duration: float,
        label: str | None = None,
        *,
        reason: str | None = None,
    ) -> AlertEvent:
        if isinstance(sensor, np.generic):
            sensor = sensor.item()
        if self.class_params is not None:
            threshold = self.class_params.min_probability
        else:
            assert self.params is not None
            threshold = self.params.threshold if kind == "start" else self.params.end_threshold
        return AlertEvent(
            sensor,
            kind,
            t,
            float(score),
            threshold,
            float(peak),
            float(duration),
            self.model_id,
            label,
            reason,
        )

    # -- sensors --------------------------------------------------------------------------
    @property
    def sensors(self) -> list[Hashable]:
        """Known sensor ids, in first-seen order."""
        return self.bank.sensors

    def _row(self, sensor: Hashable) -> int:
        if sensor not in self.bank:
            raise KeyError(sensor)
        return self.bank.row(sensor)

    def rejected(self, sensor: Hashable) -> int:
        """How many samples of ``sensor`` were rejected (NaN/Inf value or timestamp)."""
        return self.bank.rejected(sensor)

    def alerting(self, sensor: Hashable) -> bool:
        """Whether ``sensor`` has an open alert."""
        return bool(self._istate[self._row(sensor), I_ALERT])

    def label(self, sensor: Hashable) -> str | None:
        """The class of ``sensor``'s open alert (classifiers; None when none is open)."""
        label = int(self._istate[self._row(sensor), I_LABEL])
        return self.classes[label] if label >= 0 else None

    def score(self, sensor: Hashable) -> float:
        """``sensor``'s latest window score (NaN before its first window)."""
        row = self._row(sensor)
        return float(self._fstate[row, F_SCORE]) if self._istate[row, I_WINDOWS] else np.nan

    def forget(self, sensor: Hashable, t: float = math.nan) -> list[AlertEvent]:
        """Drop ``sensor``: :meth:`evict` for one known sensor (an unknown one raises); the
        ``end`` event of its open alert, if any, at ``t``."""
        self._row(sensor)
        return self.evict([sensor], [t])

    def evict(
        self, sensors: Sequence[Hashable], t: Sequence[float] | None = None
    ) -> list[AlertEvent]:
        """Drop many sensors at once (unknown ids are ignored); their rows are reused.
        Returns the ``end`` events of their open alerts, as :meth:`Detector.evict
        <streamlstm.detect.Detector.evict>` does (a class alert's carries its class)."""
        events = self._ends(sensors, eviction_times(len(sensors), t), EVICTED)
        self._clear_row(self.bank.forget_many(sensors))
        return events

    def reset(self, sensor: Hashable | None = None, t: float = math.nan) -> list[AlertEvent]:
        """Back to a fresh state (first window ``W`` samples on) for one sensor or all; the
        ``end`` events of open alerts, at ``t``, as :meth:`Detector.reset
        <streamlstm.detect.Detector.reset>` returns them."""
        row = slice(None) if sensor is None else self._row(sensor)
        sensors = [sensor] if sensor is not None else self._alerting()
        events = self._ends(sensors, [t] * len(sensors), RESET)
        self.bank.reset(sensor)
        self._clear_row(row)
        return events

    def _alerting(self) -> list[Hashable]:
        """The sensors with an open alert."""
        return [s for s in self.bank.sensors if self._istate[self.bank.row(s), I_ALERT]]

    def _ends(
        self, sensors: Sequence[Hashable], times: Sequence[float], reason: str
    ) -> list[AlertEvent]:
        """The ``end`` events, for ``reason``, of the open alerts among ``sensors`` (a class
        alert's carries its class)."""
        events = []
        for sensor, at in zip(sensors, times, strict=True):
            if sensor not in self.bank:
                continue
            row = self.bank.row(sensor)
            if self._istate[row, I_ALERT]:
                label = int(self._istate[row, I_LABEL])
                score, peak, start = self._fstate[row, [F_SCORE, F_PEAK, F_START]]
                events.append(
                    self._event(
                        sensor,
                        "end",
                        at,
                        score,
                        peak,
                        at - start,
                        self.classes[label] if label >= 0 else None,
                        reason=reason,
                    )
                )
        return events

    # -- snapshots ------------------------------------------------------------------------
    def export_state(self) -> WindowDetectorState:
        """Every sensor's window ring and alert state (copies of its arrays);
        :meth:`import_state` restores it bit for bit."""
        copy = self.copy_rows()
        copy.advance(copy.bound)
        return copy.state()

    def copy_rows(self) -> RowCopy[WindowDetectorState]:
        """:meth:`export_state` in slices (see :class:`~streamlstm.detect.detector.RowCopy`)."""
        sensors = self.bank.sensors

        def build(sensors: list[Hashable], arrays: dict[str, Any]) -> WindowDetectorState:
            return WindowDetectorState(self.model_id, sensors, **arrays)

        return RowCopy(
            sensors, self.bank.rows(sensors), self.bank.row_bound, self._row_arrays, build
        )

    def _row_arrays(self) -> dict[str, np.ndarray]:
        return {**self.bank.row_arrays(), "istate": self._istate, "fstate": self._fstate}

    def import_state(self, state: AnyDetectorState) -> None:
        """Restore sensors from :meth:`export_state` output (sensors not in it are kept).

        Checked against the model before anything changes (:class:`ShapeError`): every
        array's row shape, class indices, finite values, consistent sample counts.
        """
        if not isinstance(state, WindowDetectorState):
            raise wrong_kind("window detector snapshot", state, WindowDetectorState)
        arrays = state.arrays()
        n = len(state.sensors)
        for name, live in self._row_arrays().items():
            if arrays[name].shape != (n, *live.shape[1:]):
                raise ShapeError(
                    f"window detector snapshot: {name} has shape "
                    f"{arrays[name].shape}, expected {(n, *live.shape[1:])} "
                    "(a different model?)"
                )
        labels = arrays["istate"][:, I_LABEL]
        if np.any((labels < -1) | (labels >= max(len(self.classes), 1))):
            raise ShapeError("window detector snapshot: class index out of range")
        floats = np.delete(arrays["fstate"], F_BELOW, axis=1)
        if not np.all(np.isfinite(floats)):
            raise ShapeError("window detector snapshot: non-finite values in fstate")
        rows = self.bank.load_rows(
            state.sensors, {name: arrays[name] for name in WindowDetectorState.BANK_ARRAYS}
        )
        self._sync_capacity()
        self._istate[rows] = arrays["istate"]
        self._fstate[rows] = arrays["fstate"]
