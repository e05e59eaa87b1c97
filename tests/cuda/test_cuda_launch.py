"""What the packed step-kernel launch (streamlstm.cuda.launch) assumes of cuda.core.

The packed path hands ``cuda.core.launch`` the kernel's int64 scalars as Python ints where
numba-cuda passes ``ctypes.c_int64``; both must become the same 8 parameter bytes. This
runs without a GPU (``ParamHolder`` only packs host memory).
"""

from __future__ import annotations

import ctypes

import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda not installed")
kernel_args = pytest.importorskip("cuda.core._kernel_arg_handler", reason="no cuda.core")


def _parameter_bytes(args: list) -> list[bytes]:
    holder = kernel_args.ParamHolder(args)
    pointers = (ctypes.c_void_p * len(args)).from_address(holder.ptr)
    return [ctypes.string_at(p, 8) for p in pointers]


def test_python_ints_pack_like_ctypes_int64():
    values = [0, 1, 1024, -3, 2**40, 2**63 - 1, -(2**63)]
    assert _parameter_bytes(values) == _parameter_bytes([ctypes.c_int64(v) for v in values])
    assert _parameter_bytes([1024])[0] == (1024).to_bytes(8, "little", signed=True)
