"""Compiled forward step of a whole model over its packed buffers (see :mod:`.layout`).

Every function here is a plain function over arrays, compiled once with ``cache=True``.
``fastmath`` is restricted to flags that keep NaN/Inf semantics (no ``nnan``/``ninf``),
so the finiteness checks below still work, and ``error_model='numpy'`` lets LLVM
vectorise loops that divide.

A step is split into stages so that one stream (:func:`step`) and a tile of four
streams (:func:`step_tile`, used by the bank) share everything but the matrix products:

``_prepare`` (check and normalise the sample) -> per layer ``_*_gates`` (the matrix
products, the only tiled stage) and ``_*_update`` (nonlinearities, state update) ->
``_finish`` (dense head, output normalisation, finiteness check, commit).

The new state is computed into scratch and committed to the caller's state row only if
every new state value and output is finite: a bad sample or an overflow can never poison
``(h, c)``.

Why the tile: at H=64 one stream's weights (68 KB) do not fit the 48 KB L1 cache, so a
single-stream step is bound by streaming weights from L2 (measured 0.72 us for the
67x256 product whether the accumulators sit in memory or registers). Four streams
sharing each weight row, with their accumulators in registers, take 0.30 us each.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import layout as L
from ._math import activate_all, like

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True}

#: Streams stepped together by :func:`step_tile`.
TILE_STREAMS = 4
#: Gate columns whose accumulators a tile keeps in registers: 4 streams x 64 float32 =
#: 16 AVX-512 registers.
_TILE_COLUMNS = 64


@intrinsic
def _stack_buffer(typingctx, size, dtype):
    """A pointer to ``size`` (a literal) elements of ``dtype`` in the caller's stack frame.

    Numba has no stack arrays; LLVM promotes this alloca to registers, which it cannot do
    for a heap buffer that might alias the weights.
    """
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value
    element = dtype.dtype

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_data_type(element), size=count)

    return types.CPointer(element)(size, dtype), codegen


@njit(inline="always", **JIT)
def _matvec_acc(acc, weights_t, x, n_in, n_out):
    """``acc[:n_out] += weights_t[:n_in, :n_out].T @ x`` as row sweeps that vectorise."""
    for k in range(n_in):
        xk = x[k]
        row = weights_t[k]
        for j in range(n_out):
            acc[j] += row[j] * xk


@njit(inline="always", **JIT)
def _matvec_acc_tile(acc0, acc1, acc2, acc3, weights_t, x0, x1, x2, x3, n_in, n_out):
    """:func:`_matvec_acc` for four streams sharing each weight row (see module docstring)."""
    dtype = acc0.dtype
    b0 = carray(_stack_buffer(_TILE_COLUMNS, dtype), (_TILE_COLUMNS,))
    b1 = carray(_stack_buffer(_TILE_COLUMNS, dtype), (_TILE_COLUMNS,))
    b2 = carray(_stack_buffer(_TILE_COLUMNS, dtype), (_TILE_COLUMNS,))
    b3 = carray(_stack_buffer(_TILE_COLUMNS, dtype), (_TILE_COLUMNS,))
    j0 = 0
    # Slices (not j0 + t indexing) keep every index provably non-negative, which the
    # vectoriser needs: a signed index carries a wraparound branch.
    while j0 + _TILE_COLUMNS <= n_out:
        a0 = acc0[j0:j0 + _TILE_COLUMNS]
        a1 = acc1[j0:j0 + _TILE_COLUMNS]
        a2 = acc2[j0:j0 + _TILE_COLUMNS]
        a3 = acc3[j0:j0 + _TILE_COLUMNS]
        for t in range(_TILE_COLUMNS):
            b0[t] = a0[t]
            b1[t] = a1[t]
            b2[t] = a2[t]
            b3[t] = a3[t]
        for k in range(n_in):
            row = weights_t[k, j0:j0 + _TILE_COLUMNS]
            v0, v1, v2, v3 = x0[k], x1[k], x2[k], x3[k]
            for t in range(_TILE_COLUMNS):
                w = row[t]
                b0[t] += w * v0
                b1[t] += w * v1
                b2[t] += w * v2
                b3[t] += w * v3
        for t in range(_TILE_COLUMNS):
            a0[t] = b0[t]
            a1[t] = b1[t]
            a2[t] = b2[t]
            a3[t] = b3[t]
        j0 += _TILE_COLUMNS
    for k in range(n_in):
        row = weights_t[k]
        v0, v1, v2, v3 = x0[k], x1[k], x2[k], x3[k]
        for j in range(j0, n_out):
            w = row[j]
            acc0[j] += w * v0
            acc1[j] += w * v1
            acc2[j] += w * v2
            acc3[j] += w * v3


@njit(inline="always", **JIT)
def _all_finite(values, n):
    """True if ``values[:n]`` holds no NaN or Inf.

    ``v * 0`` is 0 for finite ``v`` and NaN otherwise, so one vectorised sum answers it;
    a per-element ``np.isfinite`` test does not vectorise (measured 0.3 us for 128 values).
    """
    total = values[0] * 0
    for k in range(n):
        total += values[k] * 0
    return total == 0


# -- scratch views ----------------------------------------------------------------------------
@njit(inline="always", **JIT)
def _new_state(layout, scratch):
    return scratch[:layout[L.H_STATE]]


@njit(inline="always", **JIT)
def _gates(layout, scratch):
    return scratch[layout[L.H_SC_GATES]:layout[L.H_SC_INPUT]]


@njit(inline="always", **JIT)
def _layer_input(layout, rec, index, scratch):
    """Layer ``index``'s input: the normalised sample, or the previous layer's new h."""
    if index == 0:
        start = layout[L.H_SC_INPUT]
        return scratch[start:start + layout[L.H_INPUT]]
    prev = layout[L.HEADER + (index - 1) * L.LAYER_RECORD:L.HEADER + index * L.LAYER_RECORD]
    so = prev[L.L_STATE]
    return scratch[so:so + prev[L.L_OUT]]


@njit(inline="always", **JIT)
def _record(layout, index):
    start = L.HEADER + index * L.LAYER_RECORD
    return layout[start:start + L.LAYER_RECORD]


@njit(inline="always", **JIT)
def _weights(params, offset, rows, cols):
    return params[offset:offset + rows * cols].reshape((rows, cols))


# -- stages -----------------------------------------------------------------------------------
@njit(inline="always", **JIT)
def _prepare(params, layout, x, scratch):
    """Check the sample and write it, normalised, into scratch; False if not finite."""
    n_in = layout[L.H_INPUT]
    if not _all_finite(x, n_in):
        return False
    start = layout[L.H_SC_INPUT]
    xin = scratch[start:start + n_in]
    norm = layout[L.H_IN_NORM]
    if norm >= 0:
        for k in range(n_in):
            xin[k] = (x[k] - params[norm + k]) / params[norm + n_in + k]
    else:
        for k in range(n_in):
            xin[k] = x[k]
    return True


@njit(inline="always", **JIT)
def _init_gates(params, rec, gates):
    """Gate accumulators start from the biases (LSTM: one sum; GRU: input and hidden)."""
    hidden = rec[L.L_HIDDEN]
    if rec[L.L_KIND] == L.LSTM:
        width = 4 * hidden
        bias = params[rec[L.L_B]:rec[L.L_B] + width]
        for j in range(width):
            gates[j] = bias[j]
    else:
        width = 3 * hidden
        b_ih = params[rec[L.L_B]:rec[L.L_B] + width]
        b_hh = params[rec[L.L_B2]:rec[L.L_B2] + width]
        for j in range(width):
            gates[j] = b_ih[j]
            gates[width + j] = b_hh[j]


@njit(inline="always", **JIT)
def _recurrent_width(rec):
    """Gate columns the recurrent product fills: a GRU without reset-after leaves W_hn
    for :func:`_gru_update`, which needs ``r * h`` first."""
    hidden = rec[L.L_HIDDEN]
    if rec[L.L_KIND] == L.LSTM:
        return 4 * hidden
    return 3 * hidden if rec[L.L_RESET_AFTER] == 1 else 2 * hidden


@njit(inline="always", **JIT)
def _layer_gates(params, rec, x, h_prev, gates):
    """One stream's gate pre-activations: biases + W_ih x + W_hh h."""
    _init_gates(params, rec, gates)
    n_in, n_h = rec[L.L_IN], rec[L.L_OUT]
    gate_count = 4 if rec[L.L_KIND] == L.LSTM else 3
    width = gate_count * rec[L.L_HIDDEN]
    _matvec_acc(gates, _weights(params, rec[L.L_WX], n_in, width), x, n_in, width)
    hidden_part = gates if rec[L.L_KIND] == L.LSTM else gates[width:]
    _matvec_acc(hidden_part, _weights(params, rec[L.L_WH], n_h, width), h_prev, n_h,
                _recurrent_width(rec))


