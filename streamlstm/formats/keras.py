"""Keras 3 weights: ``.keras`` archives and ``.weights.h5`` files, read as data only.

Never ``keras.saving.load_model``: its safe mode has been bypassed by several CVEs, and
we need no Python objects, only arrays. A ``.keras`` file is a zip of ``config.json``
(the architecture), ``model.weights.h5`` and ``metadata.json``; a ``.weights.h5`` is the
weights alone, so its architecture comes from ``config=`` (a ``.keras`` file, a
``config.json`` or the parsed dict).

Keras stores a layer's weights under ``layers/<snake_case class name>[_<n>]`` where
``<n>`` counts earlier layers of the same class (its own ``name`` is not used), with
``cell/vars/0..2`` (kernel, recurrent kernel, bias) for LSTM/GRU and ``vars/0..1`` for
Dense. Kernels are ``(in, gates*H)``, i.e. transposed against PyTorch's; LSTM gates are
``i, f, c, o`` (PyTorch's ``i, f, g, o``), GRU gates ``z, r, h`` (PyTorch ``r, z, n``).
A GRU with ``reset_after=True`` has a ``(2, 3H)`` bias (input row, recurrent row); with
``reset_after=False`` one ``(3H,)`` bias, all of it on the input side.

Window models (:mod:`streamlstm.windows`) too, given ``window=N`` (and ``hop=K``):
``SimpleRNN`` (``cell/vars/0..2``, tanh or relu), ``Bidirectional`` LSTM/GRU/SimpleRNN
with ``merge_mode="concat"`` (``forward_layer/cell/vars`` and ``backward_layer/cell/vars``),
``TimeDistributed(Dense)``, and a final ``Dense`` with ``softmax`` / ``log_softmax``
(window output ``probabilities`` / ``log_probabilities``). The window output is ``last``
when the last recurrent layer has ``return_sequences=False``, else ``every``. A
``Bidirectional`` last layer with ``return_sequences=False`` returns its final state
(the backward direction's output at the window's first step; window ``final_state``).
The LSTM autoencoder ``LSTM(return_sequences=False) -> RepeatVector(W) -> LSTM(...,
return_sequences=True) -> TimeDistributed(Dense)`` feeds its encoder's final state to
every decoder step (window ``encoder_layers``); ``RepeatVector``'s ``n`` must be the
window length.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, StreamLSTMError
from ..model import (
    DenseLayer,
    Model,
    RecurrentLayer,
    dense_layer,
    gru_layer,
    lstm_layer,
    rnn_layer,
)
from ..window_spec import MAX_LENGTH, WindowSpec
from ._model_build import checked_model

#: Refuse archive members bigger than these (zip bombs) and models bigger than these.
MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 2 << 30
MAX_ARCHIVE_MEMBERS = 10_000
MAX_LAYERS = 64
MAX_UNITS = 16_384

RECURRENT_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid")
RNN_ACTIVATIONS = ("tanh", "relu")
RECURRENT_LAYERS = ("LSTM", "GRU", "SimpleRNN", "Bidirectional")
#: A final Dense layer's activation -> the window output mode it makes.
CLASS_OUTPUTS = {"softmax": "probabilities", "log_softmax": "log_probabilities"}
DENSE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid")
#: Why a layer returning one vector per window may not feed another recurrent layer directly.
ONE_VECTOR_REFUSAL = (
    "return_sequences=False on a layer that feeds another recurrent layer: "
    "the next layer would see one vector per sequence (supported only "
    "through RepeatVector, as an autoencoder's encoder)"
)
#: Layers that are the identity at inference time.
IDENTITY_LAYERS = ("InputLayer", "Dropout")
FLOAT_POLICIES = ("float32", "float64")


def load_keras(
    path: str | Path,
    *,
    config: Any = None,
    dtype: Any = np.float32,
    name: str | None = None,
    window: int | None = None,
    hop: int | None = None,
    **model_fields: Any,
) -> Model:
    """Load a Keras 3 ``.keras`` archive or ``.weights.h5`` file as a :class:`Model`.

    ``config``: for ``.weights.h5`` only, the architecture (path to a ``.keras`` file or
    a ``config.json``, or the parsed dict). ``dtype``: float32 (default) or float64.
    ``window``/``hop``: the window a window model (module doc) was trained on, required
    for one. ``model_fields`` (``sample_rate``, ``channels``, ``input_norm``...) go to
    the Model.
    Raises :class:`ModelFormatError` for corrupt files and for anything the engine
    cannot run exactly (with the layer and the reason).
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    weights: bytes | Path
    if path.suffix.lower() == ".keras":
        if config is not None:
            raise ModelFormatError(
                f"{path}: config= is for .weights.h5 files; a .keras "
                "archive carries its own architecture"
            )
        architecture, weights, meta = _read_archive(path)
        source = "keras"
    else:
        if config is None:
            raise ModelFormatError(
                f"{path}: a .weights.h5 file holds no architecture; pass config= (the "
                "model's .keras file or its config.json), or --config on the command line"
            )
        architecture = _config_from(config)
        weights = path
        source = "keras-weights-h5"
    specs = _layer_specs(path, architecture)
    chain = _read_weights(path, weights, specs, np.dtype(dtype))
    model_name = name or str(architecture.get("config", {}).get("name", path.stem))
    metadata: dict[str, Any] = (
        {"keras_version": meta.get("keras_version")} if meta.get("keras_version") else {}
    )
    why = (
        "its head ends in a softmax"
        if chain.output.endswith("probabilities")
        else "it repeats its encoder's final state over the window (RepeatVector)"
        if chain.repeat is not None
        else "it has bidirectional or SimpleRNN layers"
        if any(layer.backward is not None or layer.kind == "rnn" for layer in chain.recurrent)
        else None
    )
    if window is None and why is not None:
        raise ModelFormatError(
            f"{path}: a window model ({why}): pass window=N and hop=K, the "
            "window it was trained on (command line: --window N --hop K)"
        )
    if window is not None:
        if chain.repeat is not None and chain.repeat_steps != window:
            raise _refuse(
                path,
                chain.repeat,
                f"n={chain.repeat_steps} decoder steps for a "
                f"window of {window} samples: the decoder runs over the window, so "
                "n must be the window length",
            )
        try:
            metadata["window"] = WindowSpec(
                window,
                window if hop is None else hop,
                chain.output,
                final_state=chain.final_state,
                encoder_layers=chain.encoder_layers,
            ).to_metadata()
        except StreamLSTMError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
    return checked_model(
        path,
        source,
        metadata=metadata,
        layers=tuple(chain.recurrent),
        head=tuple(chain.head),
        name=model_name,
        **model_fields,
    )


