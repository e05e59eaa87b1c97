"""The tiled step kernel: one thread block steps a tile of streams, threads split the units.

The thread-per-stream kernel (:mod:`.kernels`) runs a whole step as one thread's serial
chain of ~17,000 FMAs at H=64: a 1,000-stream bank occupies 8 of 132 multiprocessors and
waits ~80 us on that chain, and each weight load feeds a single FMA. Here a block of
threads takes ``TILE_STREAMS`` streams at once, like a small matrix product:

* the tile's state is staged in shared memory as ``[S][TILE_STREAMS + 1]`` (the padding
  keeps a warp's column accesses on distinct banks), loaded and stored with coalesced
  accesses when neighbouring streams have neighbouring rows;
* a thread owns one hidden unit of ``STREAMS_PER_THREAD`` streams and sums all its gates
  for them in registers, so each weight load (coalesced across the warp's units, from
  L1) feeds ``STREAMS_PER_THREAD`` FMAs and each state value is a shared-memory
  broadcast;
* the steps of a group (CSR micro-batches, block mode) run inside the kernel with the
  state resident in shared memory, and only rows that changed are written back.

Same buffers, arguments and semantics as the thread kernel (:class:`.kernels.StepKernel`),
including the rule that a step commits only if its sample, every new state value and the
output are finite. Weights stay in global memory (L1-resident; the 48 KiB of static
shared memory holds the state tiles). Models whose state tiles do not fit use the thread
kernel (:func:`tile_streams` returns 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numba
import numpy as np

from ..kernels import layout as L
from ._compat import import_cuda
from .kernels import SHARED_BYTES, StepKernel, activation, model_constants, state_base

cuda = import_cuda()  # a module global: the simulator swaps a kernel's global ``cuda``

#: Streams of one tile whose gate sums one thread holds in registers (per unit).
STREAMS_PER_THREAD = 8
#: Tile sizes tried, largest first, until the tile's shared memory fits.
TILE_CHOICES = (32, 16, 8)
#: Threads per block on a GPU (8 warps: at H=64 and 32 streams, one unit per thread).
TILE_THREADS = 256
#: On the simulator every CUDA thread is a Python thread: few threads keep tests quick.
SIMULATOR_TILE_THREADS = 16


def _shared_numbers(consts: dict[str, int], streams: int) -> int:
    padded = streams + 1
    return padded * (
        2 * consts["state"] + consts["inputs"] + consts["scratch"] + 2 * consts["head"]
    )


def tile_streams(layout: np.ndarray, dtype: np.dtype) -> int:
    """Streams per tile for this model, or 0 when even the smallest tile overflows shared memory."""
    consts = model_constants(layout)
    for streams in TILE_CHOICES:
        # + the per-stream bookkeeping arrays (rows, counts, offsets, flags: 8 bytes each)
        if _shared_numbers(consts, streams) * dtype.itemsize + 6 * 8 * streams <= SHARED_BYTES:
            return streams
    return 0


@cache
def _compiled(layout_bytes: bytes, dtype_str: str, n_params: int, streams: int) -> StepKernel:
    return _build(
        np.frombuffer(layout_bytes, np.int64).copy(), np.dtype(dtype_str), n_params, streams
    )


def tile_kernel(layout: np.ndarray, dtype: np.dtype, n_params: int) -> StepKernel | None:
    """The tiled kernel for a packed model, or ``None`` if its tiles do not fit (see module)."""
    streams = tile_streams(layout, np.dtype(dtype))
    if streams == 0:
        return None
    return _compiled(
        np.ascontiguousarray(layout, np.int64).tobytes(),
        np.dtype(dtype).str,
        int(n_params),
        streams,
    )


@dataclass(frozen=True)
class TileLayers:
    """Device functions that compute one recurrent layer for a tile of streams.

    ``lstm(W, base, src, src_row, old, new, spare, good)`` and ``gru(...)`` read the layer
    record at ``layout[base:]`` (:mod:`streamlstm.kernels.layout`, transposed form) and the
    tile's input rows ``src[(src_row + q) * (streams + 1) + s]`` (shared), its state from
    ``old`` and write ``new`` (``[S][streams + 1]`` tiles), park per-layer work in ``spare``
    and clear ``good[s]`` for a stream with a non-finite result; each ends with a block
    barrier. ``activate(x, code)`` applies an activation code.
    """

    activate: Any
    lstm: Any
    gru: Any


def tile_layers(layout: np.ndarray, dtype: np.dtype, streams: int) -> TileLayers:
    """The per-layer device functions over tiles of ``streams`` streams; ``layout`` is
    frozen into them as a constant array (the step kernel's and the window kernel's)."""
    LAY = layout
    DT = numba.from_dtype(dtype)
    TS = streams
    TSP = streams + 1
    SPT = STREAMS_PER_THREAD
    LSTM_SUMS, GRU_SUMS = 4 * SPT, 6 * SPT  # gate sums one thread keeps (registers)
    GROUPS_OF_STREAMS = TS // SPT
    ZERO, ONE = dtype.type(0.0), dtype.type(1.0)
    IX = numba.uint64  # unsigned indices: no negative-index wraparound code

    activate = activation(dtype)

    @cuda.jit(device=True)
    def lstm_tile(W, base, src, src_row, old, new, spare, good):
        """New ``(h, c)`` of one LSTM layer for the whole tile (``src`` rows from ``src_row``)."""
        n_in, hidden, n_out = LAY[base + L.L_IN], LAY[base + L.L_HIDDEN], LAY[base + L.L_OUT]
        wx, wh = LAY[base + L.L_WX], LAY[base + L.L_WH]
        bias, wr = LAY[base + L.L_B], LAY[base + L.L_WR]
        so, act, ract = LAY[base + L.L_STATE], LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        width = 4 * hidden
        acc = cuda.local.array(LSTM_SUMS, DT)
        for item in range(cuda.threadIdx.x, GROUPS_OF_STREAMS * hidden, cuda.blockDim.x):
            first = (item // hidden) * SPT
            j = item % hidden
            for gate in range(4):
                b = W[IX(bias + gate * hidden + j)]
                for i in range(SPT):
                    acc[gate * SPT + i] = b
            for q in range(n_in):
                at = wx + q * width + j
                w0, w1 = W[IX(at)], W[IX(at + hidden)]
                w2, w3 = W[IX(at + 2 * hidden)], W[IX(at + 3 * hidden)]
                row = (src_row + q) * TSP + first
                for i in range(SPT):
                    v = src[IX(row + i)]
                    acc[i] += w0 * v
                    acc[SPT + i] += w1 * v
                    acc[2 * SPT + i] += w2 * v
                    acc[3 * SPT + i] += w3 * v
            for q in range(n_out):
                at = wh + q * width + j
                w0, w1 = W[IX(at)], W[IX(at + hidden)]
                w2, w3 = W[IX(at + 2 * hidden)], W[IX(at + 3 * hidden)]
                row = (so + q) * TSP + first
                for i in range(SPT):
                    v = old[IX(row + i)]
                    acc[i] += w0 * v
                    acc[SPT + i] += w1 * v
                    acc[2 * SPT + i] += w2 * v
                    acc[3 * SPT + i] += w3 * v
            c_row = (so + n_out + j) * TSP + first
            for i in range(SPT):
                c = activate(acc[SPT + i], ract) * old[IX(c_row + i)] + activate(
                    acc[i], ract
                ) * activate(acc[2 * SPT + i], act)
                h = activate(acc[3 * SPT + i], ract) * activate(c, act)
                new[IX(c_row + i)] = c
                if wr < 0:
                    new[IX((so + j) * TSP + first + i)] = h
                else:
                    spare[IX(j * TSP + first + i)] = h
                if not (math.isfinite(c) and math.isfinite(h)):
                    good[first + i] = 0
        cuda.syncthreads()
        if wr >= 0:
            for item in range(cuda.threadIdx.x, n_out * TS, cuda.blockDim.x):
                p = item // TS
                s = item % TS
                total = ZERO
                for j in range(hidden):
                    total += W[IX(wr + j * n_out + p)] * spare[IX(j * TSP + s)]
                new[IX((so + p) * TSP + s)] = total
                if not math.isfinite(total):
                    good[s] = 0
            cuda.syncthreads()

    @cuda.jit(device=True)
    def gru_tile(W, base, src, src_row, old, new, spare, good):
        """New ``h`` of one GRU layer for the whole tile (see :func:`lstm_tile`)."""
        n_in, hidden = LAY[base + L.L_IN], LAY[base + L.L_HIDDEN]
        wx, wh = LAY[base + L.L_WX], LAY[base + L.L_WH]
        bx, bh = LAY[base + L.L_B], LAY[base + L.L_B2]
        so, act, ract = LAY[base + L.L_STATE], LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        width = 3 * hidden
        reset_after = LAY[base + L.L_RESET_AFTER] == 1
        # acc rows: input sums of r, z, n (with b_ih), then recurrent sums of r, z, n (b_hh).
        acc = cuda.local.array(GRU_SUMS, DT)
        for item in range(cuda.threadIdx.x, GROUPS_OF_STREAMS * hidden, cuda.blockDim.x):
            first = (item // hidden) * SPT
            j = item % hidden
            for gate in range(3):
                b_x = W[IX(bx + gate * hidden + j)]
                b_h = W[IX(bh + gate * hidden + j)]
                for i in range(SPT):
                    acc[gate * SPT + i] = b_x
                    acc[(3 + gate) * SPT + i] = b_h
            for q in range(n_in):
                at = wx + q * width + j
                w0, w1, w2 = W[IX(at)], W[IX(at + hidden)], W[IX(at + 2 * hidden)]
                row = (src_row + q) * TSP + first
                for i in range(SPT):
                    v = src[IX(row + i)]
                    acc[i] += w0 * v
                    acc[SPT + i] += w1 * v
                    acc[2 * SPT + i] += w2 * v
            for q in range(hidden):
                at = wh + q * width + j
                w0, w1 = W[IX(at)], W[IX(at + hidden)]
                w2 = W[IX(at + 2 * hidden)] if reset_after else ZERO
                row = (so + q) * TSP + first
                for i in range(SPT):
                    v = old[IX(row + i)]
                    acc[3 * SPT + i] += w0 * v
                    acc[4 * SPT + i] += w1 * v
                    acc[5 * SPT + i] += w2 * v
            h_row = (so + j) * TSP + first
            for i in range(SPT):
                r = activate(acc[i] + acc[3 * SPT + i], ract)
                z = activate(acc[SPT + i] + acc[4 * SPT + i], ract)
                h_old = old[IX(h_row + i)]
                if reset_after:
                    n = activate(acc[2 * SPT + i] + r * acc[5 * SPT + i], act)
                    h = (ONE - z) * n + z * h_old
                    new[IX(h_row + i)] = h
                    if not math.isfinite(h):
                        good[first + i] = 0
                else:
                    # n needs W_hn (r * h) over every unit's r: park r * h, x_n and z.
                    spare[IX(j * TSP + first + i)] = r * h_old
                    spare[IX((hidden + j) * TSP + first + i)] = acc[2 * SPT + i]
                    new[IX(h_row + i)] = z
        cuda.syncthreads()
        if not reset_after:
            for item in range(cuda.threadIdx.x, hidden * TS, cuda.blockDim.x):
                j = item // TS
                s = item % TS
                total = W[IX(bh + 2 * hidden + j)]
                for q in range(hidden):
                    total += W[IX(wh + q * width + 2 * hidden + j)] * spare[IX(q * TSP + s)]
                at = (so + j) * TSP + s
                z = new[IX(at)]
                n = activate(spare[IX((hidden + j) * TSP + s)] + total, act)
                h = (ONE - z) * n + z * old[IX(at)]
                new[IX(at)] = h
                if not math.isfinite(h):
                    good[s] = 0
            cuda.syncthreads()

    return TileLayers(activate=activate, lstm=lstm_tile, gru=gru_tile)


def _build(layout: np.ndarray, dtype: np.dtype, n_params: int, streams: int) -> StepKernel:
    k = model_constants(layout)
    LAY = layout
    DT = numba.from_dtype(dtype)
    I64, I32 = numba.int64, numba.int32
    N_LAYERS, N_IN, N_OUT, N_DENSE = k["layers"], k["inputs"], k["outputs"], k["dense"]
    N_STATE = k["state"]
    SCRATCH = max(1, k["scratch"])
    HEAD = max(1, k["head"])
    IO_WIDTH = N_OUT + 1
    TS = streams
    TSP = streams + 1  # row stride of every shared tile
    # Shared array shapes must be constants of the kernel, not expressions in it.
    STATE_TILE, INPUT_TILE = N_STATE * TSP, N_IN * TSP
    SCRATCH_TILE, HEAD_TILE = SCRATCH * TSP, HEAD * TSP
    IN_NORM, OUT_NORM = int(layout[L.H_IN_NORM]), int(layout[L.H_OUT_NORM])
    DENSE_BASE = L.HEADER + N_LAYERS * L.LAYER_RECORD
    STATE_BASE = state_base(n_params)
    ZERO = dtype.type(0.0)
    IX = numba.uint64  # unsigned indices: no negative-index wraparound code
    NAN = dtype.type(np.nan)
    OK, BAD_SAMPLE, BAD_RESULT = (
        dtype.type(v) for v in (L.OK, L.REJECTED_SAMPLE, L.REJECTED_RESULT)
    )

    layers = tile_layers(layout, dtype, streams)
    activate, lstm_tile, gru_tile = layers.activate, layers.lstm, layers.gru

    @cuda.jit(device=True)
    def sample_index(index, groups, steps, g, first, t):
        if steps == 0:
            return index[2 * groups + 1 + first + t]
        return t * groups + g

    @cuda.jit
    def kernel(buffer, index, capacity, groups, samples, steps):
        old = cuda.shared.array(STATE_TILE, DT)
        new = cuda.shared.array(STATE_TILE, DT)
        xin = cuda.shared.array(INPUT_TILE, DT)
        spare = cuda.shared.array(SCRATCH_TILE, DT)
        ping = cuda.shared.array(HEAD_TILE, DT)
        pong = cuda.shared.array(HEAD_TILE, DT)
        rows = cuda.shared.array(TS, I64)
        counts = cuda.shared.array(TS, I64)
        firsts = cuda.shared.array(TS, I64)
        good = cuda.shared.array(TS, I32)  # this step may commit
        finite_in = cuda.shared.array(TS, I32)  # this step's sample is finite
        changed = cuda.shared.array(TS, I32)
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        g0 = cuda.blockIdx.x * TS
        W = buffer
        for s in range(tid, TS, threads):
            g = g0 + s
            rows[s] = -1
            counts[s] = 0
            firsts[s] = 0
            changed[s] = 0
            if g < groups:
                rows[s] = index[g]
                if steps == 0:
                    firsts[s] = index[groups + g]
                    counts[s] = index[groups + g + 1] - firsts[s]
                else:
                    counts[s] = steps
        cuda.syncthreads()
        longest = 0
        for s in range(TS):
            longest = max(longest, counts[s])
        for item in range(tid, N_STATE * TS, threads):
            q = item // TS
            s = item % TS
            value = ZERO
            if rows[s] >= 0:
                value = buffer[IX(STATE_BASE + q * capacity + rows[s])]
            old[IX(q * TSP + s)] = value
        x_base = STATE_BASE + N_STATE * capacity
        out_base = x_base + samples * N_IN
        for t in range(longest):
            for s in range(tid, TS, threads):
                good[s] = 1
                finite_in[s] = 1
            cuda.syncthreads()
            for item in range(tid, N_IN * TS, threads):
                q = item // TS
                s = item % TS
                v = ZERO
                if t < counts[s]:
                    i = sample_index(index, groups, steps, g0 + s, firsts[s], t)
                    v = buffer[IX(x_base + i * N_IN + q)]
                    if not math.isfinite(v):
                        finite_in[s] = 0
                    if IN_NORM >= 0:
                        v = (v - W[IX(IN_NORM + q)]) / W[IX(IN_NORM + N_IN + q)]
                xin[IX(q * TSP + s)] = v
            cuda.syncthreads()
            src = xin
            src_row = 0
            for index_layer in range(N_LAYERS):
                base = L.HEADER + index_layer * L.LAYER_RECORD
                if LAY[base + L.L_KIND] == L.LSTM:
                    lstm_tile(W, base, src, src_row, old, new, spare, good)
                else:
                    gru_tile(W, base, src, src_row, old, new, spare, good)
                src = new
                src_row = LAY[base + L.L_STATE]
            for index_dense in range(N_DENSE):
                base = DENSE_BASE + index_dense * L.DENSE_RECORD
                d_in, d_out, act = LAY[base + L.D_IN], LAY[base + L.D_OUT], LAY[base + L.D_ACT]
                w, b = LAY[base + L.D_W], LAY[base + L.D_B]
                q_step, j_step = (d_out, 1) if LAY[base + L.D_FORM] == L.DENSE_SWEEP else (1, d_in)
                dst = ping if index_dense % 2 == 0 else pong
                for item in range(tid, d_out * TS, threads):
                    j = item // TS
                    s = item % TS
                    total = W[IX(b + j)]
                    for q in range(d_in):
                        v = src[IX((src_row + q) * TSP + s)]
                        total += W[IX(w + q * q_step + j * j_step)] * v
                    dst[IX(j * TSP + s)] = activate(total, act)
                cuda.syncthreads()
                src = dst
                src_row = 0
            # The outputs must be finite too; the records are written once every thread
            # has had its say on whether its stream's step commits.
            for item in range(tid, N_OUT * TS, threads):
                j = item // TS
                s = item % TS
                y = src[IX((src_row + j) * TSP + s)]
                if OUT_NORM >= 0:
                    y = y * W[IX(OUT_NORM + N_OUT + j)] + W[IX(OUT_NORM + j)]
                if not math.isfinite(y):
                    good[s] = 0
            cuda.syncthreads()
            for item in range(tid, IO_WIDTH * TS, threads):
                j = item // TS
                s = item % TS
                if t < counts[s]:
                    i = sample_index(index, groups, steps, g0 + s, firsts[s], t)
                    out = out_base + i * IO_WIDTH
                    committed = finite_in[s] == 1 and good[s] == 1
                    if j < N_OUT:
                        y = NAN
                        if committed:
                            y = src[IX((src_row + j) * TSP + s)]
                            if OUT_NORM >= 0:
                                y = y * W[IX(OUT_NORM + N_OUT + j)] + W[IX(OUT_NORM + j)]
                        buffer[IX(out + j)] = y
                    elif finite_in[s] == 0:
                        buffer[IX(out + N_OUT)] = BAD_SAMPLE
                    elif good[s] == 0:
                        buffer[IX(out + N_OUT)] = BAD_RESULT
                    else:
                        buffer[IX(out + N_OUT)] = OK
                        changed[s] = 1
            for item in range(tid, N_STATE * TS, threads):
                q = item // TS
                s = item % TS
                if t < counts[s] and finite_in[s] == 1 and good[s] == 1:
                    old[IX(q * TSP + s)] = new[IX(q * TSP + s)]
            cuda.syncthreads()
        for item in range(tid, N_STATE * TS, threads):
            q = item // TS
            s = item % TS
            if changed[s] == 1:
                buffer[IX(STATE_BASE + q * capacity + rows[s])] = old[IX(q * TSP + s)]

    return StepKernel(
        kernel=kernel,
        weights_in_shared=False,
        io_width=IO_WIDTH,
        state_base=STATE_BASE,
        tile_streams=TS,
    )
