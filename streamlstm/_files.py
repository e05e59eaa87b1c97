"""Writing files so that a crash leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` when the block ends without error.

    Written to a temporary file beside ``path``, fsynced, then renamed over it, and the
    directory fsynced: a crash leaves the old file or the new one. ``mode`` is masked by
    the process umask as for any new file. An error removes the temporary file and leaves
    ``path`` untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def atomic_write(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> None:
    """Replace ``path`` with the concatenated ``chunks`` (see :func:`atomic_file`).

    The file gets the usual permissions (``0666`` less the process umask), as any file the
    user writes would.
    """
    with atomic_file(path) as file:
        for chunk in chunks:
            file.write(chunk)


def sync_directory(directory: Path) -> None:
    """fsync a directory so a rename into it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
