"""Compiled forward step of a whole model over its packed buffers (see :mod:`.layout`).

Every function here is a plain function over arrays, compiled once with ``cache=True``.
``fastmath`` is restricted to flags that keep NaN/Inf semantics (no ``nnan``/``ninf``),
so the finiteness checks below still work, and ``error_model='numpy'`` lets LLVM
vectorise loops that divide.

A step computes the new state into scratch and commits it to the caller's state row
only if the sample and every new state value and output are finite: a bad sample or an
overflow can never poison ``(h, c)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import layout as L
from ._math import activate_all, like

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy", "nogil": True, "_nrt": False}


@njit(inline="always", **JIT)
def _matvec_acc(acc, weights_t, x, n_in, n_out):
    """``acc[:n_out] += weights_t[:n_in, :n_out].T @ x`` as row sweeps that vectorise."""
    for k in range(n_in):
        xk = x[k]
        row = weights_t[k]
        for j in range(n_out):
            acc[j] += row[j] * xk


@njit(inline="always", **JIT)
def _lstm_layer(params, rec, x, state, new_state, gates):
    n_in, hidden, n_out = rec[L.L_IN], rec[L.L_HIDDEN], rec[L.L_OUT]
    width = 4 * hidden
    so = rec[L.L_STATE]
    h_prev = state[so:so + n_out]
    c_prev = state[so + n_out:so + n_out + hidden]
    h_new = new_state[so:so + n_out]
    c_new = new_state[so + n_out:so + n_out + hidden]
    wx = params[rec[L.L_WX]:rec[L.L_WX] + n_in * width].reshape((n_in, width))
    wh = params[rec[L.L_WH]:rec[L.L_WH] + n_out * width].reshape((n_out, width))
    bias = params[rec[L.L_B]:rec[L.L_B] + width]
    for j in range(width):
        gates[j] = bias[j]
    _matvec_acc(gates, wx, x, n_in, width)
    _matvec_acc(gates, wh, h_prev, n_out, width)
    act, ract = rec[L.L_ACT], rec[L.L_RACT]
    activate_all(gates[:2 * hidden], ract)        # i, f
    activate_all(gates[2 * hidden:3 * hidden], act)  # g
    activate_all(gates[3 * hidden:width], ract)   # o
    cell_out = gates[2 * hidden:3 * hidden]       # g is consumed into c, then holds act(c)
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
        wr = params[rec[L.L_WR]:rec[L.L_WR] + hidden * n_out].reshape((hidden, n_out))
        for j in range(n_out):
            h_new[j] = 0.0
        _matvec_acc(h_new, wr, h_full, hidden, n_out)


@njit(inline="always", **JIT)
def _gru_layer(params, rec, x, state, new_state, gates):
    n_in, hidden = rec[L.L_IN], rec[L.L_HIDDEN]
    width = 3 * hidden
    so = rec[L.L_STATE]
    h_prev = state[so:so + hidden]
    h_new = new_state[so:so + hidden]
    wx = params[rec[L.L_WX]:rec[L.L_WX] + n_in * width].reshape((n_in, width))
    wh = params[rec[L.L_WH]:rec[L.L_WH] + hidden * width].reshape((hidden, width))
    b_ih = params[rec[L.L_B]:rec[L.L_B] + width]
    b_hh = params[rec[L.L_B2]:rec[L.L_B2] + width]
    gx = gates[:width]
    gh = gates[width:2 * width]
    for j in range(width):
        gx[j] = b_ih[j]
        gh[j] = b_hh[j]
    _matvec_acc(gx, wx, x, n_in, width)
    act, ract = rec[L.L_ACT], rec[L.L_RACT]
    reset_after = rec[L.L_RESET_AFTER] == 1
    # reset_after: n needs W_hn h, computed with the rest; otherwise W_hn (r * h), below.
    _matvec_acc(gh, wh, h_prev, hidden, width if reset_after else 2 * hidden)
    rz = gx[:2 * hidden]
    for j in range(2 * hidden):
        rz[j] += gh[j]
    activate_all(rz, ract)
    n = gx[2 * hidden:width]
    if reset_after:
        for j in range(hidden):
            n[j] += rz[j] * gh[2 * hidden + j]
    else:
        r_h = gh[:hidden]  # the r part of gh is consumed: reuse it for r * h
        for j in range(hidden):
            r_h[j] = rz[j] * h_prev[j]
        n_acc = gh[2 * hidden:width]  # holds b_hn
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


@njit(**JIT)
def step(params, layout, state, x, out, scratch):
    """Advance one stream by one sample; return a status code from :mod:`.layout`.

    ``params``/``layout``: the packed model; ``state``: the stream's ``(S,)`` state row,
    updated in place only on success; ``x``: ``(D,)`` sample in sensor units; ``out``:
    ``(O,)`` receives the prediction (NaN when the step is rejected); ``scratch``: at
    least ``layout[H_SCRATCH]`` numbers of the model's dtype, contents irrelevant.
    """
    n_in = layout[L.H_INPUT]
    n_out = layout[L.H_OUTPUT]
    for k in range(n_in):
        if not np.isfinite(x[k]):
            out[:n_out] = np.nan
            return L.REJECTED_SAMPLE
    n_state = layout[L.H_STATE]
    new_state = scratch[:n_state]
    gates = scratch[layout[L.H_SC_GATES]:layout[L.H_SC_INPUT]]
    xin = scratch[layout[L.H_SC_INPUT]:layout[L.H_SC_INPUT] + n_in]
    norm = layout[L.H_IN_NORM]
    if norm >= 0:
        for k in range(n_in):
            xin[k] = (x[k] - params[norm + k]) / params[norm + n_in + k]
    else:
        for k in range(n_in):
            xin[k] = x[k]

    n_layers = layout[L.H_LAYERS]
    layer_in = xin
    for index in range(n_layers):
        start = L.HEADER + index * L.LAYER_RECORD
        rec = layout[start:start + L.LAYER_RECORD]
        if rec[L.L_KIND] == L.LSTM:
            _lstm_layer(params, rec, layer_in, state, new_state, gates)
        else:
            _gru_layer(params, rec, layer_in, state, new_state, gates)
        so = rec[L.L_STATE]
        layer_in = new_state[so:so + rec[L.L_OUT]]

    ping = scratch[layout[L.H_SC_PING]:layout[L.H_SC_PONG]]
    pong = scratch[layout[L.H_SC_PONG]:layout[L.H_SCRATCH]]
    dense_base = L.HEADER + n_layers * L.LAYER_RECORD
    for index in range(layout[L.H_DENSE]):
        start = dense_base + index * L.DENSE_RECORD
        rec = layout[start:start + L.DENSE_RECORD]
        d_in, d_out, act = rec[L.D_IN], rec[L.D_OUT], rec[L.D_ACT]
        dst = ping if index % 2 == 0 else pong
        bias = params[rec[L.D_B]:rec[L.D_B] + d_out]
        for j in range(d_out):
            dst[j] = bias[j]
        w = params[rec[L.D_W]:rec[L.D_W] + d_in * d_out].reshape((d_in, d_out))
        _matvec_acc(dst, w, layer_in, d_in, d_out)
        layer_in = dst[:d_out]
        activate_all(layer_in, act)

    norm = layout[L.H_OUT_NORM]
    finite = True
    for j in range(n_out):
        y = layer_in[j]
        if norm >= 0:
            y = y * params[norm + n_out + j] + params[norm + j]
        out[j] = y
        finite &= np.isfinite(y)
    for k in range(n_state):
        finite &= np.isfinite(new_state[k])
    if not finite:
        out[:n_out] = np.nan
        return L.REJECTED_RESULT
    for k in range(n_state):
        state[k] = new_state[k]
    return L.OK


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
