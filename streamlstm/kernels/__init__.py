"""Compiled kernels: plain functions over arrays, callable from your own ``@njit`` code.

``step(params, layout, state, x, out, scratch)`` advances one stream by one sample and
returns a status code (``OK``, ``REJECTED_SAMPLE``, ``REJECTED_RESULT``); ``run`` does a
``(T, D)`` block; ``bank_step``/``bank_step_serial`` do a micro-batch of many streams,
whose samples ``group_by_row`` groups by state row (for kernels of your own over a bank);
``bank_step_in_order(kind)`` steps a batch of a few sensors without the tiled code.
These compile code for LSTM and GRU layers alike; ``step_of_kind``/``step_tile_of_kind``
take the model's ``kernel_kind(layout)`` as a constant and compile only that cell, and
``stream_kernels``/``bank_kernels`` give the entry points for one kind (what
:class:`streamlstm.Stream`, :class:`streamlstm.Bank` and the detector call).
Get the packed arguments from :meth:`streamlstm.Stream.kernel_args` and
:meth:`streamlstm.Bank.kernel_args`.
"""

from ._bank import (
    NO_SAMPLE,
    SENSORS_PER_TASK,
    bank_kernels,
    bank_step,
    bank_step_in_order,
    bank_step_serial,
    group_by_row,
)
from ._math import tanh
from ._network import (
    TILE_STREAMS,
    kernel_kind,
    run,
    step,
    step_of_kind,
    step_tile,
    step_tile_of_kind,
    stream_kernels,
)
from .layout import OK, REJECTED_RESULT, REJECTED_SAMPLE

__all__ = [
    "NO_SAMPLE",
    "OK",
    "REJECTED_RESULT",
    "REJECTED_SAMPLE",
    "SENSORS_PER_TASK",
    "TILE_STREAMS",
    "bank_kernels",
    "bank_step",
    "bank_step_in_order",
    "bank_step_serial",
    "group_by_row",
    "kernel_kind",
    "run",
    "step",
    "step_of_kind",
    "step_tile",
    "step_tile_of_kind",
    "stream_kernels",
    "tanh",
]
