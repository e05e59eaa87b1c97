"""Scalar activations for the compiled kernels.

llvmlite here has no SVML, so ``np.tanh``/``np.exp`` inside ``@njit`` are scalar libm
calls that block vectorisation. For float32 we use an odd rational approximation of
``tanh`` (numerator degree 9, denominator degree 8 in ``x``; coefficients fitted by a
Lawson-weighted least-squares fit on ``[0, 9]``), whose error is 3.4e-7 in float32, below
the parity budget by more than an order of magnitude; ``tanh(9) = 1 - 3e-8`` so clamping
there is exact in float32. Sigmoid is ``0.5 + 0.5 * tanh(x / 2)``. Float64 keeps libm's
``tanh``: the float64 parity budget (1e-9) is tighter than any cheap approximation.

``tanh``, ``sigmoid`` and ``like`` are intrinsics: they emit their few instructions
straight into the caller. As ``@overload``\\ s they would either be separate functions
that LLVM does not inline after numba links them (a call per element: 3x slower kernels)
or, with ``inline="always"``, be re-typed at every use, which made compiling the kernels
take minutes.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.typing import signature
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

# Activation codes shared by the packer and the kernels.
LINEAR, RELU, TANH, SIGMOID, HARD_SIGMOID = 0, 1, 2, 3, 4
ACTIVATION_CODES = {
    "linear": LINEAR,
    "relu": RELU,
    "tanh": TANH,
    "sigmoid": SIGMOID,
    "hard_sigmoid": HARD_SIGMOID,
}

_P = (9.99999910e-01, 1.33715821e-01, 3.48473408e-03, 2.04447526e-05, 1.31534697e-08)
_Q = (1.0, 4.67048782e-01, 2.58347580e-02, 3.26850240e-04, 7.68862879e-07)
_CLAMP = 9.0
#: The kernels' fast-math flags (see :mod:`._network`): none that assume away NaN/Inf.
FAST_FLAGS = ("nsz", "arcp", "contract", "afn", "reassoc")


def _float32(value: float) -> ir.Constant:
    return ir.Constant(ir.FloatType(), float(np.float32(value)))


def _horner(builder: ir.IRBuilder, z: ir.Value, coefficients: tuple[float, ...]) -> ir.Value:
    """``c0 + z * (c1 + z * (c2 + ...))`` in float32."""
    total = _float32(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        product = builder.fmul(z, total, flags=FAST_FLAGS)
        total = builder.fadd(_float32(c), product, flags=FAST_FLAGS)
    return total


def _emit_tanh(context, builder: ir.IRBuilder, fptype: types.Float, x: ir.Value) -> ir.Value:
    if fptype.bitwidth != 32:
        return context.get_function(math.tanh, signature(fptype, fptype))(builder, [x])
    lo, hi = _float32(-_CLAMP), _float32(_CLAMP)
    # Compare-and-select clamps: a NaN fails both tests and comes through as NaN.
    y = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)
    y = builder.select(builder.fcmp_ordered(">", y, hi), hi, y)
    z = builder.fmul(y, y, flags=FAST_FLAGS)
    numerator = builder.fmul(y, _horner(builder, z, _P), flags=FAST_FLAGS)
    t = builder.fdiv(numerator, _horner(builder, z, _Q), flags=FAST_FLAGS)
    # Near the clamp the rounded quotient can reach 1 + 2^-23: keep |tanh| <= 1.
    one, minus_one = _float32(1.0), _float32(-1.0)
    t = builder.select(builder.fcmp_ordered(">", t, one), one, t)
    return builder.select(builder.fcmp_ordered("<", t, minus_one), minus_one, t)


@intrinsic
def tanh(typingctx, x):
    """``tanh`` for compiled code: fast rational form in float32, libm in float64."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return _emit_tanh(context, builder, x, args[0])

    return signature(x, x), codegen


@intrinsic
def sigmoid(typingctx, x):
    """Logistic sigmoid for compiled code, ``0.5 + 0.5 * tanh(x / 2)``."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        half = context.get_constant(x, 0.5)
        t = _emit_tanh(context, builder, x, builder.fmul(half, args[0], flags=FAST_FLAGS))
        return builder.fadd(half, builder.fmul(half, t, flags=FAST_FLAGS), flags=FAST_FLAGS)

    return signature(x, x), codegen


@intrinsic
def like(typingctx, x, value):
    """``value`` as a scalar of ``x``'s dtype.

    Numba follows NumPy's promotion rules, so ``float32 * 0.5`` or even ``float32 * 0``
    is float64: without this, float32 kernels silently compute in float64 through libm.
    """
    source = types.unliteral(value)

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[1], source, x)

    return signature(x, x, source), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once. Where an expression holds two products, LLVM may fuse
    either with the sum, and may choose differently in two copies of the same code;
    spelling the fusion out keeps a bank and a stream bit-identical."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        fused = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fused, args)

    return signature(a, a, a, a), codegen


def activate_all(values, code):  # pragma: no cover - replaced by the overload
    """Apply activation ``code`` (one of the module's constants) in place to a 1-D array."""
    raise NotImplementedError


@overload(activate_all, inline="always", prefer_literal=True)
def _activate_all_overload(values, code):
    cast = as_dtype(values.dtype).type
    zero, half, one, sixth = cast(0), cast(0.5), cast(1), cast(1 / 6)

    # A ``code`` known at compile time (the common tanh/sigmoid path) gets its one loop
    # only: every use is typed again where it is inlined, so a switch over all five would
    # type four dead loops per use.
    if isinstance(code, types.IntegerLiteral):
        constant = code.literal_value
        if constant == SIGMOID:

            def impl_sigmoid(values, code):
                for j in range(values.shape[0]):
                    values[j] = sigmoid(values[j])

            return impl_sigmoid
        if constant == TANH:

            def impl_tanh(values, code):
                for j in range(values.shape[0]):
                    values[j] = tanh(values[j])

            return impl_tanh

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
        elif code == HARD_SIGMOID:
            for j in range(n):
                values[j] = np.minimum(np.maximum(values[j] * sixth + half, zero), one)
        elif code == RELU:
            for j in range(n):
                values[j] = np.maximum(values[j], zero)

    return impl
