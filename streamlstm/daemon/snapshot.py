"""Snapshots of all sensor and detector state: one ``.npz`` file, never pickled.

The state tree (nested dicts and lists of JSON values and numpy arrays, as
``Detector.export_state()`` returns) is split in two: arrays are stored as npz members,
the rest as a JSON document (member ``__tree__``) with ``{"__array__": name}`` where an
array was. Reading uses ``allow_pickle=False``, so a tampered file cannot run code, and
object arrays are refused when writing. Files are replaced atomically.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StreamLSTMError
from ..sinks.spool import write_atomically

FORMAT = "streamlstm.snapshot/1"


class SnapshotError(StreamLSTMError):
    """A snapshot cannot be written or is unreadable / of another format."""


def _split(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise SnapshotError("snapshot: object arrays cannot be stored without pickle")
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            # Sensor ids may be ints: keep the key types by storing the items.
            return {"__items__": [[_split(k, arrays), _split(v, arrays)] for k, v in value.items()]}
        return {k: _split(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SnapshotError(f"snapshot: cannot store a {type(value).__name__}")


def _join(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        if set(value) == {"__items__"}:
            return {_join(k, arrays): _join(v, arrays) for k, v in value["__items__"]}
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    arrays: dict[str, np.ndarray] = {}
    tree = {"format": FORMAT, "state": _split(state, arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, __tree__=np.frombuffer(json.dumps(tree).encode(), np.uint8), **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot written by :func:`save`; :class:`SnapshotError` if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            tree = json.loads(data["__tree__"].tobytes())
            if not isinstance(tree, dict) or tree.get("format") != FORMAT:
                raise SnapshotError(f"{path}: not a {FORMAT} file")
            arrays = {name: data[name] for name in data.files if name != "__tree__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({exc})") from None
    return _join(tree["state"], arrays)
