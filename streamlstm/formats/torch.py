"""PyTorch weights in: ``nn.LSTM`` / ``nn.GRU`` state_dicts, with an optional Linear head.

Reads ``.safetensors`` with the built-in reader (torch not needed) and ``.pt``/``.pth``
with ``torch.load(weights_only=True)`` (the ``torch`` extra): nothing is ever unpickled.
A ``.pt`` may hold a bare state_dict or a checkpoint dict with a ``state_dict`` /
``model_state_dict`` / ``model`` entry.

The recurrent module is found by its keys (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``, each with a ``_reverse`` twin
in a bidirectional module) under any prefix (``lstm.``, ``rnn.``, ``module.gru.``...); the
cell kind (``nn.LSTM``: 4 gates, ``nn.GRU``: 3, ``nn.RNN``: 1), layer count, hidden and
projection sizes, direction count and biases are inferred from the shapes. An ``nn.RNN``'s
nonlinearity is not in its state_dict: it needs ``kind="rnn_tanh"`` or ``"rnn_relu"``.
Bidirectional and plain-RNN models run only on windows (:mod:`streamlstm.windows`).
The head is a Linear, or several Linears (an ``nn.Sequential``) under ``fc.``, ``head.``,
``linear.``, ``out.``, ``output.``, ``decoder.`` or ``dense.``, next to the recurrent module.
What the shapes cannot say (the activation between two Linears, which of two candidate
modules is meant, an ``nn.RNN``'s nonlinearity) raises a
:class:`~streamlstm.errors.ModelFormatError` naming the option to pass.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, ShapeError
from ..model import (
    ACTIVATIONS,
    SUPPORTED_DTYPES,
    DenseLayer,
    Model,
    Normalization,
    RecurrentLayer,
    dense_layer,
    gru_layer,
    lstm_layer,
    rnn_layer,
)
from ._model_build import file_sha256
from ._safetensors import read_safetensors

#: Module names searched, in order, for a head next to the recurrent module.
HEAD_NAMES = ("fc", "head", "linear", "out", "output", "decoder", "dense")
#: Most records a ``.pt`` archive may hold (one per tensor storage, plus a few).
MAX_ARCHIVE_RECORDS = 100_000
#: Checkpoint entries that hold the model's state_dict.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")

#: ``kind=`` values: the cell, and for ``nn.RNN`` its nonlinearity.
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")

_RECURRENT_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<what>weight_ih|weight_hh|bias_ih|bias_hh|"
    r"weight_hr)_l(?P<layer>\d+)(?P<reverse>_reverse)?$"
)


def load_torch(
    path: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    kind: str | None = None,
    head_prefix: str | Sequence[str] | None = None,
    head_activation: str | None = None,
    input_mean: Any = None,
    input_std: Any = None,
    output_mean: Any = None,
    output_std: Any = None,
    name: str | None = None,
    sample_rate: float | None = None,
    channels: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    dtype: Any = np.float32,
    strict: bool = True,
) -> Model:
    """Build a :class:`~streamlstm.model.Model` from a PyTorch state_dict file.

    ``prefix``: the recurrent module's key prefix (e.g. ``"encoder.lstm."``), when
    several are present. ``kind``: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``,
    checked against the shapes (required for an ``nn.RNN``, whose nonlinearity is not stored).
    ``head_prefix``: the head's prefix, a sequence of prefixes (Linears applied in order),
    or ``""`` for no head; auto-detected when ``None``. ``head_activation``: the
    activation between head Linears (one of ``linear, relu, tanh, sigmoid,
    hard_sigmoid``), required when a state_dict cannot show it. ``input_mean/std``
    ``(D,)`` and ``output_mean/std`` ``(O,)``: normalisation in sensor units.
    ``dtype``: float32 (default) or float64. ``strict``: refuse keys that are neither
    recurrent nor head weights.
    """
    path = Path(path)
    options_dtype = np.dtype(dtype)
    if options_dtype not in SUPPORTED_DTYPES:
        raise ModelFormatError(f"{path}: dtype must be float32 or float64, got {options_dtype}")
    if kind is not None and kind not in KINDS:
        raise ModelFormatError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    if head_activation is not None and head_activation not in ACTIVATIONS:
        raise ModelFormatError(
            f"{path}: head_activation must be one of {ACTIVATIONS}, got {head_activation!r}"
        )
    if sample_rate is not None and not (
        isinstance(sample_rate, (int, float)) and np.isfinite(sample_rate) and sample_rate > 0
    ):
        raise ModelFormatError(
            f"{path}: sample_rate must be a positive number in Hz, got {sample_rate!r}"
        )
    norms: dict[str, Any] = {
        "input_norm": _norm(path, input_mean, input_std, "input", options_dtype),
        "output_norm": _norm(path, output_mean, output_std, "output", options_dtype),
    }
    tensors, source, file_metadata = read_state_dict(path)
    builder = _Builder(path, tensors, options_dtype)
    rec_prefix = builder.recurrent_prefix(prefix)
    layers = builder.layers(rec_prefix, kind)
    head = builder.head(rec_prefix, head_prefix, head_activation, layers[-1].output_size)
    if strict and builder.unused:
        shown = sorted(builder.unused)
        listed = ", ".join(shown[:20]) + (f" (+{len(shown) - 20} more)" if len(shown) > 20 else "")
        raise ModelFormatError(
            f"{path}: keys that are neither the recurrent module "
            f"({rec_prefix or 'no prefix'}) nor its head: {listed}; pass "
            "head_prefix= if one of them is the head, or strict=False to "
            "ignore them"
        )
    provenance: dict[str, Any] = {
        "source": source,
        "file": path.name,
        "file_sha256": file_sha256(path),
        "prefix": rec_prefix,
        "head_prefixes": builder.head_prefixes,
    }
    if file_metadata:
        provenance["file_metadata"] = file_metadata
    provenance.update(metadata or {})
    try:
        return Model(
            layers=tuple(layers),
            head=tuple(head),
            name=name or path.stem,
            sample_rate=None if sample_rate is None else float(sample_rate),
            channels=tuple(channels),
            metadata=provenance,
            **norms,
        )
    except ShapeError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None


def read_state_dict(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
    """A torch weight file's flat ``{key: array}``, a word for its format, and its metadata.

    The metadata is a safetensors file's ``__metadata__`` (empty for ``.pt``/``.pth``).
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        tensors, metadata = read_safetensors(path)
        return tensors, "pytorch-safetensors", metadata
    return _read_pickle_free(path), "pytorch", {}


