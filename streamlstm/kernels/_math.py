"""Scalar activations for the compiled kernels.

llvmlite here has no SVML, so ``np.tanh``/``np.exp`` inside ``@njit`` are scalar libm
calls that block vectorisation. For float32 we use an odd rational approximation of
``tanh`` (numerator degree 9, denominator degree 8 in ``x``; coefficients fitted by a
Lawson-weighted least-squares fit on ``[0, 9]``), whose error is 3.4e-7 in float32, below
the parity budget by more than an order of magnitude; ``tanh(9) = 1 - 3e-8`` so clamping
there is exact in float32. Sigmoid is ``0.5 + 0.5 * tanh(x / 2)``. Float64 keeps libm's
``tanh``: the float64 parity budget (1e-9) is tighter than any cheap approximation.

The choice is made at typing time, so one kernel source serves both dtypes.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

# Activation codes shared by the packer and the kernels.
LINEAR, RELU, TANH, SIGMOID, HARD_SIGMOID = 0, 1, 2, 3, 4
ACTIVATION_CODES = {"linear": LINEAR, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID,
                    "hard_sigmoid": HARD_SIGMOID}

_P = (9.99999910e-01, 1.33715821e-01, 3.48473408e-03, 2.04447526e-05, 1.31534697e-08)
_Q = (4.67048782e-01, 2.58347580e-02, 3.26850240e-04, 7.68862879e-07)
_CLAMP = 9.0


def tanh(x):  # pragma: no cover - replaced by the overload inside compiled code
    """``tanh`` for compiled code: fast rational form in float32, libm in float64."""
    return np.tanh(x)


@overload(tanh, inline="always")
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        p0, p1, p2, p3, p4 = (np.float32(c) for c in _P)
        q1, q2, q3, q4 = (np.float32(c) for c in _Q)
        lo, hi, one = np.float32(-_CLAMP), np.float32(_CLAMP), np.float32(1.0)

        def rational(x):
            y = np.minimum(np.maximum(x, lo), hi)  # NaN-propagating, branch-free clamp
            z = y * y
            p = p0 + z * (p1 + z * (p2 + z * (p3 + z * p4)))
            q = one + z * (q1 + z * (q2 + z * (q3 + z * q4)))
            return y * p / q

        return rational
    return lambda x: np.tanh(x)


def like(x, value):  # pragma: no cover - replaced by the overload inside compiled code
    """``value`` as a scalar of ``x``'s dtype.

    Numba follows NumPy's promotion rules, so ``float32 * 0.5`` or even ``float32 * 0``
    is float64: without this, float32 kernels silently compute in float64 through libm.
    """
    return type(x)(value)


@overload(like, inline="always")
def _like_overload(x, value):
    cast = as_dtype(x).type
    return lambda x, value: cast(value)


def sigmoid(x):  # pragma: no cover - replaced by the overload inside compiled code
    """Logistic sigmoid for compiled code, built on :func:`tanh`."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    half = as_dtype(x).type(0.5)
    return lambda x: half + half * tanh(half * x)


def activate(x, code):  # pragma: no cover - replaced by the overload inside compiled code
    """Apply activation ``code`` (one of the module's constants) to a scalar."""
    raise NotImplementedError


@overload(activate, inline="always")
def _activate_overload(x, code):
    cast = as_dtype(x).type
    zero, half, one, sixth = cast(0), cast(0.5), cast(1), cast(1 / 6)

    def impl(x, code):
        if code == SIGMOID:
            return sigmoid(x)
        if code == TANH:
            return tanh(x)
        if code == HARD_SIGMOID:
            return np.minimum(np.maximum(x * sixth + half, zero), one)
        if code == RELU:
            return np.maximum(x, zero)
        return x

    return impl


def activate_all(values, code):  # pragma: no cover - replaced by the overload
    """Apply activation ``code`` in place to every element of a 1-D array."""
    raise NotImplementedError


@overload(activate_all, inline="always")
def _activate_all_overload(values, code):
    # One loop per activation, the switch outside: a branch inside the element loop would
    # keep LLVM from vectorising it (measured: 3x slower LSTM layer at H=64).
    def impl(values, code):
        n = values.shape[0]
        if code == SIGMOID:
            for j in range(n):
                values[j] = sigmoid(values[j])
        elif code == TANH:
            for j in range(n):
                values[j] = tanh(values[j])
        elif code != LINEAR:
            for j in range(n):
                values[j] = activate(values[j], code)

    return impl
