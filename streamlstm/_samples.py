"""Coercion of user-given samples to the contiguous float arrays the kernels take."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .errors import ShapeError


def as_samples(values: Any, dtype: np.dtype, width: int, *, what: str = "samples") -> np.ndarray:
    """``values`` as a C-contiguous ``(M, width)`` array of ``dtype`` or a :class:`ShapeError`."""
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{what}: cannot convert to {dtype} ({exc})") from None
    if array.ndim == 1 and width == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != width:
        raise ShapeError(f"{what}: expected shape (n, {width}), got {array.shape}")
    return np.ascontiguousarray(array)


def as_sample(value: Any, dtype: np.dtype, width: int) -> np.ndarray:
    """``value`` as a C-contiguous ``(width,)`` array of ``dtype`` or a :class:`ShapeError`."""
    try:
        array = np.ascontiguousarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"sample: cannot convert to {dtype} ({exc})") from None
    if array.shape != (width,):
        raise ShapeError(f"sample: expected shape ({width},), got {array.shape}")
    return array


def as_timed_batch(
    sensor_ids: Sequence[Hashable] | np.ndarray,
    samples: Any,
    timestamps: Any,
    dtype: np.dtype,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A detector's micro-batch checked: ``(samples (M, width) of dtype, times (M,) float64)``,
    with one sensor id per sample, or a :class:`ShapeError`."""
    array = as_samples(samples, dtype, width)
    count = array.shape[0]
    if len(sensor_ids) != count:
        raise ShapeError(f"sensor_ids: {len(sensor_ids)} ids for {count} samples")
    try:
        times = np.ascontiguousarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"timestamps: cannot convert to float64 ({exc})") from None
    if times.shape != (count,):
        raise ShapeError(f"timestamps: expected shape ({count},), got {times.shape}")
    return array, times
