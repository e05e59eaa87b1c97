"""Snapshots of all sensor and detector state: one ``.npz`` file, never pickled.

The state tree (nested dicts and lists of JSON values and numpy arrays, as
:meth:`DaemonSnapshot.to_tree <streamlstm.daemon.snapshot_state.DaemonSnapshot.to_tree>`
builds it) is split in two: arrays are stored as npz members, the rest as a JSON document
(member ``__tree__``) with ``{"__array__": name}`` where an array was. A list of strings
(sensor ids: a million of them in a big fleet) is stored as two arrays, UTF-8 bytes and
lengths (``{"__strings__": [lengths, bytes]}``), not as JSON.

Reading trusts nothing: ``allow_pickle=False`` (object arrays are refused when writing),
members are checked from the zip directory before anything is read, with the same
checks as weight files (:func:`streamlstm.formats.native.check_npz_members`): stored
members only, so a small file cannot inflate into a large allocation, declared sizes
within the file's own size, every ``.npy`` header within its member; only members the
tree names are read. Files are replaced atomically (temp file, fsync, rename).

:class:`SnapshotWriter` writes on a thread of its own, so the compute loop only pays for
copying the state, not for encoding it or for the disk.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_file
from ..errors import ModelFormatError, StreamLSTMError
from ..formats.native import check_npy_header, check_npz_members

log = logging.getLogger(__name__)

FORMAT = "streamlstm.snapshot/2"
#: Older files read as well (their string lists are plain JSON).
READABLE_FORMATS = ("streamlstm.snapshot/1", FORMAT)
#: What every version's format name starts with.
FORMAT_FAMILY = "streamlstm.snapshot/"
TREE = "__tree__"
#: Most members a snapshot may hold (the daemon writes about 15).
MAX_MEMBERS = 256
#: Largest JSON tree accepted (bulk data is in arrays; the tree names them).
MAX_TREE_BYTES = 16 << 20


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
        if value and all(type(v) is str for v in value):
            encoded = [v.encode("utf-8", "surrogatepass") for v in value]
            lengths = _split(np.fromiter(map(len, encoded), np.int64, len(encoded)), arrays)
            blob = _split(np.frombuffer(b"".join(encoded), np.uint8), arrays)
            return {"__strings__": [lengths["__array__"], blob["__array__"]]}
        return [_split(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SnapshotError(f"snapshot: cannot store a {type(value).__name__}")


def _join(value: Any, array: Callable[[str], np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return array(value["__array__"])
        if set(value) == {"__strings__"}:
            return _strings(array(value["__strings__"][0]), array(value["__strings__"][1]))
        if set(value) == {"__items__"}:
            return {_join(k, array): _join(v, array) for k, v in value["__items__"]}
        return {k: _join(v, array) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, array) for v in value]
    return value


def _strings(lengths: np.ndarray, blob: np.ndarray) -> list[str]:
    if lengths.ndim != 1 or blob.ndim != 1 or blob.dtype != np.uint8 or lengths.dtype.kind != "i":
        raise SnapshotError("snapshot: malformed string list")
    if lengths.size and (lengths.min() < 0 or int(lengths.sum()) != blob.size):
        raise SnapshotError("snapshot: string lengths do not match their bytes")
    data = blob.tobytes()
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends, strict=True)]


def _write_npz(file: Any, state: dict[str, Any]) -> None:
    arrays: dict[str, Any] = {}
    tree = {"format": FORMAT, "state": _split(state, arrays)}
    np.savez(file, **{TREE: np.frombuffer(json.dumps(tree).encode(), np.uint8), **arrays})


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> int:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename); return its size.

    Arrays are streamed into the file, not assembled in memory first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: a snapshot holds every sensor's state, readable by the service user alone.
    with atomic_file(path, mode=0o600) as file:
        _write_npz(file, state)
        size = file.tell()
    return size


def encode(state: dict[str, Any]) -> bytes:
    """``state`` in the file format of :func:`save`, as bytes (for a network store)."""
    buffer = io.BytesIO()
    _write_npz(buffer, state)
    return buffer.getvalue()


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot written by :func:`save`; :class:`SnapshotError` if it is not one."""
    path = Path(path)
    return _checked(lambda: _load(path, path, path.stat().st_size), path)


