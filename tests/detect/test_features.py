"""Windowed feature statistics: compiled online/offline paths against NumPy definitions."""

from __future__ import annotations

import numpy as np
import pytest

from streamlstm.detect.features import STATS, FeatureSpec, compute_features, window_features


def numpy_stat(window: np.ndarray, axis: int, stat: str) -> float:
    """One statistic of one axis, straight from its textbook NumPy definition."""
    v = window[:, axis]
    if stat == "acf1":
        d = v - v.mean()
        return float(np.sum(d[1:] * d[:-1]) / np.sum(d * d))
    if stat == "corr_next":
        return float(np.corrcoef(v, window[:, (axis + 1) % window.shape[1]])[0, 1])
    table = {
        "mean": v.mean(),
        "std": v.std(),
        "rms": np.sqrt(np.mean(v**2)),
        "peak": np.abs(v).max(),
    }
    table["crest"] = table["peak"] / table["rms"]
    table["kurtosis"] = np.mean((v - v.mean()) ** 4) / v.var() ** 2
    table["log_rms"] = np.log10(table["rms"] + 1e-12)
    table["log_std"] = np.log10(table["std"] + 1e-12)
    return float(table[stat])


def test_offline_features_match_numpy_definitions():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) + [1.0, -2.0, 0.5]
    spec = FeatureSpec(window=40, hop=13, stats=STATS)
    features = compute_features(signal, spec)
    assert features.shape == ((300 - 40) // 13 + 1, 3 * len(STATS))
    for n in range(features.shape[0]):
        window = signal[n * 13 : n * 13 + 40]
        expected = [numpy_stat(window, a, s) for a in range(3) for s in STATS]
        np.testing.assert_allclose(features[n], expected, rtol=1e-10, atol=1e-12)


def test_ring_buffer_features_equal_offline_ones_at_every_rotation():
    """The detector reads a ring whose oldest sample sits at any row; ``acf1`` depends
    on the order, so every rotation must give the offline vector bit for bit."""
    rng = np.random.default_rng(5)
    window = rng.normal(size=(24, 2)) + np.sin(np.arange(24) / 3.0)[:, None]
    codes = FeatureSpec(window=24, hop=1, stats=STATS).codes
    expected = compute_features(window, FeatureSpec(window=24, hop=24, stats=STATS))[0]
    out = np.empty_like(expected)
    for start in range(24):
        ring = np.roll(window, start, axis=0)  # the oldest sample is now at row ``start``
        window_features(ring, start, codes, out)
        np.testing.assert_array_equal(out, expected)


def test_shape_statistics_track_frequency_and_phase():
    fs, f = 50.0, 6.0
    t = np.arange(500) / fs
    tone = np.stack(
        [
            np.sin(2 * np.pi * f * t),
            np.sin(2 * np.pi * f * t + np.pi / 2),
            -np.sin(2 * np.pi * f * t),
        ],
        axis=1,
    )
    features = compute_features(tone, {"window": 100, "hop": 50, "stats": ["acf1", "corr_next"]})
    acf1, corr = features[:, 0::2], features[:, 1::2]
    # A tone's lag-1 autocorrelation is cos(2 pi f / fs) up to an O(1/window) edge term.
    np.testing.assert_allclose(acf1, np.cos(2 * np.pi * f / fs), atol=0.02)
    # x leads y by 90 degrees (uncorrelated), y vs z is 90 degrees too, z = -x.
    np.testing.assert_allclose(corr, np.tile([0.0, 0.0, -1.0], (len(corr), 1)), atol=0.05)


@pytest.mark.parametrize("axes", [1, 2])
def test_constant_windows_give_zero_shape_statistics(axes):
    signal = np.full((30, axes), 2.5)
    features = compute_features(signal, {"window": 10, "hop": 10, "stats": ["acf1", "corr_next"]})
    np.testing.assert_array_equal(features, 0.0)


def test_single_axis_correlates_with_itself():
    signal = np.random.default_rng(6).normal(size=(50, 1))
    features = compute_features(signal, {"window": 50, "hop": 50, "stats": ["corr_next"]})
    np.testing.assert_allclose(features, 1.0)
