"""Compiled kernels: plain functions over arrays, callable from your own ``@njit`` code.

``step(params, layout, state, x, out, scratch)`` advances one stream by one sample and
returns a status code (``OK``, ``REJECTED_SAMPLE``, ``REJECTED_RESULT``); ``run`` does a
``(T, D)`` block; ``bank_step``/``bank_step_serial`` do a micro-batch of many streams,
whose samples ``group_by_row`` groups by state row (for kernels of your own over a bank).
Get the packed arguments from :meth:`streamlstm.Stream.kernel_args` and
:meth:`streamlstm.Bank.kernel_args`.
"""

from ._bank import NO_SAMPLE, bank_step, bank_step_serial, group_by_row
from ._math import tanh
from ._network import TILE_STREAMS, run, step, step_tile
from .layout import OK, REJECTED_RESULT, REJECTED_SAMPLE

__all__ = [
    "NO_SAMPLE",
    "OK",
    "REJECTED_RESULT",
    "REJECTED_SAMPLE",
    "TILE_STREAMS",
    "bank_step",
    "bank_step_serial",
    "group_by_row",
    "run",
    "step",
    "step_tile",
    "tanh",
]
