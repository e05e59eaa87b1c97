"""The calibration record: ``model.calibration`` parsed and validated once.

``model.calibration`` stays a JSON-able dict (what a model file stores and a user sees);
:meth:`Calibration.from_model` reads it into a frozen, typed :class:`Calibration`, with
every check the detectors need, and :meth:`Calibration.to_dict` writes it back. The dict
(schema version 3, or 2 when it uses neither ``pool="max"`` nor a level term: see
:func:`schema_version`)::

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
     "mask_names": [...], "mask_configured": ...,  # the masked channels; named by the user?
     "level_center": [D], "level_whiten": [[D x D]],  # optional level term
     "level_alpha": 0.0, "level_bound": 3.0, "level_scale": [D],  # its drift adaptation
     "level_balance": true, "level_gain": ...,   # level_whiten scaled to its own tail
     "level_fit": "cross",                       # its tail read out of sample (default
                                                 # "pooled": on the data it was fitted to)
     "score_index": 0,                           # direct models: which output is the score
     "alpha": ..., "false_alarms_per_day": ..., "quantile": ..., "exceedance": ...,
     "tail": ..., "tail_supported": ..., "quantile_score": ..., "margin": ...,
     "threshold": ..., "baseline": ...,
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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError
from ..model import Model

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
    "level_fit",
)
#: How the level term's threshold share was measured: on the data its statistics came
#: from (``pooled``), or each time block against the statistics of the others (``cross``).
LEVEL_FITS = ("pooled", "cross")
SCORE_KINDS = ("residual", "direct", "reconstruction")
TARGETS = ("level", "delta")
POOLS = ("rms", "max")

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Budget:
    """The false-alarm budget the threshold was set for: ``false_alarms_per_day``, or
    ``quantile`` of the normal scores instead (the other one ``None``)."""

    false_alarms_per_day: float | None
    quantile: float | None


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """``model.calibration``, validated against its model (see the module doc for what
    each field means). ``None`` marks a key the dict does not hold; arrays are float64,
    of the model's input width ``D``. Build one with :meth:`from_model`."""

    score: str
    # How a residual or reconstruction error is scored (None for direct models).
    metric: str | None = None
    pool: str | None = None  # None: "rms"
    target: str | None = None  # None: "level"
    center: np.ndarray | None = None  # (D,)
    whiten: np.ndarray | None = None  # (D, D)
    mask: np.ndarray | None = None  # (D,) 1 = scored, 0 = masked; None: every channel
    fill: np.ndarray | None = None  # (D,) what a masked channel is fed; None: zeros
    mask_names: tuple[str, ...] | None = None
    mask_configured: bool | None = None
    # The optional level term and its guarded drift adaptation.
    level_center: np.ndarray | None = None  # (D,)
    level_whiten: np.ndarray | None = None  # (D, D)
    level_alpha: float | None = None
    level_bound: float | None = None
    level_scale: np.ndarray | None = None  # (D,)
    level_balance: bool | None = None
    level_gain: float | None = None
    level_fit: str | None = None  # None: "pooled"
    # Direct models: which output is the score.
    score_index: int | None = None
    # The alert parameters (DetectorParams' fields) and the threshold's provenance.
    alpha: float | None = None
    hysteresis: float | None = None
    debounce: int | None = None
    quiet_time: float | None = None
    warmup: int | None = None
    threshold: float | None = None
    budget: Budget | None = None
    exceedance: float | None = None
    tail: str | None = None
    tail_supported: bool | None = None
    quantile_score: float | None = None
    baseline: float | None = None
    margin: float | None = None
    # How much normal data the calibration saw.
    scores: int | None = None
    samples: int | None = None
    recordings: int | None = None

    @classmethod
    def from_model(cls, model: Model) -> Calibration:
        """``model.calibration`` parsed and checked against ``model`` (its version and
        score kind; a direct score's output index; a residual or reconstruction score's
        arrays, of the model's input width); a :class:`~streamlstm.errors.ConfigError`
        says what is wrong."""
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
        values: dict[str, Any] = {"score": cal["score"], **_alert_values(cal)}
        values.update(_bookkeeping(cal))
        if "score_index" in cal:
            values["score_index"] = _optional(cal, "score_index", int)
        if cal["score"] == "direct":
            index = values.get("score_index") or 0
            if not 0 <= index < model.output_size:
                raise ConfigError(
                    f"calibration score_index {index} out of range "
                    f"(model has {model.output_size} outputs)"
                )
        else:
            values.update(_error_scoring(cal, model))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict this record was read from (``version`` by
        :func:`schema_version`); ``from_model`` of a model holding it gives it back."""
        out: dict[str, Any] = {"version": BASE_VERSION}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, Budget):
                out.update(dataclasses.asdict(value))
            elif isinstance(value, np.ndarray):
                out[field.name] = value.tolist()
            elif isinstance(value, tuple):
                out[field.name] = list(value)
            else:
                out[field.name] = value
        out["version"] = schema_version(out)
        return out


def schema_version(cal: Mapping[str, Any]) -> int:
    """The version to write for ``cal``: :data:`SCHEMA_VERSION` when it uses max pooling
    or a level term (an older build would read them wrong), else :data:`BASE_VERSION`."""
    uses_new = cal.get("pool", "rms") != "rms" or any(k in cal for k in LEVEL_KEYS)
    return SCHEMA_VERSION if uses_new else BASE_VERSION


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


# -- parsing ------------------------------------------------------------------------------
#: The alert parameters a calibration stores (DetectorParams' fields), with their types.
_ALERT_TYPES: dict[str, Callable[[Any], Any]] = {
    "threshold": float,
    "alpha": float,
    "hysteresis": float,
    "debounce": int,
    "quiet_time": float,
    "warmup": int,
    "baseline": float,
}
#: Numbers and flags that record how the calibration was made.
_BOOKKEEPING_TYPES: dict[str, Callable[[Any], Any]] = {
    "mask_configured": bool,
    "level_alpha": float,
    "level_bound": float,
    "level_balance": bool,
    "level_gain": float,
    "level_fit": str,
    "exceedance": float,
    "tail": str,
    "tail_supported": bool,
    "quantile_score": float,
    "margin": float,
    "scores": int,
    "samples": int,
    "recordings": int,
}


def _alert_values(cal: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return {k: kind(cal[k]) for k, kind in _ALERT_TYPES.items() if k in cal}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector parameters: {exc}") from None


def _bookkeeping(cal: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: _optional(cal, k, kind) for k, kind in _BOOKKEEPING_TYPES.items() if k in cal}
    if "false_alarms_per_day" in cal or "quantile" in cal:
        values["budget"] = Budget(
            _optional(cal, "false_alarms_per_day", float), _optional(cal, "quantile", float)
        )
    if "mask_names" in cal:
        try:
            values["mask_names"] = tuple(str(name) for name in cal["mask_names"])
        except TypeError as exc:
            raise ConfigError(f"model calibration: bad mask_names ({exc})") from None
    return values


def _optional(cal: Mapping[str, Any], key: str, kind: Callable[[Any], _T]) -> _T | None:
    """``cal[key]`` as ``kind`` (``None`` when absent or stored as null)."""
    if cal.get(key) is None:
        return None
    try:
        return kind(cal[key])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model calibration: bad {key} ({exc})") from None


def _error_scoring(cal: Mapping[str, Any], model: Model) -> dict[str, Any]:
    """The checked fields that score a residual or reconstruction error."""
    width = model.input_size
    require_next_step(model, width)
    values: dict[str, Any] = {"metric": _optional(cal, "metric", str)}
    values["center"], values["whiten"] = _affine_pair(cal, "center", "whiten", width)
    if "level_center" in cal or "level_whiten" in cal:
        values["level_center"], values["level_whiten"] = _affine_pair(
            cal, "level_center", "level_whiten", width
        )
    values["mask"] = mask = _vector(cal, "mask", width)
    values["fill"] = _vector(cal, "fill", width)
    if mask is not None and (not np.all((mask == 0.0) | (mask == 1.0)) or not mask.any()):
        raise ConfigError("model calibration: mask must hold 0/1 per channel, at least one 1")
    values["target"] = target = cal.get("target")
    if target is not None and target not in TARGETS:
        raise ConfigError(f"model calibration: target must be one of {TARGETS}, got {target!r}")
    values["pool"] = pool = cal.get("pool")
    if pool is not None and pool not in POOLS:
        raise ConfigError(f"model calibration: pool must be one of {POOLS}, got {pool!r}")
    level_fit = cal.get("level_fit")
    if level_fit is not None and level_fit not in LEVEL_FITS:
        raise ConfigError(
            f"model calibration: level_fit must be one of {LEVEL_FITS}, got {level_fit!r}"
        )
    values["level_scale"] = scale = _vector(cal, "level_scale", width)
    alpha = _optional(cal, "level_alpha", float) or 0.0
    if "level_center" in values and alpha != 0.0:
        bound = _optional(cal, "level_bound", float) or 0.0
        check_level_adaptation(alpha, bound, "model calibration: ")
        if scale is None or np.any(scale < 0):
            raise ConfigError(
                f"model calibration: level_alpha needs level_scale, {width} numbers >= 0"
            )
    return values


def _vector(cal: Mapping[str, Any], key: str, width: int) -> np.ndarray | None:
    if key not in cal:
        return None
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
    return np.ascontiguousarray(center), np.ascontiguousarray(whiten)
