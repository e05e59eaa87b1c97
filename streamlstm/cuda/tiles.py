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
  state resident in shared memory, staged once per launch and written back once (only
  rows that changed); two state tiles swap roles each step, so committing a step costs
  nothing and only a stream that does not commit gets its old column copied back;
* tile arithmetic (shared-memory and weight offsets, loop counters) is unsigned 32-bit.

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
#: Tile indices (shared memory, weights) are unsigned 32-bit: one integer instruction where
#: numba's default 64-bit signed arithmetic takes two to four (the integer pipe was the
#: busiest in the profile); offsets into the state and I/O blocks stay 64-bit.
U32, U64 = numba.uint32, numba.uint64

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
    TS = U32(streams)
    TSP = U32(streams + 1)
    SPT = U32(STREAMS_PER_THREAD)
    LSTM_SUMS, GRU_SUMS = 4 * STREAMS_PER_THREAD, 6 * STREAMS_PER_THREAD  # gate sums (registers)
    GROUPS_OF_STREAMS = U32(streams // STREAMS_PER_THREAD)
    ZERO, ONE = dtype.type(0.0), dtype.type(1.0)

    activate = activation(dtype)

    @cuda.jit(device=True)
    def lstm_tile(W, base, src, src_row, old, old_at, new, new_at, spare, good):
        """New ``(h, c)`` of one LSTM layer for the whole tile (``src`` rows from ``src_row``)."""
        n_in, hidden = U32(LAY[base + L.L_IN]), U32(LAY[base + L.L_HIDDEN])
        n_out = U32(LAY[base + L.L_OUT])
        wx, wh = U32(LAY[base + L.L_WX]), U32(LAY[base + L.L_WH])
        bias, wr = U32(LAY[base + L.L_B]), LAY[base + L.L_WR]
        so, act, ract = U32(LAY[base + L.L_STATE]), LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        h2, h3 = U32(2 * hidden), U32(3 * hidden)
        width = U32(4 * hidden)
        src_at = U32(U32(src_row) * TSP)
        acc = cuda.local.array(LSTM_SUMS, DT)
        item = U32(cuda.threadIdx.x)
        while item < GROUPS_OF_STREAMS * hidden:
            first = U32(U32(item // hidden) * SPT)
            j = U32(item % hidden)
            for gate in range(4):
                b = W[U32(bias + U32(gate) * hidden + j)]
                for i in range(STREAMS_PER_THREAD):
                    acc[gate * STREAMS_PER_THREAD + i] = b
            # Offsets added to a 32-bit base as 64-bit numbers become the loads' immediates.
            at = U32(wx + j)
            row = U32(src_at + first)
            for _ in range(n_in):
                w0, w1 = W[at], W[U64(at) + U64(hidden)]
                w2, w3 = W[U64(at) + U64(h2)], W[U64(at) + U64(h3)]
                for i in range(STREAMS_PER_THREAD):
                    v = src[U64(row) + U64(i)]
                    acc[i] += w0 * v
                    acc[STREAMS_PER_THREAD + i] += w1 * v
                    acc[2 * STREAMS_PER_THREAD + i] += w2 * v
                    acc[3 * STREAMS_PER_THREAD + i] += w3 * v
                at = U32(at + width)
                row = U32(row + TSP)
            at = U32(wh + j)
            row = U32(old_at + so * TSP + first)
            for _ in range(n_out):
                w0, w1 = W[at], W[U64(at) + U64(hidden)]
                w2, w3 = W[U64(at) + U64(h2)], W[U64(at) + U64(h3)]
                for i in range(STREAMS_PER_THREAD):
                    v = old[U64(row) + U64(i)]
                    acc[i] += w0 * v
                    acc[STREAMS_PER_THREAD + i] += w1 * v
                    acc[2 * STREAMS_PER_THREAD + i] += w2 * v
                    acc[3 * STREAMS_PER_THREAD + i] += w3 * v
                at = U32(at + width)
                row = U32(row + TSP)
            c_row = U32(U32(so + n_out + j) * TSP + first)
            h_row = U32(new_at + U32(so + j) * TSP + first) if wr < 0 else U32(j * TSP + first)
            for i in range(STREAMS_PER_THREAD):
                c = activate(acc[STREAMS_PER_THREAD + i], ract) * old[
                    U64(old_at + c_row) + U64(i)
                ] + activate(acc[i], ract) * activate(acc[2 * STREAMS_PER_THREAD + i], act)
                h = activate(acc[3 * STREAMS_PER_THREAD + i], ract) * activate(c, act)
                new[U64(new_at + c_row) + U64(i)] = c
                if wr < 0:
                    new[U64(h_row) + U64(i)] = h
                else:
                    spare[U64(h_row) + U64(i)] = h
                if not (math.isfinite(c) and math.isfinite(h)):
                    good[U64(first) + U64(i)] = 0
            item = U32(item + U32(cuda.blockDim.x))
        cuda.syncthreads()
        if wr >= 0:
            item = U32(cuda.threadIdx.x)
            while item < n_out * TS:
                p = U32(item // TS)
                s = U32(item % TS)
                total = ZERO
                at = U32(U32(wr) + p)
                for j in range(hidden):
                    total += W[at] * spare[U32(U32(j) * TSP + s)]
                    at = U32(at + n_out)
                new[U32(new_at + U32(so + p) * TSP + s)] = total
                if not math.isfinite(total):
                    good[s] = 0
                item = U32(item + U32(cuda.blockDim.x))
            cuda.syncthreads()

    @cuda.jit(device=True)
    def gru_tile(W, base, src, src_row, old, old_at, new, new_at, spare, good):
        """New ``h`` of one GRU layer for the whole tile (see :func:`lstm_tile`)."""
        n_in, hidden = U32(LAY[base + L.L_IN]), U32(LAY[base + L.L_HIDDEN])
        wx, wh = U32(LAY[base + L.L_WX]), U32(LAY[base + L.L_WH])
        bx, bh = U32(LAY[base + L.L_B]), U32(LAY[base + L.L_B2])
        so, act, ract = U32(LAY[base + L.L_STATE]), LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        h2 = U32(2 * hidden)
        width = U32(3 * hidden)
        reset_after = LAY[base + L.L_RESET_AFTER] == 1
        src_at = U32(U32(src_row) * TSP)
        # acc rows: input sums of r, z, n (with b_ih), then recurrent sums of r, z, n (b_hh).
        acc = cuda.local.array(GRU_SUMS, DT)
        item = U32(cuda.threadIdx.x)
        while item < GROUPS_OF_STREAMS * hidden:
            first = U32(U32(item // hidden) * SPT)
            j = U32(item % hidden)
            for gate in range(3):
                b_x = W[U32(bx + U32(gate) * hidden + j)]
                b_h = W[U32(bh + U32(gate) * hidden + j)]
                for i in range(STREAMS_PER_THREAD):
                    acc[gate * STREAMS_PER_THREAD + i] = b_x
                    acc[(3 + gate) * STREAMS_PER_THREAD + i] = b_h
            at = U32(wx + j)
            row = U32(src_at + first)
            for _ in range(n_in):
                w0, w1, w2 = W[at], W[U64(at) + U64(hidden)], W[U64(at) + U64(h2)]
                for i in range(STREAMS_PER_THREAD):
                    v = src[U64(row) + U64(i)]
                    acc[i] += w0 * v
                    acc[STREAMS_PER_THREAD + i] += w1 * v
                    acc[2 * STREAMS_PER_THREAD + i] += w2 * v
                at = U32(at + width)
                row = U32(row + TSP)
            at = U32(wh + j)
            row = U32(old_at + so * TSP + first)
            for _ in range(hidden):
                w0, w1 = W[at], W[U64(at) + U64(hidden)]
                w2 = W[U64(at) + U64(h2)] if reset_after else ZERO
                for i in range(STREAMS_PER_THREAD):
                    v = old[U64(row) + U64(i)]
                    acc[3 * STREAMS_PER_THREAD + i] += w0 * v
                    acc[4 * STREAMS_PER_THREAD + i] += w1 * v
                    acc[5 * STREAMS_PER_THREAD + i] += w2 * v
                at = U32(at + width)
                row = U32(row + TSP)
            h_row = U32(U32(so + j) * TSP + first)
            for i in range(STREAMS_PER_THREAD):
                r = activate(acc[i] + acc[3 * STREAMS_PER_THREAD + i], ract)
                z = activate(acc[STREAMS_PER_THREAD + i] + acc[4 * STREAMS_PER_THREAD + i], ract)
                h_old = old[U64(old_at + h_row) + U64(i)]
                if reset_after:
                    n = activate(
                        acc[2 * STREAMS_PER_THREAD + i] + r * acc[5 * STREAMS_PER_THREAD + i], act
                    )
                    h = (ONE - z) * n + z * h_old
                    new[U64(new_at + h_row) + U64(i)] = h
                    if not math.isfinite(h):
                        good[U64(first) + U64(i)] = 0
                else:
                    # n needs W_hn (r * h) over every unit's r: park r * h, x_n and z.
                    spare[U64(j * TSP + first) + U64(i)] = r * h_old
                    spare[U64(U32(hidden + j) * TSP + first) + U64(i)] = acc[
                        2 * STREAMS_PER_THREAD + i
                    ]
                    new[U64(new_at + h_row) + U64(i)] = z
            item = U32(item + U32(cuda.blockDim.x))
        cuda.syncthreads()
        if not reset_after:
            item = U32(cuda.threadIdx.x)
            while item < hidden * TS:
                j = U32(item // TS)
                s = U32(item % TS)
                total = W[U32(bh + h2 + j)]
                at = U32(wh + h2 + j)
                for q in range(hidden):
                    total += W[at] * spare[U32(U32(q) * TSP + s)]
                    at = U32(at + width)
                at = U32(U32(so + j) * TSP + s)
                z = new[U32(new_at + at)]
                n = activate(spare[U32(U32(hidden + j) * TSP + s)] + total, act)
                h = (ONE - z) * n + z * old[U32(old_at + at)]
                new[U32(new_at + at)] = h
                if not math.isfinite(h):
                    good[s] = 0
                item = U32(item + U32(cuda.blockDim.x))
            cuda.syncthreads()

    return TileLayers(activate=activate, lstm=lstm_tile, gru=gru_tile)


def _build(layout: np.ndarray, dtype: np.dtype, n_params: int, streams: int) -> StepKernel:
    k = model_constants(layout)
    LAY = layout
    DT = numba.from_dtype(dtype)
    I32 = numba.int32
    N_LAYERS, N_IN, N_OUT, N_DENSE = k["layers"], k["inputs"], k["outputs"], k["dense"]
    N_STATE = k["state"]
    SCRATCH = max(1, k["scratch"])
    HEAD = max(1, k["head"])
    IO_WIDTH = N_OUT + 1
    TS = U32(streams)
    TSP = U32(streams + 1)  # row stride of every shared tile
    # Shared array shapes must be constants of the kernel, not expressions in it.
    # One shared array holds every tile a step reads or writes, by rows of TSP numbers:
    # two state tiles, the inputs, the head's (two when it has several layers). Reads
    # then always come from one known array: a choice between arrays would make them
    # generic (slower) loads.
    INPUT_ROW = U32(2 * N_STATE)
    PING_ROW, PONG_ROW = U32(2 * N_STATE + N_IN), U32(2 * N_STATE + N_IN + HEAD)
    TILES = (2 * N_STATE + N_IN + (2 if N_DENSE > 1 else 1) * HEAD) * (streams + 1)
    STATE_TILE = N_STATE * (streams + 1)
    SCRATCH_TILE = SCRATCH * (streams + 1)
    STATE_TILE_U, N_STATE_U = U32(STATE_TILE), U32(N_STATE)
    STATE_ITEMS, INPUT_ITEMS = U32(N_STATE * streams), U32(N_IN * streams)
    OUTPUT_ITEMS, RECORD_ITEMS = U32(N_OUT * streams), U32(IO_WIDTH * streams)
    IN_NORM, OUT_NORM = int(layout[L.H_IN_NORM]), int(layout[L.H_OUT_NORM])
    DENSE_BASE = L.HEADER + N_LAYERS * L.LAYER_RECORD
    STATE_BASE = U64(state_base(n_params))
    ZERO = dtype.type(0.0)
    NAN = dtype.type(np.nan)
    OK, BAD_SAMPLE, BAD_RESULT = (
        dtype.type(v) for v in (L.OK, L.REJECTED_SAMPLE, L.REJECTED_RESULT)
    )

    layers = tile_layers(layout, dtype, streams)
    activate, lstm_tile, gru_tile = layers.activate, layers.lstm, layers.gru

    @cuda.jit(device=True)
    def sample_index(index, groups, steps, g, first, t):
        """Position of stream ``g``'s ``t``-th sample of this launch in the I/O blocks."""
        if steps == 0:
            return U64(index[U64(2 * groups + 1) + U64(first + t)])
        return U64(t) * U64(groups) + U64(g)

    @cuda.jit
    def kernel(buffer, index, capacity, groups, samples, steps):
        # Two state tiles whose roles swap each step: a step reads the ``old`` one and
        # writes the ``new`` one; a stream that does not commit gets its old column copied
        # over (rare), so the common step has no commit copy at all.
        tiles = cuda.shared.array(TILES, DT)
        spare = cuda.shared.array(SCRATCH_TILE, DT)
        rows = cuda.shared.array(streams, I32)  # the tile's state rows; -1: no stream
        counts = cuda.shared.array(streams, I32)  # samples of this launch per stream
        firsts = cuda.shared.array(streams, I32)  # CSR: first sample's position in the order
        good = cuda.shared.array(streams, I32)  # this step may commit
        finite_in = cuda.shared.array(streams, I32)  # this step's sample is finite
        changed = cuda.shared.array(streams, I32)  # some step committed
        hold = cuda.shared.array(streams, I32)  # this step does not commit
        holding = cuda.shared.array(1, I32)  # some stream of the tile does not commit
        tid, threads = U32(cuda.threadIdx.x), U32(cuda.blockDim.x)
        g0 = U32(cuda.blockIdx.x) * TS
        W = buffer
        s = tid
        while s < TS:
            g = U32(g0 + s)
            rows[s] = -1
            counts[s] = 0
            firsts[s] = 0
            changed[s] = 0
            if g < groups:
                rows[s] = index[g]
                if steps == 0:
                    firsts[s] = index[U64(groups) + U64(g)]
                    counts[s] = index[U64(groups) + U64(g) + U64(1)] - firsts[s]
                else:
                    counts[s] = steps
            s = U32(s + threads)
        cuda.syncthreads()
        longest = 0
        for s in range(streams):
            longest = max(longest, counts[s])
        item = tid
        while item < STATE_ITEMS:
            q, s = U32(item // TS), U32(item % TS)
            value = ZERO
            if rows[s] >= 0:
                value = buffer[STATE_BASE + U64(q) * U64(capacity) + U64(rows[s])]
            tiles[U32(q * TSP + s)] = value
            item = U32(item + threads)
        x_base = STATE_BASE + U64(N_STATE) * U64(capacity)
        out_base = x_base + U64(samples) * U64(N_IN)
        flip = U32(0)  # which tile holds the committed state
        for t in range(longest):
            old_at, new_at = U32(flip * STATE_TILE_U), U32((U32(1) - flip) * STATE_TILE_U)
            new_row = U32((U32(1) - flip) * N_STATE_U)  # new_at in rows of the state tile
            s = tid
            while s < TS:
                good[s] = 1
                finite_in[s] = 1
                s = U32(s + threads)
            if tid == 0:
                holding[0] = 0
            cuda.syncthreads()
            item = tid
            while item < INPUT_ITEMS:
                q, s = U32(item // TS), U32(item % TS)
                v = ZERO
                if t < counts[s]:
                    i = sample_index(index, groups, steps, g0 + s, firsts[s], t)
                    v = buffer[x_base + i * U64(N_IN) + U64(q)]
                    if not math.isfinite(v):
                        finite_in[s] = 0
                    if IN_NORM >= 0:
                        v = (v - W[U32(IN_NORM + q)]) / W[U32(IN_NORM + N_IN + q)]
                tiles[U32((INPUT_ROW + q) * TSP + s)] = v
                item = U32(item + threads)
            cuda.syncthreads()
            src_row = INPUT_ROW
            for index_layer in range(N_LAYERS):
                base = L.HEADER + index_layer * L.LAYER_RECORD
                if LAY[base + L.L_KIND] == L.LSTM:
                    lstm_tile(W, base, tiles, src_row, tiles, old_at, tiles, new_at, spare, good)
                else:
                    gru_tile(W, base, tiles, src_row, tiles, old_at, tiles, new_at, spare, good)
                src_row = U32(new_row + LAY[base + L.L_STATE])
            for index_dense in range(N_DENSE):
                base = DENSE_BASE + index_dense * L.DENSE_RECORD
                d_in, d_out, act = LAY[base + L.D_IN], LAY[base + L.D_OUT], LAY[base + L.D_ACT]
                w, b = U32(LAY[base + L.D_W]), U32(LAY[base + L.D_B])
                q_step, j_step = (d_out, 1) if LAY[base + L.D_FORM] == L.DENSE_SWEEP else (1, d_in)
                dst_row = PING_ROW if index_dense % 2 == 0 else PONG_ROW
                item = tid
                while item < U32(d_out) * TS:
                    j, s = U32(item // TS), U32(item % TS)
                    total = W[U32(b + j)]
                    at = U32(w + j * U32(j_step))
                    row = U32(U32(src_row) * TSP + s)
                    for _ in range(d_in):
                        total += W[at] * tiles[row]
                        at = U32(at + U32(q_step))
                        row = U32(row + TSP)
                    tiles[U32((dst_row + j) * TSP + s)] = activate(total, act)
                    item = U32(item + threads)
                cuda.syncthreads()
                src_row = dst_row
            out_row = U32(U32(src_row) * TSP)
            # The outputs must be finite too; the records are written once every thread
            # has had its say on whether its stream's step commits.
            item = tid
            while item < OUTPUT_ITEMS:
                j, s = U32(item // TS), U32(item % TS)
                y = tiles[U32(out_row + j * TSP + s)]
                if OUT_NORM >= 0:
                    y = y * W[U32(OUT_NORM + N_OUT + j)] + W[U32(OUT_NORM + j)]
                if not math.isfinite(y):
                    good[s] = 0
                item = U32(item + threads)
            cuda.syncthreads()
            item = tid
            while item < RECORD_ITEMS:
                j, s = U32(item // TS), U32(item % TS)
                active = t < counts[s]
                committed = active and finite_in[s] == 1 and good[s] == 1
                if j == 0:
                    held = rows[s] >= 0 and not committed
                    hold[s] = 1 if held else 0
                    if held:
                        holding[0] = 1
                if active:
                    i = sample_index(index, groups, steps, g0 + s, firsts[s], t)
                    out = out_base + i * U64(IO_WIDTH)
                    if j < N_OUT:
                        y = NAN
                        if committed:
                            y = tiles[U32(out_row + j * TSP + s)]
                            if OUT_NORM >= 0:
                                y = y * W[U32(OUT_NORM + N_OUT + j)] + W[U32(OUT_NORM + j)]
                        buffer[out + U64(j)] = y
                    elif finite_in[s] == 0:
                        buffer[out + U64(N_OUT)] = BAD_SAMPLE
                    elif good[s] == 0:
                        buffer[out + U64(N_OUT)] = BAD_RESULT
                    else:
                        buffer[out + U64(N_OUT)] = OK
                        changed[s] = 1
                item = U32(item + threads)
            cuda.syncthreads()
            if holding[0] == 1:  # the same for every thread of the block
                item = tid
                while item < STATE_ITEMS:
                    q, s = U32(item // TS), U32(item % TS)
                    if hold[s] == 1:
                        tiles[U32(new_at + q * TSP + s)] = tiles[U32(old_at + q * TSP + s)]
                    item = U32(item + threads)
            cuda.syncthreads()
            flip = U32(1) - flip
        final_at = U32(flip * STATE_TILE_U)
        item = tid
        while item < STATE_ITEMS:
            q, s = U32(item // TS), U32(item % TS)
            if changed[s] == 1:
                buffer[STATE_BASE + U64(q) * U64(capacity) + U64(rows[s])] = tiles[
                    U32(final_at + q * TSP + s)
                ]
            item = U32(item + threads)

    return StepKernel(
        kernel=kernel,
        weights_in_shared=False,
        io_width=IO_WIDTH,
        state_base=int(STATE_BASE),
        tile_streams=streams,
    )
