"""Compiled forward step of a whole model over its packed buffers (see :mod:`.layout`).

Every function here is a plain function over arrays, compiled once with ``cache=True``.
``fastmath`` is restricted to flags that keep NaN/Inf semantics (no ``nnan``/``ninf``),
so the finiteness checks below still work, and ``error_model='numpy'`` lets LLVM
vectorise loops that divide.

A step is split into stages shared by one stream (:func:`step`, :func:`run`) and a tile
of four streams (:func:`step_tile`, used by the bank):

``_prepare`` (check and normalise the sample) -> per layer, per unit block: the block's
gate sums (``_block_sums*``, the only stage that differs between one stream and a tile)
and ``_finish_units`` (nonlinearities and the new ``h``, ``c`` of the block's units) ->
``_finish`` (dense head, output normalisation, finiteness check, commit).

The new state is computed into scratch and committed to the caller's state row only if
every new state value and output is finite: a bad sample or an overflow can never poison
``(h, c)``.

Where the time goes, and what each choice bought (H=64, D=3, float32, this machine):

* A block's 64 gate sums live in a stack array (:func:`_stack_array`) indexed only by
  constants, so LLVM keeps them in four AVX-512 registers from bias to new state: the
  gate pre-activations never touch memory.
* One stream sums two blocks at a time (two independent FMA chains per weight row; one
  chain is latency-bound); a tile sums one block for four streams, reading each weight
  row once for the four. Single stream 0.13 us for the 67x256 product, 0.44 us a step.
* ``_nrt=False``: no reference counting. Every array slice otherwise costs an atomic
  increment and decrement of its owner's count, which was half the time of a tile.
* Activations are intrinsics (:mod:`._math`) and the common tanh/sigmoid path has them as
  constants, every gate of a unit in one loop (one loop per gate went through memory:
  a bank step took 4-14 % longer); partial blocks and other activations take an
  out-of-line path.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import layout as L
from ._math import FAST_FLAGS, SIGMOID, TANH, activate_all, fma, like, sigmoid, tanh
from .layout import ANY_KIND, BLOCK_WIDTH, GRU, LSTM, UNITS

FASTMATH = set(FAST_FLAGS)
#: No reference counting (``_nrt``): nothing here allocates, and see the module docstring.
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True, "_nrt": False}

#: :data:`JIT` for the kind-specialised layer bodies (``@overload`` implementations are
#: compiled into their callers' cached code, not cached on their own).
_LAYER_JIT = {k: v for k, v in JIT.items() if k != "cache"}

#: Streams stepped together by :func:`step_tile`.
TILE_STREAMS = 4


@intrinsic
def _stack_array(typingctx, size, dtype):
    """A 1-D array of ``size`` (a literal) elements of ``dtype`` in the caller's stack frame.

    Numba has no stack arrays; LLVM keeps this one in registers when every access to it
    is at a constant index, which it can never do for a heap buffer that might alias the
    weights. Not memory-managed: it lives as long as the compiled function's frame.
    """
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value
    array_type = types.Array(dtype.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(dtype.dtype)
        data = cgutils.alloca_once(builder, element, size=count)
        data.align = 64  # whole cache lines, wherever the thread's stack happens to be
        array = context.make_array(array_type)(context, builder)
        itemsize = cgutils.intp_t(context.get_abi_sizeof(element))
        context.populate_array(
            array,
            data=data,
            shape=[cgutils.intp_t(count)],
            strides=[itemsize],
            itemsize=itemsize,
            meminfo=None,
        )
        return array._getvalue()

    return array_type(size, dtype), codegen


@njit(inline="always", **JIT)
def _matvec_acc(acc, params, offset, x, n_out):
    """``acc[:n_out] += W @ x`` with ``W.T`` stored row-major at ``params[offset:]``, as row
    sweeps that vectorise. Rows are sliced from the flat buffer: a reshaped view would go
    through a runtime helper call on every step."""
    for k in range(x.shape[0]):
        row, v = params[offset : offset + n_out], x[k]
        for j in range(n_out):
            acc[j] += row[j] * v
        offset += n_out


@njit(inline="always", **JIT)
def _all_finite(values, n):
    """True if ``values[:n]`` holds no NaN or Inf.

    ``v * 0`` is 0 for finite ``v`` and NaN otherwise, so one vectorised sum answers it;
    a per-element ``np.isfinite`` test does not vectorise (measured 0.3 us for 128 values).
    """
    zero = like(values[0], 0)  # not a literal 0: float32 * 0 would sum in float64
    total = zero
    for k in range(n):
        total += values[k] * zero
    return total == zero


# -- scratch views ----------------------------------------------------------------------------
@njit(inline="always", **JIT)
def _new_state(layout, scratch):
    return scratch[: layout[L.H_STATE]]


@njit(inline="always", **JIT)
def _work(layout, scratch):
    """Per-layer work space (see :func:`_layer_views`, :func:`_gru_reset_before`)."""
    return scratch[layout[L.H_SC_WORK] : layout[L.H_SC_SPARE]]


@njit(inline="always", **JIT)
def _spare(layout, scratch):
    """Block sums in memory, for the paths that index them at run time."""
    return scratch[layout[L.H_SC_SPARE] : layout[L.H_SC_INPUT]]


@njit(inline="always", **JIT)
def _layer_input(layout, rec, index, scratch):
    """Layer ``index``'s input: the normalised sample, or the previous layer's new h."""
    if index == 0:
        start = layout[L.H_SC_INPUT]
        return scratch[start : start + layout[L.H_INPUT]]
    prev = layout[L.HEADER + (index - 1) * L.LAYER_RECORD : L.HEADER + index * L.LAYER_RECORD]
    so = prev[L.L_STATE]
    return scratch[so : so + prev[L.L_OUT]]


@njit(inline="always", **JIT)
def _record(layout, index):
    start = L.HEADER + index * L.LAYER_RECORD
    return layout[start : start + L.LAYER_RECORD]


# -- stages -----------------------------------------------------------------------------------
@njit(inline="always", **JIT)
def _prepare(params, layout, x, scratch):
    """Check the sample and write it, normalised, into scratch; False if not finite."""
    n_in = layout[L.H_INPUT]
    if not _all_finite(x, n_in):
        return False
    start = layout[L.H_SC_INPUT]
    xin = scratch[start : start + n_in]
    norm = layout[L.H_IN_NORM]
    if norm >= 0:
        for k in range(n_in):
            xin[k] = (x[k] - params[norm + k]) / params[norm + n_in + k]
    else:
        for k in range(n_in):
            xin[k] = x[k]
    return True


@njit(inline="always", **JIT)
def _accumulators(dtype):
    """One block's gate sums, on the stack so LLVM keeps them in registers."""
    return _stack_array(BLOCK_WIDTH, dtype)


