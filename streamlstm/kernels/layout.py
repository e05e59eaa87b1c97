"""The packed-buffer layout the compiled kernels read.

A model is handed to the kernels as two arrays: ``params``, every weight in one
contiguous float buffer, and ``layout``, an int64 table of sizes and offsets into it.
Two buffers instead of one per tensor keeps the per-call dispatch cost low (each array
argument costs 50-100 ns).

Recurrent weights come in one of two forms, chosen by the packing target:

* **unit blocks** (CPU). The hidden units are cut into blocks of ``UNITS``; a block holds
  the four gate columns of its units side by side, ``(in + out, 4 * UNITS)``, rows for
  the layer input first, then for ``h``, padded with zeros past the last unit. One
  block's 64 gate sums fit in registers, are summed in one pass over contiguous weights,
  and finish straight into the new ``(h, c)`` of their units, so gate pre-activations
  never go through memory. Each gate sum adds its terms in the same order whichever
  order the blocks are visited in, so a kernel may walk them backwards on alternate
  steps: the blocks it read last are then still in L1 (at H=64 the weights, 68 KB, are
  larger than the 48 KB L1). Block columns per kind: LSTM ``[i | f | g | o]``; GRU
  ``[r | z | n_x | n_h]`` where ``n_x`` has zero ``h`` rows and ``n_h`` zero input
  rows; GRU with the reset gate applied before ``W_hn`` ``[r | z | n_x | 0]``, with
  ``W_hn`` in separate ``(H, UNITS)`` blocks applied to ``r * h``.
* **transposed** (CUDA): ``W^T`` as ``(in, gates * H)``, read with the warp-uniform
  broadcast loads the GPU kernel is built around (:mod:`streamlstm.cuda.kernels`).

``layout`` = header, then one record per recurrent layer, then one per dense layer.
All offsets index ``params`` except the ``SC_*`` ones, which index the scratch buffer
and ``L_STATE``, which indexes a stream's state row.
"""

# Header fields.
H_LAYERS = 0  # number of recurrent layers
H_INPUT = 1  # D, input width
H_OUTPUT = 2  # O, output width
H_DENSE = 3  # number of dense head layers
H_STATE = 4  # S, state numbers per stream
H_SCRATCH = 5  # scratch numbers one stream step needs
H_IN_NORM = 6  # offset of (mean[D], std[D]) or -1
H_OUT_NORM = 7  # offset of (mean[O], std[O]) or -1
H_SC_WORK = 8  # scratch offset of per-layer work space (3H: see the kernels)
H_SC_SPARE = 9  # scratch offset of one block's sums kept in memory (BLOCK_WIDTH)
H_SC_INPUT = 10  # scratch offset of the normalised input
H_SC_PING = 11  # scratch offsets of the two dense-head buffers
H_SC_PONG = 12
HEADER = 13

# Recurrent layer record.
L_KIND = 0  # 0 = LSTM, 1 = GRU
L_IN = 1  # input width
L_HIDDEN = 2  # H
L_OUT = 3  # width of h: proj size or H
L_WX = 4  # transposed form: W_ih^T, (in, gates*H); else -1
L_WH = 5  # transposed form: W_hh^T, (out, gates*H); else -1
L_B = 6  # transposed form: LSTM b_ih + b_hh (4H), GRU b_ih (3H); else -1
L_B2 = 7  # transposed form, GRU: b_hh (3H); else -1
L_WR = 8  # LSTM projection W_hr^T, (H, P), or -1 (both forms)
L_STATE = 9  # offset of this layer's h in the state row; c follows h
L_ACT = 10  # activation code (cell input and output)
L_RACT = 11  # recurrent (gate) activation code
L_RESET_AFTER = 12  # GRU: 1 = reset gate applied after W_hn h (PyTorch), 0 = before
L_BLOCKS = 13  # unit-block form: (ceil(H / UNITS), in + out, BLOCK_WIDTH); else -1
L_BLOCK_BIAS = 14  # unit-block form: (ceil(H / UNITS), BLOCK_WIDTH) summed biases
L_BLOCKS_HN = 15  # unit-block form, GRU reset before W_hn: (blocks, H, UNITS); else -1
LAYER_RECORD = 16

# Unit blocks: hidden units per block, and gate columns per block (4 gates).
UNITS = 16
BLOCK_WIDTH = 4 * UNITS

# Dense layer record.
D_IN = 0
D_OUT = 1
D_ACT = 2
D_W = 3  # the weights, in the orientation D_FORM says
D_B = 4
D_FORM = 5  # DENSE_SWEEP: W^T (in, out); DENSE_DOT: W (out, in)
DENSE_RECORD = 6

# Dense weight orientations. Row sweeps (out += W^T[k] * x[k]) vectorise over the
# outputs; with fewer outputs than one vector register holds (a typical head: 3) each
# sweep is a short scalar loop, and one contiguous dot product per output is faster
# (measured: 64->3 head 0.25 us as sweeps).
DENSE_SWEEP, DENSE_DOT = 0, 1
NARROW_DENSE = 16  # layers with fewer outputs than this are packed DENSE_DOT

LSTM, GRU = 0, 1
#: A kernel kind (see :func:`streamlstm.kernels.kernels_for`) for models that mix LSTM and
#: GRU layers: each layer's ``L_KIND`` is read at run time, so both cells are compiled.
ANY_KIND = -1

# Status codes returned per sample.
OK = 0
REJECTED_SAMPLE = 1  # NaN/Inf in the sample: nothing computed, state untouched
REJECTED_RESULT = 2  # the step overflowed to NaN/Inf: state left as it was