@njit(inline="always", **JIT)
def _layer_gates_tile(params, rec, x0, x1, x2, x3, h0, h1, h2, h3, g0, g1, g2, g3):
    """:func:`_layer_gates` for four streams at once."""
    for gates in (g0, g1, g2, g3):
        _init_gates(params, rec, gates)
    n_in, n_h = rec[L.L_IN], rec[L.L_OUT]
    width = (4 if rec[L.L_KIND] == L.LSTM else 3) * rec[L.L_HIDDEN]
    _matvec_acc_tile(g0, g1, g2, g3, _weights(params, rec[L.L_WX], n_in, width),
                     x0, x1, x2, x3, n_in, width)
    shift = 0 if rec[L.L_KIND] == L.LSTM else width
    _matvec_acc_tile(g0[shift:], g1[shift:], g2[shift:], g3[shift:],
                     _weights(params, rec[L.L_WH], n_h, width), h0, h1, h2, h3, n_h,
                     _recurrent_width(rec))


@njit(inline="always", **JIT)
def _lstm_update(params, rec, gates, c_prev, h_new, c_new):
    hidden, n_out = rec[L.L_HIDDEN], rec[L.L_OUT]
    act, ract = rec[L.L_ACT], rec[L.L_RACT]
    activate_all(gates[:2 * hidden], ract)              # i, f
    activate_all(gates[2 * hidden:3 * hidden], act)     # g
    activate_all(gates[3 * hidden:4 * hidden], ract)    # o
    cell_out = gates[2 * hidden:3 * hidden]  # g is consumed into c, then holds act(c)
    for j in range(hidden):
        c = gates[hidden + j] * c_prev[j] + gates[j] * gates[2 * hidden + j]
        c_new[j] = c
        cell_out[j] = c
    activate_all(cell_out, act)
    projected = rec[L.L_WR] >= 0
    # Without projection h goes straight to h_new; with one, the unprojected h overwrites
    # the already-consumed i-gate slots and is projected below.
    h_full = gates[:hidden] if projected else h_new
    for j in range(hidden):
        h_full[j] = gates[3 * hidden + j] * cell_out[j]
    if projected:
        for j in range(n_out):
            h_new[j] = 0.0
        _matvec_acc(h_new, _weights(params, rec[L.L_WR], hidden, n_out), h_full, hidden,
                    n_out)