@njit(inline="always", **JIT)
def _block_count(rec):
    return (rec[L.L_HIDDEN] + UNITS - 1) // UNITS


@njit(inline="always", **JIT)
def _block_start(rec, b):
    """Offset of unit block ``b`` in ``params`` (blocks are ``(in + out, BLOCK_WIDTH)``)."""
    return rec[L.L_BLOCKS] + b * (rec[L.L_IN] + rec[L.L_OUT]) * BLOCK_WIDTH


@njit(inline="always", **JIT)
def _block_bias(params, rec, b):
    start = rec[L.L_BLOCK_BIAS] + b * BLOCK_WIDTH
    return params[start : start + BLOCK_WIDTH]


# The block sums index ``params`` with constant-length slices rather than through a reshaped
# view: a reshape goes through a runtime helper that keeps LLVM from keeping the sums in
# registers (measured 2.7x slower). Each adds the input rows, then the ``h`` rows, of a
# block (rows of ``BLOCK_WIDTH`` from offset ``row``) and returns the offset after them.
@njit(inline="always", **JIT)
def _add_rows(acc, params, row, values):
    for k in range(values.shape[0]):
        w, v = params[row : row + BLOCK_WIDTH], values[k]
        for t in range(BLOCK_WIDTH):
            acc[t] += w[t] * v
        row += BLOCK_WIDTH
    return row


@njit(inline="always", **JIT)
def _add_rows_pair(a0, a1, params, row, gap, values):
    for k in range(values.shape[0]):
        w0, w1 = params[row : row + BLOCK_WIDTH], params[row + gap : row + gap + BLOCK_WIDTH]
        v = values[k]
        for t in range(BLOCK_WIDTH):
            a0[t] += w0[t] * v
            a1[t] += w1[t] * v
        row += BLOCK_WIDTH
    return row


