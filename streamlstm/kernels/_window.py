"""Compiled evaluation of window models: many fixed windows, each from the zero state.

A window model (see :mod:`streamlstm.window_spec`) is evaluated as its framework
evaluates a batch of sequences: layer by layer over the whole window, each direction of
a bidirectional layer over the window (the backward one from its end), the directions'
outputs concatenated per step, then the dense head on the last step or on every step,
then softmax / log-softmax for a classifier. Unlike the streaming kernels
(:mod:`._network`) this needs the whole window at once, which is what lets it run
bidirectional layers; it supports LSTM (with projection), GRU (reset gate after or
before ``W_hn``) and plain RNN (tanh / relu) layers.

The model is packed (:mod:`streamlstm.windows.packing`) into ``params`` and an int64
``layout`` table whose fields are the constants below. Weights are stored transposed,
``W^T`` as ``(in, gates)``, and applied as row sweeps that vectorise over the gates; the
input and recurrent biases stay separate, added in the frameworks' order.

:func:`assemble_windows` keeps a ring of the last ``W`` samples per sensor and copies out
every completed window of a micro-batch; :func:`evaluate_windows` then evaluates all of
them, in parallel over windows.
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from ._math import activate_all, like
from ._network import JIT, _all_finite, _matvec_acc
from .layout import OK, REJECTED_RESULT, REJECTED_SAMPLE

# Header fields.
W_LAYERS = 0       # number of recurrent layers
W_INPUT = 1        # D
W_OUTPUT = 2       # O
W_DENSE = 3        # number of dense head layers
W_IN_NORM = 4      # offset of (mean[D], std[D]) or -1
W_OUT_NORM = 5     # offset of (mean[O], std[O]) or -1
W_MODE = 6         # one of the MODE_* codes
W_WIDTH = 7        # widest per-step vector of the layer sequences (input or a layer output)
W_HIDDEN = 8       # largest hidden size
W_GATES = 9        # largest gate count (gates * hidden)
W_DENSE_WIDTH = 10  # widest dense output
HEADER = 11

# Direction record (a layer has one or two, the backward one second).
K_KIND = 0
K_IN = 1           # input width
K_HIDDEN = 2       # H
K_OUT = 3          # this direction's h width: proj size or H
K_WX = 4           # W_ih^T, (in, gates)
K_WH = 5           # W_hh^T, (out, gates)
K_BI = 6           # b_ih (gates)
K_BH = 7           # b_hh (gates)
K_WR = 8           # LSTM projection W_hr^T, (H, out), or -1
K_ACT = 9
K_RACT = 10
K_RESET_AFTER = 11  # GRU: 1 = reset gate after W_hn h (PyTorch), 0 = before
K_REVERSE = 12     # 1 for a backward direction
K_COLUMN = 13      # where this direction's h goes in the layer output: 0 or out
DIRECTION_RECORD = 14
# Layer record: the number of directions, then two direction records (-1 if absent).
LAYER_DIRECTIONS = 0
LAYER_RECORD = 1 + 2 * DIRECTION_RECORD

# Dense record.
D_IN = 0
D_OUT = 1
D_ACT = 2
D_W = 3            # W^T, (in, out)
D_B = 4
DENSE_RECORD = 5

LSTM, GRU, RNN = 0, 1, 2
MODE_LAST, MODE_EVERY, MODE_SOFTMAX, MODE_LOG_SOFTMAX = 0, 1, 2, 3


def work_size(layout: np.ndarray, steps: int) -> int:
    """Numbers of work space one window of ``steps`` samples needs (per thread)."""
    return int(2 * steps * layout[W_WIDTH] + 4 * layout[W_HIDDEN] + 2 * layout[W_GATES]
               + 2 * layout[W_DENSE_WIDTH])


@njit(inline="always", **JIT)
def _gate_count(kind, hidden):
    if kind == LSTM:
        return 4 * hidden
    if kind == GRU:
        return 3 * hidden
    return hidden


@njit(**JIT)
def _direction(params, rec, src, dst, steps, width, h, c, full, gx, gh, rh):
    """One direction of one layer over the window: ``src`` rows in, ``dst`` columns out.

    ``src`` and ``dst`` are ``(steps, width)`` row-major; ``h``, ``c``, ``full``, ``rh``:
    hidden-sized work; ``gx``, ``gh``: gate-sized work.
    """
    kind, n_in, hidden, n_out = rec[K_KIND], rec[K_IN], rec[K_HIDDEN], rec[K_OUT]
    act, ract, column = rec[K_ACT], rec[K_RACT], rec[K_COLUMN]
    gates = _gate_count(kind, hidden)
    H = hidden
    h, c, full, rh = h[:n_out], c[:H], full[:H], rh[:H]
    gx, gh = gx[:gates], gh[:gates]
    for u in range(n_out):
        h[u] = 0.0
    for u in range(H):
        c[u] = 0.0
    one = like(h[0], 1)
    for s in range(steps):
        t = steps - 1 - s if rec[K_REVERSE] else s
        for j in range(gates):
            gx[j] = params[rec[K_BI] + j]
            gh[j] = params[rec[K_BH] + j]
        _matvec_acc(gx, params, rec[K_WX], src[t * width:t * width + n_in], gates)
        _matvec_acc(gh, params, rec[K_WH], h, gates)
        if kind == LSTM:
            for j in range(gates):
                gx[j] += gh[j]
            activate_all(gx[:2 * H], ract)
            activate_all(gx[2 * H:3 * H], act)
            activate_all(gx[3 * H:], ract)
            for u in range(H):
                c[u] = gx[H + u] * c[u] + gx[u] * gx[2 * H + u]
                full[u] = c[u]
            activate_all(full, act)
            for u in range(H):
                full[u] *= gx[3 * H + u]
            if rec[K_WR] >= 0:
                for u in range(n_out):
                    h[u] = 0.0
                _matvec_acc(h, params, rec[K_WR], full, n_out)
            else:
                for u in range(H):
                    h[u] = full[u]
        elif kind == GRU:
            for j in range(2 * H):
                gx[j] += gh[j]
            activate_all(gx[:2 * H], ract)
            n, hn = gx[2 * H:], gh[2 * H:]
            if not rec[K_RESET_AFTER]:
                # hn = b_hn + W_hn (r * h): the W_hn columns of each W_hh^T row.
                for u in range(H):
                    rh[u] = gx[u] * h[u]
                    hn[u] = params[rec[K_BH] + 2 * H + u]
                row = rec[K_WH] + 2 * H
                for k in range(H):
                    v = rh[k]
                    for u in range(H):
                        hn[u] += params[row + u] * v
                    row += gates
                for u in range(H):
                    n[u] += hn[u]
            else:
                for u in range(H):
                    n[u] += gx[u] * hn[u]
            activate_all(n, act)
            for u in range(H):
                z = gx[H + u]
                h[u] = (one - z) * n[u] + z * h[u]
        else:
            for j in range(H):
                gx[j] += gh[j]
            activate_all(gx, act)
            for u in range(H):
                h[u] = gx[u]
        out = dst[t * width + column:t * width + column + n_out]
        for u in range(n_out):
            out[u] = h[u]


@njit(**JIT)
def _head(params, layout, vector, out, ping, pong):
    """Dense head and output normalisation of one step's top-layer output into ``out``."""
    n_layers = layout[W_LAYERS]
    base = HEADER + n_layers * LAYER_RECORD
    layer_in = vector
    for index in range(layout[W_DENSE]):
        rec = layout[base + index * DENSE_RECORD:base + (index + 1) * DENSE_RECORD]
        d_out = rec[D_OUT]
        dst = ping[:d_out] if index % 2 == 0 else pong[:d_out]
        for j in range(d_out):
            dst[j] = params[rec[D_B] + j]
        _matvec_acc(dst, params, rec[D_W], layer_in, d_out)
        activate_all(dst, rec[D_ACT])
        layer_in = dst
    n_out = layout[W_OUTPUT]
    norm = layout[W_OUT_NORM]
    for j in range(n_out):
        y = layer_in[j]
        if norm >= 0:
            y = y * params[norm + n_out + j] + params[norm + j]
        out[j] = y