@njit(inline="always", **JIT)
def _gru_update(params, rec, gates, h_prev, h_new):
    hidden = rec[L.L_HIDDEN]
    width = 3 * hidden
    gx = gates[:width]
    gh = gates[width:2 * width]
    act, ract = rec[L.L_ACT], rec[L.L_RACT]
    rz = gx[:2 * hidden]
    for j in range(2 * hidden):
        rz[j] += gh[j]
    activate_all(rz, ract)
    n = gx[2 * hidden:width]
    if rec[L.L_RESET_AFTER] == 1:
        for j in range(hidden):
            n[j] += rz[j] * gh[2 * hidden + j]
    else:
        r_h = gh[:hidden]  # the r part of gh is consumed: reuse it for r * h
        for j in range(hidden):
            r_h[j] = rz[j] * h_prev[j]
        n_acc = gh[2 * hidden:width]  # holds b_hn
        wh = _weights(params, rec[L.L_WH], hidden, width)
        for k in range(hidden):
            rh = r_h[k]
            row = wh[k]
            for j in range(hidden):
                n_acc[j] += row[2 * hidden + j] * rh
        for j in range(hidden):
            n[j] += n_acc[j]
    activate_all(n, act)
    one = like(h_prev[0], 1)
    for j in range(hidden):
        z = rz[hidden + j]
        h_new[j] = (one - z) * n[j] + z * h_prev[j]


@njit(inline="always", **JIT)
def _layer_update(params, rec, state, new_state, gates):
    so, n_h = rec[L.L_STATE], rec[L.L_OUT]
    if rec[L.L_KIND] == L.LSTM:
        hidden = rec[L.L_HIDDEN]
        _lstm_update(params, rec, gates, state[so + n_h:so + n_h + hidden],
                     new_state[so:so + n_h], new_state[so + n_h:so + n_h + hidden])
    else:
        _gru_update(params, rec, gates, state[so:so + n_h], new_state[so:so + n_h])


@njit(inline="always", **JIT)
def _finish(params, layout, state, out, scratch):
    """Dense head, output normalisation, finiteness check and commit; return a status."""
    n_layers = layout[L.H_LAYERS]
    last = _record(layout, n_layers - 1)
    new_state = _new_state(layout, scratch)
    layer_in = new_state[last[L.L_STATE]:last[L.L_STATE] + last[L.L_OUT]]
    ping = scratch[layout[L.H_SC_PING]:layout[L.H_SC_PONG]]
    pong = scratch[layout[L.H_SC_PONG]:layout[L.H_SCRATCH]]
    dense_base = L.HEADER + n_layers * L.LAYER_RECORD
    for index in range(layout[L.H_DENSE]):
        start = dense_base + index * L.DENSE_RECORD
        rec = layout[start:start + L.DENSE_RECORD]
        d_in, d_out = rec[L.D_IN], rec[L.D_OUT]
        dst = ping if index % 2 == 0 else pong
        bias = params[rec[L.D_B]:rec[L.D_B] + d_out]
        if rec[L.D_FORM] == L.DENSE_DOT:
            weights = _weights(params, rec[L.D_W], d_out, d_in)
            for j in range(d_out):
                row = weights[j]
                total = bias[j]
                for k in range(d_in):
                    total += row[k] * layer_in[k]
                dst[j] = total
        else:
            for j in range(d_out):
                dst[j] = bias[j]
            _matvec_acc(dst, _weights(params, rec[L.D_W], d_in, d_out), layer_in, d_in, d_out)
        layer_in = dst[:d_out]
        activate_all(layer_in, rec[L.D_ACT])

    n_out = layout[L.H_OUTPUT]
    norm = layout[L.H_OUT_NORM]
    for j in range(n_out):
        y = layer_in[j]
        if norm >= 0:
            y = y * params[norm + n_out + j] + params[norm + j]
        out[j] = y
    n_state = layout[L.H_STATE]
    if not (_all_finite(out, n_out) and _all_finite(new_state, n_state)):
        out[:n_out] = np.nan
        return L.REJECTED_RESULT
    for k in range(n_state):
        state[k] = new_state[k]
    return L.OK


