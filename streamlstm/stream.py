"""One stream: a model's recurrent state carried between calls, stepped by compiled code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np

from . import kernels
from ._samples import as_sample, as_samples
from .errors import InvalidSampleError, ShapeError
from .kernels import layout as L
from .kernels.layout import OK
from .model import Model
from .packing import packed

ON_INVALID = ("raise", "skip")


class KernelArgs(NamedTuple):
    """The arrays :func:`streamlstm.kernels.step` takes, for use from your own ``@njit`` code."""

    params: np.ndarray
    layout: np.ndarray
    state: np.ndarray
    scratch: np.ndarray


def _compiled_entry(dispatcher: Any, args: tuple[Any, ...]) -> Callable[..., Any]:
    """The compiled function ``dispatcher`` runs for arguments typed like ``args``: callable
    with such arguments without the dispatcher's type resolution. The dispatcher itself if
    that specialisation cannot be found (it is compiled already when this is called)."""
    try:
        return dispatcher.overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except (AttributeError, KeyError):  # a Numba without these: the dispatcher does it all
        return dispatcher


def split_state(
    model: Model, vector: np.ndarray
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Per-layer ``(h, c)`` views of a flat state vector; ``c`` is empty for a GRU layer."""
    hs, cs = [], []
    offset = 0
    for layer in model.layers:
        hs.append(vector[offset : offset + layer.output_size])
        offset += layer.output_size
        c_size = layer.hidden_size if layer.kind == "lstm" else 0
        cs.append(vector[offset : offset + c_size])
        offset += c_size
    return tuple(hs), tuple(cs)


def join_state(model: Model, h: Any, c: Any) -> np.ndarray:
    """The flat state vector for per-layer ``h`` and ``c`` (``c`` ignored for GRU layers)."""
    if len(h) != len(model.layers) or len(c) != len(model.layers):
        raise ShapeError(
            f"state: expected h and c for {len(model.layers)} layer(s), got {len(h)} and {len(c)}"
        )
    parts = []
    for index, layer in enumerate(model.layers):
        parts.append(as_sample(h[index], model.dtype, layer.output_size))
        if layer.kind == "lstm":
            parts.append(as_sample(c[index], model.dtype, layer.hidden_size))
    vector = np.concatenate(parts)
    if not np.all(np.isfinite(vector)):
        raise ShapeError("state: non-finite values")
    return vector


