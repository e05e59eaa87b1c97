"""Calibration on normal data, without torch: residual statistics and a threshold.

The expected workflow is weights from elsewhere plus a site's own normal recording:
:func:`calibrate` runs the model over it exactly as the live detector would, measures
the residuals' centre and spread, then the distribution of smoothed scores, and stores
both (with the alert parameters) in ``model.calibration``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from ..model import Model
from .detector import Detector
from .features import FeatureSpec, compute_features
from .params import SCHEMA_VERSION, DetectorParams

METRICS = ("diagonal", "mahalanobis")
#: Residual spreads below this fraction of the largest are floored to it, so a channel
#: the model predicts perfectly (a constant) cannot blow the score up by dividing by ~0.
RELATIVE_FLOOR = 1e-6


def _recordings(data: Any, width: int) -> list[np.ndarray]:
    items = [data] if isinstance(data, np.ndarray) and data.ndim <= 2 else list(data)
    out = []
    for index, item in enumerate(items):
        array = np.asarray(item, dtype=np.float64)
        if array.ndim == 1 and width == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != width:
            raise ShapeError(f"recording {index}: expected shape (T, {width}), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ShapeError(f"recording {index}: holds NaN/Inf; clean normal data is needed")
        out.append(array)
    if not out:
        raise ShapeError("calibration needs at least one recording")
    return out


def _axes(model: Model) -> tuple[int, FeatureSpec | None]:
    spec = FeatureSpec.from_metadata(model.metadata)
    if spec is None:
        return model.input_size, None
    return model.input_size // len(spec.stats), spec


def _residuals(model: Model, recordings: list[np.ndarray], spec: FeatureSpec | None,
               warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ``input[t] - prediction[t-1]`` after ``warmup`` steps, all recordings,
    and the inputs ``input[t]`` they belong to."""
    parts, levels = [], []
    for rec in recordings:
        inputs = rec if spec is None else compute_features(rec, spec)
        stream = model.stream(on_invalid="raise")
        preds = stream.run(inputs).astype(np.float64)
        inputs = inputs.astype(model.dtype).astype(np.float64)  # what the kernel compares
        parts.append((inputs[1:] - preds[:-1])[warmup:])
        levels.append(inputs[1:][warmup:])
    residuals = np.concatenate(parts)
    if residuals.shape[0] < 2 * model.input_size + 2:
        raise ShapeError(f"calibration: only {residuals.shape[0]} residuals after warm-up "
                         f"({warmup} steps per recording); give more normal data")
    return residuals, np.concatenate(levels)


def _whitening(residuals: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    center = residuals.mean(axis=0)
    std = residuals.std(axis=0)
    floor = max(float(std.max()) * RELATIVE_FLOOR, 1e-30)
    std = np.maximum(std, floor)
    if metric == "diagonal":
        return center, np.diag(1.0 / std)
    # Mahalanobis on the correlation matrix (scale-free, so the ridge means the same
    # thing whatever the units), then undo the per-channel scaling.
    scaled = (residuals - center) / std
    corr = np.cov(scaled, rowvar=False).reshape(len(std), len(std))
    corr += 1e-6 * np.eye(len(std))
    inv_chol = np.linalg.inv(np.linalg.cholesky(corr))
    return center, inv_chol / std[None, :]


def calibration_scores(model: Model, data: Any, *, warmup: int | None = None,
                       **overrides: Any) -> list[np.ndarray]:
    """The detector's smoothed scores on each recording (each a fresh sensor), warm-up cut.

    ``model`` must already carry a calibration (e.g. from :func:`calibrate`); use this to
    look at a score distribution or evaluate a model. Returns one array per recording.
    """
    axes, spec = _axes(model)
    recordings = _recordings(data, axes)
    det = Detector(model, threshold=1e300, **overrides,
                   **({} if warmup is None else {"warmup": warmup}))
    out = []
    for index, rec in enumerate(recordings):
        sensor = f"calibration-{index}"
        times = np.arange(rec.shape[0], dtype=np.float64)
        det.update([sensor] * rec.shape[0], rec, times)
        # One score per model step (a feature model holds its score between hops); the
        # alert machine ignores steps 1..warmup, so they are left out here too.
        stepped = (np.arange(rec.shape[0]) if spec is None
                   else np.arange(spec.window - 1, rec.shape[0], spec.hop))
        scores = det.last_scores[stepped][det.params.warmup:]
        out.append(scores[~np.isnan(scores)])
        det.forget(sensor)
    return out


def calibrate(model: Model, data: Any, *, score: str = "residual", metric: str = "diagonal",
              quantile: float = 0.999, margin: float = 1.5, alpha: float = 0.1,
              hysteresis: float = 0.8, debounce: int = 3, quiet_time: float = 1.0,
              warmup: int = 50, score_index: int = 0, level: bool = False) -> Model:
    """``model`` with a fresh ``calibration`` measured on normal ``data``.

    ``data``: one ``(T, A)`` recording in sensor units (``A`` raw axes) or a sequence of
    them, each run from a fresh state (recordings are not spliced). ``score``:
    ``"residual"`` for a next-step predictor, ``"direct"`` for a model that outputs an
    anomaly score at ``score_index``. ``metric``: ``"diagonal"`` (per-channel
    standardised residuals) or ``"mahalanobis"`` (full residual covariance). The
    threshold is the ``quantile`` of smoothed normal scores times ``margin``; the other
    keywords are the alert parameters stored with it (see
    :class:`~streamlstm.detect.params.DetectorParams`). ``level`` (residual models): add
    to the score the distance of the model's input itself from its calibration
    distribution (same ``metric``), so a change present from a sensor's first sample,
    which a next-step predictor learns to predict within a few steps, still counts.
    """
    if score not in ("residual", "direct"):
        raise ConfigError(f"score must be 'residual' or 'direct', got {score!r}")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0.5 <= quantile < 1:
        raise ConfigError(f"quantile must be in [0.5, 1), got {quantile}")
    if not margin > 0:
        raise ConfigError(f"margin must be > 0, got {margin}")
    DetectorParams(threshold=1.0, alpha=alpha, hysteresis=hysteresis, debounce=debounce,
                   quiet_time=quiet_time, warmup=warmup)  # validates them early
    axes, spec = _axes(model)
    recordings = _recordings(data, axes)
    cal: dict[str, Any] = {"version": SCHEMA_VERSION, "score": score}
    if score == "residual":
        residuals, inputs = _residuals(model, recordings, spec, warmup)
        center, whiten = _whitening(residuals, metric)
        cal.update(metric=metric, center=center.tolist(), whiten=whiten.tolist())
        if level:
            level_center, level_whiten = _whitening(inputs, metric)
            cal.update(level_center=level_center.tolist(), level_whiten=level_whiten.tolist())
    else:
        cal["score_index"] = int(score_index)
    cal.update(alpha=float(alpha), hysteresis=float(hysteresis), debounce=int(debounce),
               quiet_time=float(quiet_time), warmup=int(warmup), threshold=1.0)
    provisional = model.replace(calibration=cal)
    scores = np.concatenate(calibration_scores(provisional, recordings))
    if scores.size == 0:
        raise ShapeError("calibration: no scores after warm-up; give more normal data")
    q = float(np.quantile(scores, quantile))
    if not (np.isfinite(q) and q > 0):
        raise ShapeError(f"calibration: degenerate score quantile {q}")
    cal.update(quantile=float(quantile), quantile_score=q, margin=float(margin),
               threshold=q * float(margin), samples=int(sum(r.shape[0] for r in recordings)),
               recordings=len(recordings))
    return model.replace(calibration=cal)
