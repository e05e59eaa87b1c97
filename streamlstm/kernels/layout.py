"""The packed-buffer layout the compiled kernels read.

A model is handed to the kernels as two arrays: ``params``, every weight in one
contiguous float buffer, and ``layout``, an int64 table of sizes and offsets into it.
Two buffers instead of one per tensor keeps the per-call dispatch cost low (each array
argument costs 50-100 ns), and weights are stored transposed (``(in, out)``) so the
matrix-vector products run as vectorisable ``out += W[k, :] * x[k]`` sweeps.

``layout`` = header, then one record per recurrent layer, then one per dense layer.
All offsets index ``params`` except the ``SC_*`` ones, which index the scratch buffer
and ``L_STATE``, which indexes a stream's state row.
"""

# Header fields.
H_LAYERS = 0        # number of recurrent layers
H_INPUT = 1         # D, input width
H_OUTPUT = 2        # O, output width
H_DENSE = 3         # number of dense head layers
H_STATE = 4         # S, state numbers per stream
H_SCRATCH = 5       # scratch numbers one stream step needs
H_IN_NORM = 6       # offset of (mean[D], std[D]) or -1
H_OUT_NORM = 7      # offset of (mean[O], std[O]) or -1
H_SC_GATES = 8      # scratch offset of the gate accumulators
H_SC_INPUT = 9      # scratch offset of the normalised input
H_SC_PING = 10      # scratch offsets of the two dense-head buffers
H_SC_PONG = 11
HEADER = 12

# Recurrent layer record.
L_KIND = 0          # 0 = LSTM, 1 = GRU
L_IN = 1            # input width
L_HIDDEN = 2        # H
L_OUT = 3           # width of h: proj size or H
L_WX = 4            # W_ih^T, (in, gates*H)
L_WH = 5            # W_hh^T, (out, gates*H)
L_B = 6             # LSTM: b_ih + b_hh (4H); GRU: b_ih (3H)
L_B2 = 7            # GRU: b_hh (3H); LSTM: -1
L_WR = 8            # LSTM projection W_hr^T, (H, P), or -1
L_STATE = 9         # offset of this layer's h in the state row; c follows h
L_ACT = 10          # activation code (cell input and output)
L_RACT = 11         # recurrent (gate) activation code
L_RESET_AFTER = 12  # GRU: 1 = reset gate applied after W_hn h (PyTorch), 0 = before
LAYER_RECORD = 13

# Dense layer record.
D_IN = 0
D_OUT = 1
D_ACT = 2
D_W = 3             # the weights, in the orientation D_FORM says
D_B = 4
D_FORM = 5          # DENSE_SWEEP: W^T (in, out); DENSE_DOT: W (out, in)
DENSE_RECORD = 6

# Dense weight orientations. Row sweeps (out += W^T[k] * x[k]) vectorise over the
# outputs; with fewer outputs than one vector register holds (a typical head: 3) each
# sweep is a short scalar loop, and one contiguous dot product per output is faster
# (measured: 64->3 head 0.25 us as sweeps).
DENSE_SWEEP, DENSE_DOT = 0, 1
NARROW_DENSE = 16   # layers with fewer outputs than this are packed DENSE_DOT

LSTM, GRU = 0, 1

# Status codes returned per sample.
OK = 0
REJECTED_SAMPLE = 1     # NaN/Inf in the sample: nothing computed, state untouched
REJECTED_RESULT = 2     # the step overflowed to NaN/Inf: state left as it was
