"""Detector parameters: what calibration stores and what a user may override.

``model.calibration`` is a JSON-able dict (schema version 3, or 2 when it uses neither
``pool="max"`` nor a level term: see :func:`schema_version`)::

    {"version": 3, "score": "residual" | "direct" | "reconstruction",
     "metric": "diagonal" | "mahalanobis",      # residual models
     "target": "level" | "delta",                # residual models: what the model predicts
                                                 # (reconstruction: a window autoencoder,
                                                 # scored with center/whiten/mask/fill of its
                                                 # reconstruction error, see detect.windowed)
     "center": [D], "whiten": [[D x D]],         # residual models
     "pool": "rms" | "max",                      # residual models (default "rms")
     "mask": [D], "fill": [D],                   # residual models: 1 = scored channel, 0 =
                                                 # masked (fed ``fill``, never scored)
     "level_center": [D], "level_whiten": [[D x D]],  # optional level term
     "level_alpha": 0.0, "level_bound": 3.0, "level_scale": [D],  # its drift adaptation
     "level_balance": true, "level_gain": ...,   # level_whiten scaled to its own tail
     "score_index": 0,                           # direct models: which output is the score
     "alpha": ..., "false_alarms_per_day": ..., "exceedance": ..., "tail": ...,
     "quantile_score": ..., "margin": ..., "threshold": ..., "baseline": ...,
     "debounce": ..., "hysteresis": ..., "quiet_time": ..., "warmup": ...,
     "samples": ..., "scores": ..., "recordings": ...}

A residual score is on the residual scale: with ``pool="rms"`` the root mean square of
the whitened residuals ``W (e - center)`` over the channels scored for that sample (a
score of 2 is twice the typical normal error, whatever the channel count); with
``pool="max"`` the largest absolute whitened component (level term included), so a
fault that shows in one channel of many is not diluted by the quiet ones (normal scores
then sit near the typical maximum of that many components, not near 1).

``level_alpha`` > 0 (with a level term) adapts the level term to drift, guarded: each
sensor's level centre starts at ``level_center`` and, after a scored step with no alert
open and the smoothed score at or below the threshold, moves ``level_alpha`` of the way
towards that step's input, never further than ``level_bound`` normal standard deviations
(``level_scale``, per channel) from ``level_center``. Frozen while alerting, so a fault
does not become normal. Risks: a fault that grows more slowly than the adaptation (up to
the bound) is learnt instead of alerted; a centre that moved just before an alert stays
there, so the alert can stay open after the level returns. ``target``: a ``"level"``
model predicts ``x[t+1]`` itself; a ``"delta"`` model predicts ``x[t+1] - x[t]``, and the
detector adds ``x[t]`` back, so the prediction never chases an absolute level.

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
from ..model import Model
from .durations import UNIT_NAMES, resolve_durations, step_seconds

#: Version 3 marks a calibration whose keys an older build (which reads only 2) would
#: misread: ``pool="max"`` (read as RMS) or any level term key (``level_*``). One
#: without them is written as version 2, so older builds still read it; both are read.
SCHEMA_VERSION = 3
BASE_VERSION = 2
READABLE_VERSIONS = (BASE_VERSION, SCHEMA_VERSION)
#: The level term's keys (a calibration without them scores the residual alone).
LEVEL_KEYS = (
    "level_center",
    "level_whiten",
    "level_alpha",
    "level_bound",
    "level_scale",
    "level_balance",
    "level_gain",
)
SCORE_KINDS = ("residual", "direct", "reconstruction")
TARGETS = ("level", "delta")
POOLS = ("rms", "max")

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
    # Guarded drift adaptation of the level term's centre (see DetectorParams' module doc):
    # EWMA weight per scored step (0: off), bound in units of level_scale (D,).
    level_alpha: float = 0.0
    level_bound: float = 0.0
    level_scale: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @property
    def masked(self) -> int:
        """How many input channels are masked (never scored)."""
        return int(np.sum(self.mask == 0.0))


def schema_version(cal: Mapping[str, Any]) -> int:
    """The version to write for ``cal``: :data:`SCHEMA_VERSION` when it uses max pooling
    or a level term (an older build would read them wrong), else :data:`BASE_VERSION`."""
    uses_new = cal.get("pool", "rms") != "rms" or any(k in cal for k in LEVEL_KEYS)
    return SCHEMA_VERSION if uses_new else BASE_VERSION


def require_calibration(model: Model) -> Mapping[str, Any]:
    cal = model.calibration
    if not cal:
        raise ConfigError(
            f"model {model.name!r} has no calibration: run `streamlstm calibrate` "
            "(or streamlstm.detect.calibrate) on normal data first"
        )
    if cal.get("version") not in READABLE_VERSIONS:
        raise ConfigError(
            f"model calibration: unsupported version {cal.get('version')!r} "
            f"(this release reads versions {READABLE_VERSIONS}: run `streamlstm "
            "calibrate` on normal data again)"
        )
    if cal.get("score") not in SCORE_KINDS:
        raise ConfigError(
            f"model calibration: score must be one of {SCORE_KINDS}, got {cal.get('score')!r}"
        )
    return cal


def params_from(model: Model, overrides: Mapping[str, Any]) -> DetectorParams:
    """Detector parameters from ``model.calibration``, with ``overrides`` applied
    (durations by :func:`~streamlstm.detect.durations.resolve_durations`)."""
    unknown = set(overrides) - set(OVERRIDABLE) - set(OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown detector parameter(s): {sorted(unknown)} (known: {', '.join(OPTION_NAMES)})"
        )
    overrides = resolve_durations(overrides, step_seconds(model), stacklevel=3)
    cal = require_calibration(model)
    values: dict[str, Any] = {
        f.name: cal[f.name] for f in dataclasses.fields(DetectorParams) if f.name in cal
    }
    if "margin" in overrides:
        if "quantile_score" not in cal:
            raise ConfigError("margin override needs calibration['quantile_score']")
        values["threshold"] = float(cal["quantile_score"]) * float(overrides["margin"])
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


def scoring_from(model: Model, width: int) -> Scoring:
    """The scoring arrays for ``model``; ``width`` is the model's input (= output) width."""
    cal = require_calibration(model)
    if cal["score"] == "direct":
        index = int(cal.get("score_index", 0))
        if not 0 <= index < model.output_size:
            raise ConfigError(
                f"calibration score_index {index} out of range "
                f"(model has {model.output_size} outputs)"
            )
        return Scoring(True, np.zeros(0), np.zeros((0, 0)), index)
    require_next_step(model, width)
    center, whiten = _affine_pair(cal, "center", "whiten", width)
    level_center, level_whiten = np.zeros(0), np.zeros((0, 0))
    if "level_center" in cal or "level_whiten" in cal:
        level_center, level_whiten = _affine_pair(cal, "level_center", "level_whiten", width)
    mask = _vector(cal, "mask", width, np.ones(width))
    fill = _vector(cal, "fill", width, np.zeros(width))
    if not np.all((mask == 0.0) | (mask == 1.0)) or not mask.any():
        raise ConfigError("model calibration: mask must hold 0/1 per channel, at least one 1")
    target = cal.get("target", "level")
    if target not in TARGETS:
        raise ConfigError(f"model calibration: target must be one of {TARGETS}, got {target!r}")
    pool = cal.get("pool", "rms")
    if pool not in POOLS:
        raise ConfigError(f"model calibration: pool must be one of {POOLS}, got {pool!r}")
    level_alpha, level_bound, level_scale = 0.0, 0.0, np.zeros(0)
    if level_center.size and float(cal.get("level_alpha", 0.0)) != 0.0:
        level_alpha, level_bound = float(cal["level_alpha"]), float(cal.get("level_bound", 0.0))
        check_level_adaptation(level_alpha, level_bound, "model calibration: ")
        level_scale = _vector(cal, "level_scale", width, np.zeros(0))
        if level_scale.size == 0 or np.any(level_scale < 0):
            raise ConfigError(
                f"model calibration: level_alpha needs level_scale, {width} numbers >= 0"
            )
    return Scoring(
        False,
        np.ascontiguousarray(center),
        np.ascontiguousarray(whiten),
        0,
        np.ascontiguousarray(level_center),
        np.ascontiguousarray(level_whiten),
        mask,
        fill,
        target == "delta",
        pool == "max",
        level_alpha,
        level_bound,
        level_scale,
    )


