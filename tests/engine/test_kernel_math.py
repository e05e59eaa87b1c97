"""The kernels' scalar math: the float32 tanh approximation, sigmoid, fma and NaN/Inf."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from streamlstm.kernels._math import fma, sigmoid, tanh


@njit(cache=True)
def _tanh_all(xs, out):
    for i in range(xs.shape[0]):
        out[i] = tanh(xs[i])


@njit(cache=True)
def _sigmoid_all(xs, out):
    for i in range(xs.shape[0]):
        out[i] = sigmoid(xs[i])


@njit(cache=True)
def _fma_all(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = fma(a[i], b[i], c[i])


def _apply(kernel, xs: np.ndarray) -> np.ndarray:
    out = np.empty_like(xs)
    kernel(xs, out)
    return out


def test_float32_tanh_is_within_its_documented_error_everywhere():
    xs = np.concatenate([np.linspace(-12, 12, 200_001), np.geomspace(1e-30, 1e-3, 1000)])
    xs = np.concatenate([xs, -xs]).astype(np.float32)
    got = _apply(_tanh_all, xs)
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - np.tanh(xs.astype(np.float64)))
    assert err.max() < 5e-7
    assert np.all(np.abs(got) <= 1)
    assert np.array_equal(np.sign(got), np.sign(xs))  # odd, and exactly 0 only at 0


def test_float64_tanh_and_sigmoid_are_libm_exact():
    xs = np.linspace(-30, 30, 10_001)
    np.testing.assert_allclose(_apply(_tanh_all, xs), np.tanh(xs), rtol=0, atol=1e-15)
    np.testing.assert_allclose(_apply(_sigmoid_all, xs), 1 / (1 + np.exp(-xs)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_inputs(dtype):
    xs = np.array([np.nan, np.inf, -np.inf], dtype)
    t = _apply(_tanh_all, xs)
    s = _apply(_sigmoid_all, xs)
    assert np.isnan(t[0]) and t[1] == 1 and t[2] == -1
    assert np.isnan(s[0]) and s[1] == 1 and s[2] == 0


def test_float32_sigmoid_accuracy():
    xs = np.linspace(-20, 20, 100_001).astype(np.float32)
    got = _apply(_sigmoid_all, xs).astype(np.float64)
    assert np.abs(got - 1 / (1 + np.exp(-xs.astype(np.float64)))).max() < 3e-7


def test_fma_rounds_once():
    # (1 + 2^-23)(1 - 2^-23) = 1 - 2^-46: a float32 multiply rounds the product to 1, so
    # product-then-add gives 0 where the fused operation keeps the -2^-46.
    e = np.float32(2.0**-23)
    a = np.array([1 + e], np.float32)
    b = np.array([1 - e], np.float32)
    c = np.array([-1], np.float32)
    out = np.empty(1, np.float32)
    _fma_all(a, b, c, out)
    assert out[0] == np.float32(-(2.0**-46))
    assert a[0] * b[0] + c[0] == 0
