"""Windowed vibration features: the front end that turns kHz samples into an LSTM input.

Predicting raw kHz vibration one sample ahead is the wrong model (mostly noise and
resonances); predicting a short-window summary of it at the hop rate is not. A model
trained on features declares them in ``model.metadata["features"]``::

    {"window": 1024, "hop": 256, "stats": ["rms", "peak", "crest", "kurtosis"]}

and the detector computes exactly those, online and in compiled code, so the model
always gets the inputs it was trained on. The model's input is then ``axes * len(stats)``
wide, axis-major: ``[a0.stat0, a0.stat1, ..., a1.stat0, ...]``. A feature vector is
produced once the first ``window`` samples have arrived, then every ``hop`` samples, each
over the latest ``window`` samples.

Statistics (``v`` the window of one axis): ``mean``; ``std`` (population);
``rms`` = sqrt(mean(v²)); ``peak`` = max|v|; ``crest`` = peak / rms (0 for a silent
window); ``kurtosis`` = mean((v - mean)⁴) / std⁴ (Pearson, 3 for Gaussian; 0 for a
constant window); ``log_rms`` = log10(rms + 1e-12) and ``log_std`` = log10(std + 1e-12),
for signals whose level spans decades (``log_std`` ignores a DC offset such as gravity).
Two statistics describe the shape of a vibration rather than its level, both
scale-free in [-1, 1] and 0 for a constant window:
``acf1`` = sum(d[k] d[k-1]) / sum(d[k]²) over the window's deviations ``d`` from its
mean, oldest first: the lag-1 autocorrelation, cos(2π f / fs) for a pure tone at ``f``
(so it tracks the dominant frequency, aliased or not); ``corr_next`` = Pearson
correlation of the axis with the next one (the last axis with the first; an axis with
itself when there is one): the direction and phase of a rotating imbalance force.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numba import njit

from ..errors import ConfigError

STATS = (
    "mean",
    "std",
    "rms",
    "peak",
    "crest",
    "kurtosis",
    "log_rms",
    "log_std",
    "acf1",
    "corr_next",
)
STAT_CODES = {name: code for code, name in enumerate(STATS)}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """``window`` and ``hop`` in samples of the raw signal; ``stats`` names from :data:`STATS`."""

    window: int
    hop: int
    stats: tuple[str, ...] = ("rms", "peak", "crest", "kurtosis")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", tuple(self.stats))
        if int(self.window) != self.window or self.window < 2:
            raise ConfigError(f"features.window must be an integer >= 2, got {self.window}")
        if int(self.hop) != self.hop or not 1 <= self.hop <= self.window:
            raise ConfigError(f"features.hop must be an integer in 1..window, got {self.hop}")
        bad = [s for s in self.stats if s not in STAT_CODES]
        if bad or not self.stats:
            raise ConfigError(f"features.stats: unknown {bad} (known: {', '.join(STATS)})")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> FeatureSpec | None:
        """The spec declared in a model's metadata, or ``None`` for a raw-sample model."""
        spec = metadata.get("features")
        if spec is None:
            return None
        try:
            return cls(
                window=int(spec["window"]),
                hop=int(spec["hop"]),
                stats=tuple(spec.get("stats", cls.stats)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"model metadata 'features' is malformed: {exc}") from None

    def as_metadata(self) -> dict[str, Any]:
        return {"window": self.window, "hop": self.hop, "stats": list(self.stats)}

    @property
    def codes(self) -> np.ndarray:
        return np.asarray([STAT_CODES[s] for s in self.stats], np.int64)

    def width(self, axes: int) -> int:
        return axes * len(self.stats)


@njit(cache=True, nogil=True)
def _axis_mean(ring, start, a):
    window = ring.shape[0]
    total = 0.0
    for k in range(window):
        total += ring[(start + k) % window, a]
    return total / window


@njit(cache=True, nogil=True)
def _correlation(ring, start, a, b):
    """Pearson correlation of columns ``a`` and ``b`` (0 if either is constant)."""
    window = ring.shape[0]
    mean_a = _axis_mean(ring, start, a)
    mean_b = _axis_mean(ring, start, b)
    cross = 0.0
    var_a = 0.0
    var_b = 0.0
    for k in range(window):
        da = ring[(start + k) % window, a] - mean_a
        db = ring[(start + k) % window, b] - mean_b
        cross += da * db
        var_a += da * da
        var_b += db * db
    if var_a > 0.0 and var_b > 0.0:
        return cross / np.sqrt(var_a * var_b)
    return 0.0


@njit(cache=True, nogil=True)
def window_features(ring, start, codes, out):
    """Features of one window into ``out`` (``(A * len(codes),)``, axis-major).

    ``ring``: ``(window, A)`` samples, the oldest at row ``start`` (``acf1`` depends on
    the order; every sum runs oldest-first, so results are identical to the offline
    :func:`compute_features`).
    """
    window, axes = ring.shape
    n_stats = codes.shape[0]
    for a in range(axes):
        total = 0.0
        square = 0.0
        peak = 0.0
        for k in range(window):
            v = ring[(start + k) % window, a]
            total += v
            square += v * v
            if abs(v) > peak:
                peak = abs(v)
        mean = total / window
        m2 = 0.0
        m4 = 0.0
        lag1 = 0.0
        previous = 0.0
        for k in range(window):
            d = ring[(start + k) % window, a] - mean
            d2 = d * d
            m2 += d2
            m4 += d2 * d2
            if k > 0:
                lag1 += d * previous
            previous = d
        acf1 = lag1 / m2 if m2 > 0.0 else 0.0
        m2 /= window
        m4 /= window
        rms = np.sqrt(square / window)
        for s in range(n_stats):
            code = codes[s]
            if code == 0:
                value = mean
            elif code == 1:
                value = np.sqrt(m2)
            elif code == 2:
                value = rms
            elif code == 3:
                value = peak
            elif code == 4:
                value = peak / rms if rms > 0.0 else 0.0
            elif code == 5:
                value = m4 / (m2 * m2) if m2 > 0.0 else 0.0
            elif code == 6:
                value = np.log10(rms + 1e-12)
            elif code == 7:
                value = np.log10(np.sqrt(m2) + 1e-12)
            elif code == 8:
                value = acf1
            else:
                value = _correlation(ring, start, a, (a + 1) % axes)
            out[a * n_stats + s] = value


@njit(cache=True, nogil=True)
def _all_windows(signal, window, hop, codes, out):
    for n in range(out.shape[0]):
        window_features(signal[n * hop : n * hop + window], 0, codes, out[n])


def compute_features(signal: Any, spec: FeatureSpec | Mapping[str, Any]) -> np.ndarray:
    """Offline features of a whole ``(T, A)`` recording: ``(N, A * len(stats))`` float64.

    Row ``n`` covers samples ``[n * hop, n * hop + window)`` — the same vectors the
    detector computes online, so a model trained on this output sees identical inputs.
    """
    if not isinstance(spec, FeatureSpec):
        parsed = FeatureSpec.from_metadata({"features": spec})
        assert parsed is not None  # from_metadata returns None only without "features"
        spec = parsed
    array = np.ascontiguousarray(signal, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ConfigError(f"signal: expected (T, axes), got shape {array.shape}")
    count = 0 if array.shape[0] < spec.window else (array.shape[0] - spec.window) // spec.hop + 1
    out = np.zeros((count, spec.width(array.shape[1])), np.float64)
    _all_windows(array, spec.window, spec.hop, spec.codes, out)
    return out


def feature_names(channels: Sequence[str], spec: FeatureSpec) -> list[str]:
    """Names of the feature columns, e.g. ``de.rms``, axis-major like the vectors."""
    return [f"{c}.{s}" for c in channels for s in spec.stats]
