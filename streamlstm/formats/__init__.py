"""Weight files in, :class:`~streamlstm.model.Model` out (and the native format back).

One module per source format; :func:`load` picks it by file suffix. Nothing here ever
unpickles: torch files are read with ``weights_only=True``, Keras and ONNX as data.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..model import Model
from .native import model_sha256

__all__ = ["LOADERS", "load", "model_sha256", "save"]

#: suffix -> (module, loader function). Modules are imported on first use so that the
#: optional frameworks (torch, h5py, onnx) are needed only for their own formats.
LOADERS: dict[str, tuple[str, str]] = {
    ".npz": ("native", "load_native"),
    ".safetensors": ("torch", "load_torch"),
    ".pt": ("torch", "load_torch"),
    ".pth": ("torch", "load_torch"),
    ".keras": ("keras", "load_keras"),
    ".h5": ("keras", "load_keras"),
    ".onnx": ("onnx", "load_onnx"),
}


def load(path: str | os.PathLike[str], **options: Any) -> Model:
    """Load a model from any supported weight file; ``options`` go to that format's loader.

    Raises :class:`~streamlstm.errors.ModelFormatError` for unknown, corrupt or
    unsupported files, with the file, tensor and reason in the message.
    """
    path = Path(path)
    suffix = ".h5" if path.name.endswith(".weights.h5") else path.suffix.lower()
    if suffix not in LOADERS:
        known = ", ".join(sorted(LOADERS))
        raise ModelFormatError(f"{path}: unknown weight file type {suffix!r} (known: {known})")
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    module_name, function = LOADERS[suffix]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)(path, **options)


def save(model: Model, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` in the native format (``.npz``); return the path written."""
    from .native import save_native

    return save_native(model, path)