class Stream:
    """A model's state for one stream, advanced one sample (``step``) or block (``run``) at a time.

    ``on_invalid`` says what a NaN/Inf sample does: ``"raise"`` an
    :class:`~streamlstm.errors.InvalidSampleError`, or ``"skip"`` it (the prediction is
    NaN and :attr:`rejected` counts it). Either way the state is left untouched.

    >>> import numpy as np, streamlstm as sl
    >>> s = sl.random_model(3, [8], output_size=3).stream()
    >>> s.step(np.zeros(3, np.float32)).shape
    (3,)
    """

    def __init__(self, model: Model, *, on_invalid: str = "raise") -> None:
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.model = model
        self.on_invalid = on_invalid
        self.rejected = 0
        pk = packed(model)
        self._params, self._layout = pk.params, pk.layout
        self._dtype = np.dtype(model.dtype.name)  # the canonical object: compared by identity
        self._in_shape = (model.input_size,)
        self._state = np.zeros(pk.state_size, model.dtype)
        self._scratch = np.zeros(pk.scratch_size, model.dtype)
        self._out = np.zeros(model.output_size, model.dtype)
        # Compiled for this model's kind of cell only (see kernels.stream_kernels).
        self._step_kernel, self._run_kernel = kernels.stream_kernels(pk.kernel_kind)
        self._kernel = self._first_step

    def step(self, x: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Advance by one sample ``x`` (``(D,)``, sensor units); return the ``(O,)`` prediction.

        Pass ``out`` (an ``(O,)`` array of the model's dtype) to avoid an allocation.
        """
        # The common case, ``x`` already a contiguous, aligned, writable array of the
        # model's dtype, costs four cheap tests; any other ``x`` is converted to one. With
        # its own output buffer the call then goes straight to the compiled code (see
        # _first_step); a caller's ``out`` is typed by Numba's dispatcher.
        if not (
            type(x) is np.ndarray
            and x.dtype is self._dtype
            and x.shape == self._in_shape
            and x.flags.carray
        ):
            x = np.require(
                as_sample(x, self._dtype, self._in_shape[0]), requirements=["C", "A", "W"]
            )
        if out is None:
            code = self._kernel(
                self._params, self._layout, self._state, x, self._out, self._scratch
            )
            if code != OK:
                self._rejected(1, code)
            return self._out.copy()
        code = self._step_kernel(self._params, self._layout, self._state, x, out, self._scratch)
        if code != OK:
            self._rejected(1, code)
        return out

    def _first_step(self, *args: np.ndarray) -> int:
        """The first :meth:`step`'s kernel call: through Numba's dispatcher (which compiles
        or loads the kernel), then straight to the compiled entry point for these argument
        types. The stream's own arrays never change type, and :meth:`step` makes ``x`` the
        same type as here, so the dispatcher's per-call type resolution (a fifth of a step)
        can be skipped."""
        code = self._step_kernel(*args)
        self._kernel = _compiled_entry(self._step_kernel, args)
        return code

    def run(self, xs: Any) -> np.ndarray:
        """Advance over a ``(T, D)`` block in one compiled loop; return ``(T, O)`` predictions.

        Rejected samples (NaN/Inf) give NaN rows and are skipped (the state carries on
        from the last good sample); with ``on_invalid="raise"`` the error is raised after
        the block, once the good samples have been consumed.
        """
        xs = as_samples(xs, self._dtype, self._in_shape[0])
        outs = np.empty((xs.shape[0], self.model.output_size), self._dtype)
        status = np.empty(xs.shape[0], np.int8)
        rejected = self._run_kernel(
            self._params, self._layout, self._state, xs, outs, status, self._scratch
        )
        if rejected:
            self._rejected(rejected, int(status[status != L.OK][0]))
        return outs

    def _rejected(self, count: int, code: int) -> None:
        self.rejected += count
        if self.on_invalid == "raise":
            reason = (
                "sample holds NaN or Inf"
                if code == L.REJECTED_SAMPLE
                else "step overflowed to NaN/Inf"
            )
            raise InvalidSampleError(f"{count} sample(s) rejected: {reason}; state unchanged")

    def reset(self) -> None:
        """Back to the zero state of a fresh stream."""
        self._state[:] = 0

    @property
    def state(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """``(h, c)``: per-layer copies of the hidden and cell state (``c`` empty for GRU)."""
        return split_state(self.model, self._state.copy())

    @state.setter
    def state(self, value: tuple[Any, Any]) -> None:
        h, c = value
        self._state[:] = join_state(self.model, h, c)

    @property
    def state_vector(self) -> np.ndarray:
        """A copy of the flat ``(S,)`` state: each layer's ``h`` then ``c``, in layer order."""
        return self._state.copy()

    @state_vector.setter
    def state_vector(self, value: Any) -> None:
        vector = as_sample(value, self._dtype, self._state.shape[0])
        if not np.all(np.isfinite(vector)):
            raise ShapeError("state_vector: non-finite values")
        self._state[:] = vector

    def kernel_args(self) -> KernelArgs:
        """The live arrays behind this stream, for :func:`streamlstm.kernels.step` in ``@njit``."""
        return KernelArgs(self._params, self._layout, self._state, self._scratch)

    def copy(self) -> Stream:
        """An independent stream with the same model and a copy of the current state."""
        twin = Stream(self.model, on_invalid=self.on_invalid)
        twin._state[:] = self._state
        return twin
