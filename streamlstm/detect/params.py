"""Detector parameters: how scores become alerts, and what a user may override.

They come from the model's calibration (a
:class:`~streamlstm.detect.calibration_record.Calibration`, whose module documents what
calibration stores and how scores are computed) and the caller's overrides.

``threshold`` is ``quantile_score * margin``: the score that normal data exceed with
probability ``exceedance`` per model step (from the declared false-alarm budget, see
:func:`~streamlstm.detect.calibration.calibrate`), times a safety margin on the same
residual scale. Overriding ``margin`` recomputes it from ``quantile_score``; overriding
``threshold`` sets it outright. Changing ``alpha`` without recalibrating keeps the
calibrated ``quantile_score`` (smoothing changes the score distribution, so recalibrate
when you change it for good).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from .calibration_record import Calibration
from .durations import UNIT_NAMES, resolve_durations

# Index of each parameter in the float64 vector the kernel reads.
P_ALPHA = 0
P_THRESHOLD = 1
P_END_THRESHOLD = 2
P_DEBOUNCE = 3
P_QUIET_TIME = 4
P_WARMUP = 5
P_DIRECT = 6
P_SCORE_INDEX = 7
P_DELTA = 8  # 1: the model predicts x[t+1] - x[t]
P_POOL = 9  # 0: mean square of the whitened components, 1: their largest square
P_LEVEL_ALPHA = 10  # level term: EWMA weight with which its centre follows the input (0: off)
P_LEVEL_BOUND = 11  # level term: how far the centre may move, in normal standard deviations
N_PARAMS = 12


@dataclasses.dataclass(frozen=True)
class DetectorParams:
    """How scores become alerts (all per sensor).

    ``alpha``: EWMA weight of the newest raw score (1 = no smoothing);
    ``threshold``: an alert may start when the smoothed score is above it;
    ``hysteresis``: the alert ends only below ``baseline + hysteresis * (threshold -
    baseline)`` (0 < h <= 1), where ``baseline`` is the typical (median) score of normal
    data from calibration (0 if unknown): on the residual scale normal scores sit near 1,
    so an end threshold of ``hysteresis * threshold`` could lie below them and an alert
    would never end;
    ``debounce``: this many consecutive scored samples above the threshold start an alert;
    ``quiet_time``: seconds the score must stay below the end threshold before the alert
    ends (0: the first sample below ends it); ``warmup``: model steps after a sensor's
    first sample (or a reset) during which nothing alerts, while the recurrent state
    settles.
    """

    threshold: float
    alpha: float = 0.1
    hysteresis: float = 0.3
    debounce: int = 3
    quiet_time: float = 1.0
    warmup: int = 50
    baseline: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError(f"threshold must be a finite number > 0, got {self.threshold}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0 < self.hysteresis <= 1:
            raise ConfigError(f"hysteresis must be in (0, 1], got {self.hysteresis}")
        if int(self.debounce) != self.debounce or self.debounce < 1:
            raise ConfigError(f"debounce must be an integer >= 1, got {self.debounce}")
        if not (math.isfinite(self.quiet_time) and self.quiet_time >= 0):
            raise ConfigError(f"quiet_time must be >= 0 seconds, got {self.quiet_time}")
        if not (math.isfinite(self.baseline) and self.baseline >= 0):
            raise ConfigError(f"baseline must be a finite number >= 0, got {self.baseline}")
        if int(self.warmup) != self.warmup or self.warmup < 0:
            raise ConfigError(f"warmup must be an integer >= 0, got {self.warmup}")

    @property
    def end_threshold(self) -> float:
        baseline = min(self.baseline, self.threshold)
        return baseline + self.hysteresis * (self.threshold - baseline)


#: Parameters a caller may override, by their stored names (plus ``margin``, which
#: rescales the threshold); durations are given with their unit (:data:`OPTION_NAMES`).
OVERRIDABLE = ("threshold", "margin", "alpha", "hysteresis", "debounce", "quiet_time", "warmup")
#: The override names a caller uses: durations with their unit (:mod:`.durations`).
OPTION_NAMES = ("threshold", "margin", "alpha", "hysteresis", *UNIT_NAMES)


@dataclasses.dataclass(frozen=True, eq=False)
class Scoring:
    """How a model's output becomes a raw score, as arrays for the kernel."""

    direct: bool
    center: np.ndarray  # (D,) float64, residual models only (else empty)
    whiten: np.ndarray  # (D, D) float64, residual models only (else (0, 0))
    score_index: int
    level_center: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    level_whiten: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    # Residual models: (D,) 1 = scored / 0 = masked, and the value a masked channel is fed
    # (empty for direct models, which reject a sample with any NaN).
    mask: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    fill: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    delta: bool = False
    pool_max: bool = False  # the largest whitened component instead of the RMS
    # Guarded drift adaptation of the level term's centre (see :mod:`.calibration_record`):
    # EWMA weight per scored step (0: off), bound in units of level_scale (D,).
    level_alpha: float = 0.0
    level_bound: float = 0.0
    level_scale: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @property
    def masked(self) -> int:
        """How many input channels are masked (never scored)."""
        return int(np.sum(self.mask == 0.0))


