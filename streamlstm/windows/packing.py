"""Turn a window model into the window kernel's packed arrays.

The layout's fields are defined in :mod:`streamlstm.kernels._window`. Each LSTM/GRU
direction is packed as a one-layer streaming model (:func:`streamlstm.packing.pack`),
which the window kernel steps with the streaming kernels; plain RNN directions and the
dense head are stored transposed, ``W^T`` as ``(in, out)`` (an RNN's input and recurrent
biases apart), for the window kernel's own code.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import NamedTuple

import numpy as np

from ..kernels import _window as K
from ..kernels._math import ACTIVATION_CODES
from ..kernels.layout import ANY_KIND, H_SCRATCH, H_STATE, LSTM
from ..model import Model, RecurrentLayer
from ..packing import CPU, FlatBuffer, PackedModel, pack
from ..window_spec import WindowSpec

MODE_CODES = {
    "last": K.MODE_LAST,
    "every": K.MODE_EVERY,
    "probabilities": K.MODE_SOFTMAX,
    "log_probabilities": K.MODE_LOG_SOFTMAX,
}


class WindowWork(NamedTuple):
    """Per-thread work arrays of the window kernel
    (:func:`streamlstm.kernels._window.window_kernel`)."""

    seqs: np.ndarray
    states: np.ndarray
    scratch: np.ndarray
    work: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class WindowPacked:
    """The window kernel's view of a model for one output mode: its own ``params`` and
    ``layout``, and the LSTM/GRU directions' streaming packs (``stream_*``)."""

    params: np.ndarray
    layout: np.ndarray
    stream_params: np.ndarray
    stream_layouts: np.ndarray
    stream_index: np.ndarray
    #: The kind of cell of the LSTM/GRU directions, which the kernel is compiled for
    #: (:func:`streamlstm.kernels._window.window_kernel`).
    kind: int

    @property
    def model_arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's first five arguments."""
        return (
            self.params,
            self.layout,
            self.stream_params,
            self.stream_layouts,
            self.stream_index,
        )

    def allocate_work(self, threads: int, steps: int) -> WindowWork:
        """Work arrays for ``threads`` threads evaluating windows of ``steps`` samples."""
        dtype = self.params.dtype
        lanes = K.TILE_STREAMS
        return WindowWork(
            seqs=np.zeros((threads, lanes, 2, steps * int(self.layout[K.W_WIDTH])), dtype),
            states=np.zeros((threads, lanes, int(self.layout[K.W_STREAM_STATE])), dtype),
            scratch=np.zeros((threads, lanes, int(self.layout[K.W_STREAM_SCRATCH])), dtype),
            work=np.zeros((threads, K.work_size(self.layout)), dtype),
        )