def decode(data: bytes, label: str = "snapshot") -> dict[str, Any]:
    """Read bytes made by :func:`encode`, with every check :func:`load` makes."""
    return _checked(lambda: _load(io.BytesIO(data), Path(label), len(data)), label)


def _checked(read: Callable[[], dict[str, Any]], label: Any) -> dict[str, Any]:
    try:
        return read()
    except SnapshotError:
        raise
    except ModelFormatError as exc:
        raise SnapshotError(f"unreadable snapshot: {exc}") from None
    except Exception as exc:  # zipfile/zlib/NumPy/json raise many types on damaged input
        raise SnapshotError(f"{label}: unreadable snapshot ({type(exc).__name__}: {exc})") from None


def _load(source: Any, path: Path, size: int) -> dict[str, Any]:
    with zipfile.ZipFile(source) as archive:
        names = check_npz_members(
            path,
            archive,
            lambda name: MAX_TREE_BYTES if name == TREE else size,
            max_members=MAX_MEMBERS,
            stored_only=True,
        )
        if TREE not in names:
            raise SnapshotError(f"{path}: no {TREE} member: not a snapshot")
        infos = {info.filename[:-4]: info for info in archive.infolist()}
        if sum(info.file_size for info in infos.values()) > size:
            raise SnapshotError(f"{path}: members declare more bytes than the file holds")
        for info in infos.values():
            check_npy_header(path, archive, info)

        def array(name: str) -> np.ndarray:
            if not isinstance(name, str) or name not in infos:
                raise SnapshotError(f"{path}: the tree names a missing member {name!r}")
            with archive.open(infos[name]) as member:
                return np.lib.format.read_array(member, allow_pickle=False)

        tree = json.loads(array(TREE).tobytes())
        found = tree.get("format") if isinstance(tree, dict) else None
        if found not in READABLE_FORMATS:
            if isinstance(found, str) and found.startswith(FORMAT_FAMILY):
                raise SnapshotError(
                    f"{path}: snapshot format {found!r} is not one this release reads "
                    f"({', '.join(READABLE_FORMATS)}): written by a newer streamlstm?"
                )
            raise SnapshotError(f"{path}: not a {FORMAT} file")
        return _join(tree["state"], array)


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename an unusable snapshot to ``<path>.bad-<UTC time>`` (kept for inspection)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, target)
    return target


Job = Callable[[], dict[str, Any]]


class SnapshotWriter:
    """Writes snapshots to ``path`` on its own thread.

    The compute loop hands over a *job* (a function building the state tree from copies
    it made between batches) with :meth:`submit` and goes on. A job submitted while the
    previous one is still being written replaces any job still waiting (the newest state
    wins). ``on_written(bytes, seconds)`` and ``on_failed(error)`` are called on the
    writer thread; a failure never ends the thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_written: Callable[[int, float], None],
        on_failed: Callable[[Exception], None],
    ) -> None:
        self.path = Path(path)
        self._on_written = on_written
        self._on_failed = on_failed
        self._pending: Job | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._pending = job
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is waiting or being written; False on timeout or a dead thread."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending is not None or self._busy) and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return self._pending is None and not self._busy

    def close(self, timeout: float) -> bool:
        """Write what is waiting, then end the thread; False if that did not finish in time."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                job, self._pending, self._busy = self._pending, None, True
            started = time.monotonic()
            try:
                size = save(self.path, job())
            except Exception as exc:  # a full disk or a bug in one job: count, keep serving
                self._on_failed(exc)
            else:
                self._on_written(size, time.monotonic() - started)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