def params_from(
    calibration: Calibration,
    overrides: Mapping[str, Any],
    period: float | None,
    base: DetectorParams | None = None,
) -> DetectorParams:
    """Detector parameters from ``calibration`` (or all of them from ``base`` when given),
    with ``overrides`` applied (durations by
    :func:`~streamlstm.detect.durations.resolve_durations`, ``period`` being the seconds
    per model step, ``None`` without a sample rate)."""
    if base is not None and not isinstance(base, DetectorParams):
        raise ConfigError(f"params must be a DetectorParams, got {type(base).__name__}")
    unknown = set(overrides) - set(OVERRIDABLE) - set(OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown detector parameter(s): {sorted(unknown)} (known: {', '.join(OPTION_NAMES)})"
        )
    overrides = resolve_durations(overrides, period, stacklevel=3)
    values: dict[str, Any] = (
        dataclasses.asdict(base)
        if base is not None
        else {
            f.name: getattr(calibration, f.name)
            for f in dataclasses.fields(DetectorParams)
            if getattr(calibration, f.name) is not None
        }
    )
    if "margin" in overrides:
        if calibration.quantile_score is None:
            raise ConfigError("margin override needs calibration['quantile_score']")
        values["threshold"] = calibration.quantile_score * float(overrides["margin"])
    values.update({k: v for k, v in overrides.items() if k != "margin"})
    if "threshold" not in values:
        raise ConfigError("model calibration has no threshold")
    try:
        typed: dict[str, Any] = {
            k: (int(v) if k in ("debounce", "warmup") else float(v)) for k, v in values.items()
        }
        return DetectorParams(**typed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector parameters: {exc}") from None


def scoring_from(calibration: Calibration) -> Scoring:
    """The scoring arrays for the kernel, from a calibration checked against its model."""
    if calibration.score == "direct":
        return Scoring(True, np.zeros(0), np.zeros((0, 0)), calibration.score_index or 0)
    assert calibration.center is not None and calibration.whiten is not None
    width = calibration.center.size
    level_center, level_whiten = np.zeros(0), np.zeros((0, 0))
    if calibration.level_center is not None and calibration.level_whiten is not None:
        level_center, level_whiten = calibration.level_center, calibration.level_whiten
    level_alpha, level_bound, level_scale = 0.0, 0.0, np.zeros(0)
    if level_center.size and calibration.level_alpha:
        level_alpha, level_bound = calibration.level_alpha, calibration.level_bound or 0.0
        assert calibration.level_scale is not None  # checked with level_alpha
        level_scale = calibration.level_scale
    return Scoring(
        False,
        calibration.center,
        calibration.whiten,
        0,
        level_center,
        level_whiten,
        np.ones(width) if calibration.mask is None else calibration.mask,
        np.zeros(width) if calibration.fill is None else calibration.fill,
        calibration.target == "delta",
        calibration.pool == "max",
        level_alpha,
        level_bound,
        level_scale,
    )


def pack_params(params: DetectorParams, scoring: Scoring) -> np.ndarray:
    """The float64 parameter vector the kernel reads (indices ``P_*``)."""
    vector = np.zeros(N_PARAMS, np.float64)
    vector[P_ALPHA] = params.alpha
    vector[P_THRESHOLD] = params.threshold
    vector[P_END_THRESHOLD] = params.end_threshold
    vector[P_DEBOUNCE] = params.debounce
    vector[P_QUIET_TIME] = params.quiet_time
    vector[P_WARMUP] = params.warmup
    vector[P_DIRECT] = 1.0 if scoring.direct else 0.0
    vector[P_SCORE_INDEX] = scoring.score_index
    vector[P_DELTA] = 1.0 if scoring.delta else 0.0
    vector[P_POOL] = 1.0 if scoring.pool_max else 0.0
    vector[P_LEVEL_ALPHA] = scoring.level_alpha
    vector[P_LEVEL_BOUND] = scoring.level_bound
    return vector