def check_level_adaptation(alpha: float, bound: float, prefix: str = "") -> None:
    """A clear error for an adaptation weight outside [0, 1) or a bound that is not > 0."""
    if not (math.isfinite(alpha) and 0 <= alpha < 1):
        raise ConfigError(f"{prefix}level_alpha must be in [0, 1), got {alpha}")
    if alpha and not (math.isfinite(bound) and bound > 0):
        raise ConfigError(f"{prefix}level_bound must be a finite number > 0, got {bound}")


def require_next_step(model: Model, width: int) -> None:
    """A clear error when ``model`` is not a next-step predictor of its ``width`` inputs."""
    if model.output_size != width:
        raise ConfigError(
            f"model {model.name!r} is not a next-step predictor: it has {model.output_size} "
            f"outputs for {width} inputs, and a residual score needs one prediction per "
            "input. If its output is an anomaly score or probability, use direct-score mode "
            "(calibrate(..., score='direct', score_index=k) or `streamlstm calibrate --score "
            "direct`)"
        )


def _vector(cal: Mapping[str, Any], key: str, width: int, default: np.ndarray) -> np.ndarray:
    if key not in cal:
        return default
    try:
        value = np.asarray(cal[key], np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model calibration: bad {key} ({exc})") from None
    if value.shape != (width,) or not np.all(np.isfinite(value)):
        raise ConfigError(f"model calibration: {key} must be {width} finite numbers")
    return np.ascontiguousarray(value)


def _affine_pair(
    cal: Mapping[str, Any], center_key: str, whiten_key: str, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """A validated ``(width,)`` centre and ``(width, width)`` whitening matrix from ``cal``."""
    try:
        center = np.asarray(cal[center_key], np.float64)
        whiten = np.asarray(cal[whiten_key], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model calibration: bad {center_key}/{whiten_key} ({exc})") from None
    if center.shape != (width,) or whiten.shape != (width, width):
        raise ConfigError(
            f"model calibration: {center_key} {center.shape} / {whiten_key} "
            f"{whiten.shape} do not match width {width}"
        )
    if not (np.all(np.isfinite(center)) and np.all(np.isfinite(whiten))):
        raise ConfigError(f"model calibration: non-finite {center_key}/{whiten_key}")
    return center, whiten


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