@njit(inline="always", **JIT)
def _add_rows_tile(a0, a1, a2, a3, params, row, v0, v1, v2, v3):
    for k in range(v0.shape[0]):
        w, s0, s1, s2, s3 = params[row : row + BLOCK_WIDTH], v0[k], v1[k], v2[k], v3[k]
        for t in range(BLOCK_WIDTH):
            a0[t] += w[t] * s0
            a1[t] += w[t] * s1
            a2[t] += w[t] * s2
            a3[t] += w[t] * s3
        row += BLOCK_WIDTH
    return row


@njit(inline="always", **JIT)
def _block_sums(acc, params, rec, b, x, h):
    """``acc = bias + block.T @ [x, h]``: unit block ``b``'s gate pre-activations."""
    bias = _block_bias(params, rec, b)
    for t in range(BLOCK_WIDTH):
        acc[t] = bias[t]
    _add_rows(acc, params, _add_rows(acc, params, _block_start(rec, b), x), h)


@njit(inline="always", **JIT)
def _block_sums_pair(a0, a1, params, rec, b, x, h):
    """:func:`_block_sums` of blocks ``b`` and ``b + 1`` at once: two independent chains of
    multiply-adds per weight row instead of one hide the FMA latency (measured 2.9x)."""
    bias0, bias1 = _block_bias(params, rec, b), _block_bias(params, rec, b + 1)
    for t in range(BLOCK_WIDTH):
        a0[t] = bias0[t]
        a1[t] = bias1[t]
    row = _block_start(rec, b)
    gap = _block_start(rec, b + 1) - row
    row = _add_rows_pair(a0, a1, params, row, gap, x)
    _add_rows_pair(a0, a1, params, row, gap, h)


@njit(inline="always", **JIT)
def _block_sums_tile(a0, a1, a2, a3, params, rec, b, x0, x1, x2, x3, h0, h1, h2, h3):
    """:func:`_block_sums` for four streams sharing each weight row."""
    bias = _block_bias(params, rec, b)
    for t in range(BLOCK_WIDTH):
        a0[t] = a1[t] = a2[t] = a3[t] = bias[t]
    row = _add_rows_tile(a0, a1, a2, a3, params, _block_start(rec, b), x0, x1, x2, x3)
    _add_rows_tile(a0, a1, a2, a3, params, row, h0, h1, h2, h3)


@njit(inline="always", **JIT)
def _lstm_units(acc, act, ract, c_prev, h_out, c_new, m):
    """Finish ``m`` units from their block sums ``acc = [i | f | g | o]``."""
    U = UNITS
    activate_all(acc[: 2 * U], ract)
    activate_all(acc[2 * U : 3 * U], act)
    activate_all(acc[3 * U :], ract)
    cell = acc[2 * U : 3 * U]  # g is consumed into c, then holds act(c)
    for t in range(m):
        c = fma(acc[U + t], c_prev[t], acc[t] * cell[t])
        c_new[t] = c
        cell[t] = c
    activate_all(cell, act)
    for t in range(m):
        h_out[t] = acc[3 * U + t] * cell[t]


# The common case, a full block with sigmoid gates and tanh, as one loop over the units:
# every gate of a unit goes from its sum to the new state without a trip through memory
# (see the module doc). The arithmetic is :func:`_lstm_units`' and :func:`_gru_units`'
# (whose ``n_x + r * n_h`` is one explicit fma in both, so that no path rounds it twice).
@njit(inline="always", **JIT)
def _lstm_units_common(acc, c_prev, h_out, c_new):
    U = UNITS
    for t in range(U):
        i, f, o = sigmoid(acc[t]), sigmoid(acc[U + t]), sigmoid(acc[3 * U + t])
        c = fma(f, c_prev[t], i * tanh(acc[2 * U + t]))
        c_new[t] = c
        h_out[t] = o * tanh(c)


@njit(inline="always", **JIT)
def _gru_units_common(acc, h_prev, h_out):
    U = UNITS
    one = like(acc[0], 1)
    for t in range(U):
        r, z = sigmoid(acc[t]), sigmoid(acc[U + t])
        n = tanh(fma(r, acc[3 * U + t], acc[2 * U + t]))
        h_out[t] = fma(z, h_prev[t], (one - z) * n)