# -- public kernels ---------------------------------------------------------------------------
@njit(**JIT)
def step(params, layout, state, x, out, scratch):
    """Advance one stream by one sample; return a status code from :mod:`.layout`.

    ``params``/``layout``: the packed model; ``state``: the stream's ``(S,)`` state row,
    updated in place only on success; ``x``: ``(D,)`` sample in sensor units; ``out``:
    ``(O,)`` receives the prediction (NaN when the step is rejected); ``scratch``: at
    least ``layout[H_SCRATCH]`` numbers of the model's dtype, contents irrelevant.
    """
    if not _prepare(params, layout, x, scratch):
        out[:layout[L.H_OUTPUT]] = np.nan
        return L.REJECTED_SAMPLE
    new_state = _new_state(layout, scratch)
    gates = _gates(layout, scratch)
    for index in range(layout[L.H_LAYERS]):
        rec = _record(layout, index)
        so = rec[L.L_STATE]
        _layer_gates(params, rec, _layer_input(layout, rec, index, scratch),
                     state[so:so + rec[L.L_OUT]], gates)
        _layer_update(params, rec, state, new_state, gates)
    return _finish(params, layout, state, out, scratch)


@njit(**JIT)
def step_tile(params, layout, s0, s1, s2, s3, x0, x1, x2, x3, o0, o1, o2, o3, scratch):
    """Advance four *different* streams by one sample each; statuses as a 4-tuple.

    Same arguments as :func:`step`, four of each, and ``scratch`` of shape
    ``(4, scratch_size)``. Equal, sample for sample, to four :func:`step` calls (the
    products sum in the same order), but each weight row is read once for the four.
    """
    c0, c1, c2, c3 = scratch[0], scratch[1], scratch[2], scratch[3]
    if not (_prepare(params, layout, x0, c0) and _prepare(params, layout, x1, c1)
            and _prepare(params, layout, x2, c2) and _prepare(params, layout, x3, c3)):
        return (step(params, layout, s0, x0, o0, c0), step(params, layout, s1, x1, o1, c1),
                step(params, layout, s2, x2, o2, c2), step(params, layout, s3, x3, o3, c3))
    for index in range(layout[L.H_LAYERS]):
        rec = _record(layout, index)
        so, n_h = rec[L.L_STATE], rec[L.L_OUT]
        _layer_gates_tile(params, rec,
                          _layer_input(layout, rec, index, c0),
                          _layer_input(layout, rec, index, c1),
                          _layer_input(layout, rec, index, c2),
                          _layer_input(layout, rec, index, c3),
                          s0[so:so + n_h], s1[so:so + n_h], s2[so:so + n_h], s3[so:so + n_h],
                          _gates(layout, c0), _gates(layout, c1), _gates(layout, c2),
                          _gates(layout, c3))
        _layer_update(params, rec, s0, _new_state(layout, c0), _gates(layout, c0))
        _layer_update(params, rec, s1, _new_state(layout, c1), _gates(layout, c1))
        _layer_update(params, rec, s2, _new_state(layout, c2), _gates(layout, c2))
        _layer_update(params, rec, s3, _new_state(layout, c3), _gates(layout, c3))
    return (_finish(params, layout, s0, o0, c0), _finish(params, layout, s1, o1, c1),
            _finish(params, layout, s2, o2, c2), _finish(params, layout, s3, o3, c3))


@njit(**JIT)
def run(params, layout, state, xs, outs, status, scratch):
    """Advance one stream over a ``(T, D)`` block in order; return the number rejected.

    ``outs``: ``(T, O)``; ``status``: ``(T,)`` int8 codes. A rejected sample is skipped
    and the state carries on from the last good one.
    """
    rejected = 0
    for t in range(xs.shape[0]):
        code = step(params, layout, state, xs[t], outs[t], scratch)
        status[t] = code
        rejected += code != L.OK
    return rejected
