"""Compiled kernels: plain functions over arrays, callable from your own ``@njit`` code.

``step(params, layout, state, x, out, scratch)`` advances one stream by one sample and
returns a status code (``OK``, ``REJECTED_SAMPLE``, ``REJECTED_RESULT``); ``run`` does a
``(T, D)`` block; ``bank_step``/``bank_step_serial`` do a micro-batch of many streams.
Get the packed arguments from :meth:`streamlstm.Stream.kernel_args`.
"""

from ._bank import bank_step, bank_step_serial
from ._math import tanh
from ._network import TILE_STREAMS, run, step, step_tile
from .layout import OK, REJECTED_RESULT, REJECTED_SAMPLE

__all__ = ["OK", "REJECTED_RESULT", "REJECTED_SAMPLE", "TILE_STREAMS", "bank_step",
           "bank_step_serial", "run", "step", "step_tile", "tanh"]
