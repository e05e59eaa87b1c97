"""numba.cuda kernels of the GPU bank, compiled once per packed model.

One thread runs one stream (state row) through every layer and the head, then through
its next sample, so a micro-batch with several samples per sensor is still one launch:
the host groups the batch by row (:mod:`._grouping`) and each thread walks its group in
arrival order, keeping the row's state in thread-local memory between samples. Block
mode (replay/backfill) is the same kernel with ``T`` samples per group laid out
time-major, so consecutive threads read consecutive samples.

Memory-system choices, each for a reason:

* The kernel reads the very ``(params, layout)`` buffers :mod:`streamlstm.packing`
  builds. ``layout`` and every size are compile-time constants of the kernel (it is built
  per model), so local arrays have fixed sizes and loop bounds fold.
* Weights are staged once per block into shared memory when they fit in the static 48 KiB
  a block may use; otherwise they stay in global memory, where every thread of a warp
  reads the same address at the same time (one broadcast transaction, L1-resident).
* Each thread sums the gates of ``TILE`` hidden units at a time in registers, so an
  input or ``h`` value is read once per tile, and the inner loop is one (warp-uniform,
  broadcast) weight load and one FMA with an immediate offset. Indices are cast to
  unsigned so numba emits no negative-index wraparound code.
* State lives on the device as ``[S, capacity]`` (transposed), so when neighbouring
  threads own neighbouring rows each state load and store is one coalesced transaction.
  The bank converts to the CPU bank's ``(n, S)`` rows on export.
* Two array arguments (numba-cuda charges about 5 us of launch overhead per array):
  one float buffer ``[weights | states | samples | output records]`` and one int32
  index buffer, plus four integers (see :func:`buffer_layout`).

A step is committed only if the sample and every new state value and output are finite,
exactly as in the CPU kernel (:mod:`streamlstm.kernels._network`), so NaN never reaches
a stream's ``(h, c)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numba
import numpy as np

from ..kernels import layout as L
from ..kernels._math import HARD_SIGMOID, RELU, SIGMOID, TANH
from ._compat import import_cuda

# A module global, not a local: the simulator swaps a kernel's global ``cuda`` for its own.
cuda = import_cuda()

#: Static shared memory a block may use without opting in (bytes).
SHARED_BYTES = 48 * 1024
#: Hidden units whose gate sums one thread keeps in registers at a time (see lstm_layer).
TILE = 8
#: Threads per block: 4 warps keeps many blocks resident per SM when local memory is large.
BLOCK_SIZE = 128
#: The simulator runs one Python thread per CUDA thread: small blocks keep tests quick.
SIMULATOR_BLOCK_SIZE = 8


@dataclass(frozen=True)
class StepKernel:
    """A compiled step kernel of one model and how it was specialised.

    ``kernel[blocks, threads, stream](buffer, index, capacity, groups, samples, steps)``:
    ``buffer`` as :func:`buffer_layout`; ``steps == 0`` is CSR mode (``index = [rows |
    offsets | order]``, I/O in arrival order), ``steps == T`` block mode (``index = rows``,
    I/O time-major).
    """

    kernel: Any
    weights_in_shared: bool
    io_width: int  # numbers per output record: O predictions then the status code
    state_base: int  # offset of the state block in the float buffer
    tile_streams: int = 0  # streams per block of the tiled kernel (.tiles); 0: one per thread

    def launch_shape(self, groups: int, threads: int) -> int:
        """Blocks covering ``groups`` streams, given ``threads`` per block."""
        per_block = self.tile_streams or threads
        return max(1, -(-groups // per_block))


#: Offsets in the float buffer are aligned to this many numbers (128 bytes in float32).
ALIGN = 32


def state_base(n_params: int) -> int:
    """Offset of the state block in the float buffer: weights plus ``TILE`` numbers of padding
    (a partial tile reads up to ``TILE - 1`` past a matrix), rounded up to ``ALIGN``."""
    return -(-(n_params + TILE) // ALIGN) * ALIGN


def buffer_layout(n_params: int, n_state: int, capacity: int) -> tuple[int, int]:
    """``(state_base, io_base)`` of the device float buffer.

    ``buffer = [weights (n_params) | pad | states (n_state * capacity, [S, capacity]
    order) | samples (M * D) | records (M * (O + 1))]``; the I/O part starts at
    ``io_base`` and is sized per batch.
    """
    base = state_base(n_params)
    return base, base + n_state * capacity


def model_constants(layout: np.ndarray) -> dict[str, int]:
    """Sizes the kernels are specialised on: counts and widths read off a packed layout.

    ``hidden``: widest layer; ``wide``: widest ``h`` or head output; ``head``: widest head
    output (0 without a head); ``scratch``: per-stream numbers a layer parks between
    passes (LSTM projection: the unprojected ``h``; GRU reset before ``W_hn``: ``r * h``
    and ``x_n``).
    """
    n_layers = int(layout[L.H_LAYERS])
    widest_hidden = 1
    widest_dense = 1
    widest_head = 0
    scratch = 0
    for index in range(n_layers):
        rec = layout[L.HEADER + index * L.LAYER_RECORD :][: L.LAYER_RECORD]
        hidden = int(rec[L.L_HIDDEN])
        widest_hidden = max(widest_hidden, hidden)
        widest_dense = max(widest_dense, int(rec[L.L_OUT]))
        if rec[L.L_KIND] == L.LSTM and rec[L.L_WR] >= 0:
            scratch = max(scratch, hidden)
        elif rec[L.L_KIND] != L.LSTM and rec[L.L_RESET_AFTER] != 1:
            scratch = max(scratch, 2 * hidden)
    dense_base = L.HEADER + n_layers * L.LAYER_RECORD
    for index in range(int(layout[L.H_DENSE])):
        rec = layout[dense_base + index * L.DENSE_RECORD :][: L.DENSE_RECORD]
        widest_dense = max(widest_dense, int(rec[L.D_OUT]))
        widest_head = max(widest_head, int(rec[L.D_OUT]))
    return {
        "layers": n_layers,
        "inputs": int(layout[L.H_INPUT]),
        "outputs": int(layout[L.H_OUTPUT]),
        "dense": int(layout[L.H_DENSE]),
        "state": int(layout[L.H_STATE]),
        "hidden": widest_hidden,
        "wide": widest_dense,
        "head": widest_head,
        "scratch": scratch,
    }


@cache
def _compiled(
    layout_bytes: bytes, dtype_str: str, n_params: int, max_registers: int | None
) -> StepKernel:
    return _build(
        np.frombuffer(layout_bytes, np.int64).copy(), np.dtype(dtype_str), n_params, max_registers
    )


def step_kernel(
    layout: np.ndarray, dtype: np.dtype, n_params: int, *, max_registers: int | None = None
) -> StepKernel:
    """The step kernel for a packed model, built once per distinct (layout, dtype, size).

    ``max_registers`` caps registers per thread (more resident warps, more spills); the
    default leaves the choice to the compiler. Tune it with ``bench_cuda.py --max-registers``.
    """
    return _compiled(
        np.ascontiguousarray(layout, np.int64).tobytes(),
        np.dtype(dtype).str,
        int(n_params),
        max_registers,
    )


@cache
def activation(dtype: np.dtype) -> Any:
    """The device function ``activate(x, code)`` for ``dtype``: the activation codes of
    :mod:`streamlstm.kernels._math`, shared by the step kernels (built once per dtype)."""
    ZERO, HALF, ONE, SIXTH = (dtype.type(v) for v in (0.0, 0.5, 1.0, 1.0 / 6.0))

    @cuda.jit(device=True)
    def activate(x, code):
        if code == SIGMOID:
            return HALF + HALF * math.tanh(HALF * x)
        if code == TANH:
            return math.tanh(x)
        if code == HARD_SIGMOID:
            return min(max(x * SIXTH + HALF, ZERO), ONE)
        if code == RELU:
            return max(x, ZERO)
        return x

    return activate


def _build(
    layout: np.ndarray, dtype: np.dtype, n_params: int, max_registers: int | None
) -> StepKernel:
    k = model_constants(layout)
    LAY = layout  # a global array of the kernel: frozen into its constant memory
    DT = numba.from_dtype(dtype)
    N_LAYERS, N_IN, N_OUT, N_DENSE = k["layers"], k["inputs"], k["outputs"], k["dense"]
    N_STATE, MAX_HIDDEN, MAX_WIDE = k["state"], k["hidden"], k["wide"]
    IO_WIDTH = N_OUT + 1
    WORK = 2 * MAX_HIDDEN  # LSTM: unprojected h; GRU (reset before): r * h, then x_n
    ACC = 6 * TILE  # gate sums of one tile of units: LSTM 4 rows, GRU 6
    IN_NORM, OUT_NORM = int(layout[L.H_IN_NORM]), int(layout[L.H_OUT_NORM])
    DENSE_BASE = L.HEADER + N_LAYERS * L.LAYER_RECORD
    IN_SHARED = 0 < (n_params + TILE) * dtype.itemsize <= SHARED_BYTES
    SHARED_SIZE = n_params + TILE if IN_SHARED else 1  # padding: see state_base
    N_PARAMS = n_params
    STATE_BASE = state_base(n_params)
    ZERO, ONE = dtype.type(0.0), dtype.type(1.0)
    # Indices are non-negative: as unsigned they skip numba's negative-index wraparound,
    # which otherwise costs four integer instructions per load in the inner loops.
    IX = numba.uint64
    NAN = dtype.type(np.nan)
    OK, BAD_SAMPLE, BAD_RESULT = (
        dtype.type(v) for v in (L.OK, L.REJECTED_SAMPLE, L.REJECTED_RESULT)
    )

    activate = activation(dtype)

    @cuda.jit(device=True)
    def lstm_layer(W, base, src, src_at, state, new, h_full, acc):
        n_in, hidden, n_out = LAY[base + L.L_IN], LAY[base + L.L_HIDDEN], LAY[base + L.L_OUT]
        wx, wh = LAY[base + L.L_WX], LAY[base + L.L_WH]
        bias, wr = LAY[base + L.L_B], LAY[base + L.L_WR]
        so, act, ract = LAY[base + L.L_STATE], LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        width = 4 * hidden
        # TILE units at a time, their 4 * TILE gate sums in registers: each input and h value
        # is read once per tile rather than once per unit. A last, partial tile sums past
        # `hidden` into slots never stored: branch-free loops, reads kept in bounds by the
        # TILE numbers of padding after the weights (see state_base).
        for j0 in range(0, hidden, TILE):
            for u in range(TILE):
                for gate in range(4):
                    acc[gate * TILE + u] = W[IX(bias + gate * hidden + j0 + u)]
            for q in range(n_in + n_out):
                if q < n_in:
                    v = src[IX(src_at + q)]
                    at = wx + q * width + j0
                else:
                    v = state[IX(so + q - n_in)]
                    at = wh + (q - n_in) * width + j0
                for u in range(TILE):
                    for gate in range(4):
                        acc[gate * TILE + u] += W[IX(at + gate * hidden + u)] * v
            for u in range(TILE):
                j = j0 + u
                if j < hidden:
                    c = activate(acc[TILE + u], ract) * state[IX(so + n_out + j)] + activate(
                        acc[u], ract
                    ) * activate(acc[2 * TILE + u], act)
                    new[IX(so + n_out + j)] = c
                    h = activate(acc[3 * TILE + u], ract) * activate(c, act)
                    if wr < 0:
                        new[IX(so + j)] = h
                    else:
                        h_full[IX(j)] = h
        if wr >= 0:
            for p in range(n_out):
                total = ZERO
                for j in range(hidden):
                    total += W[IX(wr + j * n_out + p)] * h_full[IX(j)]
                new[IX(so + p)] = total

    @cuda.jit(device=True)
    def gru_layer(W, base, src, src_at, state, new, r_h, acc):
        n_in, hidden = LAY[base + L.L_IN], LAY[base + L.L_HIDDEN]
        wx, wh = LAY[base + L.L_WX], LAY[base + L.L_WH]
        bx, bh = LAY[base + L.L_B], LAY[base + L.L_B2]
        so, act, ract = LAY[base + L.L_STATE], LAY[base + L.L_ACT], LAY[base + L.L_RACT]
        width = 3 * hidden
        reset_after = LAY[base + L.L_RESET_AFTER] == 1
        # acc rows: input sums of r, z, n, then recurrent sums of r + z (TILE each) and n.
        for j0 in range(0, hidden, TILE):
            for u in range(TILE):
                for gate in range(3):
                    acc[gate * TILE + u] = W[IX(bx + gate * hidden + j0 + u)]
                acc[3 * TILE + u] = W[IX(bh + j0 + u)]
                acc[4 * TILE + u] = W[IX(bh + hidden + j0 + u)]
                acc[5 * TILE + u] = W[IX(bh + 2 * hidden + j0 + u)]
            for q in range(n_in):
                v = src[IX(src_at + q)]
                at = wx + q * width + j0
                for u in range(TILE):
                    for gate in range(3):
                        acc[gate * TILE + u] += W[IX(at + gate * hidden + u)] * v
            for q in range(hidden):
                v = state[IX(so + q)]
                at = wh + q * width + j0
                for u in range(TILE):
                    acc[3 * TILE + u] += W[IX(at + u)] * v
                    acc[4 * TILE + u] += W[IX(at + hidden + u)] * v
                    if reset_after:
                        acc[5 * TILE + u] += W[IX(at + 2 * hidden + u)] * v
            for u in range(TILE):
                j = j0 + u
                if j < hidden:
                    r = activate(acc[u] + acc[3 * TILE + u], ract)
                    z = activate(acc[TILE + u] + acc[4 * TILE + u], ract)
                    if reset_after:
                        n = activate(acc[2 * TILE + u] + r * acc[5 * TILE + u], act)
                        new[IX(so + j)] = (ONE - z) * n + z * state[IX(so + j)]
                    else:
                        # n needs W_hn (r * h) over every unit's r: park z, x_n; finish below.
                        r_h[IX(j)] = r * state[IX(so + j)]
                        new[IX(so + j)] = z
                        r_h[IX(MAX_HIDDEN + j)] = acc[2 * TILE + u]
        if not reset_after:
            for j0 in range(0, hidden, TILE):
                for u in range(TILE):
                    acc[u] = W[IX(bh + 2 * hidden + j0 + u)]
                for q in range(hidden):
                    v = r_h[IX(q)]
                    at = wh + q * width + 2 * hidden + j0
                    for u in range(TILE):
                        acc[u] += W[IX(at + u)] * v
                for u in range(TILE):
                    j = j0 + u
                    if j < hidden:
                        z = new[IX(so + j)]
                        n = activate(r_h[IX(MAX_HIDDEN + j)] + acc[u], act)
                        new[IX(so + j)] = (ONE - z) * n + z * state[IX(so + j)]

    @cuda.jit(device=True)
    def network(W, xin, state, new, work, acc, ping, pong):
        """One sample through every layer and the head; the output is left in ``ping``/``new``."""
        src = xin
        src_at = 0
        for index in range(N_LAYERS):
            base = L.HEADER + index * L.LAYER_RECORD
            if LAY[base + L.L_KIND] == L.LSTM:
                lstm_layer(W, base, src, src_at, state, new, work, acc)
            else:
                gru_layer(W, base, src, src_at, state, new, work, acc)
            src = new
            src_at = LAY[base + L.L_STATE]
        for index in range(N_DENSE):
            base = DENSE_BASE + index * L.DENSE_RECORD
            d_in, d_out, act = LAY[base + L.D_IN], LAY[base + L.D_OUT], LAY[base + L.D_ACT]
            w, b = LAY[base + L.D_W], LAY[base + L.D_B]
            # Weight (q, j) of a W^T (in, out) or a W (out, in) layer (see layout.D_FORM).
            q_step, j_step = (d_out, 1) if LAY[base + L.D_FORM] == L.DENSE_SWEEP else (1, d_in)
            dst = ping if index % 2 == 0 else pong
            for j in range(d_out):
                total = W[IX(b + j)]
                for q in range(d_in):
                    total += W[IX(w + q * q_step + j * j_step)] * src[IX(src_at + q)]
                dst[IX(j)] = activate(total, act)
            src = dst
            src_at = 0
        # Hand the output back through ping: the head's last buffer or the last h.
        for j in range(N_OUT):
            ping[IX(j)] = src[IX(src_at + j)]

    @cuda.jit(device=True)
    def run_group(W, io, index, capacity, groups, samples, steps, g):
        state = cuda.local.array(N_STATE, DT)
        new = cuda.local.array(N_STATE, DT)
        xin = cuda.local.array(N_IN, DT)
        work = cuda.local.array(WORK, DT)
        acc = cuda.local.array(ACC, DT)
        ping = cuda.local.array(MAX_WIDE, DT)
        pong = cuda.local.array(MAX_WIDE, DT)
        row = STATE_BASE + index[g]
        for q in range(N_STATE):
            state[IX(q)] = io[IX(row + q * capacity)]
        if steps == 0:
            first = index[groups + g]
            count = index[groups + g + 1] - first
            order = 2 * groups + 1 + first
        else:
            count = steps
            order = 0
        x_base = STATE_BASE + N_STATE * capacity
        out_base = x_base + samples * N_IN
        changed = False
        for t in range(count):
            i = index[order + t] if steps == 0 else t * groups + g
            at = x_base + i * N_IN
            out = out_base + i * IO_WIDTH
            finite = True
            for q in range(N_IN):
                v = io[IX(at + q)]
                finite = finite and math.isfinite(v)
                if IN_NORM >= 0:
                    v = (v - W[IX(IN_NORM + q)]) / W[IX(IN_NORM + N_IN + q)]
                xin[IX(q)] = v
            if not finite:
                for j in range(N_OUT):
                    io[IX(out + j)] = NAN
                io[IX(out + N_OUT)] = BAD_SAMPLE
                continue
            network(W, xin, state, new, work, acc, ping, pong)
            for j in range(N_OUT):
                y = ping[IX(j)]
                if OUT_NORM >= 0:
                    y = y * W[IX(OUT_NORM + N_OUT + j)] + W[IX(OUT_NORM + j)]
                io[IX(out + j)] = y
                finite = finite and math.isfinite(y)
            for q in range(N_STATE):
                finite = finite and math.isfinite(new[IX(q)])
            if finite:
                for q in range(N_STATE):
                    state[IX(q)] = new[IX(q)]
                io[IX(out + N_OUT)] = OK
                changed = True
            else:
                for j in range(N_OUT):
                    io[IX(out + j)] = NAN
                io[IX(out + N_OUT)] = BAD_RESULT
        if changed:
            for q in range(N_STATE):
                io[IX(row + q * capacity)] = state[IX(q)]

    # Passed only when set: the simulator's jit does not take the option.
    options = {} if max_registers is None else {"max_registers": int(max_registers)}

    @cuda.jit(**options)
    def kernel(buffer, index, capacity, groups, samples, steps):
        shared = cuda.shared.array(SHARED_SIZE, DT)
        if IN_SHARED:
            for q in range(cuda.threadIdx.x, N_PARAMS, cuda.blockDim.x):
                shared[q] = buffer[q]
            cuda.syncthreads()
        g = cuda.grid(1)
        if g >= groups:
            return
        if IN_SHARED:
            run_group(shared, buffer, index, capacity, groups, samples, steps, g)
        else:
            run_group(buffer, buffer, index, capacity, groups, samples, steps, g)

    return StepKernel(
        kernel=kernel, weights_in_shared=IN_SHARED, io_width=IO_WIDTH, state_base=STATE_BASE
    )


@dataclass(frozen=True)
class StateKernels:
    """Small kernels that move state rows in the float buffer's ``[S, capacity]`` block.

    ``(buffer, base, capacity)`` locate the block: number ``q`` of row ``r`` is
    ``buffer[base + q * capacity + r]``.
    """

    gather: Any  # (buffer, base, capacity, rows (n,), out (n, S))
    scatter: Any  # (buffer, base, capacity, rows (n,), values (n, S))
    zero_rows: Any  # (buffer, base, capacity, n_state, rows (n,))
    fill: Any  # (buffer, start, stop, value): buffer[start:stop] = value
    copy_states: Any  # (src, src_base, src_capacity, dst, dst_base, dst_capacity, n_state, rows)


@cache
def state_kernels() -> StateKernels:
    """The state-movement kernels (generic over dtype; compiled lazily per signature)."""

    @cuda.jit
    def gather(buffer, base, capacity, rows, out):
        n, q = cuda.grid(2)
        if n < rows.shape[0] and q < out.shape[1]:
            out[n, q] = buffer[base + q * capacity + rows[n]]

    @cuda.jit
    def scatter(buffer, base, capacity, rows, values):
        n, q = cuda.grid(2)
        if n < rows.shape[0] and q < values.shape[1]:
            buffer[base + q * capacity + rows[n]] = values[n, q]

    @cuda.jit
    def zero_rows(buffer, base, capacity, n_state, rows):
        n, q = cuda.grid(2)
        if n < rows.shape[0] and q < n_state:
            buffer[base + q * capacity + rows[n]] = 0

    @cuda.jit
    def fill(buffer, start, stop, value):
        i = start + cuda.grid(1)
        if i < stop:
            buffer[i] = value

    @cuda.jit
    def copy_states(src, src_base, src_capacity, dst, dst_base, dst_capacity, n_state, rows):
        r, q = cuda.grid(2)
        if r < rows and q < n_state:
            dst[dst_base + q * dst_capacity + r] = src[src_base + q * src_capacity + r]

    return StateKernels(gather, scatter, zero_rows, fill, copy_states)


def grid_1d(size: int) -> tuple[int, int]:
    """Launch shape covering ``size`` threads with 128-thread blocks."""
    return max(1, -(-size // 128)), 128


def grid_2d(first: int, second: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Launch shape covering ``(first, second)`` with 128-thread blocks along ``first``."""
    threads = (128, 1) if second < 4 else (32, 4)
    blocks = (max(1, -(-first // threads[0])), max(1, -(-second // threads[1])))
    return blocks, threads
