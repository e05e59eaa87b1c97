"""Turn a :class:`~streamlstm.model.Model` into the kernels' packed ``(params, layout)``."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from .kernels import layout as L
from .kernels._math import ACTIVATION_CODES
from .model import GATES, Model


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


def pack(model: Model) -> PackedModel:
    """Pack ``model``'s weights, transposed for the kernels, into one contiguous buffer."""
    chunks: list[np.ndarray] = []
    cursor = 0

    def put(array: np.ndarray) -> int:
        nonlocal cursor
        offset = cursor
        flat = np.ascontiguousarray(array, dtype=model.dtype).ravel()
        chunks.append(flat)
        cursor += flat.size
        return offset

    header = np.full(L.HEADER, -1, np.int64)
    records: list[np.ndarray] = []
    state_offset = 0
    widest_gates = 0
    for layer in model.layers:
        rec = np.full(L.LAYER_RECORD, -1, np.int64)
        gates = GATES[layer.kind] * layer.hidden_size
        rec[L.L_KIND] = L.LSTM if layer.kind == "lstm" else L.GRU
        rec[L.L_IN] = layer.input_size
        rec[L.L_HIDDEN] = layer.hidden_size
        rec[L.L_OUT] = layer.output_size
        rec[L.L_WX] = put(layer.w_ih.T)
        rec[L.L_WH] = put(layer.w_hh.T)
        if layer.kind == "lstm":
            rec[L.L_B] = put(layer.b_ih + layer.b_hh)
            if layer.w_hr is not None:
                rec[L.L_WR] = put(layer.w_hr.T)
            # The GRU needs input and hidden gate sums apart (6H); the LSTM 4H plus, with a
            # projection, nothing more: the unprojected h reuses the i-gate slots.
            widest_gates = max(widest_gates, gates)
        else:
            rec[L.L_B] = put(layer.b_ih)
            rec[L.L_B2] = put(layer.b_hh)
            widest_gates = max(widest_gates, 2 * gates)
        rec[L.L_STATE] = state_offset
        rec[L.L_ACT] = ACTIVATION_CODES[layer.activation]
        rec[L.L_RACT] = ACTIVATION_CODES[layer.recurrent_activation]
        rec[L.L_RESET_AFTER] = int(layer.reset_after)
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
        header[L.H_OUT_NORM] = put(np.concatenate([model.output_norm.mean,
                                                   model.output_norm.std]))

    header[L.H_LAYERS] = len(model.layers)
    header[L.H_INPUT] = model.input_size
    header[L.H_OUTPUT] = model.output_size
    header[L.H_DENSE] = len(model.head)
    header[L.H_STATE] = state_offset
    header[L.H_SC_GATES] = state_offset
    header[L.H_SC_INPUT] = state_offset + widest_gates
    header[L.H_SC_PING] = header[L.H_SC_INPUT] + model.input_size
    header[L.H_SC_PONG] = header[L.H_SC_PING] + widest_dense
    header[L.H_SCRATCH] = header[L.H_SC_PONG] + widest_dense

    params = np.concatenate(chunks) if chunks else np.zeros(0, model.dtype)
    return PackedModel(params=params, layout=np.concatenate([header, *records]))


_PACKED: weakref.WeakKeyDictionary[Model, PackedModel] = weakref.WeakKeyDictionary()


def packed(model: Model) -> PackedModel:
    """``pack(model)``, computed once per model object (models are immutable)."""
    result = _PACKED.get(model)
    if result is None:
        result = _PACKED[model] = pack(model)
    return result