@njit(inline="always", **JIT)
def _softmax(values, log):
    """Softmax (or log-softmax) of ``values`` in place, shifted by the maximum."""
    top = values[0]
    for j in range(values.shape[0]):
        top = max(top, values[j])
    total = like(values[0], 0)
    for j in range(values.shape[0]):
        total += np.exp(values[j] - top)
    if log:
        shift = top + np.log(total)
        for j in range(values.shape[0]):
            values[j] -= shift
    else:
        for j in range(values.shape[0]):
            values[j] = np.exp(values[j] - top) / total


@njit(**JIT)
def evaluate_window(params, layout, window, out, work):
    """Evaluate one ``(T, D)`` window from the zero state; return a status code.

    ``out``: ``(T, O)`` for ``MODE_EVERY``, else ``(1, O)`` (NaN when rejected: a
    non-finite sample, ``REJECTED_SAMPLE``, or a non-finite result, ``REJECTED_RESULT``);
    ``work``: at least :func:`work_size` numbers.
    """
    steps, n_in = window.shape[0], layout[W_INPUT]
    width, hidden, gates, dense = (layout[W_WIDTH], layout[W_HIDDEN], layout[W_GATES],
                                   layout[W_DENSE_WIDTH])
    for t in range(steps):
        if not _all_finite(window[t], n_in):
            out[:, :] = np.nan
            return REJECTED_SAMPLE
    size = steps * width
    seq_a, seq_b = work[:size], work[size:2 * size]
    at = 2 * size
    h, c, full, rh = (work[at:at + hidden], work[at + hidden:at + 2 * hidden],
                      work[at + 2 * hidden:at + 3 * hidden], work[at + 3 * hidden:at + 4 * hidden])
    at += 4 * hidden
    gx, gh = work[at:at + gates], work[at + gates:at + 2 * gates]
    at += 2 * gates
    ping, pong = work[at:at + dense], work[at + dense:at + 2 * dense]

    norm = layout[W_IN_NORM]
    for t in range(steps):
        row = seq_a[t * width:t * width + n_in]
        for k in range(n_in):
            row[k] = window[t, k]
            if norm >= 0:
                row[k] = (row[k] - params[norm + k]) / params[norm + n_in + k]
    src, dst = seq_a, seq_b
    top = n_in
    for index in range(layout[W_LAYERS]):
        start = HEADER + index * LAYER_RECORD
        directions = layout[start + LAYER_DIRECTIONS]
        for d in range(directions):
            first = start + 1 + d * DIRECTION_RECORD
            rec = layout[first:first + DIRECTION_RECORD]
            _direction(params, rec, src, dst, steps, width, h, c, full, gx, gh, rh)
            top = directions * rec[K_OUT]
        src, dst = dst, src

    mode = layout[W_MODE]
    n_out = layout[W_OUTPUT]
    if mode == MODE_EVERY:
        for t in range(steps):
            _head(params, layout, src[t * width:t * width + top], out[t], ping, pong)
    else:
        last = out[0]
        _head(params, layout, src[(steps - 1) * width:(steps - 1) * width + top], last,
              ping, pong)
        if mode != MODE_LAST:
            _softmax(last[:n_out], mode == MODE_LOG_SOFTMAX)
    rows = out.shape[0]
    for r in range(rows):
        if not _all_finite(out[r], n_out):
            out[:, :] = np.nan
            return REJECTED_RESULT
    return OK


