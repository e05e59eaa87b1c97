"""Calibration on normal data, without torch: residual statistics, a channel mask and a
threshold from a declared false-alarm budget.

The expected workflow is weights from elsewhere plus a site's own normal recording:
:func:`calibrate` runs the model over it exactly as the live detector would, learns which
channels are dead or frozen (masked), measures the residuals' centre and spread, then the
distribution of smoothed scores, and sets the threshold that normal data would cross
``false_alarms_per_day`` times a day, with a peaks-over-threshold tail model where the
data are too short to see that rate directly. :func:`calibrate_cross_fitted` does the same
from several models, each scored on data it was not trained on (the training recipe's
k-fold calibration).

Every option defaults to the value stored in the model's previous calibration, else to
:class:`CalibrationOptions`' built-in default; the ``streamlstm calibrate`` command
resolves its options the same way, so both give the same threshold on the same data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from ..model import Model
from .calibration_record import (
    BASE_VERSION,
    LEVEL_FITS,
    LEVEL_KEYS,
    POOLS,
    READABLE_VERSIONS,
    TARGETS,
    check_level_adaptation,
    require_next_step,
    schema_version,
)
from .detector import Detector
from .durations import STORED_UNIT, UNIT_NAMES, resolve_durations, step_seconds
from .features import FeatureSpec, compute_features
from .params import DetectorParams

METRICS = ("diagonal", "mahalanobis")
#: Residual spreads below this fraction of the largest are floored to it, so a channel
#: the model predicts perfectly (a constant) cannot blow the score up by dividing by ~0.
RELATIVE_FLOOR = 1e-6
#: A channel missing (NaN) in more than this fraction of the normal rows is masked.
MAX_MISSING = 0.1
#: The tail model: exceedances of this upper quantile of the scores are fitted.
TAIL_QUANTILE = 0.9
#: Fewer exceedances than this over the tail quantile make the tail fit unreliable.
MIN_EXCEEDANCES = 30
#: A budget rarer than 1 / (EXTRAPOLATION * scores) is extrapolated too far to trust.
EXTRAPOLATION = 10.0
SECONDS_PER_DAY = 86400.0
#: The score quantile used when a budget per day cannot be converted (no sample rate).
FALLBACK_QUANTILE = 0.999
#: A fold: a model and the normal recordings it was not trained on.
_Fold = tuple[Model, list[np.ndarray]]
#: Contiguous time blocks a single model's data are cut into for ``level_fit="cross"``.
LEVEL_BLOCKS = 3


class CalibrationWarning(UserWarning):
    """The normal data are too few to support the declared false-alarm budget."""


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    """What :func:`calibrate` needs besides the data (built-in defaults here).

    ``score``: ``"residual"`` (next-step predictor) or ``"direct"`` (the output at
    ``score_index`` is an anomaly score). ``metric``: ``"diagonal"`` or
    ``"mahalanobis"`` whitening of the residuals. ``pool``: ``"rms"`` (the root mean
    square of the whitened components) or ``"max"`` (the largest one: a fault in one
    channel of many is not averaged away). ``target``: ``"level"`` (the model
    predicts the next input) or ``"delta"`` (the next input minus the current one).
    ``false_alarms_per_day``: the budget the threshold is set for (needs the model's
    ``sample_rate``; without one, a warning and the 0.999 quantile); or ``quantile``
    instead: the threshold is that quantile of the normal scores. ``margin``: a factor on
    the threshold, on the residual scale (default 1.5: the budget score is estimated
    from correlated scores of a finite recording, and new normal data exceed it more
    often than the budget says). ``mask``: channels (names or indices) never
    scored; ``None`` learns them (missing in more than 10 % of the normal rows, or
    constant). ``level``: add the input's distance from its normal distribution to the
    score. ``level_alpha`` (default 0: off) and ``level_bound``: guarded drift adaptation
    of the level term (:mod:`~streamlstm.detect.calibration_record`; its centre follows the input
    with this EWMA weight per step while no alert is open and the score is below the
    threshold, at most ``level_bound`` normal standard deviations). ``level_balance``
    (needs ``level=True`` and ``pool="max"``): the level term is scaled so that its own
    budget score (the level term scored alone on the normal data) equals the residual
    term's; the max-pooled score then reads each term against its own normal tail, so a
    level far out and a residual far out raise the same score, whichever has the wider
    normal spread (the fused threshold is then set for the budget as usual).
    ``level_fit`` (needs ``level=True``): ``"pooled"`` reads the level term's scores on
    the data its centre and whitening came from; ``"cross"`` reads each fold's (or, for
    one model, each of :data:`LEVEL_BLOCKS` contiguous time blocks') against statistics
    of the others, as the residuals are read. Levels that wander across the normal data
    then widen the level term's tail (and, balanced, lower its gain) instead of showing
    up later as false alarms; on steady data both give about the same. The rest are the
    alert parameters (:class:`~streamlstm.detect.params.DetectorParams`).
    """

    score: str = "residual"
    metric: str = "diagonal"
    pool: str = "rms"
    target: str = "level"
    false_alarms_per_day: float | None = 1.0
    quantile: float | None = None
    margin: float = 1.5
    alpha: float = 0.1
    hysteresis: float = 0.3
    debounce: int = 3
    quiet_time: float = 1.0
    warmup: int = 50
    score_index: int = 0
    level: bool = False
    level_alpha: float = 0.0
    level_bound: float = 3.0
    level_balance: bool = False
    level_fit: str = "pooled"
    mask: tuple[str | int, ...] | None = None

    def __post_init__(self) -> None:
        if self.score not in ("residual", "direct"):
            raise ConfigError(f"score must be 'residual' or 'direct', got {self.score!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.quantile is not None and not 0.5 <= self.quantile < 1:
            raise ConfigError(f"quantile must be in [0.5, 1), got {self.quantile}")
        if self.false_alarms_per_day is not None and not self.false_alarms_per_day > 0:
            raise ConfigError(f"false_alarms_per_day must be > 0, got {self.false_alarms_per_day}")
        if not self.margin > 0:
            raise ConfigError(f"margin must be > 0, got {self.margin}")
        check_level_adaptation(self.level_alpha, self.level_bound)
        if self.level_alpha and not self.level:
            raise ConfigError("level_alpha adapts the level term: it needs level=True")
        if self.level_balance and not (self.level and self.pool == "max"):
            raise ConfigError(
                "level_balance scales the level term against the max-pooled residual: "
                "it needs level=True and pool='max'"
            )
        if self.level_fit not in LEVEL_FITS:
            raise ConfigError(f"level_fit must be one of {LEVEL_FITS}, got {self.level_fit!r}")
        if self.level_fit != "pooled" and not self.level:
            raise ConfigError("level_fit reads the level term out of sample: it needs level=True")
        DetectorParams(
            threshold=1.0,
            alpha=self.alpha,
            hysteresis=self.hysteresis,
            debounce=self.debounce,
            quiet_time=self.quiet_time,
            warmup=self.warmup,
        )  # validates them early


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CalibrationOptions))


def resolve_options(
    model: Model, given: Mapping[str, Any], *, stacklevel: int = 2
) -> CalibrationOptions:
    """Options for ``model``: ``given`` ones (``None`` = not given), else the model's
    previous calibration's, else the built-in defaults. Setting ``quantile`` or
    ``false_alarms_per_day`` replaces a stored value of the other. Durations are given
    with their unit (``warmup_steps``/``warmup_s``, ..., see :mod:`.durations`)."""
    unknown = set(given) - set(OPTION_NAMES) - set(UNIT_NAMES)
    if unknown:
        public = [n for n in OPTION_NAMES if n not in STORED_UNIT] + list(UNIT_NAMES)
        raise ConfigError(
            f"unknown calibration option(s): {sorted(unknown)} (known: {', '.join(public)})"
        )
    given = resolve_durations(given, step_seconds(model), stacklevel=stacklevel + 1)
    given = {k: v for k, v in given.items() if v is not None}
    previous = dict(model.calibration or {})
    stored: dict[str, Any] = {}
    if previous.get("version") in READABLE_VERSIONS:
        stored = {k: previous[k] for k in OPTION_NAMES if k in previous and k != "mask"}
        stored["level"] = "level_center" in previous
        if previous.get("mask_configured"):
            stored["mask"] = tuple(previous.get("mask_names", ()))
    else:
        trained = model.metadata.get("training", {})
        if isinstance(trained, Mapping) and trained.get("target") in TARGETS:
            stored["target"] = trained["target"]
    if "quantile" in given:
        stored.pop("false_alarms_per_day", None)
        given.setdefault("false_alarms_per_day", None)
    elif "false_alarms_per_day" in given:
        stored.pop("quantile", None)
    if given.get("level") is False:
        # Turning the level term off also turns off a stored adaptation / balance of it.
        stored.pop("level_alpha", None)
        stored.pop("level_balance", None)
        stored.pop("level_fit", None)
    values = {**stored, **given}
    if values.get("mask") is not None:
        values["mask"] = tuple(values["mask"])
    try:
        return CalibrationOptions(**values)
    except TypeError as exc:
        raise ConfigError(f"calibration options: {exc}") from None


# -- data ---------------------------------------------------------------------------------
def _recordings(data: Any, width: int) -> list[np.ndarray]:
    items = [data] if isinstance(data, np.ndarray) and data.ndim <= 2 else list(data)
    out = []
    for index, item in enumerate(items):
        array = np.asarray(item, dtype=np.float64)
        if array.ndim == 1 and width == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != width:
            raise ShapeError(f"recording {index}: expected shape (T, {width}), got {array.shape}")
        if np.any(np.isinf(array)):
            raise ShapeError(f"recording {index}: holds Inf; clean normal data is needed")
        out.append(array)
    if not out:
        raise ShapeError("calibration needs at least one recording")
    return out


def _axes(model: Model) -> tuple[int, FeatureSpec | None]:
    spec = FeatureSpec.from_metadata(model.metadata)
    if spec is None:
        return model.input_size, None
    return model.input_size // len(spec.stats), spec


def _mask_indices(names: Sequence[str], wanted: Sequence[str | int]) -> list[int]:
    out = []
    for item in wanted:
        if isinstance(item, int | np.integer) and 0 <= int(item) < len(names):
            out.append(int(item))
        elif item in names:
            out.append(list(names).index(str(item)))
        else:
            raise ConfigError(f"mask: no channel {item!r} (channels: {', '.join(names)})")
    return out


def channel_mask(
    names: Sequence[str], recordings: Sequence[np.ndarray], wanted: Sequence[str | int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, fill)`` per input channel: 0 for a channel never scored (``wanted``, or if
    ``None`` one missing in more than :data:`MAX_MISSING` of the rows or constant), and
    the value fed in its place (its normal mean; 0 when it has none)."""
    rows = np.concatenate(recordings)
    width = rows.shape[1]
    finite = np.isfinite(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel
        fill = np.nan_to_num(np.nanmean(rows, axis=0))
        spread = np.nan_to_num(np.nanstd(rows, axis=0))
    mask = np.ones(width)
    if wanted is None:
        scale = np.maximum(np.abs(fill), 1.0)
        mask[(finite.mean(axis=0) < 1 - MAX_MISSING) | (spread <= 1e-12 * scale)] = 0.0
    else:
        mask[_mask_indices(names, wanted)] = 0.0
    if not mask.any():
        raise ShapeError(
            "calibration: every channel is masked (missing or constant in the "
            "normal data); nothing is left to score"
        )
    return mask, fill


def cleaned(recording: np.ndarray, mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``recording`` with masked channels set to ``fill`` and other missing values carried
    forward (``fill`` before a channel's first value): what training and the residual
    statistics see."""
    out = np.array(recording, dtype=np.float64)
    out[:, mask == 0.0] = fill[mask == 0.0]
    for k in np.flatnonzero(np.isnan(out).any(axis=0)):
        column = out[:, k]
        valid = np.flatnonzero(~np.isnan(column))
        if valid.size == 0:
            column[:] = fill[k]
            continue
        index = np.maximum.accumulate(np.where(np.isnan(column), 0, np.arange(len(column))))
        column[:] = column[index]
        column[: valid[0]] = fill[k]
    return out


# -- residual statistics ------------------------------------------------------------------
def _residuals(
    model: Model,
    recordings: list[np.ndarray],
    spec: FeatureSpec | None,
    warmup: int,
    delta: bool,
    mask: np.ndarray,
    fill: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ``input[t] - prediction[t-1]`` after ``warmup`` steps, all recordings
    (NaN where a value was missing), and the inputs ``input[t]`` they belong to."""
    parts, levels = [], []
    for rec in recordings:
        if spec is None:
            inputs, missing = cleaned(rec, mask, fill), np.isnan(rec)
        else:
            if np.isnan(rec).any():
                raise ShapeError(
                    "calibration: a feature model needs complete raw data "
                    "(this recording holds NaN)"
                )
            inputs = compute_features(rec, spec)
            missing = np.zeros(inputs.shape, bool)
        stream = model.stream(on_invalid="raise")
        preds = stream.run(inputs).astype(np.float64)
        inputs = inputs.astype(model.dtype).astype(np.float64)  # what the kernel compares
        if delta:
            preds = preds + inputs
        residual = inputs[1:] - preds[:-1]
        residual[missing[1:]] = np.nan
        parts.append(residual[warmup:])
        levels.append(np.where(missing, np.nan, inputs)[1:][warmup:])
    return np.concatenate(parts), np.concatenate(levels)


def _whitening(values: np.ndarray, metric: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and whitening matrix over the scored channels (zero rows/columns for masked
    ones); rows with a missing value are left out."""
    width = values.shape[1]
    keep = np.flatnonzero(mask)
    part = values[:, keep]
    part = part[np.isfinite(part).all(axis=1)]
    if part.shape[0] < 2 * keep.size + 2:
        raise ShapeError(
            f"calibration: only {part.shape[0]} complete residuals after "
            f"warm-up for {keep.size} channels; give more normal data"
        )
    center = np.zeros(width)
    whiten = np.zeros((width, width))
    mean = part.mean(axis=0)
    std = part.std(axis=0)
    std = np.maximum(std, max(float(std.max()) * RELATIVE_FLOOR, 1e-30))
    center[keep] = mean
    if metric == "diagonal":
        whiten[keep, keep] = 1.0 / std
        return center, whiten
    # Mahalanobis on the correlation matrix (scale-free, so the ridge means the same
    # thing whatever the units), then undo the per-channel scaling.
    scaled = (part - mean) / std
    corr = np.cov(scaled, rowvar=False).reshape(keep.size, keep.size)
    corr += 1e-6 * np.eye(keep.size)
    inv_chol = np.linalg.inv(np.linalg.cholesky(corr))
    whiten[np.ix_(keep, keep)] = inv_chol / std[None, :]
    return center, whiten


# -- scores and the threshold -------------------------------------------------------------
def calibration_scores(model: Model, data: Any, **overrides: Any) -> list[np.ndarray]:
    """The detector's smoothed scores on each recording (each a fresh sensor), warm-up cut.

    ``model`` must already carry a calibration (e.g. from :func:`calibrate`); use this to
    look at a score distribution or evaluate a model. ``overrides``: as for
    :class:`Detector` (e.g. ``warmup_steps``). Returns one array per recording.
    """
    axes, spec = _axes(model)
    recordings = _recordings(data, axes)
    det = Detector(model, threshold=1e300, **overrides)
    rate = model.sample_rate or 1.0
    out = []
    for index, rec in enumerate(recordings):
        sensor = f"calibration-{index}"
        times = np.arange(rec.shape[0], dtype=np.float64) / rate
        det.prime([sensor] * rec.shape[0], rec, times)
        # One score per model step (a feature model holds its score between hops); the
        # alert machine ignores steps 1..warmup, so they are left out here too.
        stepped = (
            np.arange(rec.shape[0])
            if spec is None
            else np.arange(spec.window - 1, rec.shape[0], spec.hop)
        )
        scores = det.last_scores[stepped][det.params.warmup :]
        out.append(scores[~np.isnan(scores)])
        det.forget(sensor)
    return out


@dataclasses.dataclass(frozen=True)
class TailFit:
    """The score normal data exceed with probability ``exceedance`` per step.

    ``method``: ``"empirical"`` (the quantile, when the data hold at least 10 such
    exceedances) or ``"gpd"`` (a generalised Pareto fit to the exceedances over the
    :data:`TAIL_QUANTILE` quantile, by probability-weighted moments); ``supported``:
    False when the data are too few for the budget (see :func:`tail_threshold`).
    """

    score: float
    exceedance: float
    method: str
    scores: int
    exceedances: int
    shape: float
    supported: bool


def tail_threshold(scores: np.ndarray, exceedance: float) -> TailFit:
    """Fit the upper tail of ``scores`` and return the ``1 - exceedance`` quantile.

    Unsupported (a :class:`CalibrationWarning` from :func:`calibrate`) when the budget
    is rarer than ``1 / (EXTRAPOLATION * n)`` or fewer than :data:`MIN_EXCEEDANCES`
    scores exceed the tail quantile. Smoothed scores are correlated, so ``n`` overstates
    the independent evidence: treat the result as an estimate, and check false alarms on
    held-out normal data.
    """
    scores = np.sort(np.asarray(scores, np.float64))
    n = scores.size
    if n < 10:
        raise ShapeError(f"calibration: only {n} scores after warm-up; give more normal data")
    if n * exceedance >= 10:
        q = float(np.quantile(scores, 1 - exceedance))
        return TailFit(q, exceedance, "empirical", n, int(np.sum(scores > q)), 0.0, True)
    u = float(np.quantile(scores, TAIL_QUANTILE))
    excess = scores[scores > u] - u
    m = excess.size
    supported = m >= MIN_EXCEEDANCES and exceedance * n * EXTRAPOLATION >= 1
    if m < 3 or float(excess.mean()) <= 0:
        return TailFit(float(scores[-1]), exceedance, "max", n, m, 0.0, False)
    # Probability-weighted moments (Hosking & Wallis 1987), shape k: xi = -k.
    a0 = float(excess.mean())
    a1 = float(np.mean(excess * (m - 1 - np.arange(m)) / (m - 1)))
    k = a0 / (a0 - 2 * a1) - 2
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    ratio = exceedance * n / m  # P(score > x) / P(score > u)
    q = u + sigma * math.log(1 / ratio) if abs(k) < 1e-6 else u + sigma / k * (1 - ratio**k)
    return TailFit(float(max(q, u)), exceedance, "gpd", n, m, float(-k), supported)


def _exceedance(options: CalibrationOptions, model: Model, hop: int) -> float:
    if options.false_alarms_per_day is None:
        return 1.0 - float(options.quantile if options.quantile is not None else FALLBACK_QUANTILE)
    rate = model.sample_rate
    if not rate:
        warnings.warn(
            f"calibration: model {model.name!r} has no sample rate, so a false-alarm "
            f"budget per day means nothing; using the {FALLBACK_QUANTILE} quantile "
            "of the normal scores instead (set model.replace(sample_rate=...) or "
            "`streamlstm train --sample-rate`, or pass quantile=...)",
            CalibrationWarning,
            stacklevel=5,
        )
        return 1.0 - FALLBACK_QUANTILE
    step_seconds = hop / float(rate)
    return min(0.5, options.false_alarms_per_day * step_seconds / SECONDS_PER_DAY)


# -- entry points -------------------------------------------------------------------------
def calibrate(model: Model, data: Any, **options: Any) -> Model:
    """``model`` with a fresh ``calibration`` measured on normal ``data``.

    ``data``: one ``(T, A)`` recording in sensor units (``A`` raw axes; NaN = missing) or
    a sequence of them, each run from a fresh state (recordings are not spliced).
    ``options``: see :class:`CalibrationOptions` (unset ones come from the model's
    previous calibration, else the built-in defaults). Warns
    (:class:`CalibrationWarning`) when the data are too few for the false-alarm budget.
    """
    return calibrate_cross_fitted(model, [(model, data)], **options)


def calibrate_cross_fitted(
    model: Model, folds: Sequence[tuple[Model, Any]], **options: Any
) -> Model:
    """Calibrate ``model`` from ``folds``: ``(fold_model, normal data it never saw)``.

    Residual statistics and scores of every fold are pooled, so the threshold rests on
    out-of-sample scores of all the data (k-fold cross-fitting); the fold models must
    share ``model``'s architecture, channels and target.
    """
    opts = resolve_options(model, options, stacklevel=3)
    axes, spec = _axes(model)
    sets = [(fold, _recordings(data, axes)) for fold, data in folds]
    if not sets:
        raise ShapeError("calibration needs at least one fold")
    counts = {
        "samples": int(sum(r.shape[0] for _, recs in sets for r in recs)),
        "recordings": sum(len(recs) for _, recs in sets),
    }
    cross_levels = opts.score == "residual" and opts.level_fit == "cross"
    if cross_levels and len(sets) == 1:
        sets = _time_blocks(*sets[0])
    cal: dict[str, Any] = {"version": BASE_VERSION, "score": opts.score}
    fold_levels: list[tuple[np.ndarray, np.ndarray]] | None = None
    if opts.score == "residual":
        require_next_step(model, model.input_size)
        if spec is None:
            names = model.channels or tuple(f"c{k}" for k in range(model.input_size))
            mask, fill = channel_mask(names, [r for _, recs in sets for r in recs], opts.mask)
        else:
            mask, fill = np.ones(model.input_size), np.zeros(model.input_size)
        delta = opts.target == "delta"
        parts = [
            _residuals(fold, recs, spec, opts.warmup, delta, mask, fill) for fold, recs in sets
        ]
        residuals = np.concatenate([p[0] for p in parts])
        inputs = np.concatenate([p[1] for p in parts])
        center, whiten = _whitening(residuals, opts.metric, mask)
        names = model.channels or tuple(f"c{k}" for k in range(model.input_size))
        cal.update(
            metric=opts.metric,
            pool=opts.pool,
            target=opts.target,
            center=center.tolist(),
            whiten=whiten.tolist(),
            mask=mask.tolist(),
            fill=fill.tolist(),
            mask_names=[n for n, m in zip(names, mask, strict=True) if m == 0.0],
            mask_configured=opts.mask is not None,
        )
        if opts.level:
            level_center, level_whiten = _whitening(inputs, opts.metric, mask)
            cal.update(level_center=level_center.tolist(), level_whiten=level_whiten.tolist())
            if cross_levels:
                fold_levels = _left_out_whitenings([p[1] for p in parts], opts.metric, mask)
                cal["level_fit"] = opts.level_fit
            if opts.level_alpha:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel
                    spread = np.nan_to_num(np.nanstd(inputs, axis=0))
                scale = np.where(mask == 0.0, 0.0, spread)
                cal.update(
                    level_alpha=float(opts.level_alpha),
                    level_bound=float(opts.level_bound),
                    level_scale=scale.tolist(),
                )
    else:
        cal["score_index"] = int(opts.score_index)
    cal.update(
        alpha=float(opts.alpha),
        hysteresis=float(opts.hysteresis),
        debounce=int(opts.debounce),
        quiet_time=float(opts.quiet_time),
        warmup=int(opts.warmup),
        threshold=1.0,
    )
    cal["version"] = schema_version(cal)
    if opts.level_balance:
        _balance_level(cal, opts, model, spec.hop if spec else 1, sets, fold_levels)
    scores = _fold_scores(cal, sets, fold_levels)
    _set_threshold(cal, opts, model, spec.hop if spec else 1, scores)
    cal.update(counts)
    return model.replace(calibration=cal)


def _time_blocks(model: Model, recordings: list[np.ndarray]) -> list[_Fold]:
    """One model's recordings cut into :data:`LEVEL_BLOCKS` contiguous blocks, each a fold
    of that same model: folds in time, for reading the level term out of sample."""
    cuts = [
        np.linspace(0, rec.shape[0], LEVEL_BLOCKS + 1).round().astype(int) for rec in recordings
    ]
    return [
        (model, [rec[edges[k] : edges[k + 1]] for rec, edges in zip(recordings, cuts, strict=True)])
        for k in range(LEVEL_BLOCKS)
    ]


def _left_out_whitenings(
    inputs: Sequence[np.ndarray], metric: str, mask: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold, the level centre and whitening of every other fold's inputs."""
    return [
        _whitening(np.concatenate([x for j, x in enumerate(inputs) if j != k]), metric, mask)
        for k in range(len(inputs))
    ]


def _fold_scores(
    cal: dict[str, Any],
    sets: Sequence[_Fold],
    fold_levels: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Every fold model's calibration scores under ``cal``, on the data it never saw; with
    ``fold_levels``, each fold's level term uses its own (left-out) statistics, scaled by
    ``cal``'s ``level_gain``."""
    out = []
    for k, (fold, recs) in enumerate(sets):
        fold_cal = cal
        if fold_levels is not None and "level_center" in cal:
            center, whiten = fold_levels[k]
            gain = float(cal.get("level_gain", 1.0))
            fold_cal = {
                **cal,
                "level_center": center.tolist(),
                "level_whiten": (whiten * gain).tolist(),
            }
        out.extend(calibration_scores(fold.replace(calibration=fold_cal), recs))
    return np.concatenate(out)


def _balance_level(
    cal: dict[str, Any],
    opts: CalibrationOptions,
    model: Model,
    hop: int,
    sets: Sequence[_Fold],
    fold_levels: Sequence[tuple[np.ndarray, np.ndarray]] | None,
) -> None:
    """Scale ``cal``'s level term so its own budget score equals the residual term's.

    Each term is scored alone on the normal data (the other's whitening zeroed), and the
    score each exceeds with the budget's probability is found as for the threshold; the
    level whitening is multiplied by their ratio (stored as ``level_gain``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # _set_threshold warns once
        exceedance = _exceedance(opts, model, hop)
    residual_only = {k: v for k, v in cal.items() if k not in LEVEL_KEYS}
    level_whiten = np.asarray(cal["level_whiten"])
    level_only = {**cal, "whiten": np.zeros_like(level_whiten).tolist()}
    residual_score = tail_threshold(_fold_scores(residual_only, sets), exceedance).score
    level_score = tail_threshold(_fold_scores(level_only, sets, fold_levels), exceedance).score
    if not (residual_score > 0 and level_score > 0):
        raise ShapeError(
            f"calibration: level_balance needs both terms' budget scores > 0 "
            f"(residual {residual_score}, level {level_score})"
        )
    gain = residual_score / level_score
    cal.update(level_whiten=(level_whiten * gain).tolist(), level_gain=gain, level_balance=True)


def _set_threshold(
    cal: dict[str, Any], opts: CalibrationOptions, model: Model, hop: int, scores: np.ndarray
) -> None:
    """Put the threshold for ``opts``' false-alarm budget into ``cal``, from the normal
    ``scores`` (one per model step of ``hop`` samples); warn if they are too few."""
    if scores.size == 0:
        raise ShapeError("calibration: no scores after warm-up; give more normal data")
    exceedance = _exceedance(opts, model, hop)
    tail = tail_threshold(scores, exceedance)
    if not (np.isfinite(tail.score) and tail.score > 0):
        raise ShapeError(f"calibration: degenerate score quantile {tail.score}")
    if not tail.supported:
        warnings.warn(
            f"calibration: {tail.scores} normal scores ({tail.exceedances} in the upper tail) "
            f"are too few to support an exceedance probability of {exceedance:.3g} per "
            f"step{' (false_alarms_per_day budget)' if opts.false_alarms_per_day else ''}; "
            "the threshold is an extrapolation: give more normal data, or accept more false "
            "alarms",
            CalibrationWarning,
            stacklevel=4,
        )
    cal.update(
        false_alarms_per_day=opts.false_alarms_per_day,
        quantile=opts.quantile,
        exceedance=exceedance,
        tail=tail.method,
        tail_supported=tail.supported,
        quantile_score=tail.score,
        baseline=float(np.median(scores)),
        margin=float(opts.margin),
        threshold=tail.score * float(opts.margin),
        scores=int(scores.size),
    )


#: Options that mean nothing for a window autoencoder's reconstruction score.
PREDICTOR_OPTIONS = (
    "score",
    "target",
    "level",
    "score_index",
    "pool",
    "level_alpha",
    "level_bound",
    "level_balance",
    "level_fit",
)


def calibrate_reconstruction(model: Model, data: Any, **options: Any) -> Model:
    """A window autoencoder (window output ``every``) with a ``"reconstruction"``
    calibration measured on normal ``data`` (one ``(T, D)`` recording or a sequence,
    each from a fresh sensor), for :class:`~streamlstm.detect.windowed.WindowDetector`.

    As for a predictor's residuals: channels dead or constant in ``data`` are masked, the
    per-step reconstruction errors ``x - x̂`` of every normal window give the centre and
    whitening (``metric``), and the threshold comes from the false-alarm budget over the
    smoothed window scores (one per hop). ``options``: :class:`CalibrationOptions` except
    :data:`PREDICTOR_OPTIONS`; ``warmup`` and ``debounce`` count windows. Unset ones come
    from the model's previous reconstruction calibration, else the built-in defaults (as
    :func:`calibrate` does for predictors).
    """
    from ..windows import WindowBank
    from .windowed import WindowDetector

    spec = model.window
    if spec is None or not spec.per_step or model.output_size != model.input_size:
        raise ConfigError(
            f"model {model.name!r}: calibrate_reconstruction needs a window "
            "autoencoder (window output 'every', as many outputs as inputs)"
        )
    wrong = sorted(set(options) & set(PREDICTOR_OPTIONS))
    if wrong:
        raise ConfigError(
            f"calibrate_reconstruction: {', '.join(wrong)} do not apply to a reconstruction score"
        )
    previous = dict(model.calibration or {})
    stored = (
        {k: v for k, v in previous.items() if k != "score"}
        if previous.get("score") == "reconstruction"
        else None
    )
    opts = resolve_options(model.replace(calibration=stored), options)
    recordings = _recordings(data, model.input_size)
    names = model.channels or tuple(f"c{k}" for k in range(model.input_size))
    mask, fill = channel_mask(names, recordings, opts.mask)
    errors = []
    for index, rec in enumerate(recordings):
        bank = WindowBank(model, 1)
        out = bank.push([index] * rec.shape[0], cleaned(rec, mask, fill))
        if len(out):
            assert out.inputs is not None
            errors.append((out.inputs.astype(np.float64) - out.values).reshape(-1, rec.shape[1]))
    if not errors:
        raise ShapeError(
            f"calibration: no complete window of {spec.length} samples in the "
            "normal data; give more"
        )
    center, whiten = _whitening(np.concatenate(errors), opts.metric, mask)
    cal: dict[str, Any] = {
        "version": BASE_VERSION,
        "score": "reconstruction",
        "metric": opts.metric,
        "center": center.tolist(),
        "whiten": whiten.tolist(),
        "mask": mask.tolist(),
        "fill": fill.tolist(),
        "mask_names": [n for n, m in zip(names, mask, strict=True) if m == 0.0],
        "mask_configured": opts.mask is not None,
        "alpha": float(opts.alpha),
        "hysteresis": float(opts.hysteresis),
        "debounce": int(opts.debounce),
        "quiet_time": float(opts.quiet_time),
        "warmup": int(opts.warmup),
        "threshold": 1.0,
    }
    detector = WindowDetector(model.replace(calibration=cal), capacity=1, threshold=1e300)
    scores = []
    for index, rec in enumerate(recordings):
        detector.prime([index] * rec.shape[0], rec, np.arange(rec.shape[0], dtype=np.float64))
        window_scores = detector.last_scores[np.isfinite(detector.last_scores)]
        scores.append(window_scores[opts.warmup :])
        detector.forget(index)
    _set_threshold(cal, opts, model, spec.hop, np.concatenate(scores))
    cal.update(samples=int(sum(r.shape[0] for r in recordings)), recordings=len(recordings))
    return model.replace(calibration=cal)
