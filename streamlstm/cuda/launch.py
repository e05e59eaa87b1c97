"""Launching the bank's step kernel with its device-array arguments packed once.

What numba-cuda 0.30.4 does on the host for each ``kernel[blocks, threads, stream](*args)``
call through a cached launch configuration (``numba/cuda/dispatcher.py``):

* ``_LaunchConfiguration.__call__`` -> ``CUDADispatcher.call`` (l. 1828): pushes the
  arguments into a thread-local (``_push_args``/``_pop_args``), picks the dispatcher for
  launch-config-sensitive kernels, then ``Dispatcher._cuda_call`` (C, ``cext/_dispatcher.cpp``
  l. 942) types every argument: ints by a cached fingerprint, a device array through its
  Python ``_numba_type_`` property (``cudadrv/devicearray.py`` l. 174), and looks the
  overload up;
* ``_Kernel.launch`` (l. 493): ``get_cufunc()`` (a context lookup, ``codegen.py`` l. 346),
  then ``_prepare_args`` (l. 570) per argument: a device array is wrapped in an ``InOut``
  hint and turned into a strided memory view, then flattened into 7 Python ints (meminfo,
  parent, size, itemsize, pointer, shape, strides); an int64 becomes a new
  ``ctypes.c_int64`` found by ``getattr(ctypes, "c_%s" % ty)``;
* a new ``cuda.core.LaunchConfig`` (validated), then ``cuda.core.launch`` packs all
  18 parameters (ctypes ones by the slower path) and calls ``cuLaunchKernelEx``.

A :class:`PackedStepLaunch` does the typing, the overload lookup, the array flattening and
the ``LaunchConfig`` once, and per call hands ``cuda.core.launch`` the packed prefix plus
the four int64 scalars as Python ints (pointer-sized, as numba itself passes sizes and
strides): the same kernel, the same parameter bytes, fewer Python steps.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

#: Launch paths a bank can use: ``packed`` (:class:`PackedStepLaunch`, falling back to
#: ``dispatcher`` where unsupported, e.g. on the simulator) or ``dispatcher``
#: (numba-cuda's ``kernel[blocks, threads, stream](...)``).
LAUNCH_PATHS = ("packed", "dispatcher")

#: ``launch(capacity, groups, samples, steps)``: one step-kernel launch.
StepLauncher = Callable[[int, int, int, int], None]


class PackedStepLaunch:
    """The step kernel bound to one grid, stream, float buffer and index array.

    ``launch(capacity, groups, samples, steps)`` is equivalent to
    ``kernel[blocks, threads, stream](buffer, index, capacity, groups, samples, steps)``.
    The packed pointers are only valid while ``buffer`` and ``index`` are (this object
    keeps them alive): build a new one after reallocating either. Raises
    :class:`NotImplementedError` for kernels this path does not cover (debug,
    cooperative, argument extensions, launch-config-sensitive, non-int64 scalars).
    """

    def __init__(
        self, dispatcher: Any, blocks: int, threads: int, stream: Any, buffer: Any, index: Any
    ) -> None:
        from cuda.core import LaunchConfig, launch
        from numba.cuda import types

        if ctypes.sizeof(ctypes.c_void_p) != 8:
            raise NotImplementedError("int64 scalars are passed as pointer-sized ints")
        configured = dispatcher[blocks, threads, stream]
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in (buffer, index, 0, 0, 0, 0))
        if any(t != types.int64 for t in argtypes[2:]):
            raise NotImplementedError(f"scalar types {argtypes[2:]}")
        if dispatcher.extensions:
            raise NotImplementedError("dispatcher has argument extensions")
        overload = dispatcher.compile(argtypes)  # the cached overload once compiled
        if overload.debug or overload.cooperative:
            raise NotImplementedError("debug or cooperative kernel")
        if getattr(overload, "launch_config_sensitive", False):
            raise NotImplementedError("launch-config-sensitive kernel")
        self._buffer, self._index = buffer, index  # keep the packed pointers valid
        self._stream = configured.stream  # cuda.core stream, as numba-cuda converts it
        self._kernel, self._prefix = _packed_arrays(
            overload, argtypes[:2], (buffer, index), self._stream
        )
        self._config = LaunchConfig(
            grid=configured.griddim, block=configured.blockdim, shmem_size=0
        )
        self._launch = launch

    def __call__(self, capacity: int, groups: int, samples: int, steps: int) -> None:
        self._launch(
            self._stream,
            self._config,
            self._kernel,
            *self._prefix,
            capacity,
            groups,
            samples,
            steps,
        )


def _packed_arrays(
    overload: Any, argtypes: tuple[Any, ...], arrays: tuple[Any, ...], stream: Any
) -> tuple[Any, tuple[Any, ...]]:
    """The ``cuda.core`` kernel and the flattened array parameters, as ``_Kernel.launch``
    builds them (``numba/cuda/dispatcher.py`` l. 493-527).

    numba-cuda 0.30.4 has no public API for either, so this is the one place that uses
    its private members (``_codelibrary``, ``_prepare_args``); the caller falls back to
    the dispatcher's launch if they are missing (another numba-cuda version).
    """
    kernel = overload._codelibrary.get_cufunc().kernel
    retr: list[Any] = []
    packed: list[Any] = []
    for ty, value in zip(argtypes, arrays, strict=True):
        overload._prepare_args(ty, value, stream, retr, packed)
    if retr:  # a write-back would mean a host array, not the bank's device buffers
        raise NotImplementedError("arguments need write-back")
    return kernel, tuple(packed)


def step_launcher(
    dispatcher: Any,
    blocks: int,
    threads: int,
    stream: Any,
    buffer: Any,
    index: Any,
    path: str,
) -> tuple[StepLauncher, str]:
    """A launcher of ``dispatcher`` for one grid and the bank's buffers, and its path.

    ``path="packed"`` gives a :class:`PackedStepLaunch` where supported, else (and for
    ``"dispatcher"``) numba-cuda's configured kernel with the buffers bound.
    """
    if path not in LAUNCH_PATHS:
        raise ValueError(f"launch path must be one of {LAUNCH_PATHS}, got {path!r}")
    if path == "packed":
        try:
            return PackedStepLaunch(dispatcher, blocks, threads, stream, buffer, index), path
        except (NotImplementedError, AttributeError, ImportError, TypeError):
            pass  # an unsupported kernel or another numba-cuda version: the normal path
    configured = dispatcher[blocks, threads, stream]

    def launch(capacity: int, groups: int, samples: int, steps: int) -> None:
        configured(buffer, index, capacity, groups, samples, steps)

    return launch, "dispatcher"