# -- files --------------------------------------------------------------------------------
def _read_archive(path: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise ModelFormatError(f"{path}: {len(members)} archive members; not a Keras model")
            names = {m.filename: m for m in members}
            for needed in ("config.json", "model.weights.h5"):
                if needed not in names:
                    raise ModelFormatError(f"{path}: not a Keras 3 archive (no {needed})")
            raw_config = _read_member(path, archive, names["config.json"], MAX_CONFIG_BYTES)
            config = _parse_json(path, "config.json", raw_config)
            weights = _read_member(path, archive, names["model.weights.h5"], MAX_WEIGHTS_BYTES)
            meta: dict[str, Any] = {}
            if "metadata.json" in names:
                found = _parse_json(
                    path,
                    "metadata.json",
                    _read_member(path, archive, names["metadata.json"], MAX_CONFIG_BYTES),
                )
                meta = found if isinstance(found, dict) else {}
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise ModelFormatError(f"{path}: unreadable .keras archive ({exc})") from exc
    return config, weights, meta


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    # The declared size can lie, so the read itself is bounded too.
    if info.file_size > cap:
        raise ModelFormatError(
            f"{path}: {info.filename} declares {info.file_size} bytes, over the {cap}-byte limit"
        )
    with archive.open(info) as member:
        data = member.read(cap + 1)
    if len(data) > cap:
        raise ModelFormatError(f"{path}: {info.filename} inflates past the {cap}-byte limit")
    return data


def _parse_json(path: Path, what: str, raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: {what} is not valid JSON ({exc})") from exc


def _config_from(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    source = Path(config)
    if source.suffix.lower() == ".keras":
        return _read_archive(source)[0]
    try:
        if source.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelFormatError(f"{source}: config over {MAX_CONFIG_BYTES} bytes")
        raw = source.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{source}: cannot read config ({exc})") from exc
    found = _parse_json(source, source.name, raw)
    if not isinstance(found, dict):
        raise ModelFormatError(f"{source}: config must be a JSON object")
    return found


# -- architecture -------------------------------------------------------------------------
def _snake_case(class_name: str) -> str:
    # Keras' own naming rule for weight groups (keras.src.utils.naming.to_snake_case).
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Spec:
    """One layer of the chain: its class, its config and its weight group in the h5 file."""

    def __init__(self, class_name: str, config: dict[str, Any], group: str, inbound: Any) -> None:
        self.class_name, self.config, self.group = class_name, config, group
        self.inbound = inbound
        self.name = str(config.get("name", group))


def _layer_specs(path: Path, architecture: Any) -> list[_Spec]:
    if not isinstance(architecture, dict):
        raise ModelFormatError(f"{path}: config is not a JSON object")
    kind = architecture.get("class_name")
    body = architecture.get("config")
    if kind not in ("Sequential", "Functional") or not isinstance(body, dict):
        raise ModelFormatError(
            f"{path}: model class {kind!r} is not supported: only Sequential and simple "
            "functional models (a chain of layers) can be read without running Python code"
        )
    entries = body.get("layers")
    if not isinstance(entries, list) or not entries:
        raise ModelFormatError(f"{path}: config holds no layers")
    if len(entries) > MAX_LAYERS:
        raise ModelFormatError(f"{path}: {len(entries)} layers, over the limit of {MAX_LAYERS}")
    counts: dict[str, int] = {}
    specs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ModelFormatError(f"{path}: malformed layer entry in config")
        class_name = str(entry.get("class_name"))
        group = _snake_case(class_name)
        seen = counts.get(group)
        counts[group] = 0 if seen is None else seen + 1
        if seen is not None:
            group = f"{group}_{seen + 1}"
        specs.append(_Spec(class_name, entry["config"], group, entry.get("inbound_nodes")))
    if kind == "Functional":
        _check_chain(path, body, specs)
    return specs


def _check_chain(path: Path, body: dict[str, Any], specs: list[_Spec]) -> None:
    """A functional model must be one chain from one input to one output, in list order."""

    def single(ref: Any, what: str) -> str:
        if isinstance(ref, list) and len(ref) == 1 and isinstance(ref[0], list):
            ref = ref[0]
        if not (isinstance(ref, list) and len(ref) == 3 and ref[1:] == [0, 0]):
            raise ModelFormatError(f"{path}: functional model must have exactly one {what}")
        return str(ref[0])

    single(body.get("input_layers"), "input")
    output = single(body.get("output_layers"), "output")
    previous = None
    for spec in specs:
        nodes = spec.inbound or []
        if previous is None:
            if spec.class_name != "InputLayer" or nodes:
                raise ModelFormatError(f"{path}: functional model must start with its Input")
        else:
            args = nodes[0].get("args") if len(nodes) == 1 and isinstance(nodes[0], dict) else None
            history = None
            if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict):
                history = args[0].get("config", {}).get("keras_history")
            if history != [previous, 0, 0]:
                raise ModelFormatError(
                    f"{path}: layer {spec.name!r} is not fed by the layer before it only; "
                    "branching, merging or shared layers are not supported"
                )
            if nodes[0].get("kwargs", {}).get("mask") is not None:
                raise ModelFormatError(f"{path}: layer {spec.name!r} uses a mask (not supported)")
        previous = spec.name
    if previous != output:
        raise ModelFormatError(f"{path}: the model's output is not its last layer")


def _refuse(path: Path, spec: _Spec, reason: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: layer {spec.name!r} ({spec.class_name}): {reason}")


def _check_dtype_policy(path: Path, spec: _Spec) -> None:
    policy = spec.config.get("dtype")
    if isinstance(policy, dict):
        policy = policy.get("config", {}).get("name")
    if policy is not None and policy not in FLOAT_POLICIES:
        raise _refuse(
            path,
            spec,
            f"dtype policy {policy!r} computes in another precision than "
            "the engine (float32/float64), so results would differ",
        )


def _activation(path: Path, spec: _Spec, key: str, allowed: tuple[str, ...]) -> str:
    value = spec.config.get(key, "linear" if key == "activation" else "sigmoid")
    if value is None:
        value = "linear"
    if not isinstance(value, str) or value not in allowed:
        raise _refuse(path, spec, f"{key}={value!r} is not supported (one of {allowed})")
    return value


def _check_recurrent_flags(path: Path, spec: _Spec, one_vector: bool) -> None:
    """Refuse flags the engine cannot run; ``one_vector``: the layer may return one vector
    per window (it is the last recurrent layer, or an encoder feeding RepeatVector)."""
    config = spec.config
    if config.get("go_backwards"):
        raise _refuse(
            path,
            spec,
            "go_backwards=True reads the sequence end first; a live "
            "stream has no end to start from",
        )
    if config.get("return_state"):
        raise _refuse(
            path,
            spec,
            "return_state=True makes the layer return its state as "
            "extra outputs; only return_sequences outputs can be streamed",
        )
    if not config.get("return_sequences", False) and not one_vector:
        raise _refuse(path, spec, ONE_VECTOR_REFUSAL)
    units = config.get("units")
    if not isinstance(units, int) or not 0 < units <= MAX_UNITS:
        raise _refuse(path, spec, f"units={units!r} out of range 1..{MAX_UNITS}")


# -- weights ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Chain:
    """What a layer chain computes: its layers and head, and how a window reads it."""

    recurrent: list[RecurrentLayer] = dataclasses.field(default_factory=list)
    head: list[DenseLayer] = dataclasses.field(default_factory=list)
    output: str = "last"
    final_state: bool = False
    encoder_layers: int = 0
    repeat: _Spec | None = None  # the RepeatVector layer, if any
    repeat_steps: int = 0  # its n


def _read_weights(path: Path, weights: bytes | Path, specs: list[_Spec], dtype: np.dtype) -> _Chain:
    import h5py  # optional dependency: only this format needs it

    source: Any = io.BytesIO(weights) if isinstance(weights, bytes) else weights
    try:
        with h5py.File(source, "r") as f:
            if "model_config" in f.attrs or "model_weights" in f:
                raise ModelFormatError(
                    f"{path}: a legacy Keras 2 HDF5 file; re-save the model "
                    "with Keras 3 (model.save('model.keras'))"
                )
            return _layers_from(path, f, specs, dtype)
    except ModelFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path}: unreadable weights ({exc})") from exc


def _node(path: Path, f: Any, where: str) -> Any:
    """The object at ``where``, following hard links only (None if absent).

    HDF5 can point outside the file: an external link names another file, an external
    dataset reads its bytes from other files (``/etc/passwd``, ``/dev/zero``), a virtual
    dataset maps other files' datasets. A weight file has no business doing any of that:
    each is refused, naming the object, before anything is read.
    """
    import h5py

    node = f
    walked = ""
    for part in where.strip("/").split("/"):
        walked = f"{walked}/{part}" if walked else part
        if not hasattr(node, "get"):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise ModelFormatError(
                f"{path}: {walked} is {kind}; weight files must hold their "
                "data themselves (links are not followed)"
            )
        node = node[part]
    if isinstance(node, h5py.Dataset):
        if node.external:
            raise ModelFormatError(
                f"{path}: dataset {where} keeps its data in external files "
                f"({node.external[0][0]!r}...); refused, nothing was read"
            )
        if node.is_virtual:
            raise ModelFormatError(
                f"{path}: dataset {where} is a virtual dataset mapping "
                "other files; refused, nothing was read"
            )
    return node


def _tensor(path: Path, f: Any, where: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    dataset = _node(path, f, where)
    if dataset is None or not hasattr(dataset, "shape"):
        raise ModelFormatError(f"{path}: missing tensor {where} (expected shape {shape})")
    if tuple(dataset.shape) != shape:  # checked before reading: a huge dataset is never loaded
        raise ModelFormatError(
            f"{path}: tensor {where} has shape {tuple(dataset.shape)}, expected {shape}"
        )
    if dataset.dtype.kind != "f":
        raise ModelFormatError(f"{path}: tensor {where} has dtype {dataset.dtype}, expected float")
    return np.asarray(dataset[()], dtype=dtype)


def _vars(path: Path, f: Any, group: str, expected: int) -> None:
    node = _node(path, f, group)
    found = sorted(node.keys()) if node is not None and hasattr(node, "keys") else []
    if len(found) != expected:
        raise ModelFormatError(
            f"{path}: {group} holds {len(found)} tensor(s), expected "
            f"{expected} (weights do not match the architecture)"
        )


def _inner(path: Path, spec: _Spec) -> _Spec:
    """The layer a Bidirectional or TimeDistributed wraps, as a spec of its own."""
    layer = spec.config.get("layer")
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        raise _refuse(path, spec, "malformed 'layer' in its config")
    return _Spec(str(layer.get("class_name")), layer["config"], spec.group, None)


def _returns_sequences(path: Path, spec: _Spec) -> bool:
    config = _inner(path, spec).config if spec.class_name == "Bidirectional" else spec.config
    return bool(config.get("return_sequences", False))


def _layers_from(path: Path, f: Any, specs: list[_Spec], dtype: np.dtype) -> _Chain:
    """The recurrent layers, the head and how a window reads the chain."""
    chain = _Chain()
    recurrent, head = chain.recurrent, chain.head
    working = [s for s in specs if s.class_name not in IDENTITY_LAYERS]
    last_recurrent = max(
        (i for i, s in enumerate(working) if s.class_name in RECURRENT_LAYERS), default=-1
    )
    if last_recurrent < 0:
        raise ModelFormatError(
            f"{path}: no recurrent layer (LSTM, GRU, SimpleRNN or Bidirectional) in the model"
        )
    output = "last" if not _returns_sequences(path, working[last_recurrent]) else "every"
    width: int | None = None
    for spec in specs:
        if spec.class_name == "InputLayer":
            shape = spec.config.get("batch_shape") or spec.config.get("batch_input_shape")
            if isinstance(shape, list) and shape and isinstance(shape[-1], int):
                width = shape[-1]
            continue
        if spec.class_name in IDENTITY_LAYERS:
            continue
        _check_dtype_policy(path, spec)
        index = working.index(spec)
        if spec.class_name in RECURRENT_LAYERS:
            if head:
                raise _refuse(
                    path,
                    spec,
                    "a recurrent layer after a Dense layer; the engine "
                    "runs the recurrent layers first, then the dense head",
                )
            last = index == last_recurrent
            encoder = _feeds_repeat_vector(working, index)
            if spec.class_name == "Bidirectional":
                layer = _bidirectional_layer(path, f, spec, width, dtype, last or encoder)
                chain.final_state = last and not _returns_sequences(path, spec)
            else:
                _check_recurrent_flags(path, spec, last or encoder)
                layer = _recurrent_layer(path, f, spec, f"layers/{spec.group}", width, dtype)
            recurrent.append(layer)
            width = layer.output_size
        elif spec.class_name == "RepeatVector":
            _repeat_vector(path, spec, working, index, chain)
        elif spec.class_name in ("Dense", "TimeDistributed"):
            if not recurrent:
                raise _refuse(
                    path, spec, "a Dense layer before the first recurrent layer is not supported"
                )
            dense_spec, base = spec, f"layers/{spec.group}/vars"
            if spec.class_name == "TimeDistributed":
                dense_spec, base = _inner(path, spec), f"layers/{spec.group}/layer/vars"
                if dense_spec.class_name != "Dense":
                    raise _refuse(
                        path,
                        spec,
                        f"TimeDistributed({dense_spec.class_name}) is not "
                        "supported (TimeDistributed(Dense) is)",
                    )
            activation = dense_spec.config.get("activation")
            if activation in CLASS_OUTPUTS:
                if index != len(working) - 1 or output == "every":
                    raise _refuse(
                        path,
                        spec,
                        f"activation={activation!r} is supported only on "
                        "the final layer of a head that reads the last step "
                        "(return_sequences=False)",
                    )
                output = CLASS_OUTPUTS[activation]
                dense_spec = _Spec(
                    dense_spec.class_name,
                    {**dense_spec.config, "activation": "linear"},
                    dense_spec.group,
                    None,
                )
            dense = _dense_layer(path, f, dense_spec, base, width, dtype)
            head.append(dense)
            width = dense.weight.shape[0]
        else:
            raise _refuse(
                path,
                spec,
                "layer type not supported (LSTM, GRU, SimpleRNN, "
                "Bidirectional, Dense, TimeDistributed(Dense), RepeatVector, Dropout "
                "and InputLayer are)",
            )
    chain.output = output
    return chain


def _feeds_repeat_vector(working: list[_Spec], index: int) -> bool:
    """Whether a RepeatVector comes after layer ``index`` before the next recurrent layer."""
    for spec in working[index + 1 :]:
        if spec.class_name == "RepeatVector":
            return True
        if spec.class_name in RECURRENT_LAYERS:
            return False
    return False


def _repeat_vector(
    path: Path, spec: _Spec, working: list[_Spec], index: int, chain: _Chain
) -> None:
    """Check a RepeatVector between an encoder and a decoder; note it in ``chain``."""
    previous = working[index - 1] if index > 0 else None
    following = working[index + 1] if index + 1 < len(working) else None
    if chain.head:
        raise _refuse(
            path,
            spec,
            "a Dense layer between the encoder and RepeatVector is not "
            "supported: the engine runs dense layers only after all recurrent layers",
        )
    if (
        previous is None
        or previous.class_name not in RECURRENT_LAYERS
        or _returns_sequences(path, previous)
    ):
        raise _refuse(
            path,
            spec,
            "supported only right after a recurrent layer with "
            "return_sequences=False (the encoder of an LSTM autoencoder)",
        )
    if chain.repeat is not None:
        raise _refuse(
            path,
            spec,
            f"a second RepeatVector (after {chain.repeat.name!r}) is not "
            "supported; one encoder feeds one decoder",
        )
    if following is None or following.class_name not in RECURRENT_LAYERS:
        raise _refuse(
            path,
            spec,
            "supported only when a recurrent decoder layer follows it "
            "(LSTM, GRU, SimpleRNN or Bidirectional)",
        )
    steps = spec.config.get("n")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= MAX_LENGTH:
        raise _refuse(path, spec, f"n={steps!r} out of range 1..{MAX_LENGTH}")
    chain.repeat, chain.repeat_steps = spec, steps
    chain.encoder_layers = len(chain.recurrent)


def _bidirectional_layer(
    path: Path, f: Any, spec: _Spec, width: int | None, dtype: np.dtype, one_vector: bool
) -> RecurrentLayer:
    """Both directions of a Bidirectional layer (forward, then backward, concatenated);
    ``one_vector``: it may return its final state (``return_sequences=False``)."""
    merge = spec.config.get("merge_mode", "concat")
    if merge != "concat":
        raise _refuse(path, spec, f"merge_mode={merge!r} is not supported (concat is)")
    forward = _inner(path, spec)
    if forward.class_name not in ("LSTM", "GRU", "SimpleRNN"):
        raise _refuse(
            path,
            spec,
            f"a bidirectional {forward.class_name} is not supported (LSTM, GRU or SimpleRNN)",
        )
    if not forward.config.get("return_sequences", False) and not one_vector:
        raise _refuse(path, spec, ONE_VECTOR_REFUSAL)
    backward_config = spec.config.get("backward_layer")
    backward = forward
    if isinstance(backward_config, dict) and isinstance(backward_config.get("config"), dict):
        backward = _Spec(
            str(backward_config.get("class_name")), backward_config["config"], spec.group, None
        )
        if backward.class_name != forward.class_name or not backward.config.get("go_backwards"):
            raise _refuse(
                path,
                spec,
                "a backward_layer that is not the forward layer's kind "
                "run with go_backwards=True is not supported",
            )
        backward = _Spec(
            backward.class_name, {**backward.config, "go_backwards": False}, spec.group, None
        )
    for direction in (forward, backward):
        _check_recurrent_flags(path, direction, True)
    base = f"layers/{spec.group}"
    layer = _recurrent_layer(path, f, forward, f"{base}/forward_layer", width, dtype)
    back = _recurrent_layer(path, f, backward, f"{base}/backward_layer", width, dtype)
    return dataclasses.replace(layer, backward=back)


def _input_width(path: Path, f: Any, spec: _Spec, where: str, width: int | None) -> int:
    if width is not None:
        return width
    dataset = _node(path, f, where)
    if dataset is None or len(getattr(dataset, "shape", ())) != 2:
        raise ModelFormatError(f"{path}: missing tensor {where}")
    return int(dataset.shape[0])


def _recurrent_layer(
    path: Path, f: Any, spec: _Spec, group: str, width: int | None, dtype: np.dtype
) -> RecurrentLayer:
    """An LSTM, GRU or SimpleRNN whose ``cell/vars`` are under ``group``."""
    config = spec.config
    hidden = int(config["units"])
    lstm = spec.class_name == "LSTM"
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[spec.class_name] * hidden
    base = f"{group}/cell/vars"
    use_bias = bool(config.get("use_bias", True))
    reset_after = bool(config.get("reset_after", True)) if not lstm else True
    _vars(path, f, base, 3 if use_bias else 2)
    width = _input_width(path, f, spec, f"{base}/0", width)
    kernel = _tensor(path, f, f"{base}/0", (width, gates), dtype).T
    recurrent_kernel = _tensor(path, f, f"{base}/1", (hidden, gates), dtype).T
    if spec.class_name == "SimpleRNN":
        bias = _tensor(path, f, f"{base}/2", (gates,), dtype) if use_bias else None
        return rnn_layer(
            kernel,
            recurrent_kernel,
            bias,
            None,
            dtype=dtype,
            activation=_activation(path, spec, "activation", RNN_ACTIVATIONS),
        )
    options = {
        "activation": _activation(path, spec, "activation", RECURRENT_ACTIVATIONS),
        "recurrent_activation": _activation(
            path, spec, "recurrent_activation", RECURRENT_ACTIVATIONS
        ),
    }
    if lstm:  # Keras i, f, c, o is PyTorch's i, f, g, o: only the transpose differs
        bias = _tensor(path, f, f"{base}/2", (gates,), dtype) if use_bias else None
        return lstm_layer(kernel, recurrent_kernel, bias, None, dtype=dtype, **options)
    b_ih = b_hh = None
    if use_bias:
        if reset_after:
            both = _tensor(path, f, f"{base}/2", (2, gates), dtype)
            b_ih, b_hh = both[0], both[1]
        else:
            b_ih = _tensor(path, f, f"{base}/2", (gates,), dtype)
    order = np.r_[hidden : 2 * hidden, 0:hidden, 2 * hidden : gates]  # z, r, h -> r, z, n
    return gru_layer(
        kernel[order],
        recurrent_kernel[order],
        None if b_ih is None else b_ih[order],
        None if b_hh is None else b_hh[order],
        dtype=dtype,
        reset_after=reset_after,
        **options,
    )


def _dense_layer(
    path: Path, f: Any, spec: _Spec, base: str, width: int | None, dtype: np.dtype
) -> DenseLayer:
    config = spec.config
    for key in ("quantization_config", "lora_rank"):
        if config.get(key):
            raise _refuse(path, spec, f"{key} is set; quantised or LoRA weights are not supported")
    units = config.get("units")
    if not isinstance(units, int) or not 0 < units <= MAX_UNITS:
        raise _refuse(path, spec, f"units={units!r} out of range 1..{MAX_UNITS}")
    use_bias = bool(config.get("use_bias", True))
    _vars(path, f, base, 2 if use_bias else 1)
    width = _input_width(path, f, spec, f"{base}/0", width)
    kernel = _tensor(path, f, f"{base}/0", (width, units), dtype)
    bias = _tensor(path, f, f"{base}/1", (units,), dtype) if use_bias else None
    return dense_layer(
        kernel.T, bias, _activation(path, spec, "activation", DENSE_ACTIVATIONS), dtype=dtype
    )