def _read_pickle_free(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ModuleNotFoundError:
        raise ModelFormatError(
            f"{path}: reading .pt/.pth needs PyTorch "
            "(pip install 'streamlstm[torch]'), or save the state_dict as "
            ".safetensors, which needs no torch"
        ) from None
    _check_archive(path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; quote only what it found.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it names {found[1]})" if found else ""
        raise ModelFormatError(
            f"{path}: refused: the file holds pickled Python objects besides tensors{what}, "
            "and loading them could run arbitrary code, so only weights_only=True loading is "
            "used. Save model.state_dict() instead of the model (or convert it to "
            ".safetensors)."
        ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/OSError/... on damage
        raise ModelFormatError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ModelFormatError(
            f"{path}: holds a {type(obj).__name__}, expected a state_dict "
            f"(or a checkpoint dict with one of {CHECKPOINT_KEYS})"
        )
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFormatError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a "
                "tensor; expected a state_dict"
            )
        value = value.detach().cpu()
        if not value.is_floating_point():
            tensors[str(key)] = value.numpy()
        else:
            tensors[str(key)] = (
                value.double() if value.dtype == torch.float64 else value.float()
            ).numpy()
    return tensors


def _check_archive(path: Path) -> None:
    """Refuse, from the zip directory alone, a ``.pt`` that could allocate more than its size.

    ``torch.save`` writes a zip whose records are stored, never compressed; torch inflates
    a record whole before checking it, so a deflated record of zeros (a 1 MB file holding a
    1.3 GB tensor) would cost its inflated size in memory before any check of ours ran.
    Stored records fit in the file, so memory stays bounded by the file's size. The legacy
    pre-zip format (torch < 1.6) is refused: its storages are sized by the pickle alone.
    """
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            raise ModelFormatError(
                f"{path}: not a zip-format PyTorch file (truncated, or saved by torch < 1.6 / "
                "with _use_new_zipfile_serialization=False); re-save it with a current torch "
                "or convert it to .safetensors"
            )
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"{path}: not a readable PyTorch file ({exc})") from None
    if len(infos) > MAX_ARCHIVE_RECORDS:
        raise ModelFormatError(
            f"{path}: {len(infos)} archive records (at most {MAX_ARCHIVE_RECORDS})"
        )
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise ModelFormatError(
                f"{path}: record {info.filename!r} is compressed or "
                "encrypted; torch.save never writes that (refused before "
                "anything was inflated)"
            )
    if sum(info.file_size for info in infos) > size:
        raise ModelFormatError(f"{path}: records declare more bytes than the file holds")


