"""The native weight format: one ``.npz`` of named tensors plus a JSON description.

File layout (a plain, uncompressed NumPy ``.npz`` zip, read with ``allow_pickle=False``):

* one member per tensor, named after where it lives in the model:
  ``layers.{i}.w_ih``, ``layers.{i}.w_hh``, ``layers.{i}.b_ih``, ``layers.{i}.b_hh``,
  ``layers.{i}.w_hr`` (projected LSTM only), the backward direction of a bidirectional
  layer as ``layers.{i}.reverse.w_ih`` etc., ``head.{j}.weight``, ``head.{j}.bias``,
  ``input_norm.mean``, ``input_norm.std``, ``output_norm.mean``, ``output_norm.std``;
  all little-endian, one dtype (float32 or float64), PyTorch gate order;
* ``__meta__``: a uint8 array holding one UTF-8 JSON document with the format name and
  version, the architecture, every tensor's shape and dtype, the gate order, the model's
  name, sample rate, channel names, metadata (provenance, and a window model's
  :class:`~streamlstm.window_spec.WindowSpec` under ``"window"``), calibration block, and
  ``sha256``, the :func:`model_sha256` of the content, verified on load.

Loading is strict: an unknown format version, a missing or unexpected tensor, a wrong
shape or dtype, a non-finite weight, a checksum mismatch, a truncated or corrupt zip and
an oversize member (checked from the zip directory before anything is read) all raise
:class:`~streamlstm.errors.ModelFormatError` with the file, the tensor and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import weakref
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from ..errors import ModelFormatError, ShapeError
from ..model import GATES, DenseLayer, Model, Normalization, RecurrentLayer

FORMAT = "streamlstm-native"
VERSION = 1
META = "__meta__"
GATE_ORDER = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}
#: Tensor name infix of a bidirectional layer's backward direction.
REVERSE = "reverse."

#: Largest tensor member accepted by default (declared uncompressed size): 1 GiB.
MAX_TENSOR_BYTES = 1 << 30
#: Largest JSON description accepted.
MAX_META_BYTES = 16 << 20
#: Most members a native file may hold (a 64-layer model with head holds ~330).
MAX_MEMBERS = 4096


def model_sha256(model: Model) -> str:
    """Hex sha256 identifying ``model``'s network: architecture, dtype and every weight.

    The same for a model and its native file's reload; unchanged by ``name``,
    ``sample_rate``, ``channels``, ``metadata`` and ``calibration``, so it names the
    weights an alert was computed with, whatever they were since relabelled as.
    Computed once per model object (models are immutable).
    """
    digest = _SHA256.get(model)
    if digest is None:
        digest = _SHA256[model] = _content_sha256(_architecture(model), _tensors(model))
    return digest


_SHA256: weakref.WeakKeyDictionary[Model, str] = weakref.WeakKeyDictionary()


def save_native(model: Model, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (``.npz`` is appended if missing) atomically; return the path.

    ``model.calibration`` and ``model.metadata`` must be JSON-able (numpy scalars and
    arrays are converted to numbers and lists). The file is written under a temporary
    name, synced, and renamed over ``path``, so a reader never sees half a file.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        path = path.with_name(path.name + ".npz")
    tensors = _tensors(model)
    architecture = _architecture(model)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": model.dtype.name,
        "architecture": architecture,
        "tensors": {
            name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in tensors.items()
        },
        "name": model.name,
        "sample_rate": model.sample_rate,
        "channels": list(model.channels),
        "metadata": dict(model.metadata),
        "calibration": None if model.calibration is None else dict(model.calibration),
        "sha256": _content_sha256(architecture, tensors),
    }
    try:
        text = json.dumps(meta, default=_json_default, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"{path}: metadata or calibration is not JSON-able ({exc})"
        ) from None
    buffer = io.BytesIO()
    members: dict[str, Any] = {META: np.frombuffer(text, np.uint8), **tensors}
    np.savez(buffer, **members)
    atomic_write(path, [buffer.getvalue()])
    return path


def load_native(path: str | os.PathLike[str], *, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> Model:
    """Read a native ``.npz`` written by :func:`save_native`; every check is strict (module doc)."""
    path = Path(path)
    try:
        meta, arrays = _read(path, max_tensor_bytes)
    except ModelFormatError:
        raise
    except Exception as exc:  # zipfile/zlib/NumPy raise many types on damaged input
        raise ModelFormatError(
            f"{path}: corrupt or truncated native file ({type(exc).__name__}: {exc})"
        ) from None
    return _build(path, meta, arrays)


# -- writing helpers ------------------------------------------------------------------


def _tensors(model: Model) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    little = model.dtype.newbyteorder("<")
    for i, layer in enumerate(model.layers):
        for infix, direction in (("", layer), (REVERSE, layer.backward)):
            for field in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr"):
                value = None if direction is None else getattr(direction, field)
                if value is not None:
                    out[f"layers.{i}.{infix}{field}"] = np.ascontiguousarray(value, little)
    for j, dense in enumerate(model.head):
        out[f"head.{j}.weight"] = np.ascontiguousarray(dense.weight, little)
        out[f"head.{j}.bias"] = np.ascontiguousarray(dense.bias, little)
    for key in ("input_norm", "output_norm"):
        norm = getattr(model, key)
        if norm is not None:
            out[f"{key}.mean"] = np.ascontiguousarray(norm.mean, little)
            out[f"{key}.std"] = np.ascontiguousarray(norm.std, little)
    return out


def _architecture(model: Model) -> dict[str, Any]:
    return {
        "input_size": model.input_size,
        "layers": [
            {
                "kind": layer.kind,
                "hidden_size": layer.hidden_size,
                "proj_size": layer.direction_size if layer.w_hr is not None else 0,
                "reset_after": bool(layer.reset_after),
                "activation": layer.activation,
                "recurrent_activation": layer.recurrent_activation,
                "gate_order": GATE_ORDER[layer.kind],
                # Written only when set, so unidirectional models keep their content hash.
                **({"bidirectional": True} if layer.backward is not None else {}),
            }
            for layer in model.layers
        ],
        "head": [
            {"out_features": int(d.weight.shape[0]), "activation": d.activation} for d in model.head
        ],
        "input_norm": model.input_norm is not None,
        "output_norm": model.output_norm is not None,
    }


def _content_sha256(architecture: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(architecture, sort_keys=True).encode("utf-8"))
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


# -- reading --------------------------------------------------------------------------


def _read(path: Path, max_tensor_bytes: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    with zipfile.ZipFile(path) as archive:
        members = check_npz_members(
            path,
            archive,
            lambda name: MAX_META_BYTES if name == META else max_tensor_bytes,
            max_members=MAX_MEMBERS,
        )
        if META not in members:
            raise ModelFormatError(f"{path}: no {META} entry: not a streamlstm native file")
        bad = archive.testzip()
        if bad is not None:
            raise ModelFormatError(f"{path}: member {bad!r} fails its CRC check (corrupt file)")
        for info in archive.infolist():
            check_npy_header(path, archive, info)
    with np.load(path, allow_pickle=False) as npz:
        meta_bytes = npz[META]
        if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
            raise ModelFormatError(f"{path}: {META} must be a 1-D uint8 array")
        try:
            meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelFormatError(f"{path}: {META} is not UTF-8 JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelFormatError(f"{path}: {META} is not a JSON object")
        _check_version(path, meta)
        # Names are checked before any tensor member is parsed.
        _check_names(path, _expected_shapes(path, meta.get("architecture")), members - {META})
        arrays = {name: npz[name] for name in members if name != META}
    return meta, arrays


def check_npz_members(
    path: Path,
    archive: zipfile.ZipFile,
    limit: Callable[[str], int],
    *,
    max_members: int,
    stored_only: bool = False,
) -> set[str]:
    """Names of an ``.npz`` archive's ``.npy`` members, checked from the zip directory only.

    Refuses more than ``max_members`` members, a member that is not ``.npy``, encrypted,
    compressed other than by deflate (or at all with ``stored_only``), named twice, or
    declaring more uncompressed bytes than ``limit(name)``. Shared by every npz reader
    (weights, daemon snapshots) so that a zip bomb costs nothing before it is refused.
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ModelFormatError(f"{path}: {len(infos)} members (at most {max_members})")
    allowed = (zipfile.ZIP_STORED,) if stored_only else (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    names: set[str] = set()
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ModelFormatError(f"{path}: unexpected member {info.filename!r} (not .npy)")
        name = info.filename[:-4]
        if info.compress_type not in allowed or info.flag_bits & 0x1:
            raise ModelFormatError(
                f"{path}: member {name!r} is encrypted or uses compression "
                f"method {info.compress_type} (only "
                f"{'stored' if stored_only else 'stored or deflated'})"
            )
        if name in names:
            raise ModelFormatError(f"{path}: member {name!r} appears twice")
        names.add(name)
        if info.file_size > limit(name):
            raise ModelFormatError(
                f"{path}: member {name!r} declares {info.file_size} bytes, "
                f"over the {limit(name)}-byte limit"
            )
    return names


def check_npy_header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose ``.npy`` header promises more data than the member holds.

    NumPy allocates the whole array from the header's shape before reading a zip member,
    so a tiny member claiming a huge shape would otherwise exhaust memory.
    """
    name = info.filename[:-4]
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise ModelFormatError(f"{path}: member {name!r}: unsupported .npy version {version}")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(member)
    if dtype.hasobject:
        raise ModelFormatError(
            f"{path}: member {name!r} holds Python objects (dtype {dtype}); "
            "native files hold numbers only and nothing is unpickled"
        )
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise ModelFormatError(
            f"{path}: member {name!r}: header claims shape {shape} "
            f"({claimed} bytes) but the member holds {info.file_size} bytes"
        )


def _check_version(path: Path, meta: Mapping[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise ModelFormatError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if version != VERSION:
        raise ModelFormatError(
            f"{path}: unknown native format version {version!r} "
            f"(this streamlstm reads version {VERSION})"
        )


def _field(path: Path, mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelFormatError(f"{path}: {where}: missing {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ModelFormatError(f"{path}: {where}.{key}: {value!r} has the wrong type")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _expected_shapes(path: Path, arch: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape as the architecture description implies it."""
    width = _field(path, arch, "input_size", int, "architecture")
    if width < 1:
        raise ModelFormatError(f"{path}: architecture.input_size must be >= 1, got {width}")
    layers = _field(path, arch, "layers", list, "architecture")
    head = _field(path, arch, "head", list, "architecture")
    shapes: dict[str, tuple[int, ...]] = {}
    input_size = width
    for i, spec in enumerate(layers):
        where = f"architecture.layers[{i}]"
        kind = _field(path, spec, "kind", str, where)
        if kind not in GATES:
            raise ModelFormatError(f"{path}: {where}.kind: unknown cell kind {kind!r}")
        gate_order = _field(path, spec, "gate_order", str, where)
        if gate_order != GATE_ORDER[kind]:
            raise ModelFormatError(
                f"{path}: {where}.gate_order: {gate_order!r} "
                f"(a {kind} layer here is stored as {GATE_ORDER[kind]!r})"
            )
        hidden = _field(path, spec, "hidden_size", int, where)
        proj = _field(path, spec, "proj_size", int, where)
        if hidden < 1 or not 0 <= proj < hidden:
            raise ModelFormatError(
                f"{path}: {where}: hidden_size {hidden} / proj_size {proj} "
                "(need hidden_size >= 1 and 0 <= proj_size < hidden_size)"
            )
        bidirectional = spec.get("bidirectional", False)
        if bidirectional is not True and bidirectional is not False:
            raise ModelFormatError(
                f"{path}: {where}.bidirectional: {bidirectional!r} has the wrong type"
            )
        gates = GATES[kind] * hidden
        out = proj if proj else hidden
        for infix in ("", REVERSE) if bidirectional else ("",):
            shapes[f"layers.{i}.{infix}w_ih"] = (gates, width)
            shapes[f"layers.{i}.{infix}w_hh"] = (gates, out)
            shapes[f"layers.{i}.{infix}b_ih"] = (gates,)
            shapes[f"layers.{i}.{infix}b_hh"] = (gates,)
            if proj:
                shapes[f"layers.{i}.{infix}w_hr"] = (proj, hidden)
        width = 2 * out if bidirectional else out
    for j, spec in enumerate(head):
        out = _field(path, spec, "out_features", int, f"architecture.head[{j}]")
        if out < 1:
            raise ModelFormatError(f"{path}: architecture.head[{j}].out_features must be >= 1")
        shapes[f"head.{j}.weight"] = (out, width)
        shapes[f"head.{j}.bias"] = (out,)
        width = out
    for key, size in (("input_norm", input_size), ("output_norm", width)):
        if _field(path, arch, key, bool, "architecture"):
            shapes[f"{key}.mean"] = (size,)
            shapes[f"{key}.std"] = (size,)
    return shapes


def _check_names(path: Path, expected: Mapping[str, Any], present: set[str]) -> None:
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    if missing:
        raise ModelFormatError(f"{path}: missing tensor(s): {', '.join(missing)}")
    if extra:
        raise ModelFormatError(f"{path}: unexpected tensor(s): {', '.join(extra)}")


def _check_tensors(
    path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], dtype: np.dtype
) -> None:
    expected = _expected_shapes(path, meta.get("architecture"))
    described = _field(path, meta, "tensors", dict, META)
    _check_names(path, expected, set(arrays))
    if set(described) != set(expected):
        raise ModelFormatError(
            f"{path}: {META}.tensors lists {sorted(set(described) ^ set(expected))} inconsistently"
        )
    for name, shape in expected.items():
        array = arrays[name]
        if array.shape != shape:
            raise ModelFormatError(
                f"{path}: tensor {name}: expected shape {shape}, got {array.shape}"
            )
        info = described[name]
        if (
            not isinstance(info, dict)
            or tuple(info.get("shape", ())) != shape
            or info.get("dtype") != dtype.name
        ):
            raise ModelFormatError(
                f"{path}: {META}.tensors[{name!r}] = {info!r} does not "
                f"match the architecture ({shape}, {dtype.name})"
            )
        if array.dtype != dtype.newbyteorder("<"):
            raise ModelFormatError(
                f"{path}: tensor {name}: expected dtype {dtype.str}, got {array.dtype.str}"
            )
        finite = np.isfinite(array)
        if not finite.all():
            raise ModelFormatError(
                f"{path}: tensor {name}: {int(finite.size - finite.sum())} "
                "non-finite value(s) (NaN or Inf)"
            )