@njit(inline="always", **JIT)
def _gru_units(acc, act, ract, h_prev, h_out, m):
    """Finish ``m`` units from their block sums ``acc = [r | z | n_x | n_h]``."""
    U = UNITS
    activate_all(acc[: 2 * U], ract)
    n = acc[2 * U : 3 * U]
    for t in range(U):
        n[t] = fma(acc[t], acc[3 * U + t], n[t])
    activate_all(n, act)
    one = like(acc[0], 1)
    for t in range(m):
        z = acc[U + t]
        h_out[t] = fma(z, h_prev[t], (one - z) * n[t])


# The units of a partial block or of a layer with non-default activations (rare: compiled
# once per kind, out of line, so the common path stays small).
@njit(**JIT)
def _lstm_units_generic(rec, acc, c_prev, h_out, c_new, m):
    _lstm_units(acc, rec[L.L_ACT], rec[L.L_RACT], c_prev, h_out, c_new, m)


@njit(**JIT)
def _gru_units_generic(rec, acc, h_prev, h_out, m):
    _gru_units(acc, rec[L.L_ACT], rec[L.L_RACT], h_prev, h_out, m)


# Kind tests. ``kind`` is a compile-time constant (see :func:`_layer`): Numba prunes the
# branches it rules out before typing them, so an LSTM model's kernels never contain GRU
# code or the other way round. Spelled out at each use (a helper returning the test would
# hide the constant from the pruning).
@njit(inline="always", **JIT)
def _finish_units(kind, rec, acc, spare, h_prev, c_prev, h_out, c_new, u0):
    """Finish the units of the block starting at unit ``u0`` from its sums ``acc``.

    The common case, a full block with tanh and sigmoid, is compiled inline with the
    activations and the block size as constants: every loop over ``acc`` unrolls, so LLVM
    keeps it in registers. Anything else finishes out of line from a copy in ``spare``
    (``acc`` must not escape to a call, or it could not stay in registers).
    """
    m = min(UNITS, rec[L.L_HIDDEN] - u0)
    end = u0 + m
    if m == UNITS and rec[L.L_ACT] == TANH and rec[L.L_RACT] == SIGMOID:
        if kind == LSTM or (kind == ANY_KIND and rec[L.L_KIND] == LSTM):
            _lstm_units_common(acc, c_prev[u0:end], h_out[u0:end], c_new[u0:end])
        else:
            _gru_units_common(acc, h_prev[u0:end], h_out[u0:end])
    else:
        for t in range(BLOCK_WIDTH):
            spare[t] = acc[t]
        if kind == LSTM or (kind == ANY_KIND and rec[L.L_KIND] == LSTM):
            _lstm_units_generic(rec, spare, c_prev[u0:end], h_out[u0:end], c_new[u0:end], m)
        else:
            _gru_units_generic(rec, spare, h_prev[u0:end], h_out[u0:end], m)


@njit(inline="always", **JIT)
def _layer_views(kind, rec, state, new_state, work):
    """``(h_prev, c_prev, h_out, c_new)`` of a layer; ``h_out`` is where the unit updates
    write h: the new state, or for a projected LSTM the work space (projected later)."""
    so, n_h, hidden = rec[L.L_STATE], rec[L.L_OUT], rec[L.L_HIDDEN]
    c_size = 0
    if kind == LSTM or (kind == ANY_KIND and rec[L.L_KIND] == LSTM):
        c_size = hidden
    h_out = new_state[so : so + n_h]
    if kind != GRU and rec[L.L_WR] >= 0:
        h_out = work[:hidden]
    return (
        state[so : so + n_h],
        state[so + n_h : so + n_h + c_size],
        h_out,
        new_state[so + n_h : so + n_h + c_size],
    )


@njit(inline="always", **JIT)
def _project(params, rec, new_state, work):
    """A projected LSTM's ``h = W_hr h_full`` (``h_full`` in the work space)."""
    so, hidden, n_h = rec[L.L_STATE], rec[L.L_HIDDEN], rec[L.L_OUT]
    h_new = new_state[so : so + n_h]
    for j in range(n_h):
        h_new[j] = 0.0
    _matvec_acc(h_new, params, rec[L.L_WR], work[:hidden], n_h)


