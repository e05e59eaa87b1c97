"""Numba's on-disk cache of this package's kernels, kept in step with their sources.

Numba keys a cached kernel on its own file's modification time and size only, but the
machine code also holds every compiled function it calls from other files: after an edit
of ``kernels/_network.py``, ``detect/_kernel.py``'s cached kernels would still run the old
step. So the package stamps its cache with one digest over every module that holds
compiled code (each module that mentions numba) and, when the digest changes, deletes its
cached kernels before any is loaded (:func:`refresh`, run on import). ``streamlstm warmup
--clear-cache`` deletes them on demand (:func:`clear`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: The package's folder as Numba sees it (the absolute, unresolved path of its sources).
PACKAGE = Path(os.path.abspath(os.path.dirname(__file__)))


def _numba_cache_dir(cache_dir: str | None) -> str:
    """``cache_dir``, or Numba's ``NUMBA_CACHE_DIR`` setting when it is None ("": none)."""
    if cache_dir is not None:
        return cache_dir
    from numba import config

    return str(config.CACHE_DIR)


def _cache_folders(package: Path, cache_dir: str) -> list[Path]:
    """Where Numba caches the kernels of ``package``: ``__pycache__`` next to each folder's
    sources or, with ``NUMBA_CACHE_DIR``, one folder per source folder there, named after
    it and the SHA-1 of its path."""
    sources = sorted({path.parent for path in package.rglob("*.py")})
    if not cache_dir:
        return [source / "__pycache__" for source in sources]
    return [
        Path(cache_dir) / f"{source.name}_{hashlib.sha1(str(source).encode()).hexdigest()}"
        for source in sources
    ]


def cached_kernel_files(package: Path = PACKAGE, cache_dir: str | None = None) -> list[Path]:
    """This package's files in the on-disk cache Numba uses (``cache_dir``:
    ``NUMBA_CACHE_DIR``, read from Numba's configuration by default)."""
    return sorted(
        path
        for folder in _cache_folders(package, _numba_cache_dir(cache_dir))
        if folder.is_dir()
        for suffix in ("*.nbi", "*.nbc")
        for path in folder.glob(suffix)
    )


def clear(package: Path = PACKAGE, cache_dir: str | None = None) -> int:
    """Delete this package's cached kernels; returns how many files went."""
    stale = cached_kernel_files(package, cache_dir)
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def sources_digest(package: Path = PACKAGE) -> str:
    """SHA-256 over the path and text of every module of ``package`` that mentions numba."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        text = path.read_bytes()
        if b"numba" in text:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + text)
    return digest.hexdigest()


def refresh(package: Path = PACKAGE, cache_dir: str | None = None) -> bool:
    """Delete this package's cached kernels if their sources changed since the last call
    (or were never stamped); returns whether it did. Does nothing where the stamp cannot
    be written (a read-only install, whose files all change together on upgrade)."""
    cache_dir = _numba_cache_dir(cache_dir)
    if cache_dir:
        where = hashlib.sha1(str(package).encode()).hexdigest()[:12]
        stamp = Path(cache_dir) / f"{package.name}-{where}.sources"
    else:
        stamp = package / "__pycache__" / "kernels.sources"
    digest = sources_digest(package)
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        clear(package, cache_dir)
        stamp.write_text(digest)
    except OSError:
        return False
    return True
