"""Turn a :class:`~streamlstm.model.Model` into the kernels' packed ``(params, layout)``."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .kernels import kernel_kind
from .kernels import layout as L
from .kernels._math import ACTIVATION_CODES
from .model import GATES, Model, RecurrentLayer


@dataclass(frozen=True, eq=False)
class PackedModel:
    """The kernels' view of a model: one weight buffer and one int64 layout table."""

    params: np.ndarray
    layout: np.ndarray

    @property
    def state_size(self) -> int:
        return int(self.layout[L.H_STATE])

    @property
    def scratch_size(self) -> int:
        return int(self.layout[L.H_SCRATCH])

    @property
    def input_size(self) -> int:
        return int(self.layout[L.H_INPUT])

    @property
    def output_size(self) -> int:
        return int(self.layout[L.H_OUTPUT])

    @property
    def kernel_kind(self) -> int:
        """The kind of model the kernels are compiled for (see
        :func:`streamlstm.kernels.kernel_kind`)."""
        return kernel_kind(self.layout)


#: Packing targets: the CPU kernels read unit blocks, the CUDA kernel transposed weights
#: (see :mod:`streamlstm.kernels.layout`).
CPU, CUDA = "cpu", "cuda"
TARGETS = (CPU, CUDA)


def _unit_blocks(gates: Sequence[np.ndarray | None], hidden: int, rows: int) -> np.ndarray:
    """``(ceil(hidden / UNITS), rows, len(gates) * UNITS)``: for each block of units, every
    gate's ``(hidden, rows)`` weights (``None``: zeros) transposed side by side, zero-padded
    past the last unit."""
    count = -(-hidden // L.UNITS)
    blocks = np.zeros((count, rows, len(gates) * L.UNITS))
    for b in range(count):
        units = slice(b * L.UNITS, min((b + 1) * L.UNITS, hidden))
        n = units.stop - units.start
        for g, weights in enumerate(gates):
            if weights is not None:
                blocks[b, :, g * L.UNITS : g * L.UNITS + n] = weights[units].T
    return blocks


def _unit_block_bias(gates: list[np.ndarray], hidden: int) -> np.ndarray:
    """The biases matching :func:`_unit_blocks`: ``(blocks, len(gates) * UNITS)``."""
    return _unit_blocks([b[:, None] for b in gates], hidden, 1)[:, 0, :]


def _pack_unit_blocks(layer: RecurrentLayer, rec: np.ndarray, put) -> None:
    """Fill ``rec``'s unit-block fields (see :mod:`streamlstm.kernels.layout`)."""
    hidden = layer.hidden_size

    def gates_of(array: np.ndarray) -> list[np.ndarray]:
        return np.split(np.asarray(array, np.float64), GATES[layer.kind])

    if layer.kind == "lstm":
        weights = np.concatenate([layer.w_ih, layer.w_hh], axis=1)
        rec[L.L_BLOCKS] = put(_unit_blocks(gates_of(weights), hidden, weights.shape[1]))
        rec[L.L_BLOCK_BIAS] = put(_unit_block_bias(gates_of(layer.b_ih + layer.b_hh), hidden))
        return
    (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = gates_of(layer.w_ih), gates_of(layer.w_hh)
    (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = gates_of(layer.b_ih), gates_of(layer.b_hh)
    no_x, no_h = np.zeros_like(w_in), np.zeros_like(w_hn)
    first = np.concatenate([w_ir, w_hr], axis=1)
    gates: list[np.ndarray | None] = [
        first,
        np.concatenate([w_iz, w_hz], axis=1),
        np.concatenate([w_in, no_h], axis=1),
    ]
    if layer.reset_after:
        gates.append(np.concatenate([no_x, w_hn], axis=1))
        biases = [b_ir + b_hr, b_iz + b_hz, b_in, b_hn]
    else:  # W_hn applies to r * h, in blocks of its own; b_hn joins b_in
        gates.append(None)
        biases = [b_ir + b_hr, b_iz + b_hz, b_in + b_hn, np.zeros_like(b_in)]
        rec[L.L_BLOCKS_HN] = put(_unit_blocks([w_hn], hidden, hidden))
    rec[L.L_BLOCKS] = put(_unit_blocks(gates, hidden, first.shape[1]))
    rec[L.L_BLOCK_BIAS] = put(_unit_block_bias(biases, hidden))


def _pack_transposed(layer: RecurrentLayer, rec: np.ndarray, put) -> None:
    """Fill ``rec``'s transposed-form fields (the CUDA kernel's)."""
    rec[L.L_WX] = put(layer.w_ih.T)
    rec[L.L_WH] = put(layer.w_hh.T)
    if layer.kind == "lstm":
        rec[L.L_B] = put(layer.b_ih + layer.b_hh)
    else:
        rec[L.L_B] = put(layer.b_ih)
        rec[L.L_B2] = put(layer.b_hh)


class FlatBuffer:
    """Arrays laid end to end in one flat buffer of ``dtype``; :meth:`put` gives each offset."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._chunks: list[np.ndarray] = []
        self._size = 0

    def put(self, array: np.ndarray) -> int:
        """Append ``array`` (flattened, C order); return where it starts."""
        offset = self._size
        flat = np.ascontiguousarray(array, dtype=self.dtype).ravel()
        self._chunks.append(flat)
        self._size += flat.size
        return offset

    def array(self) -> np.ndarray:
        """The buffer: everything put so far, in order."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, self.dtype)


def pack(model: Model, target: str = CPU) -> PackedModel:
    """Pack ``model``'s weights into one contiguous buffer in the form ``target`` reads.

    Raises :class:`~streamlstm.errors.ShapeError` for a model that runs only on windows
    (bidirectional, plain RNN, or declaring a window): streams and banks start here.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    model.check_streamable()
    buffer = FlatBuffer(model.dtype)
    put = buffer.put
    header = np.full(L.HEADER, -1, np.int64)
    records: list[np.ndarray] = []
    state_offset = 0
    work = 0
    for layer in model.layers:
        rec = np.full(L.LAYER_RECORD, -1, np.int64)
        rec[L.L_KIND] = L.LSTM if layer.kind == "lstm" else L.GRU
        rec[L.L_IN] = layer.input_size
        rec[L.L_HIDDEN] = layer.hidden_size
        rec[L.L_OUT] = layer.output_size
        if target == CPU:
            _pack_unit_blocks(layer, rec, put)
        else:
            _pack_transposed(layer, rec, put)
        if layer.kind == "lstm" and layer.w_hr is not None:
            rec[L.L_WR] = put(layer.w_hr.T)
        rec[L.L_STATE] = state_offset
        rec[L.L_ACT] = ACTIVATION_CODES[layer.activation]
        rec[L.L_RACT] = ACTIVATION_CODES[layer.recurrent_activation]
        rec[L.L_RESET_AFTER] = int(layer.reset_after)
        # Work space: the unprojected h of a projected LSTM (H), or z, n_x and r * h of a
        # GRU with the reset gate before W_hn (3H).
        work = max(work, 3 * layer.hidden_size)
        state_offset += layer.state_size
        records.append(rec)

    widest_dense = model.layers[-1].output_size
    for dense in model.head:
        rec = np.full(L.DENSE_RECORD, -1, np.int64)
        rec[L.D_IN] = dense.weight.shape[1]
        rec[L.D_OUT] = dense.weight.shape[0]
        rec[L.D_ACT] = ACTIVATION_CODES[dense.activation]
        if dense.weight.shape[0] < L.NARROW_DENSE:
            rec[L.D_W], rec[L.D_FORM] = put(dense.weight), L.DENSE_DOT
        else:
            rec[L.D_W], rec[L.D_FORM] = put(dense.weight.T), L.DENSE_SWEEP
        rec[L.D_B] = put(dense.bias)
        widest_dense = max(widest_dense, dense.weight.shape[0])
        records.append(rec)

    if model.input_norm is not None:
        header[L.H_IN_NORM] = put(np.concatenate([model.input_norm.mean, model.input_norm.std]))
    if model.output_norm is not None:
        header[L.H_OUT_NORM] = put(np.concatenate([model.output_norm.mean, model.output_norm.std]))

    header[L.H_LAYERS] = len(model.layers)
    header[L.H_INPUT] = model.input_size
    header[L.H_OUTPUT] = model.output_size
    header[L.H_DENSE] = len(model.head)
    header[L.H_STATE] = state_offset
    header[L.H_SC_WORK] = state_offset
    header[L.H_SC_SPARE] = state_offset + work
    header[L.H_SC_INPUT] = header[L.H_SC_SPARE] + L.BLOCK_WIDTH
    header[L.H_SC_PING] = header[L.H_SC_INPUT] + model.input_size
    header[L.H_SC_PONG] = header[L.H_SC_PING] + widest_dense
    header[L.H_SCRATCH] = header[L.H_SC_PONG] + widest_dense

    return PackedModel(params=buffer.array(), layout=np.concatenate([header, *records]))


_PACKED: weakref.WeakKeyDictionary[Model, dict[str, PackedModel]] = weakref.WeakKeyDictionary()


def packed(model: Model, target: str = CPU) -> PackedModel:
    """``pack(model, target)``, computed once per model object (models are immutable)."""
    per_target = _PACKED.setdefault(model, {})
    result = per_target.get(target)
    if result is None:
        result = per_target[target] = pack(model, target)
    return result