def _build(path: Path, meta: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> Model:
    dtype_name = _field(path, meta, "dtype", str, META)
    if dtype_name not in ("float32", "float64"):
        raise ModelFormatError(f"{path}: dtype {dtype_name!r} (expected float32 or float64)")
    dtype = np.dtype(dtype_name)
    _check_tensors(path, meta, arrays, dtype)
    arch = meta["architecture"]
    digest = _field(path, meta, "sha256", str, META)
    actual = _content_sha256(arch, arrays)
    if actual != digest:
        raise ModelFormatError(
            f"{path}: sha256 mismatch: the file says {digest}, its content "
            f"hashes to {actual} (tampered or damaged)"
        )
    native = {name: np.ascontiguousarray(a, dtype) for name, a in arrays.items()}
    try:
        layers = []
        for i, spec in enumerate(arch["layers"]):
            directions = [
                RecurrentLayer(
                    kind=spec["kind"],
                    w_ih=native[f"layers.{i}.{infix}w_ih"],
                    w_hh=native[f"layers.{i}.{infix}w_hh"],
                    b_ih=native[f"layers.{i}.{infix}b_ih"],
                    b_hh=native[f"layers.{i}.{infix}b_hh"],
                    w_hr=native.get(f"layers.{i}.{infix}w_hr"),
                    reset_after=_field(path, spec, "reset_after", bool, f"layers[{i}]"),
                    activation=_field(path, spec, "activation", str, f"layers[{i}]"),
                    recurrent_activation=_field(
                        path, spec, "recurrent_activation", str, f"layers[{i}]"
                    ),
                )
                for infix in (("", REVERSE) if spec.get("bidirectional") else ("",))
            ]
            layers.append(
                dataclasses.replace(directions[0], backward=directions[1])
                if len(directions) == 2
                else directions[0]
            )
        head = tuple(
            DenseLayer(
                native[f"head.{j}.weight"],
                native[f"head.{j}.bias"],
                _field(path, spec, "activation", str, f"head[{j}]"),
            )
            for j, spec in enumerate(arch["head"])
        )
        norms = {
            key: Normalization(native[f"{key}.mean"], native[f"{key}.std"]) if arch[key] else None
            for key in ("input_norm", "output_norm")
        }
        sample_rate = meta.get("sample_rate")
        if sample_rate is not None and (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, float))
            or not math.isfinite(sample_rate)
        ):
            raise ModelFormatError(f"{path}: sample_rate {sample_rate!r} is not a number")
        channels = meta.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ModelFormatError(f"{path}: channels must be a list of strings")
        metadata = meta.get("metadata", {})
        calibration = meta.get("calibration")
        if not isinstance(metadata, dict) or not isinstance(calibration, (dict, type(None))):
            raise ModelFormatError(f"{path}: metadata and calibration must be JSON objects")
        return Model(
            layers=tuple(layers),
            head=head,
            name=str(meta.get("name", path.stem)),
            sample_rate=None if sample_rate is None else float(sample_rate),
            channels=tuple(channels),
            metadata=metadata,
            calibration=calibration,
            **norms,
        )
    except ShapeError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