@njit(inline="always", **JIT)
def _gru_reset_before(params, rec, x, state, new_state, work, acc, reverse):
    """A GRU layer whose reset gate applies before ``W_hn``: ``r * h`` for every unit must
    be known before any ``n``, so the blocks are walked twice (see :mod:`.layout`). A rare
    layout (Keras ``reset_after=False``): ``acc`` is the spare block in scratch, not
    registers."""
    U = UNITS
    count = _block_count(rec)
    so, hidden = rec[L.L_STATE], rec[L.L_HIDDEN]
    h_prev, h_new = state[so : so + hidden], new_state[so : so + hidden]
    z_all, nx_all, rh = work[:hidden], work[hidden : 2 * hidden], work[2 * hidden : 3 * hidden]
    for q in range(count):
        b = count - 1 - q if reverse else q
        _block_sums(acc, params, rec, b, x, h_prev)
        activate_all(acc[: 2 * U], rec[L.L_RACT])
        for t in range(min(U, hidden - b * U)):
            u = b * U + t
            rh[u] = acc[t] * h_prev[u]
            z_all[u] = acc[U + t]
            nx_all[u] = acc[2 * U + t]
    one = like(acc[0], 1)
    n = acc[:U]
    for q in range(count):
        b = count - 1 - q if reverse else q
        row = rec[L.L_BLOCKS_HN] + b * hidden * U
        for t in range(U):
            n[t] = 0.0
        for k in range(hidden):
            w, v = params[row : row + U], rh[k]
            for t in range(U):
                n[t] += w[t] * v
            row += U
        m = min(U, hidden - b * U)
        for t in range(m):
            n[t] += nx_all[b * U + t]
        activate_all(n, rec[L.L_ACT])
        for t in range(m):
            u = b * U + t
            h_new[u] = fma(z_all[u], h_prev[u], (one - z_all[u]) * n[t])


def _constant_kind(kind) -> int:
    """The value of a ``kind`` argument typed as a literal (:data:`LSTM`, :data:`GRU` or
    :data:`ANY_KIND`); a kind only known at run time is refused."""
    if not isinstance(kind, types.IntegerLiteral) or kind.literal_value not in (
        LSTM,
        GRU,
        ANY_KIND,
    ):
        raise TypeError(f"kind must be a constant LSTM, GRU or ANY_KIND, got {kind}")
    return kind.literal_value


# ``_layer`` and ``_layer_tile`` are compiled once per kind. Numba types a constant passed to
# a compiled function as a literal and compiles the callee for that literal; these overloads
# turn it back into a constant (``constant_kind``) that the kind tests in the inlined stages
# prune on (see :func:`_finish_units`). Out of line: compiled once, however many kernels
# call them.
def _layer(params, rec, x, state, new_state, work, spare, reverse, kind):  # pragma: no cover
    """One stream through one recurrent layer (compiled: see :func:`_layer_of_kind`)."""
    raise NotImplementedError


@overload(_layer, prefer_literal=True, jit_options=_LAYER_JIT)
def _layer_of_kind(params, rec, x, state, new_state, work, spare, reverse, kind):
    constant_kind = _constant_kind(kind)

    def layer(params, rec, x, state, new_state, work, spare, reverse, kind):
        """One stream through one recurrent layer: new h (and c) into ``new_state``.

        Blocks go in pairs (see :func:`_block_sums_pair`); with an odd count the last
        block goes alone, after the pairs forwards and before them in ``reverse``.
        """
        if constant_kind != LSTM and rec[L.L_BLOCKS_HN] >= 0:
            _gru_reset_before(params, rec, x, state, new_state, work, spare, reverse)
            return
        a0, a1 = _accumulators(x.dtype), _accumulators(x.dtype)
        h_prev, c_prev, h_out, c_new = _layer_views(constant_kind, rec, state, new_state, work)
        count = _block_count(rec)
        pairs = count // 2
        for q in range(pairs + 1):
            if q == (0 if reverse else pairs):  # the lone block's turn
                if count % 2 == 1:
                    lone = count - 1
                    _block_sums(a0, params, rec, lone, x, h_prev)
                    _finish_units(
                        constant_kind, rec, a0, spare, h_prev, c_prev, h_out, c_new, lone * UNITS
                    )
                continue
            b = 2 * (pairs - q) if reverse else 2 * q
            _block_sums_pair(a0, a1, params, rec, b, x, h_prev)
            _finish_units(constant_kind, rec, a0, spare, h_prev, c_prev, h_out, c_new, b * UNITS)
            _finish_units(
                constant_kind, rec, a1, spare, h_prev, c_prev, h_out, c_new, (b + 1) * UNITS
            )
        if constant_kind != GRU and rec[L.L_WR] >= 0:
            _project(params, rec, new_state, work)

    return layer


