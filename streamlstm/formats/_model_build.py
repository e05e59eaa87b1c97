"""Shared by the Keras and ONNX loaders: a validated Model with provenance, or a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, StreamLSTMError
from ..model import Model


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_model(
    path: Path, source_format: str, *, metadata: dict[str, Any] | None = None, **fields: Any
) -> Model:
    """``Model(**fields)`` with source provenance in its metadata.

    Validation failures (shapes, NaN/Inf weights) become :class:`ModelFormatError` naming
    the file, so every loader refuses a bad file the same way.
    """
    # The same provenance keys as the PyTorch loader writes.
    provenance = {"source": source_format, "file": path.name, "file_sha256": file_sha256(path)}
    try:
        return Model(metadata={**provenance, **(metadata or {})}, **fields)
    except StreamLSTMError as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc
