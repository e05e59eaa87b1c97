"""The GPU window kernel: a thread block evaluates a tile of windows, each from the zero state.

A window evaluation is the block mode of the step kernels: ``W`` steps per "stream" from
the zero state. So this kernel keeps the tiled step kernel's structure (:mod:`.tiles`)
and its very layer code (:func:`.tiles.tile_layers`): a block takes ``streams`` windows,
a thread owns one hidden unit of eight of them, and the tile's state is staged in shared
memory. What it adds is what :mod:`streamlstm.kernels._window` adds on the CPU:

* layer-major order: each layer (each direction of a bidirectional one; the backward
  direction from the window's end) runs over the whole window before the next layer,
  and writes its per-step outputs into a sequence buffer in global memory,
  ``seqs[2][W * width][cap]`` (two buffers, ping-pong between layers, the window index
  last so a warp's accesses coalesce);
* plain RNN directions (``tanh``/``relu``), which the step kernels do not have;
* a layer's final state (a backward direction's half from the first step), an encoder's
  final state repeated over the window, and an output that reads the top layer at the
  last step runs that layer's backward direction for one step (exact, as on the CPU);
* the dense head on the last step or on every step, then softmax / log-softmax.

The model is the CPU window pack (:func:`streamlstm.windows.packing.pack_windows`) with
its LSTM/GRU directions in the transposed CUDA form; :func:`direction_records` turns it
into one record per direction in the step kernels' layer-record format
(:mod:`streamlstm.kernels.layout`, state at offset 0), plus :data:`RNN` as a kind and
four fields of its own (``X_*``). A window holding a non-finite sample is ``REJECTED_SAMPLE``; one
whose state or outputs overflow is ``REJECTED_RESULT``; both get NaN outputs, as in
:func:`streamlstm.kernels._window.window_kernel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numba
import numpy as np

from ..errors import ShapeError
from ..kernels import _window as K
from ..kernels import layout as L
from ..model import Model
from ..packing import CUDA
from ..window_spec import WindowSpec
from ..windows.packing import WindowPacked, packed_windows
from ._compat import import_cuda
from .kernels import SHARED_BYTES
from .tiles import TILE_CHOICES, tile_layers

cuda = import_cuda()  # a module global: the simulator swaps a kernel's global ``cuda``

#: Direction kind of a plain RNN (the step kernels' kinds are ``layout.LSTM``/``GRU``).
RNN = 2
# Fields after a direction's layer record.
X_REVERSE = L.LAYER_RECORD  # 1: the backward direction, from the window's end
X_COLUMN = L.LAYER_RECORD + 1  # where its h goes in the layer's output row
X_RUN = L.LAYER_RECORD + 2  # steps it runs (1: only the last step is read)
X_STATE = L.LAYER_RECORD + 3  # state numbers (LSTM h and c, else h)
DIRECTION = L.LAYER_RECORD + 4


@dataclass(frozen=True)
class WindowKernel:
    """A compiled window kernel of one model, output mode and window length.

    ``kernel[blocks, threads, stream](weights, windows, seqs, outs, status, count, cap)``:
    ``weights`` (this object's ``weights``, uploaded once); ``windows`` ``(count, W, D)``
    flat; ``seqs`` ``2 * W * width * cap`` work numbers (``cap >= count``, a multiple of
    ``streams``); ``outs`` ``(count, rows, O)`` flat; ``status`` int32 ``(count,)``.
    """

    kernel: Any
    weights: np.ndarray
    streams: int  # windows per block
    width: int  # numbers per step of a sequence buffer
    rows: int  # output rows per window: W for output "every", else 1

    def launch_shape(self, count: int) -> int:
        """Blocks covering ``count`` windows."""
        return max(1, -(-count // self.streams))

    def seq_size(self, cap: int, steps: int) -> int:
        """Numbers of the ``seqs`` work buffer for ``cap`` windows of ``steps`` samples."""
        return 2 * steps * self.width * cap


def direction_records(pk: WindowPacked, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(records, weights)``: one int64 record of :data:`DIRECTION` numbers per direction,
    layer by layer (a layer's backward direction second), and the float buffer they index:
    the window pack's own numbers, then its streaming packs' (offsets rebased).
    """
    layout = pk.layout
    n_layers = int(layout[K.W_LAYERS])
    last_only = int(layout[K.W_MODE]) != K.MODE_EVERY and not int(layout[K.W_FINAL_STATE])
    records = []
    for index in range(n_layers):
        start = K.HEADER + index * K.LAYER_RECORD
        for d in range(int(layout[start + K.LAYER_DIRECTIONS])):
            begin = start + 1 + d * K.DIRECTION_RECORD
            k_rec = layout[begin : begin + K.DIRECTION_RECORD]
            rec = np.full(DIRECTION, -1, np.int64)
            if k_rec[K.K_STREAM] >= 0:
                row = pk.stream_index[k_rec[K.K_STREAM]]
                stream_layout = pk.stream_layouts[row[K.S_LAYOUT] : row[K.S_LAYOUT_END]]
                rec[: L.LAYER_RECORD] = stream_layout[L.HEADER : L.HEADER + L.LAYER_RECORD]
                shift = pk.params.size + int(row[K.S_PARAMS])
                for field in (L.L_WX, L.L_WH, L.L_B, L.L_B2, L.L_WR):
                    if rec[field] >= 0:
                        rec[field] += shift
                rec[L.L_STATE] = 0
                lstm = rec[L.L_KIND] == L.LSTM
                rec[X_STATE] = rec[L.L_OUT] + rec[L.L_HIDDEN] if lstm else rec[L.L_HIDDEN]
            else:
                rec[L.L_KIND] = RNN
                rec[L.L_IN], rec[L.L_HIDDEN] = k_rec[K.K_IN], k_rec[K.K_OUT]
                rec[L.L_OUT], rec[L.L_STATE] = k_rec[K.K_OUT], 0
                rec[L.L_WX], rec[L.L_WH] = k_rec[K.K_WX], k_rec[K.K_WH]
                rec[L.L_B], rec[L.L_B2] = k_rec[K.K_BI], k_rec[K.K_BH]
                rec[L.L_ACT] = k_rec[K.K_ACT]
                rec[X_STATE] = k_rec[K.K_OUT]
            rec[X_REVERSE], rec[X_COLUMN] = k_rec[K.K_REVERSE], k_rec[K.K_COLUMN]
            top_backward = k_rec[K.K_REVERSE] and index + 1 == n_layers
            rec[X_RUN] = 1 if top_backward and last_only else steps
            records.append(rec)
    weights = np.concatenate([pk.params, pk.stream_params])
    return np.stack(records), weights


def _tile_numbers(records: np.ndarray, layout: np.ndarray) -> tuple[int, int, int, int]:
    """Per-stream numbers of the shared tiles: ``(state, input, scratch, head)``."""
    state = int(records[:, X_STATE].max())
    scratch = 1
    for rec in records:
        if rec[L.L_KIND] == L.LSTM and rec[L.L_WR] >= 0:
            scratch = max(scratch, int(rec[L.L_HIDDEN]))
        elif rec[L.L_KIND] == L.GRU and rec[L.L_RESET_AFTER] != 1:
            scratch = max(scratch, 2 * int(rec[L.L_HIDDEN]))
    head = 1
    base = K.HEADER + int(layout[K.W_LAYERS]) * K.LAYER_RECORD
    for index in range(int(layout[K.W_DENSE])):
        head = max(head, int(layout[base + index * K.DENSE_RECORD + K.D_OUT]))
    return state, int(layout[K.W_WIDTH]), scratch, head


def window_tile_streams(records: np.ndarray, layout: np.ndarray, dtype: np.dtype) -> int:
    """Windows per block, or 0 when even the smallest tile overflows shared memory."""
    state, width, scratch, head = _tile_numbers(records, layout)
    per_stream = 2 * state + width + scratch + 2 * head
    for streams in TILE_CHOICES:
        if per_stream * (streams + 1) * dtype.itemsize + 2 * 4 * streams <= SHARED_BYTES:
            return streams
    return 0


def window_kernel(model: Model, spec: WindowSpec) -> WindowKernel:
    """The window kernel of ``model`` read as ``spec``; :class:`ShapeError` naming the sizes
    if even a tile of the fewest windows does not fit in shared memory."""
    pk = packed_windows(model, spec, CUDA)
    records, weights = direction_records(pk, spec.length)
    dtype = np.dtype(model.dtype)
    streams = window_tile_streams(records, pk.layout, dtype)
    if streams == 0:
        state, width, scratch, head = _tile_numbers(records, pk.layout)
        raise ShapeError(
            f"{model.name}: too large for the GPU window kernel: a tile of "
            f"{TILE_CHOICES[-1]} windows needs (2 x {state} state + {width} input + {scratch} "
            f"scratch + 2 x {head} head) numbers per window in shared memory, over "
            f"{SHARED_BYTES} bytes; evaluate it on the CPU (device='cpu')"
        )
    kernel = _compiled(records.tobytes(), pk.layout.tobytes(), dtype.str, spec.length, streams)
    return WindowKernel(
        kernel=kernel,
        weights=weights,
        streams=streams,
        width=int(pk.layout[K.W_WIDTH]),
        rows=spec.length if spec.per_step else 1,
    )


@cache
def _compiled(
    records_bytes: bytes, layout_bytes: bytes, dtype_str: str, steps: int, streams: int
) -> Any:
    records = np.frombuffer(records_bytes, np.int64).reshape(-1, DIRECTION).copy()
    return _build(
        records, np.frombuffer(layout_bytes, np.int64).copy(), np.dtype(dtype_str), steps, streams
    )


def _build(
    records: np.ndarray, layout: np.ndarray, dtype: np.dtype, steps: int, streams: int
) -> Any:
    LAY = records.ravel()  # frozen into the kernel's constant memory, as WL below
    WL = layout
    DT = numba.from_dtype(dtype)
    I32 = numba.int32
    N_LAYERS, N_IN, N_OUT = int(layout[K.W_LAYERS]), int(layout[K.W_INPUT]), int(layout[K.W_OUTPUT])
    N_DENSE, MODE = int(layout[K.W_DENSE]), int(layout[K.W_MODE])
    FINAL_STATE, ENCODER = int(layout[K.W_FINAL_STATE]), int(layout[K.W_ENCODER])
    WIDTH = int(layout[K.W_WIDTH])
    IN_NORM, OUT_NORM = int(layout[K.W_IN_NORM]), int(layout[K.W_OUT_NORM])
    DENSE_BASE = K.HEADER + N_LAYERS * K.LAYER_RECORD
    counts = [
        int(layout[K.HEADER + i * K.LAYER_RECORD + K.LAYER_DIRECTIONS]) for i in range(N_LAYERS)
    ]
    LAYER_FIRST = np.cumsum([0, *counts[:-1]]).astype(np.int64)
    LAYER_COUNT = np.asarray(counts, np.int64)
    # Each layer's direction size (the final state's split) and output width.
    LAYER_SIZE = np.asarray([records[f, L.L_OUT] for f in LAYER_FIRST], np.int64)
    TOP = counts[-1] * int(LAYER_SIZE[-1])
    STEPS = steps
    ROWS = steps if MODE == K.MODE_EVERY else 1
    FIRST_ROW = 0 if MODE == K.MODE_EVERY else steps - 1
    SOFTMAX, LOG = MODE in (K.MODE_SOFTMAX, K.MODE_LOG_SOFTMAX), MODE == K.MODE_LOG_SOFTMAX
    state, _, scratch, head = _tile_numbers(records, layout)
    TS = streams
    TSP = streams + 1
    STATE_TILE, INPUT_TILE = state * TSP, max(1, WIDTH) * TSP
    SCRATCH_TILE, HEAD_TILE = scratch * TSP, head * TSP
    ZERO = dtype.type(0.0)
    IX = numba.uint64
    NAN = dtype.type(np.nan)
    layers = tile_layers(LAY, dtype, streams)
    activate, lstm_tile, gru_tile = layers.activate, layers.lstm, layers.gru

    @cuda.jit(device=True)
    def rnn_tile(W, base, src, old, new):
        """New ``h = act(W_ih x + b_ih + W_hh h + b_hh)`` of a plain RNN for the tile."""
        n_in, hidden = LAY[base + L.L_IN], LAY[base + L.L_HIDDEN]
        wx, wh = LAY[base + L.L_WX], LAY[base + L.L_WH]
        bi, bh, act = LAY[base + L.L_B], LAY[base + L.L_B2], LAY[base + L.L_ACT]
        for item in range(cuda.threadIdx.x, hidden * TS, cuda.blockDim.x):
            j = item // TS
            s = item % TS
            gx = W[IX(bi + j)]
            for q in range(n_in):
                gx += W[IX(wx + q * hidden + j)] * src[IX(q * TSP + s)]
            gh = W[IX(bh + j)]
            for q in range(hidden):
                gh += W[IX(wh + q * hidden + j)] * old[IX(q * TSP + s)]
            new[IX(j * TSP + s)] = activate(gx + gh, act)
        cuda.syncthreads()

    @cuda.jit(device=True)
    def gather_final_state(seqs, at, cap, g0, size):
        """A bidirectional layer's final state into its last row: the backward half from
        the first step (every thread of the block calls this)."""
        last = (STEPS - 1) * WIDTH
        for item in range(cuda.threadIdx.x, size * TS, cuda.blockDim.x):
            k = size + item // TS
            s = item % TS
            seqs[IX(at + (last + k) * cap + g0 + s)] = seqs[IX(at + k * cap + g0 + s)]
        cuda.syncthreads()

    @cuda.jit(device=True)
    def repeat_last_row(seqs, at, cap, g0, width):
        """The last row's first ``width`` columns into every row (an encoder's final state
        fed to every step of the next layer)."""
        last = (STEPS - 1) * WIDTH
        for item in range(cuda.threadIdx.x, (STEPS - 1) * width * TS, cuda.blockDim.x):
            s = item % TS
            rest = item // TS
            k = rest % width
            t = rest // width
            seqs[IX(at + (t * WIDTH + k) * cap + g0 + s)] = seqs[IX(at + (last + k) * cap + g0 + s)]
        cuda.syncthreads()

    @cuda.jit
    def kernel(W, windows, seqs, outs, status, count, cap):
        old = cuda.shared.array(STATE_TILE, DT)
        new = cuda.shared.array(STATE_TILE, DT)
        xin = cuda.shared.array(INPUT_TILE, DT)
        spare = cuda.shared.array(SCRATCH_TILE, DT)
        ping = cuda.shared.array(HEAD_TILE, DT)
        pong = cuda.shared.array(HEAD_TILE, DT)
        good = cuda.shared.array(TS, I32)  # no overflow so far
        finite_in = cuda.shared.array(TS, I32)  # every sample finite
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        g0 = cuda.blockIdx.x * TS
        half = STEPS * WIDTH * cap  # one sequence buffer
        for s in range(tid, TS, threads):
            good[s] = 1
            finite_in[s] = 1
        cuda.syncthreads()
        # The windows, normalised, into sequence buffer 0 (padding windows read zeros).
        for item in range(tid, STEPS * N_IN * TS, threads):
            s = item % TS
            rest = item // TS
            q = rest % N_IN
            t = rest // N_IN
            v = ZERO
            if g0 + s < count:
                v = windows[IX(((g0 + s) * STEPS + t) * N_IN + q)]
                if not math.isfinite(v):
                    finite_in[s] = 0
                if IN_NORM >= 0:
                    v = (v - W[IX(IN_NORM + q)]) / W[IX(IN_NORM + N_IN + q)]
            seqs[IX((t * WIDTH + q) * cap + g0 + s)] = v
        cuda.syncthreads()
        src = 0
        for layer in range(N_LAYERS):
            src_at = src * half
            dst_at = (1 - src) * half
            for d in range(LAYER_COUNT[layer]):
                base = (LAYER_FIRST[layer] + d) * DIRECTION
                kind, n_in, n_out = LAY[base + L.L_KIND], LAY[base + L.L_IN], LAY[base + L.L_OUT]
                reverse, column = LAY[base + X_REVERSE], LAY[base + X_COLUMN]
                size = LAY[base + X_STATE]
                for item in range(tid, size * TS, threads):
                    old[IX((item // TS) * TSP + item % TS)] = ZERO
                for r in range(LAY[base + X_RUN]):
                    t = STEPS - 1 - r if reverse == 1 else r
                    for item in range(tid, n_in * TS, threads):
                        q = item // TS
                        s = item % TS
                        xin[IX(q * TSP + s)] = seqs[IX(src_at + (t * WIDTH + q) * cap + g0 + s)]
                    cuda.syncthreads()
                    if kind == L.LSTM:
                        lstm_tile(W, base, xin, 0, old, 0, new, 0, spare, good)
                    elif kind == L.GRU:
                        gru_tile(W, base, xin, 0, old, 0, new, 0, spare, good)
                    else:
                        rnn_tile(W, base, xin, old, new)
                    out_row = dst_at + (t * WIDTH + column) * cap + g0
                    for item in range(tid, n_out * TS, threads):
                        q = item // TS
                        s = item % TS
                        seqs[IX(out_row + q * cap + s)] = new[IX(q * TSP + s)]
                    for item in range(tid, size * TS, threads):
                        at = (item // TS) * TSP + item % TS
                        old[IX(at)] = new[IX(at)]
                    cuda.syncthreads()
            src = 1 - src
            if layer + 1 == ENCODER:
                if LAYER_COUNT[layer] == 2:
                    gather_final_state(seqs, src * half, cap, g0, LAYER_SIZE[layer])
                repeat_last_row(seqs, src * half, cap, g0, LAYER_COUNT[layer] * LAYER_SIZE[layer])
            elif layer + 1 == N_LAYERS and FINAL_STATE == 1 and LAYER_COUNT[layer] == 2:
                gather_final_state(seqs, src * half, cap, g0, LAYER_SIZE[layer])
        # The head on the output rows, then normalisation and softmax.
        src_at = src * half
        for r in range(ROWS):
            t = FIRST_ROW + r
            for item in range(tid, TOP * TS, threads):
                q = item // TS
                s = item % TS
                xin[IX(q * TSP + s)] = seqs[IX(src_at + (t * WIDTH + q) * cap + g0 + s)]
            cuda.syncthreads()
            vec = xin
            for index in range(N_DENSE):
                rec = DENSE_BASE + index * K.DENSE_RECORD
                d_in, d_out, act = WL[rec + K.D_IN], WL[rec + K.D_OUT], WL[rec + K.D_ACT]
                w, b = WL[rec + K.D_W], WL[rec + K.D_B]
                dst = ping if index % 2 == 0 else pong
                for item in range(tid, d_out * TS, threads):
                    j = item // TS
                    s = item % TS
                    total = W[IX(b + j)]
                    for q in range(d_in):
                        total += W[IX(w + q * d_out + j)] * vec[IX(q * TSP + s)]
                    dst[IX(j * TSP + s)] = activate(total, act)
                cuda.syncthreads()
                vec = dst
            for item in range(tid, N_OUT * TS, threads):
                j = item // TS
                s = item % TS
                if g0 + s < count:
                    y = vec[IX(j * TSP + s)]
                    if OUT_NORM >= 0:
                        y = y * W[IX(OUT_NORM + N_OUT + j)] + W[IX(OUT_NORM + j)]
                    outs[IX(((g0 + s) * ROWS + r) * N_OUT + j)] = y
            cuda.syncthreads()
        for s in range(tid, TS, threads):
            n = g0 + s
            if n < count:
                at = n * ROWS * N_OUT
                if SOFTMAX:
                    top = outs[IX(at)]
                    for j in range(N_OUT):
                        top = max(top, outs[IX(at + j)])
                    total = ZERO
                    for j in range(N_OUT):
                        total += math.exp(outs[IX(at + j)] - top)
                    for j in range(N_OUT):
                        if LOG:
                            outs[IX(at + j)] = outs[IX(at + j)] - (top + math.log(total))
                        else:
                            outs[IX(at + j)] = math.exp(outs[IX(at + j)] - top) / total
                finite = True
                for j in range(ROWS * N_OUT):
                    finite = finite and math.isfinite(outs[IX(at + j)])
                code = L.OK
                if finite_in[s] == 0:
                    code = L.REJECTED_SAMPLE
                elif good[s] == 0 or not finite:
                    code = L.REJECTED_RESULT
                status[n] = code
                if code != L.OK:
                    for j in range(ROWS * N_OUT):
                        outs[IX(at + j)] = NAN

    return kernel