def _norm(path: Path, mean: Any, std: Any, which: str, dtype: np.dtype) -> Normalization | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ModelFormatError(f"{path}: {which}_mean and {which}_std go together: pass both")
    try:
        return Normalization(
            np.asarray(mean, dtype).reshape(-1), np.asarray(std, dtype).reshape(-1)
        )
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"{path}: {which}_mean/{which}_std must be numbers ({exc})"
        ) from None


class _Builder:
    """Takes keys out of a state_dict as they are recognised; what is left is unused."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray], dtype: np.dtype) -> None:
        self.path = path
        self.tensors = tensors
        self.dtype = dtype
        self.unused = set(tensors)
        self.head_prefixes: list[str] = []

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {message}")

    def take(self, key: str) -> np.ndarray:
        self.unused.discard(key)
        array = self.tensors[key]
        if array.dtype.kind != "f":
            raise self.fail(f"{key}: expected floating-point weights, got {array.dtype}")
        if not np.all(np.isfinite(array)):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise self.fail(f"{key}: {bad} non-finite value(s) (NaN or Inf)")
        return array.astype(self.dtype)

    # -- recurrent module -------------------------------------------------------------
    def recurrent_prefix(self, prefix: str | None) -> str:
        found = {
            m["prefix"]
            for key in self.tensors
            if (m := _RECURRENT_KEY.match(key)) and m["what"] == "weight_ih"
        }
        if prefix is not None:
            if prefix and not prefix.endswith("."):
                prefix += "."
            if prefix not in found:
                raise self.fail(
                    f"no recurrent weights under prefix={prefix!r} (found: "
                    f"{sorted(found) or 'none'})"
                )
        elif not found:
            raise self.fail(
                "no nn.LSTM/nn.GRU weights found (expected keys like "
                "'lstm.weight_ih_l0'); is this a recurrent model's state_dict?"
            )
        elif len(found) > 1:
            listed = ", ".join(map(repr, sorted(found)))
            raise self.fail(
                f"several recurrent modules found ({listed}); pass prefix= to "
                "choose one (stacked separate modules are not chained automatically)"
            )
        else:
            (prefix,) = found
        return prefix

    def layers(self, prefix: str, kind: str | None) -> list[RecurrentLayer]:
        indices = sorted(
            {
                int(m["layer"])
                for k in self.tensors
                if (m := _RECURRENT_KEY.match(k)) and m["prefix"] == prefix
            }
        )
        if indices != list(range(len(indices))):
            raise self.fail(f"{prefix}: layer indices {indices} are not 0..{len(indices) - 1}")
        layers: list[RecurrentLayer] = []
        width = None
        for k in indices:
            layer = self._direction(prefix, k, "", kind, width)
            if f"{prefix}weight_ih_l{k}_reverse" in self.tensors:
                layer = dataclasses.replace(
                    layer, backward=self._direction(prefix, k, "_reverse", kind, width)
                )
                try:
                    layer.validate(f"{prefix}l{k}", layer.input_size)
                except ShapeError as exc:
                    raise self.fail(str(exc)) from None
            elif layers and layers[-1].backward is not None:
                raise self.fail(
                    f"layer {k} has no {prefix}weight_ih_l{k}_reverse but layer "
                    f"{k - 1} is bidirectional"
                )
            layers.append(layer)
            width = layer.output_size
        return layers

    def _direction(
        self, prefix: str, k: int, suffix: str, kind: str | None, width: int | None
    ) -> RecurrentLayer:
        """Layer ``k``'s forward (``suffix=""``) or backward (``"_reverse"``) direction."""
        keys = {
            what: f"{prefix}{what}_l{k}{suffix}"
            for what in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        }
        for what in ("weight_ih", "weight_hh"):
            if keys[what] not in self.tensors:
                raise self.fail(f"missing {keys[what]}")
        has_bias = [keys[b] in self.tensors for b in ("bias_ih", "bias_hh")]
        if any(has_bias) and not all(has_bias):
            raise self.fail(f"layer {k}: only one of {keys['bias_ih']}, {keys['bias_hh']}")
        w_ih, w_hh = self.take(keys["weight_ih"]), self.take(keys["weight_hh"])
        w_hr = self.take(keys["weight_hr"]) if keys["weight_hr"] in self.tensors else None
        b_ih, b_hh = (
            (self.take(keys["bias_ih"]), self.take(keys["bias_hh"]))
            if all(has_bias)
            else (None, None)
        )
        layer_kind = self._infer_kind(keys, w_ih, w_hh, w_hr, kind)
        if width is not None and w_ih.ndim == 2 and w_ih.shape[1] != width:
            raise self.fail(
                f"{keys['weight_ih']}: expects {w_ih.shape[1]} inputs but "
                f"layer {k - 1} outputs {width}"
            )
        try:
            if layer_kind == "lstm":
                layer = lstm_layer(w_ih, w_hh, b_ih, b_hh, w_hr, dtype=self.dtype)
            elif layer_kind == "gru":
                layer = gru_layer(w_ih, w_hh, b_ih, b_hh, dtype=self.dtype)
            else:
                layer = rnn_layer(
                    w_ih, w_hh, b_ih, b_hh, activation=layer_kind[4:], dtype=self.dtype
                )
            layer.validate(f"{prefix}l{k}{suffix}", w_ih.shape[1])
        except ShapeError as exc:
            raise self.fail(str(exc)) from None
        return layer

    def _infer_kind(
        self,
        keys: Mapping[str, str],
        w_ih: np.ndarray,
        w_hh: np.ndarray,
        w_hr: np.ndarray | None,
        kind: str | None,
    ) -> str:
        for key, array in ((keys["weight_ih"], w_ih), (keys["weight_hh"], w_hh)):
            if array.ndim != 2:
                raise self.fail(f"{key}: expected a 2-D weight, got shape {array.shape}")
        rows = w_ih.shape[0]
        if w_hr is not None:
            if w_hr.ndim != 2:
                raise self.fail(
                    f"{keys['weight_hr']}: expected 2-D (proj, hidden), got {w_hr.shape}"
                )
            hidden = w_hr.shape[1]
            inferred = "lstm" if rows == 4 * hidden else None
        else:
            hidden = w_hh.shape[1]
            inferred = {4 * hidden: "lstm", 3 * hidden: "gru", hidden: "rnn"}.get(rows)
        if inferred is None:
            raise self.fail(
                f"{keys['weight_ih']} has {rows} rows and the hidden size is "
                f"{hidden}: neither an LSTM (4*hidden rows), a GRU (3*hidden) nor a "
                "plain RNN (hidden); this is not an nn.LSTM/nn.GRU/nn.RNN state_dict"
            )
        if inferred == "rnn" and kind is None:
            raise self.fail(
                f"{keys['weight_ih']} {w_ih.shape} with hidden size {hidden} is a "
                "plain nn.RNN, whose nonlinearity is not stored in a state_dict: pass "
                "kind='rnn_tanh' (nn.RNN's default) or kind='rnn_relu'"
            )
        if kind is not None and kind.split("_")[0] != inferred:
            what = {"lstm": "an LSTM", "gru": "a GRU", "rnn": "a plain RNN"}[inferred]
            raise self.fail(
                f"kind={kind!r} was given but {keys['weight_ih']} {w_ih.shape} "
                f"with hidden size {hidden} is {what}"
            )
        if inferred == "rnn":
            assert kind is not None  # refused above without a kind
            return kind
        return inferred

    # -- head -------------------------------------------------------------------------
    def head(
        self,
        rec_prefix: str,
        head_prefix: str | Sequence[str] | None,
        activation: str | None,
        width: int,
    ) -> list[DenseLayer]:
        if head_prefix is None:
            prefixes = self._detect_head(rec_prefix)
        elif isinstance(head_prefix, str):
            prefixes = [head_prefix] if head_prefix else []
        else:
            prefixes = list(head_prefix)
        prefixes = [p if p.endswith(".") else p + "." for p in prefixes]
        linears: list[tuple[str, bool]] = []  # (key prefix, an activation module may follow)
        for p in prefixes:
            found = self._linears_under(p)
            if not found:
                raise self.fail(f"no Linear weights under head_prefix {p!r}")
            linears += found
        self.head_prefixes = prefixes
        needs_activation = [p for p, gap in linears[:-1] if gap]
        if needs_activation and activation is None:
            raise self.fail(
                f"the head has {len(linears)} Linear layers ({', '.join(p for p, _ in linears)})"
                "; the activation between them is not stored in a state_dict: pass "
                "head_activation= (one of 'relu', 'tanh', 'sigmoid', 'hard_sigmoid', "
                "'linear')"
            )
        dense = []
        for index, (p, gap) in enumerate(linears):
            weight = self.take(p + "weight")
            bias = self.take(p + "bias") if p + "bias" in self.tensors else None
            if weight.ndim != 2 or weight.shape[1] != width:
                raise self.fail(
                    f"{p}weight: expected shape (out, {width}) to follow the "
                    f"previous layer, got {weight.shape}"
                )
            if bias is not None and bias.shape != (weight.shape[0],):
                raise self.fail(f"{p}bias: expected shape ({weight.shape[0]},), got {bias.shape}")
            act = (activation or "linear") if gap and index < len(linears) - 1 else "linear"
            dense.append(dense_layer(weight, bias, act, dtype=self.dtype))
            width = weight.shape[0]
        return dense

    def _detect_head(self, rec_prefix: str) -> list[str]:
        parts = rec_prefix.rstrip(".").split(".")
        root = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
        candidates = [
            root + name + "." for name in HEAD_NAMES if self._linears_under(root + name + ".")
        ]
        if len(candidates) > 1:
            raise self.fail(
                f"several possible heads ({', '.join(map(repr, candidates))}); pass "
                "head_prefix= (a prefix, a list of prefixes applied in order, or "
                "'' for none)"
            )
        return candidates

    def _linears_under(self, prefix: str) -> list[tuple[str, bool]]:
        """Linear key prefixes under ``prefix``: itself, or ``prefix{i}.`` (a Sequential)."""
        if prefix + "weight" in self.tensors:
            return [(prefix, True)]  # what forward() applies after it is unknowable
        indices = sorted(
            {
                int(m[1])
                for k in self.tensors
                if (m := re.match(re.escape(prefix) + r"(\d+)\.weight$", k))
            }
        )
        # In an nn.Sequential a parameter-free module (an activation) takes an index, so a
        # gap between two Linears' indices is where an activation sits.
        return [(f"{prefix}{i}.", i + 1 not in indices) for i in indices]
