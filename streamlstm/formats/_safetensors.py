"""A small, dependency-free reader and writer for the safetensors file layout.

Layout: an 8-byte little-endian unsigned header length ``N``, ``N`` bytes of UTF-8 JSON
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the byte buffer that follows the header) plus an optional ``__metadata__``
string map, then the byte buffer. Tensors are little-endian, C order.

The reader trusts nothing in the header: its length is capped, every offset must lie in
the file, tensors may not overlap, and each byte range must be exactly
``prod(shape) * itemsize`` long. Every problem raises
:class:`~streamlstm.errors.ModelFormatError` naming the file and the tensor.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from ..errors import ModelFormatError

#: The header of a real weight file is a few KiB; 100 MiB is far beyond any honest one.
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: safetensors dtype tag -> numpy dtype as stored. BF16 has no numpy dtype; it is read as
#: uint16 and widened to float32 (exactly: bf16 is the top half of a float32).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_TAGS = {dtype: tag for tag, dtype in _DTYPES.items() if tag != "BF16"}


def _fail(path: Path, message: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: not a valid safetensors file: {message}")


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a safetensors file; return ``(tensors, metadata)``.

    ``tensors`` maps names to fresh numpy arrays (BF16 widened to float32);
    ``metadata`` is the file's ``__metadata__`` string map (empty if absent).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, buffer_start = _read_header(path, f, size)
            metadata = _metadata(path, header.pop("__metadata__", {}))
            entries = _entries(path, header, size - buffer_start)
            tensors = {}
            for name, (tag, shape, begin, end) in entries.items():
                f.seek(buffer_start + begin)
                raw = f.read(end - begin)
                if len(raw) != end - begin:
                    raise _fail(path, f"tensor {name!r}: file ends inside its data")
                tensors[name] = _decode(raw, tag, shape)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read ({exc})") from None
    return tensors, metadata


def _read_header(path: Path, f: Any, size: int) -> tuple[dict[str, Any], int]:
    prefix = f.read(8)
    if len(prefix) != 8:
        raise _fail(path, f"{size} bytes is too short for the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + length > size:
        raise _fail(path, f"header length {length} runs past the end of the {size}-byte file")
    try:
        header = json.loads(f.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    return header, 8 + length


def _metadata(path: Path, metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings")
    return dict(metadata)


def _entries(
    path: Path, header: Mapping[str, Any], buffer_size: int
) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    entries = {}
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"{where}: expected keys dtype, shape, data_offsets")
        tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if tag not in _DTYPES:
            raise _fail(
                path, f"{where}: unsupported dtype {tag!r} (supported: {', '.join(_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _fail(path, f"{where}: shape must be a list of non-negative integers")
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        ):
            raise _fail(path, f"{where}: data_offsets must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_size:
            raise _fail(
                path,
                f"{where}: data_offsets [{begin}, {end}] outside the "
                f"{buffer_size}-byte data buffer",
            )
        expected = math.prod(shape) * _DTYPES[tag].itemsize
        if end - begin != expected:
            raise _fail(
                path,
                f"{where}: {end - begin} bytes of data for shape {tuple(shape)} "
                f"{tag} (expected {expected})",
            )
        entries[name] = (tag, tuple(shape), begin, end)
    spans = sorted(
        (begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin
    )
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise _fail(path, f"tensors {name_a!r} and {name_b!r} overlap")
    return entries


def _decode(raw: bytes, tag: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.frombuffer(raw, dtype=_DTYPES[tag]).reshape(shape)
    if tag == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="))  # a writable, native-order copy


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (numpy arrays, any supported dtype but BF16) atomically; return the path.

    The file is written to a temporary name, flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, value in tensors.items():
        array = np.asarray(value)
        stored = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        tag = _TAGS.get(np.dtype(stored))
        if tag is None:
            raise ModelFormatError(
                f"{path}: tensor {name!r}: dtype {array.dtype} cannot be written as safetensors"
            )
        blob = np.ascontiguousarray(array, dtype=stored).tobytes()
        header[name] = {
            "dtype": tag,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the data buffer 8-byte aligned
    atomic_write(path, [struct.pack("<Q", len(text)), text, *blobs])
    return path
