"""Simple baselines, in the same run and on the same rows as the detector.

Every baseline is fitted on a case's normal fit recordings and flags each row; the same
run rule then turns flags into alerts for all of them (an alert starts after ``RUN``
flagged rows in a row and ends after ``RUN`` unflagged ones), so no method is judged on
raw flapping. Channels are chosen on the fit rows as the 3W paper does (kept when
finite in more than 90 % of rows and not constant); a missing value in a kept channel
is replaced by its fit mean. Limits use ``ALPHA`` (1 % per row), fixed in advance.

* Hotelling T² on all kept channels, limit ``p (n+1)(n-1) / (n (n-p)) F(1-ALPHA; p, n-p)``.
* PCA on standardised channels, components for 90 % of the variance: T² (F limit, as
  above with ``k`` components) or SPE/Q (Box's ``g chi²(h)`` limit) above its limit.
* Rolling z-score: each channel against the mean and standard deviation of its previous
  ``ROLLING_ROWS`` rows; the row's largest |z| over the fit rows' ``1 - ALPHA`` quantile.
* Hotelling T² commissioned (amendment 10 in ``protocol.py``): its mean taken from each
  stream's first ``COMMISSION_ROWS`` rows instead of the fit rows, no flag on those rows.
* Always alarm: every row flagged (a sanity row: F1 rewards alarming, NAB does not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from .protocol import COMMISSION_ROWS

ALPHA = 0.01
RUN = 3
ROLLING_ROWS = 30
PCA_VARIANCE = 0.9


def run_rule(flags: np.ndarray, run: int = RUN) -> np.ndarray:
    """Open-alert flags: start after ``run`` flagged rows in a row, end after ``run`` clear."""
    alarm = np.zeros(len(flags), bool)
    on, count = False, 0
    for i, flag in enumerate(flags):
        count = count + 1 if flag != on else 0
        if count >= run:
            on, count = not on, 0
        alarm[i] = on
    return alarm


class _Channels:
    """Kept channels and their fit mean/std; fills a missing value with the mean."""

    def __init__(self, fit: Sequence[np.ndarray]) -> None:
        rows = np.concatenate(fit)
        finite = np.isfinite(rows).mean(axis=0)
        std = np.nanstd(np.where(np.isfinite(rows), rows, np.nan), axis=0)
        self.keep = np.flatnonzero((finite > 0.9) & (np.nan_to_num(std) > 0))
        if self.keep.size == 0:
            raise ValueError("no usable channel in the fit rows")
        kept = rows[:, self.keep]
        self.mean = np.nanmean(kept, axis=0)
        self.std = np.nanstd(kept, axis=0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kept = x[:, self.keep]
        return np.where(np.isfinite(kept), kept, self.mean)


def _f_limit(p: int, n: int) -> float:
    return p * (n + 1) * (n - 1) / (n * (n - p)) * stats.f.ppf(1 - ALPHA, p, n - p)


class Hotelling:
    name = "hotelling-t2"

    def __init__(self, fit: Sequence[np.ndarray]) -> None:
        self.channels = _Channels(fit)
        rows = np.concatenate([self.channels(f) for f in fit])
        n, p = rows.shape
        cov = np.atleast_2d(np.cov(rows, rowvar=False))
        cov += 1e-9 * np.trace(cov) / p * np.eye(p)
        self.mean, self.inv = rows.mean(axis=0), np.linalg.inv(cov)
        self.limit = _f_limit(p, n)

    def flags(self, x: np.ndarray) -> np.ndarray:
        d = self.channels(x) - self.mean
        return np.einsum("ij,jk,ik->i", d, self.inv, d) > self.limit


class HotellingCommissioned(Hotelling):
    name = "hotelling-t2-commissioned"

    def flags(self, x: np.ndarray) -> np.ndarray:
        kept = self.channels(x)
        d = kept - kept[:COMMISSION_ROWS].mean(axis=0)
        flags = np.einsum("ij,jk,ik->i", d, self.inv, d) > self.limit
        flags[:COMMISSION_ROWS] = False
        return flags


class PcaT2Spe:
    name = "pca-t2-spe"

    def __init__(self, fit: Sequence[np.ndarray]) -> None:
        self.channels = _Channels(fit)
        z = np.concatenate([self._z(f) for f in fit])
        n, p = z.shape
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        eig = s**2 / (n - 1)
        k = int(np.searchsorted(np.cumsum(eig) / eig.sum(), PCA_VARIANCE) + 1)
        k = min(k, max(p - 1, 1))
        self.loadings, self.eig = vt[:k].T, eig[:k]
        self.t2_limit = _f_limit(k, n)
        rest = eig[k:]
        if rest.size and rest.sum() > 0:
            theta1, theta2 = rest.sum(), (rest**2).sum()
            self.spe_limit = theta2 / theta1 * stats.chi2.ppf(1 - ALPHA, theta1**2 / theta2)
        else:
            self.spe_limit = np.inf

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (self.channels(x) - self.channels.mean) / self.channels.std

    def flags(self, x: np.ndarray) -> np.ndarray:
        z = self._z(x)
        scores = z @ self.loadings
        t2 = np.sum(scores**2 / self.eig, axis=1)
        spe = np.sum((z - scores @ self.loadings.T) ** 2, axis=1)
        return (t2 > self.t2_limit) | (spe > self.spe_limit)


def rolling_z(x: np.ndarray, rows: int = ROLLING_ROWS) -> np.ndarray:
    """Per row, the largest |z| of any channel against its previous ``rows`` rows (0 while
    fewer are there, and for a channel that was constant over them)."""
    cum = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    cum2 = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x * x, axis=0)])
    out = np.zeros(x.shape[0])
    if x.shape[0] <= rows:
        return out
    mean = (cum[rows:-1] - cum[: -rows - 1]) / rows
    var = np.maximum((cum2[rows:-1] - cum2[: -rows - 1]) / rows - mean**2, 0.0)
    std = np.sqrt(var)
    scale = np.maximum(np.abs(mean), 1.0)
    live = std > 1e-9 * scale
    z = np.where(live, np.abs(x[rows:] - mean) / np.where(live, std, 1.0), 0.0)
    out[rows:] = z.max(axis=1)
    return out


class RollingZ:
    name = "rolling-z"

    def __init__(self, fit: Sequence[np.ndarray]) -> None:
        self.channels = _Channels(fit)
        fitted = np.concatenate([rolling_z(self.channels(f))[ROLLING_ROWS:] for f in fit])
        self.limit = float(np.quantile(fitted, 1 - ALPHA))

    def flags(self, x: np.ndarray) -> np.ndarray:
        return rolling_z(self.channels(x)) > self.limit


class AlwaysAlarm:
    name = "always-alarm"

    def __init__(self, fit: Sequence[np.ndarray]) -> None:
        del fit

    def flags(self, x: np.ndarray) -> np.ndarray:
        return np.ones(x.shape[0], bool)


BASELINES = (Hotelling, HotellingCommissioned, PcaT2Spe, RollingZ, AlwaysAlarm)


def baseline_alarm(method, x: np.ndarray) -> np.ndarray:
    """A fitted baseline's open-alert flags on ``x`` (the run rule applied)."""
    flags = method.flags(x)
    return flags if isinstance(method, AlwaysAlarm) else run_rule(flags)