def _layer_tile(
    params,
    rec,
    x0,
    x1,
    x2,
    x3,
    s0,
    s1,
    s2,
    s3,
    n0,
    n1,
    n2,
    n3,
    w0,
    w1,
    w2,
    w3,
    spare,
    reverse,
    kind,
):  # pragma: no cover
    """:func:`_layer` for four streams (compiled: see :func:`_layer_tile_of_kind`)."""
    raise NotImplementedError


@overload(_layer_tile, prefer_literal=True, jit_options=_LAYER_JIT)
def _layer_tile_of_kind(
    params,
    rec,
    x0,
    x1,
    x2,
    x3,
    s0,
    s1,
    s2,
    s3,
    n0,
    n1,
    n2,
    n3,
    w0,
    w1,
    w2,
    w3,
    spare,
    reverse,
    kind,
):
    constant_kind = _constant_kind(kind)

    def layer_tile(
        params,
        rec,
        x0,
        x1,
        x2,
        x3,
        s0,
        s1,
        s2,
        s3,
        n0,
        n1,
        n2,
        n3,
        w0,
        w1,
        w2,
        w3,
        spare,
        reverse,
        kind,
    ):
        """:func:`_layer` for four streams (``x``: inputs, ``s``: states, ``n``: new states,
        ``w``: work spaces) sharing each weight row."""
        if constant_kind != LSTM and rec[L.L_BLOCKS_HN] >= 0:
            for x, s, n, w in (
                (x0, s0, n0, w0),
                (x1, s1, n1, w1),
                (x2, s2, n2, w2),
                (x3, s3, n3, w3),
            ):
                _gru_reset_before(params, rec, x, s, n, w, spare, reverse)
            return
        dtype = x0.dtype
        a0, a1, a2, a3 = (
            _accumulators(dtype),
            _accumulators(dtype),
            _accumulators(dtype),
            _accumulators(dtype),
        )
        h0, c0, o0, k0 = _layer_views(constant_kind, rec, s0, n0, w0)
        h1, c1, o1, k1 = _layer_views(constant_kind, rec, s1, n1, w1)
        h2, c2, o2, k2 = _layer_views(constant_kind, rec, s2, n2, w2)
        h3, c3, o3, k3 = _layer_views(constant_kind, rec, s3, n3, w3)
        count = _block_count(rec)
        for q in range(count):
            b = count - 1 - q if reverse else q
            _block_sums_tile(a0, a1, a2, a3, params, rec, b, x0, x1, x2, x3, h0, h1, h2, h3)
            u0 = b * UNITS
            _finish_units(constant_kind, rec, a0, spare, h0, c0, o0, k0, u0)
            _finish_units(constant_kind, rec, a1, spare, h1, c1, o1, k1, u0)
            _finish_units(constant_kind, rec, a2, spare, h2, c2, o2, k2, u0)
            _finish_units(constant_kind, rec, a3, spare, h3, c3, o3, k3, u0)
        if constant_kind != GRU and rec[L.L_WR] >= 0:
            for n, w in ((n0, w0), (n1, w1), (n2, w2), (n3, w3)):
                _project(params, rec, n, w)

    return layer_tile