@njit(parallel=True, **JIT)
def evaluate_windows(params, layout, windows, outs, status, work):
    """Evaluate ``(N, T, D)`` windows in parallel; ``outs`` ``(N, rows, O)``, ``status``
    ``(N,)`` int8, ``work`` ``(threads, work_size)`` (see :func:`evaluate_window`)."""
    for n in prange(windows.shape[0]):
        status[n] = evaluate_window(params, layout, windows[n], outs[n], work[get_thread_id()])


@njit(**JIT)
def evaluate_windows_serial(params, layout, windows, outs, status, work):
    """:func:`evaluate_windows` on the calling thread (uses ``work[0]``)."""
    for n in range(windows.shape[0]):
        status[n] = evaluate_window(params, layout, windows[n], outs[n], work[0])


@njit(**JIT)
def assemble_windows(rows, samples, ring, counts, last_bad, rejected, skipped, hop, windows,
                     window_rows, window_ends, window_at):
    """Push a micro-batch into the per-sensor rings; copy out every completed window.

    ``rows``: ``(M,)`` ring rows in arrival order; ``samples``: ``(M, D)``; ``ring``:
    ``(capacity, W, D)``; ``counts``: samples seen per row; ``last_bad``: per row, the
    count index of its latest non-finite sample (-1: none); ``rejected``/``skipped``: per
    row, rejected samples and skipped windows (incremented). A window ends where a row's
    count reaches ``W + j * hop``; one holding a rejected sample is skipped. Completed
    windows go to ``windows[n]`` (oldest sample first) with their ring row, the count
    index of their last sample and the micro-batch position that completed them. Returns
    ``(windows written, windows skipped)``; ``windows`` needs room for ``M``.
    """
    steps, n_in = ring.shape[1], ring.shape[2]
    written = 0
    skipped_now = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        t = counts[r]
        x = samples[i]
        slot = ring[r, t % steps]
        for k in range(n_in):
            slot[k] = x[k]
        if not _all_finite(x, n_in):
            last_bad[r] = t
            rejected[r] += 1
        t += 1
        counts[r] = t
        if t < steps or (t - steps) % hop != 0:
            continue
        if last_bad[r] >= t - steps:
            skipped[r] += 1
            skipped_now += 1
            continue
        start = t % steps
        target = windows[written]
        for j in range(steps):
            source = ring[r, (start + j) % steps]
            for k in range(n_in):
                target[j, k] = source[k]
        window_rows[written] = r
        window_ends[written] = t - 1
        window_at[written] = i
        written += 1
    return written, skipped_now
