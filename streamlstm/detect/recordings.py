"""Read a normal recording from CSV or NPZ for the calibrate and train commands."""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ShapeError


def read_recording(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """A ``(T, D)`` float64 recording and its channel names from ``.csv`` or ``.npz``.

    CSV: a header row of names (or none: columns are named ``c0, c1, ...``), one sample
    per line; ``columns`` picks and orders columns by name (default: every column). NPZ
    (read without pickle): ``columns`` names the arrays to use, each ``(T,)`` or
    ``(T, k)``, stacked side by side; by default the single 2-D array, or every 1-D float
    array of the longest length. Raises :class:`ConfigError` for a missing file or column
    and :class:`ShapeError` for non-numeric, ragged or non-finite data.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        data, names = _read_csv(path, columns)
    elif suffix == ".npz":
        data, names = _read_npz(path, columns)
    else:
        raise ConfigError(f"{path}: expected a .csv or .npz recording")
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise ShapeError(
            f"{path}: expected a non-empty (samples, channels) table, got shape {data.shape}"
        )
    bad = ~np.isfinite(data)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ShapeError(
            f"{path}: {int(bad.sum())} NaN/Inf value(s), first in sample {row}; "
            "normal data for calibration or training must be clean"
        )
    return data, names


def _read_csv(path: Path, columns: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ShapeError(f"{path}: empty CSV")
    try:
        [float(cell) for cell in rows[0]]
        names = [f"c{k}" for k in range(len(rows[0]))]
    except ValueError:
        names, rows = [cell.strip() for cell in rows[0]], rows[1:]
    picks = list(range(len(names)))
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigError(f"{path}: no column(s) {missing} (have {names})")
        picks = [names.index(c) for c in columns]
    data = np.empty((len(rows), len(picks)), np.float64)
    for line, row in enumerate(rows):
        if len(row) != len(names):
            raise ShapeError(
                f"{path}: data row {line + 1} has {len(row)} fields, header has {len(names)}"
            )
        try:
            data[line] = [float(row[k]) for k in picks]
        except ValueError as exc:
            raise ShapeError(f"{path}: data row {line + 1}: {exc}") from None
    return data, [names[k] for k in picks]


def _read_npz(path: Path, columns: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ShapeError(f"{path}: unreadable npz ({exc})") from None
    if columns:
        missing = [c for c in columns if c not in arrays]
        if missing:
            raise ConfigError(f"{path}: no array(s) {missing} (have {sorted(arrays)})")
        chosen = list(columns)
    else:
        numeric = {k: v for k, v in arrays.items() if v.dtype.kind == "f" and v.ndim in (1, 2)}
        two_d = [k for k, v in numeric.items() if v.ndim == 2]
        if len(two_d) == 1:
            chosen = two_d
        else:
            longest = max((v.shape[0] for v in numeric.values() if v.ndim == 1), default=0)
            chosen = [k for k, v in numeric.items() if v.ndim == 1 and v.shape[0] == longest > 1]
        if not chosen:
            raise ConfigError(
                f"{path}: cannot tell which arrays hold the samples; "
                f"name them with --columns (have {sorted(arrays)})"
            )
    parts, names = [], []
    for name in chosen:
        array = np.asarray(arrays[name], np.float64)
        array = array[:, None] if array.ndim == 1 else array
        if array.ndim != 2:
            raise ShapeError(f"{path}: array {name!r} has shape {arrays[name].shape}")
        parts.append(array)
        names += [name] if array.shape[1] == 1 else [f"{name}{k}" for k in range(array.shape[1])]
    if len({p.shape[0] for p in parts}) != 1:
        raise ShapeError(f"{path}: arrays {chosen} have different lengths")
    return np.concatenate(parts, axis=1), names