@njit(inline="always", **JIT)
def _finish(params, layout, state, out, scratch):
    """Dense head, output normalisation, finiteness check and commit; return a status."""
    n_layers = layout[L.H_LAYERS]
    last = _record(layout, n_layers - 1)
    new_state = _new_state(layout, scratch)
    layer_in = new_state[last[L.L_STATE] : last[L.L_STATE] + last[L.L_OUT]]
    ping = scratch[layout[L.H_SC_PING] : layout[L.H_SC_PONG]]
    pong = scratch[layout[L.H_SC_PONG] : layout[L.H_SCRATCH]]
    dense_base = L.HEADER + n_layers * L.LAYER_RECORD
    for index in range(layout[L.H_DENSE]):
        start = dense_base + index * L.DENSE_RECORD
        rec = layout[start : start + L.DENSE_RECORD]
        d_in, d_out = rec[L.D_IN], rec[L.D_OUT]
        dst = ping if index % 2 == 0 else pong
        bias = params[rec[L.D_B] : rec[L.D_B] + d_out]
        if rec[L.D_FORM] == L.DENSE_DOT:
            for j in range(d_out):
                row = params[rec[L.D_W] + j * d_in : rec[L.D_W] + (j + 1) * d_in]
                total = bias[j]
                for k in range(d_in):
                    total += row[k] * layer_in[k]
                dst[j] = total
        else:
            for j in range(d_out):
                dst[j] = bias[j]
            _matvec_acc(dst, params, rec[L.D_W], layer_in, d_out)
        layer_in = dst[:d_out]
        activate_all(layer_in, rec[L.D_ACT])

    n_out = layout[L.H_OUTPUT]
    norm = layout[L.H_OUT_NORM]
    # The test outside the loops: inside, it kept LLVM from vectorising the copy, which
    # then took a seventh of a window model's time (H=64).
    if norm >= 0:
        for j in range(n_out):
            out[j] = layer_in[j] * params[norm + n_out + j] + params[norm + j]
    else:
        for j in range(n_out):
            out[j] = layer_in[j]
    n_state = layout[L.H_STATE]
    if not (_all_finite(out, n_out) and _all_finite(new_state, n_state)):
        out[:n_out] = np.nan
        return L.REJECTED_RESULT
    for k in range(n_state):
        state[k] = new_state[k]
    return L.OK


# -- public kernels ---------------------------------------------------------------------------
@njit(inline="always", **JIT)
def forward(layout):
    """``False``, typed as a run-time bool, for a ``reverse`` argument. A literal ``False``
    would make Numba compile the kernels it is passed to a second time, specialised for
    it, beside the run-time ``reverse`` of :func:`run` or of a bank's alternating tiles:
    20-30 s more each on a cold start."""
    return layout[L.H_LAYERS] < 0


@njit(inline="always", **JIT)
def _step(params, layout, state, x, out, scratch, reverse, kind):
    """:func:`step`, walking the unit blocks backwards if ``reverse`` (see :mod:`.layout`)."""
    if not _prepare(params, layout, x, scratch):
        out[: layout[L.H_OUTPUT]] = np.nan
        return L.REJECTED_SAMPLE
    new_state = _new_state(layout, scratch)
    work = _work(layout, scratch)
    for index in range(layout[L.H_LAYERS]):
        rec = _record(layout, index)
        _layer(
            params,
            rec,
            _layer_input(layout, rec, index, scratch),
            state,
            new_state,
            work,
            _spare(layout, scratch),
            reverse,
            kind,
        )
    return _finish(params, layout, state, out, scratch)


@njit(**JIT)
def step_of_kind(params, layout, state, x, out, scratch, kind):
    """:func:`step` compiled for models of one ``kind``: a constant, :data:`.layout.LSTM`,
    :data:`.layout.GRU` (every layer of that kind) or :data:`.layout.ANY_KIND`."""
    return _step(params, layout, state, x, out, scratch, forward(layout), kind)


@njit(**JIT)
def step_tile_of_kind(
    params, layout, s0, s1, s2, s3, x0, x1, x2, x3, o0, o1, o2, o3, scratch, reverse, kind
):
    """:func:`step_tile` compiled for models of one ``kind`` (see :func:`step_of_kind`)."""
    c0, c1, c2, c3 = scratch[0], scratch[1], scratch[2], scratch[3]
    if not (
        _prepare(params, layout, x0, c0)
        and _prepare(params, layout, x1, c1)
        and _prepare(params, layout, x2, c2)
        and _prepare(params, layout, x3, c3)
    ):
        return (
            step_of_kind(params, layout, s0, x0, o0, c0, kind),
            step_of_kind(params, layout, s1, x1, o1, c1, kind),
            step_of_kind(params, layout, s2, x2, o2, c2, kind),
            step_of_kind(params, layout, s3, x3, o3, c3, kind),
        )
    for index in range(layout[L.H_LAYERS]):
        rec = _record(layout, index)
        _layer_tile(
            params,
            rec,
            _layer_input(layout, rec, index, c0),
            _layer_input(layout, rec, index, c1),
            _layer_input(layout, rec, index, c2),
            _layer_input(layout, rec, index, c3),
            s0,
            s1,
            s2,
            s3,
            _new_state(layout, c0),
            _new_state(layout, c1),
            _new_state(layout, c2),
            _new_state(layout, c3),
            _work(layout, c0),
            _work(layout, c1),
            _work(layout, c2),
            _work(layout, c3),
            _spare(layout, c0),
            reverse,
            kind,
        )
    return (
        _finish(params, layout, s0, o0, c0),
        _finish(params, layout, s1, o1, c1),
        _finish(params, layout, s2, o2, c2),
        _finish(params, layout, s3, o3, c3),
    )


