"""Compiled evaluation of window models: many fixed windows, each from the zero state.

A window model (see :mod:`streamlstm.window_spec`) is evaluated as its framework
evaluates a batch of sequences: layer by layer over the whole window, each direction of
a bidirectional layer over the window (the backward one from its end), the directions'
outputs concatenated per step, then the dense head on the last step or on every step,
then softmax / log-softmax for a classifier. A layer's *final state* is its output at
the last step, except for a bidirectional layer: its backward half comes from the first
step, where the backward pass ends. A per-window output may read the top layer's final
state (``W_FINAL_STATE``), and an encoder's final state may be repeated over the window
as the next layer's input (``W_ENCODER``, Keras ``RepeatVector``). An output that reads
the top layer at the last step runs that layer's backward direction for one step only:
it starts at the last step, and its other steps are never read. Unlike the streaming kernels
(:mod:`._network`) this needs the whole window at once, which is what lets it run
bidirectional layers. Layers: LSTM (with projection), GRU (reset gate after or before
``W_hn``) and plain RNN (tanh / relu).

Each LSTM or GRU direction runs through the streaming kernels themselves: it is packed
as a one-layer streaming model and stepped over the window from the zero state with
:func:`._network.step_tile_of_kind`, four windows in lockstep sharing each weight row
(or :func:`._network.step_of_kind` for the last one to three windows of a batch), compiled
for the model's kind of cell (:func:`window_kernel`). Plain RNN
directions, which the streaming kernels do not have, and the head run here.

The model is packed (:mod:`streamlstm.windows.packing`) into ``params`` and an int64
``layout`` table whose fields are the constants below, plus the directions' streaming
packs: ``stream_params``, ``stream_layouts`` and ``stream_index`` (one row per direction:
its slice of each). In ``params`` weights are stored transposed, ``W^T`` as
``(in, out)``, and applied as row sweeps that vectorise over the outputs; an RNN's input
and recurrent biases stay separate, added in the frameworks' order.

:func:`assemble_windows` keeps a ring of the last ``W`` samples per sensor and copies out
every completed window of a micro-batch; the kernel of :func:`window_kernel` then
evaluates all of them, four at a time (on several threads, each a slice of the windows).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import njit

from . import layout as L
from ._math import activate_all, like
from ._network import JIT, TILE_STREAMS, _all_finite, _matvec_acc, step_of_kind, step_tile_of_kind
from .layout import OK, REJECTED_RESULT, REJECTED_SAMPLE

# Header fields.
W_LAYERS = 0  # number of recurrent layers
W_INPUT = 1  # D
W_OUTPUT = 2  # O
W_DENSE = 3  # number of dense head layers
W_IN_NORM = 4  # offset of (mean[D], std[D]) or -1
W_OUT_NORM = 5  # offset of (mean[O], std[O]) or -1
W_MODE = 6  # one of the MODE_* codes
W_WIDTH = 7  # widest per-step vector of the layer sequences (input or a layer output)
W_RNN_HIDDEN = 8  # largest hidden size of a plain RNN layer (1 if none)
W_DENSE_WIDTH = 9  # widest dense output
W_STREAM_STATE = 10  # largest state of a direction's streaming pack
W_STREAM_SCRATCH = 11  # largest scratch of a direction's streaming pack
W_FINAL_STATE = 12  # 1: a per-window output reads the top layer's final state
W_ENCODER = 13  # n > 0: layer n's final state is fed to every step of layer n + 1
HEADER = 14

# Direction record (a layer has one or two, the backward one second).
K_STREAM = 0  # row of stream_index with an LSTM/GRU direction's pack, or -1 (RNN)
K_IN = 1  # input width
K_OUT = 2  # this direction's h width: proj size or H
K_REVERSE = 3  # 1 for a backward direction
K_COLUMN = 4  # where this direction's h goes in the layer output: 0 or out
K_WX = 5  # RNN only: W_ih^T, (in, H)
K_WH = 6  # RNN only: W_hh^T, (H, H)
K_BI = 7  # RNN only: b_ih (H)
K_BH = 8  # RNN only: b_hh (H)
K_ACT = 9  # RNN only: activation code (tanh or relu)
DIRECTION_RECORD = 10
# stream_index columns: a streaming pack's slice of stream_params and of stream_layouts.
S_PARAMS, S_PARAMS_END, S_LAYOUT, S_LAYOUT_END = 0, 1, 2, 3
# Layer record: the number of directions, then two direction records (-1 if absent).
LAYER_DIRECTIONS = 0
LAYER_RECORD = 1 + 2 * DIRECTION_RECORD

# Dense record.
D_IN = 0
D_OUT = 1
D_ACT = 2
D_W = 3  # W^T, (in, out)
D_B = 4
DENSE_RECORD = 5

MODE_LAST, MODE_EVERY, MODE_SOFTMAX, MODE_LOG_SOFTMAX = 0, 1, 2, 3


def work_size(layout: np.ndarray) -> int:
    """Numbers of shared work space one thread needs (plain RNN directions and the head)."""
    return int(3 * layout[W_RNN_HIDDEN] + 2 * layout[W_DENSE_WIDTH])


@njit(**JIT)
def _rnn_direction(params, rec, src, dst, steps, run, width, h, gx, gh):
    """One plain-RNN direction over the first ``run`` of a window's ``steps`` (in its own
    order): ``src`` rows in, ``dst`` columns out.

    ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` from ``h = 0``; ``src`` and ``dst`` are
    ``(steps, width)`` row-major; ``h``, ``gx``, ``gh``: hidden-sized work.
    """
    n_in, hidden, column = rec[K_IN], rec[K_OUT], rec[K_COLUMN]
    h, gx, gh = h[:hidden], gx[:hidden], gh[:hidden]
    for u in range(hidden):
        h[u] = 0.0
    for s in range(run):
        t = steps - 1 - s if rec[K_REVERSE] else s
        for j in range(hidden):
            gx[j] = params[rec[K_BI] + j]
            gh[j] = params[rec[K_BH] + j]
        _matvec_acc(gx, params, rec[K_WX], src[t * width : t * width + n_in], hidden)
        _matvec_acc(gh, params, rec[K_WH], h, hidden)
        for j in range(hidden):
            gx[j] += gh[j]
        activate_all(gx, rec[K_ACT])
        out = dst[t * width + column : t * width + column + hidden]
        for u in range(hidden):
            h[u] = gx[u]
            out[u] = gx[u]


@njit(**JIT)
def _gather_final_state(seq, steps, width, size, directions):
    """Put a layer's final state in its last step's row of ``seq``: a backward direction's
    ``size`` columns come from the first step (a forward direction's are there already)."""
    if directions == 2:
        last = (steps - 1) * width
        for k in range(size, 2 * size):
            seq[last + k] = seq[k]


@njit(**JIT)
def _repeat_last_row(seq, steps, width, top):
    """Copy the last step's first ``top`` columns to every step of ``seq``."""
    last = (steps - 1) * width
    for t in range(steps - 1):
        for k in range(top):
            seq[t * width + k] = seq[last + k]


@njit(**JIT)
def _head(params, layout, vector, out, ping, pong):
    """Dense head and output normalisation of one step's top-layer output into ``out``."""
    n_layers = layout[W_LAYERS]
    base = HEADER + n_layers * LAYER_RECORD
    layer_in = vector
    for index in range(layout[W_DENSE]):
        rec = layout[base + index * DENSE_RECORD : base + (index + 1) * DENSE_RECORD]
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


@njit(inline="always", **JIT)
def _failed(status, n, code):
    """Record a rejected step of window ``n`` (its first reason is kept)."""
    if code != OK and status[n] == OK:
        status[n] = REJECTED_RESULT


@njit(**JIT)
def _stream_direction(
    params, layout, rec, seqs, src, states, scratch, status, first, count, steps, run, width, kind
):
    """One LSTM/GRU direction over the first ``run`` of ``steps`` (in its own order) of
    ``count`` windows' sequences with the streaming kernels of ``kind``.

    ``params``/``layout``: the direction's one-layer streaming pack; every window starts
    from the zero state; four windows step in lockstep through ``step_tile_of_kind``.
    """
    n_in, n_out, column = rec[K_IN], rec[K_OUT], rec[K_COLUMN]
    size = layout[L.H_STATE]
    dst = 1 - src
    for i in range(count):
        for k in range(size):
            states[i, k] = 0.0
    for s in range(run):
        t = steps - 1 - s if rec[K_REVERSE] else s
        a, b = t * width, t * width + column
        if count == TILE_STREAMS:
            c0, c1, c2, c3 = step_tile_of_kind(
                params,
                layout,
                states[0, :size],
                states[1, :size],
                states[2, :size],
                states[3, :size],
                seqs[0, src, a : a + n_in],
                seqs[1, src, a : a + n_in],
                seqs[2, src, a : a + n_in],
                seqs[3, src, a : a + n_in],
                seqs[0, dst, b : b + n_out],
                seqs[1, dst, b : b + n_out],
                seqs[2, dst, b : b + n_out],
                seqs[3, dst, b : b + n_out],
                scratch,
                s % 2 == 1,
                kind,
            )
            _failed(status, first, c0)
            _failed(status, first + 1, c1)
            _failed(status, first + 2, c2)
            _failed(status, first + 3, c3)
        else:
            for i in range(count):
                code = step_of_kind(
                    params,
                    layout,
                    states[i, :size],
                    seqs[i, src, a : a + n_in],
                    seqs[i, dst, b : b + n_out],
                    scratch[i],
                    kind,
                )
                _failed(status, first + i, code)


@njit(**JIT)
def _evaluate_group(
    params,
    layout,
    stream_params,
    stream_layouts,
    stream_index,
    windows,
    outs,
    status,
    first,
    count,
    seqs,
    states,
    scratch,
    work,
    kind,
):
    """Evaluate windows ``first .. first + count - 1`` (``count`` <= 4) from the zero state.

    Sets ``status`` (``REJECTED_SAMPLE``: a non-finite sample; ``REJECTED_RESULT``: a
    non-finite result) and ``outs`` (NaN when rejected); the work arrays are one thread's
    (see :func:`window_kernel`).
    """
    steps, n_in = windows.shape[1], layout[W_INPUT]
    width, hidden, dense = layout[W_WIDTH], layout[W_RNN_HIDDEN], layout[W_DENSE_WIDTH]
    h, gx, gh = work[:hidden], work[hidden : 2 * hidden], work[2 * hidden : 3 * hidden]
    at = 3 * hidden
    ping, pong = work[at : at + dense], work[at + dense : at + 2 * dense]

    norm = layout[W_IN_NORM]
    for i in range(count):
        n = first + i
        status[n] = OK
        seq = seqs[i, 0]
        for t in range(steps):
            if not _all_finite(windows[n, t], n_in):
                status[n] = REJECTED_SAMPLE
            row = seq[t * width : t * width + n_in]
            for k in range(n_in):
                row[k] = windows[n, t, k]
                if norm >= 0:
                    row[k] = (row[k] - params[norm + k]) / params[norm + n_in + k]
    # The sequence buffer the next layer reads: an int64 from the start, not the literal 0,
    # which Numba would type (and compile _stream_direction for) before the loop's 1 - src.
    src = np.int64(0)
    top = n_in
    mode = layout[W_MODE]
    # A per-window output reads the top layer at the last step only, where its backward
    # direction starts: one backward step gives it (exact; the other steps are never read).
    last_only = mode != MODE_EVERY and not layout[W_FINAL_STATE]
    for index in range(layout[W_LAYERS]):
        start = HEADER + index * LAYER_RECORD
        directions = layout[start + LAYER_DIRECTIONS]
        for d in range(directions):
            begin = start + 1 + d * DIRECTION_RECORD
            rec = layout[begin : begin + DIRECTION_RECORD]
            run = steps
            if rec[K_REVERSE] and last_only and index + 1 == layout[W_LAYERS]:
                run = 1
            pack = rec[K_STREAM]
            if pack >= 0:
                row = stream_index[pack]
                _stream_direction(
                    stream_params[row[S_PARAMS] : row[S_PARAMS_END]],
                    stream_layouts[row[S_LAYOUT] : row[S_LAYOUT_END]],
                    rec,
                    seqs,
                    src,
                    states,
                    scratch,
                    status,
                    first,
                    count,
                    steps,
                    run,
                    width,
                    kind,
                )
            else:
                for i in range(count):
                    _rnn_direction(
                        params, rec, seqs[i, src], seqs[i, 1 - src], steps, run, width, h, gx, gh
                    )
            top = directions * rec[K_OUT]
        src = 1 - src
        size = layout[start + 1 + K_OUT]
        if index + 1 == layout[W_ENCODER]:
            for i in range(count):
                _gather_final_state(seqs[i, src], steps, width, size, directions)
                _repeat_last_row(seqs[i, src], steps, width, top)
        elif index + 1 == layout[W_LAYERS] and layout[W_FINAL_STATE]:
            for i in range(count):
                _gather_final_state(seqs[i, src], steps, width, size, directions)

    n_out = layout[W_OUTPUT]
    for i in range(count):
        n = first + i
        seq, out = seqs[i, src], outs[n]
        if mode == MODE_EVERY:
            for t in range(steps):
                _head(params, layout, seq[t * width : t * width + top], out[t], ping, pong)
        else:
            last = (steps - 1) * width
            _head(params, layout, seq[last : last + top], out[0], ping, pong)
            if mode != MODE_LAST:
                _softmax(out[0, :n_out], mode == MODE_LOG_SOFTMAX)
        for r in range(out.shape[0]):
            if not _all_finite(out[r], n_out):
                _failed(status, n, REJECTED_RESULT)
        if status[n] != OK:
            out[:, :] = np.nan


@functools.cache
def window_kernel(kind: int) -> Any:
    """``evaluate_windows`` compiled for window models whose LSTM/GRU directions are of one
    ``kind`` (see :func:`~._network.kernel_kind`; :data:`.layout.ANY_KIND` for a mix): it
    shares ``step_of_kind`` and ``step_tile_of_kind`` with the streaming kernels of that
    kind."""
    # A closure over ``kind``, an int: Numba compiles it with ``kind`` as a constant and
    # caches one entry per kind (its cache key hashes the closure's cells).

    @njit(**JIT)
    def evaluate_windows(
        params,
        layout,
        stream_params,
        stream_layouts,
        stream_index,
        windows,
        outs,
        status,
        seqs,
        states,
        scratch,
        work,
    ):
        """Evaluate ``(N, T, D)`` windows, each from the zero state, four at a time.

        ``outs``: ``(N, T, O)`` for ``MODE_EVERY``, else ``(N, 1, O)``; ``status``:
        ``(N,)`` int8 codes from :mod:`.layout` (NaN outputs where not ``OK``). Work, per
        thread (this call uses the first): ``seqs`` ``(threads, 4, 2, T * W_WIDTH)``,
        ``states`` ``(threads, 4, W_STREAM_STATE)``, ``scratch`` ``(threads, 4,
        W_STREAM_SCRATCH)``, ``work`` ``(threads, work_size)``. Windows are independent:
        calls on disjoint slices of ``windows``/``outs``/``status``, each with its own
        thread's slice of the work arrays, may run at once (the kernel releases the GIL).
        """
        count = windows.shape[0]
        for first in range(0, count, TILE_STREAMS):
            _evaluate_group(
                params,
                layout,
                stream_params,
                stream_layouts,
                stream_index,
                windows,
                outs,
                status,
                first,
                min(TILE_STREAMS, count - first),
                seqs[0],
                states[0],
                scratch[0],
                work[0],
                kind,
            )

    return evaluate_windows


@njit(**JIT)
def assemble_windows(
    rows,
    samples,
    start,
    ring,
    counts,
    last_bad,
    rejected,
    skipped,
    hop,
    windows,
    window_rows,
    window_ends,
    window_at,
):
    """Push a micro-batch, from sample ``start`` on, into the per-sensor rings; copy out
    every completed window until ``windows`` is full.

    ``rows``: ``(M,)`` ring rows in arrival order; ``samples``: ``(M, D)``; ``ring``:
    ``(capacity, W, D)``; ``counts``: samples seen per row; ``last_bad``: per row, the
    count index of its latest non-finite sample (-1: none); ``rejected``/``skipped``: per
    row, rejected samples and skipped windows (incremented); a rejected sample is kept in
    the ring as zeros (its windows are skipped). A window ends where a row's
    count reaches ``W + j * hop``; one holding a rejected sample is skipped. Completed
    windows go to ``windows[n]`` (oldest sample first) with their ring row, the count
    index of their last sample and the micro-batch position that completed them. Returns
    ``(next sample to push, windows written, windows skipped)``: the next sample is ``M``
    unless ``windows`` filled up first.
    """
    steps, n_in = ring.shape[1], ring.shape[2]
    written = 0
    skipped_now = 0
    room = windows.shape[0]
    for i in range(start, rows.shape[0]):
        if written == room:
            return i, written, skipped_now
        r = rows[i]
        t = counts[r]
        x = samples[i]
        slot = ring[r, t % steps]
        for k in range(n_in):
            slot[k] = x[k]
        if not _all_finite(x, n_in):  # never evaluated; zeros keep the ring finite
            for k in range(n_in):
                slot[k] = 0.0
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
    return rows.shape[0], written, skipped_now