def pack_windows(model: Model, spec: WindowSpec, target: str = CPU) -> WindowPacked:
    """Pack ``model`` for the window kernels (:mod:`streamlstm.kernels._window`) as ``spec``
    reads it: its output mode, final state and encoder (its length and hop do not matter).

    ``target``: the form of the LSTM/GRU directions' streaming packs (:data:`streamlstm.
    packing.TARGETS`; the CUDA window kernel reads the transposed ``CUDA`` form).
    """
    buffer = FlatBuffer(model.dtype)
    put = buffer.put
    header = np.full(K.HEADER, -1, np.int64)
    records: list[np.ndarray] = []
    streams: list[PackedModel] = []
    width, rnn_hidden = model.input_size, 1
    for layer in model.layers:
        rec = np.full(K.LAYER_RECORD, -1, np.int64)
        directions = [layer] if layer.backward is None else [layer, layer.backward]
        rec[K.LAYER_DIRECTIONS] = len(directions)
        for d, direction in enumerate(directions):
            start = 1 + d * K.DIRECTION_RECORD
            record = rec[start : start + K.DIRECTION_RECORD]
            record[K.K_IN] = layer.input_size
            record[K.K_OUT] = layer.direction_size
            record[K.K_REVERSE] = int(d == 1)
            record[K.K_COLUMN] = d * layer.direction_size
            if direction.kind == "rnn":
                _rnn_record(direction, record, put)
                rnn_hidden = max(rnn_hidden, layer.hidden_size)
            else:
                record[K.K_STREAM] = len(streams)
                one_layer = Model(layers=(dataclasses.replace(direction, backward=None),))
                streams.append(pack(one_layer, target))
        width = max(width, layer.output_size)
        records.append(rec)
    dense_width = max(1, model.output_size)
    for dense in model.head:
        rec = np.full(K.DENSE_RECORD, -1, np.int64)
        rec[K.D_IN], rec[K.D_OUT] = dense.weight.shape[1], dense.weight.shape[0]
        rec[K.D_ACT] = ACTIVATION_CODES[dense.activation]
        rec[K.D_W] = put(dense.weight.T)
        rec[K.D_B] = put(dense.bias)
        dense_width = max(dense_width, dense.weight.shape[0])
        records.append(rec)
    for field, norm in ((K.W_IN_NORM, model.input_norm), (K.W_OUT_NORM, model.output_norm)):
        if norm is not None:
            header[field] = put(np.concatenate([norm.mean, norm.std]))
    header[K.W_LAYERS] = len(model.layers)
    header[K.W_INPUT] = model.input_size
    header[K.W_OUTPUT] = model.output_size
    header[K.W_DENSE] = len(model.head)
    header[K.W_MODE] = MODE_CODES[spec.output]
    header[K.W_FINAL_STATE] = int(spec.final_state)
    header[K.W_ENCODER] = spec.encoder_layers
    header[K.W_WIDTH] = width
    header[K.W_RNN_HIDDEN] = rnn_hidden
    header[K.W_DENSE_WIDTH] = dense_width
    header[K.W_STREAM_STATE] = max([1] + [int(p.layout[H_STATE]) for p in streams])
    header[K.W_STREAM_SCRATCH] = max([1] + [int(p.layout[H_SCRATCH]) for p in streams])
    params = buffer.array()
    index = np.zeros((max(1, len(streams)), 4), np.int64)
    params_at = layout_at = 0
    for row, stream in zip(index[: len(streams)], streams, strict=True):
        row[:] = (
            params_at,
            params_at + stream.params.size,
            layout_at,
            layout_at + stream.layout.size,
        )
        params_at, layout_at = row[1], row[3]
    return WindowPacked(
        params=params,
        layout=np.concatenate([header, *records]),
        # One spare number at the end keeps the arrays non-empty without streaming packs.
        stream_params=np.concatenate([p.params for p in streams] + [np.zeros(1, model.dtype)]),
        stream_layouts=np.concatenate([p.layout for p in streams] + [np.zeros(1, np.int64)]),
        stream_index=index,
        # Without LSTM/GRU directions the kernels never step a cell: any one kind will do.
        kind=_one_kind([p.kernel_kind for p in streams] or [LSTM]),
    )


def _one_kind(kinds: list[int]) -> int:
    """The kind all directions share, else :data:`~streamlstm.kernels.layout.ANY_KIND`."""
    return kinds[0] if len(set(kinds)) == 1 else ANY_KIND


def _rnn_record(layer: RecurrentLayer, record: np.ndarray, put) -> None:
    """A plain RNN direction's weights (transposed) and activation, into its record."""
    record[K.K_WX] = put(layer.w_ih.T)
    record[K.K_WH] = put(layer.w_hh.T)
    record[K.K_BI] = put(layer.b_ih)
    record[K.K_BH] = put(layer.b_hh)
    record[K.K_ACT] = ACTIVATION_CODES[layer.activation]


_PACKED: weakref.WeakKeyDictionary[Model, dict[tuple[str, bool, int, str], WindowPacked]] = (
    weakref.WeakKeyDictionary()
)


def packed_windows(model: Model, spec: WindowSpec, target: str = CPU) -> WindowPacked:
    """``pack_windows(model, spec, target)``, computed once per model object, way of
    reading and target."""
    per_reading = _PACKED.setdefault(model, {})
    key = (spec.output, spec.final_state, spec.encoder_layers, target)
    result = per_reading.get(key)
    if result is None:
        result = per_reading[key] = pack_windows(model, spec, target)
    return result