@njit(**JIT)
def step_tile(
    params, layout, s0, s1, s2, s3, x0, x1, x2, x3, o0, o1, o2, o3, scratch, reverse=False
):
    """Advance four *different* streams by one sample each; statuses as a 4-tuple.

    Same arguments as :func:`step`, four of each, and ``scratch`` of shape
    ``(4, scratch_size)``. Equal, sample for sample, to four :func:`step` calls (every sum
    adds its terms in the same order), but each weight row is read once for the four.
    ``reverse`` walks the weight blocks backwards (same results; see :mod:`.layout`).
    """
    return step_tile_of_kind(
        params, layout, s0, s1, s2, s3, x0, x1, x2, x3, o0, o1, o2, o3, scratch, reverse, ANY_KIND
    )


def kernel_kind(layout: np.ndarray) -> int:
    """The kind a model's kernels are compiled for: :data:`.layout.LSTM` or
    :data:`.layout.GRU` when every recurrent layer is of that kind, else
    :data:`.layout.ANY_KIND`."""
    kinds = {
        int(layout[L.HEADER + index * L.LAYER_RECORD + L.L_KIND])
        for index in range(int(layout[L.H_LAYERS]))
    }
    return kinds.pop() if len(kinds) == 1 else ANY_KIND


@functools.cache
def stream_kernels(kind: int) -> tuple[Any, Any]:
    """``(step, run)`` compiled for models of one ``kind`` (see :func:`kernel_kind`), the
    only kind a stream's first call then compiles. For :data:`.layout.ANY_KIND` these are
    the public :func:`step` and :func:`run`."""
    if kind == ANY_KIND:
        return step, run
    return _stream_kernels(kind)


def _stream_kernels(kind: int) -> tuple[Any, Any]:
    # Closures over ``kind``, an int: Numba compiles them with ``kind`` as a constant and
    # caches one entry per kind (its cache key hashes the closure's cells).
    @njit(**JIT)
    def step(params, layout, state, x, out, scratch):
        """:func:`step` for one kind of model (see :func:`stream_kernels`): a call of
        :func:`step_of_kind`, which a bank's few-sensor batches and its tiles' remainders
        call too, so it is compiled once for them all."""
        return step_of_kind(params, layout, state, x, out, scratch, kind)

    @njit(**JIT)
    def run(params, layout, state, xs, outs, status, scratch):
        """:func:`run` for one kind of model (see :func:`stream_kernels`)."""
        return _run(params, layout, state, xs, outs, status, scratch, kind)

    return step, run


@njit(**JIT)
def step(params, layout, state, x, out, scratch):
    """Advance one stream by one sample; return a status code from :mod:`.layout`.

    ``params``/``layout``: the packed model (CPU target); ``state``: the stream's ``(S,)``
    state row, updated in place only on success; ``x``: ``(D,)`` sample in sensor units;
    ``out``: ``(O,)`` receives the prediction (NaN when the step is rejected);
    ``scratch``: at least ``layout[H_SCRATCH]`` numbers of the model's dtype, contents
    irrelevant.
    """
    return _step(params, layout, state, x, out, scratch, forward(layout), ANY_KIND)


@njit(inline="always", **JIT)
def _run(params, layout, state, xs, outs, status, scratch, kind):
    rejected = 0
    for t in range(xs.shape[0]):
        code = _step(params, layout, state, xs[t], outs[t], scratch, t % 2 == 1, kind)
        status[t] = code
        rejected += code != L.OK
    return rejected


@njit(**JIT)
def run(params, layout, state, xs, outs, status, scratch):
    """Advance one stream over a ``(T, D)`` block in order; return the number rejected.

    ``outs``: ``(T, O)``; ``status``: ``(T,)`` int8 codes. A rejected sample is skipped
    and the state carries on from the last good one. Consecutive steps walk the weights in
    opposite directions, so each starts on the blocks still in L1 (same results).
    """
    return _run(params, layout, state, xs, outs, status, scratch, ANY_KIND)
