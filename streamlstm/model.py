"""The network as plain, validated arrays.

A :class:`Model` is immutable: recurrent layers, an optional dense head, input and
output normalisation, and metadata. It knows nothing about files or kernels; the
``formats`` package builds models from weight files, and :mod:`streamlstm.stream`
packs them for the compiled kernels.

Canonical conventions (PyTorch's, whatever framework trained the weights):

* LSTM gates are ordered ``i, f, g, o``; ``w_ih`` is ``(4H, D)``, ``w_hh`` is
  ``(4H, P)`` where ``P`` is ``proj_size`` (or ``H`` without projection) and
  ``w_hr`` is ``(P, H)``. ``h = w_hr @ (o * tanh(c))``.
* GRU gates are ordered ``r, z, n``; ``h' = (1 - z) * n + z * h``. With
  ``reset_after=True`` (PyTorch, Keras default, ONNX ``linear_before_reset=1``)
  ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; with ``reset_after=False``
  (Keras ``reset_after=False``, ONNX ``linear_before_reset=0``)
  ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
* A plain (Elman) RNN layer (``kind="rnn"``) has one gate:
  ``h' = activation(W_ih x + b_ih + W_hh h + b_hh)`` with ``activation`` tanh or relu.
* A bidirectional layer holds its backward direction in ``backward`` (a layer of the same
  kind and sizes, read from the window's end); its output at step ``t`` is the forward
  output then the backward one, concatenated, as PyTorch, Keras (``merge_mode="concat"``)
  and ONNX order them. RNN and bidirectional layers run only on windows
  (:mod:`streamlstm.windows`), never as a stream.
* Missing biases are stored as zeros, so every layer has the same arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .errors import ShapeError
from .window_spec import METADATA_KEY as WINDOW_KEY
from .window_spec import WindowSpec

CellKind = Literal["lstm", "gru", "rnn"]
#: Activations a recurrent layer or dense layer may use. ``hard_sigmoid`` is Keras 3's:
#: ``relu6(x + 3) / 6``.
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
#: Activations of a plain RNN layer (``nn.RNN``'s ``nonlinearity``).
RNN_ACTIVATIONS = ("tanh", "relu")
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ShapeError(f"{name}: expected shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ShapeError(f"{name}: {bad} non-finite value(s) (NaN or Inf)")


def _as_array(value: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


@dataclasses.dataclass(frozen=True, eq=False)
class RecurrentLayer:
    """One LSTM or GRU layer in canonical (PyTorch) gate order; see the module docstring."""

    kind: CellKind
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    w_hr: np.ndarray | None = None
    reset_after: bool = True
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    backward: RecurrentLayer | None = None

    def __repr__(self) -> str:
        projection = f", proj={self.direction_size}" if self.w_hr is not None else ""
        bidirectional = ", bidirectional" if self.backward is not None else ""
        return (
            f"RecurrentLayer({self.kind} {self.input_size}->{self.hidden_size}{projection}"
            f"{bidirectional}, {self.w_ih.dtype.name})"
        )

    @property
    def hidden_size(self) -> int:
        return self.w_ih.shape[0] // GATES[self.kind]

    @property
    def input_size(self) -> int:
        return self.w_ih.shape[1]

    @property
    def direction_size(self) -> int:
        """Width of one direction's ``h``: ``proj_size`` for a projected LSTM, else hidden."""
        return self.w_hr.shape[0] if self.w_hr is not None else self.hidden_size

    @property
    def output_size(self) -> int:
        """Width of the layer's output: ``h``, or both directions' ``h`` if bidirectional."""
        return self.direction_size * (2 if self.backward is not None else 1)

    @property
    def state_size(self) -> int:
        """Numbers of state carried per stream: ``h`` (and ``c`` for an LSTM)."""
        return self.output_size + (self.hidden_size if self.kind == "lstm" else 0)

    def validate(self, where: str, input_size: int) -> None:
        if self.kind not in GATES:
            raise ShapeError(
                f"{where}: unknown cell kind {self.kind!r} (expected 'lstm', 'gru' or 'rnn')"
            )
        if self.kind == "rnn":
            self._validate_rnn(where)
        checked = (
            ("recurrent_activation",)
            if self.kind == "rnn"
            else ("activation", "recurrent_activation")
        )
        for name in checked:
            value = getattr(self, name)
            if value not in ("tanh", "sigmoid", "hard_sigmoid"):
                raise ShapeError(
                    f"{where}.{name}: {value!r} is not supported (tanh, sigmoid or hard_sigmoid)"
                )
        if self.w_ih.ndim != 2 or self.w_ih.shape[0] % GATES[self.kind]:
            raise ShapeError(
                f"{where}.w_ih: expected ({GATES[self.kind]}*hidden, {input_size}), "
                f"got {self.w_ih.shape}"
            )
        gates = GATES[self.kind] * self.hidden_size
        if self.kind == "gru" and self.w_hr is not None:
            raise ShapeError(f"{where}: a GRU layer has no projection (w_hr)")
        if self.w_hr is not None:
            if self.w_hr.ndim != 2:
                raise ShapeError(
                    f"{where}.w_hr: expected 2-D (proj, hidden), got {self.w_hr.shape}"
                )
            _check(f"{where}.w_hr", self.w_hr, (self.w_hr.shape[0], self.hidden_size))
        _check(f"{where}.w_ih", self.w_ih, (gates, input_size))
        _check(f"{where}.w_hh", self.w_hh, (gates, self.direction_size))
        _check(f"{where}.b_ih", self.b_ih, (gates,))
        _check(f"{where}.b_hh", self.b_hh, (gates,))
        if self.backward is not None:
            self._validate_backward(where, input_size)

    def _validate_rnn(self, where: str) -> None:
        if self.activation not in RNN_ACTIVATIONS:
            raise ShapeError(
                f"{where}.activation: {self.activation!r} is not supported for a "
                f"plain RNN layer (one of {RNN_ACTIVATIONS})"
            )
        if self.w_hr is not None:
            raise ShapeError(f"{where}: a plain RNN layer has no projection (w_hr)")

    def _validate_backward(self, where: str, input_size: int) -> None:
        back = self.backward
        assert back is not None  # called only for bidirectional layers
        if back.backward is not None:
            raise ShapeError(f"{where}.backward: a direction cannot itself be bidirectional")
        same = (
            "kind",
            "hidden_size",
            "direction_size",
            "reset_after",
            "activation",
            "recurrent_activation",
        )
        differ = [n for n in same if getattr(back, n) != getattr(self, n)]
        if differ:
            raise ShapeError(
                f"{where}.backward: differs from the forward direction in {', '.join(differ)}"
            )
        back.validate(f"{where}.backward", input_size)

    def astype(self, dtype: np.dtype) -> RecurrentLayer:
        cast: dict[str, Any] = {
            f: _as_array(getattr(self, f), dtype) for f in ("w_ih", "w_hh", "b_ih", "b_hh")
        }
        w_hr = None if self.w_hr is None else _as_array(self.w_hr, dtype)
        backward = None if self.backward is None else self.backward.astype(dtype)
        return dataclasses.replace(self, w_hr=w_hr, backward=backward, **cast)


@dataclasses.dataclass(frozen=True, eq=False)
class DenseLayer:
    """``y = activation(weight @ x + bias)`` with ``weight`` of shape ``(out, in)``."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "linear"

    def __repr__(self) -> str:
        rows, columns = self.weight.shape
        return f"DenseLayer({columns}->{rows}, {self.activation}, {self.weight.dtype.name})"

    def validate(self, where: str, input_size: int) -> None:
        if self.activation not in ACTIVATIONS:
            raise ShapeError(f"{where}.activation: {self.activation!r} is not one of {ACTIVATIONS}")
        if self.weight.ndim != 2:
            raise ShapeError(
                f"{where}.weight: expected 2-D (out, {input_size}), got {self.weight.shape}"
            )
        _check(f"{where}.weight", self.weight, (self.weight.shape[0], input_size))
        _check(f"{where}.bias", self.bias, (self.weight.shape[0],))

    def astype(self, dtype: np.dtype) -> DenseLayer:
        return dataclasses.replace(
            self, weight=_as_array(self.weight, dtype), bias=_as_array(self.bias, dtype)
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Normalization:
    """Affine normalisation: ``(x - mean) / std`` on the way in, ``y * std + mean`` out."""

    mean: np.ndarray
    std: np.ndarray

    def validate(self, where: str, size: int) -> None:
        _check(f"{where}.mean", self.mean, (size,))
        _check(f"{where}.std", self.std, (size,))
        if np.any(self.std <= 0):
            raise ShapeError(f"{where}.std: every entry must be > 0")

    def astype(self, dtype: np.dtype) -> Normalization:
        return Normalization(_as_array(self.mean, dtype), _as_array(self.std, dtype))


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """An immutable recurrent network: layers, optional head, normalisation and metadata.

    Build one with :func:`streamlstm.load` or directly; the constructor validates every
    shape and refuses non-finite weights. ``calibration`` is reserved for the anomaly
    detector and travels with the weights; ``metadata`` holds JSON-able provenance.
    """

    layers: tuple[RecurrentLayer, ...]
    head: tuple[DenseLayer, ...] = ()
    input_norm: Normalization | None = None
    output_norm: Normalization | None = None
    name: str = "model"
    sample_rate: float | None = None
    channels: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    calibration: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "head", tuple(self.head))
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.layers:
            raise ShapeError("a model needs at least one recurrent layer")
        dtype = self.layers[0].w_ih.dtype
        if dtype not in SUPPORTED_DTYPES:
            raise ShapeError(f"weights must be float32 or float64, got {dtype}")
        width = self.layers[0].input_size
        for index, layer in enumerate(self.layers):
            layer.validate(f"layers[{index}]", width)
            width = layer.output_size
        for index, dense in enumerate(self.head):
            dense.validate(f"head[{index}]", width)
            width = dense.weight.shape[0]
        if self.input_norm is not None:
            self.input_norm.validate("input_norm", self.input_size)
        if self.output_norm is not None:
            self.output_norm.validate("output_norm", width)
        if self.channels and len(self.channels) != self.input_size:
            raise ShapeError(f"channels: {len(self.channels)} names for {self.input_size} inputs")
        arrays = self._arrays()
        if any(a.dtype != dtype for a in arrays):
            raise ShapeError(f"all weights must share one dtype ({dtype})")
        if self.window is not None:
            self.window.check_model(self.output_size, len(self.layers))
            if self.window.output.endswith("probabilities") and self.output_norm is not None:
                raise ShapeError(
                    "output_norm: a classifier's softmax output is not "
                    "de-normalised; drop output_norm or use window output 'last'"
                )

    def _arrays(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for layer in self.layers:
            for direction in (layer, layer.backward):
                if direction is not None:
                    out += [direction.w_ih, direction.w_hh, direction.b_ih, direction.b_hh]
                    if direction.w_hr is not None:
                        out.append(direction.w_hr)
        for dense in self.head:
            out += [dense.weight, dense.bias]
        for norm in (self.input_norm, self.output_norm):
            if norm is not None:
                out += [norm.mean, norm.std]
        return out

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].w_ih.dtype

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.head[-1].weight.shape[0] if self.head else self.layers[-1].output_size

    @property
    def state_size(self) -> int:
        """Numbers of recurrent state per stream, all layers' ``h`` and ``c`` together."""
        return sum(layer.state_size for layer in self.layers)

    @functools.cached_property
    def window(self) -> WindowSpec | None:
        """The window semantics in ``metadata["window"]`` (None for a streaming model)."""
        return WindowSpec.from_metadata(self.metadata)

    @property
    def streaming_refusal(self) -> str | None:
        """Why this model cannot run as a stream (None if it can): the window API's models."""
        for index, layer in enumerate(self.layers):
            if layer.backward is not None:
                return (
                    f"layers[{index}] is bidirectional: its backward direction reads each "
                    "window from its end, i.e. future samples, so it cannot run one sample "
                    "at a time"
                )
            if layer.kind == "rnn":
                return f"layers[{index}] is a plain RNN, supported for window models only"
        if self.window is not None:
            return (
                f"it is a window model ({self.window.describe()}): each window starts from "
                "the zero state, so carrying the state forever would not compute what it "
                "was trained to compute"
            )
        return None

    def check_streamable(self) -> None:
        """Raise :class:`ShapeError` if this model runs only on windows (see the window API)."""
        reason = self.streaming_refusal
        if reason is not None:
            raise ShapeError(
                f"model {self.name!r} cannot run as a stream: {reason}; run it "
                "with model.windows() (streamlstm.windows, README 'Window models')"
            )

    @property
    def parameter_count(self) -> int:
        return sum(a.size for a in self._arrays())

    def astype(self, dtype: Any) -> Model:
        """The same model with every array cast to ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise ShapeError(f"dtype must be float32 or float64, got {dtype}")
        return dataclasses.replace(
            self,
            layers=tuple(layer.astype(dtype) for layer in self.layers),
            head=tuple(dense.astype(dtype) for dense in self.head),
            input_norm=None if self.input_norm is None else self.input_norm.astype(dtype),
            output_norm=None if self.output_norm is None else self.output_norm.astype(dtype),
        )

    def replace(self, **changes: Any) -> Model:
        """A copy with some fields changed (validated again), e.g. a new ``calibration``."""
        return dataclasses.replace(self, **changes)

    def with_window(self, spec: WindowSpec | None) -> Model:
        """A copy declaring ``spec`` as its window semantics (None: a streaming model again)."""
        metadata = {k: v for k, v in self.metadata.items() if k != WINDOW_KEY}
        if spec is not None:
            metadata[WINDOW_KEY] = spec.to_metadata()
        return self.replace(metadata=metadata)

    @property
    def sha256(self) -> str:
        """Hex sha256 naming the network: architecture, dtype and every weight (computed
        once per model). ``name``, ``sample_rate``, ``channels``, ``metadata`` and
        ``calibration`` do not change it; see :func:`streamlstm.formats.model_sha256`."""
        from .formats.native import model_sha256  # imported lazily: formats imports this module

        return model_sha256(self)

    def stream(self, *, on_invalid: str = "raise"):  # -> Stream (imported lazily: layering)
        """A fresh :class:`~streamlstm.stream.Stream` with zero state."""
        from .stream import Stream

        return Stream(self, on_invalid=on_invalid)

    def bank(self, capacity: int = 1024, *, threads: int | None = None, device: str = "cpu"):
        """A bank of many streams, rows allocated on first sight.

        ``device="cpu"`` (default) gives a :class:`~streamlstm.bank.Bank`; ``"cuda"`` a
        :class:`~streamlstm.cuda.CudaBank` with the state on the GPU (raises
        :class:`~streamlstm.errors.CudaUnavailableError` without one); ``"auto"`` the
        GPU for ``capacity >= streamlstm.cuda.AUTO_MIN_STREAMS`` when one is present.
        """
        from .devices import make_bank  # imported lazily: the banks import this module

        return make_bank(self, capacity, threads=threads, device=device)

    def windows(
        self,
        capacity: int = 1024,
        *,
        spec: WindowSpec | None = None,
        threads: int | None = None,
        device: str = "cpu",
    ):  # -> WindowBank (lazy)
        """A :class:`~streamlstm.windows.WindowBank`: per-sensor windows evaluated as trained.

        ``spec`` overrides the model's :attr:`window` (required if the model has none).
        ``device="cuda"`` evaluates the windows on the GPU (a
        :class:`~streamlstm.cuda.CudaWindowBank`, same API and results; raises
        :class:`~streamlstm.errors.CudaUnavailableError` without one).
        """
        from .devices import make_window_bank  # imported lazily: the banks import this module

        return make_window_bank(self, capacity, spec=spec, threads=threads, device=device)

    def __repr__(self) -> str:
        calibrated = ", calibrated" if self.calibration else ""
        return (
            f"Model({self.name!r}: {self.describe()}, {self.dtype.name}, "
            f"{self.parameter_count:,} parameters{calibrated})"
        )

    def describe(self) -> str:
        """A one-line human summary of the architecture."""
        parts = []
        for layer in self.layers:
            extra = f", proj={layer.direction_size}" if layer.w_hr is not None else ""
            if layer.kind == "gru" and not layer.reset_after:
                extra += ", reset_after=False"
            if layer.kind == "rnn":
                extra += f", {layer.activation}"
            name = ("Bi" if layer.backward is not None else "") + layer.kind.upper()
            parts.append(f"{name}({layer.input_size}->{layer.hidden_size}{extra})")
        parts += [
            f"Dense({d.weight.shape[1]}->{d.weight.shape[0]}, {d.activation})" for d in self.head
        ]
        if self.window is not None:
            parts.append(f"[{self.window.describe()}]")
        return " -> ".join(parts)


def lstm_layer(
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    w_hr: Any = None,
    *,
    dtype: Any = np.float32,
    **options: Any,
) -> RecurrentLayer:
    """Build an LSTM layer from PyTorch-ordered arrays; missing biases become zeros."""
    return _recurrent("lstm", w_ih, w_hh, b_ih, b_hh, w_hr, np.dtype(dtype), options)


def gru_layer(
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    *,
    dtype: Any = np.float32,
    **options: Any,
) -> RecurrentLayer:
    """Build a GRU layer from PyTorch-ordered arrays; missing biases become zeros."""
    return _recurrent("gru", w_ih, w_hh, b_ih, b_hh, None, np.dtype(dtype), options)


def rnn_layer(
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    *,
    activation: str = "tanh",
    dtype: Any = np.float32,
) -> RecurrentLayer:
    """Build a plain RNN layer (``nn.RNN``: tanh or relu); missing biases become zeros."""
    return _recurrent(
        "rnn", w_ih, w_hh, b_ih, b_hh, None, np.dtype(dtype), {"activation": activation}
    )


def _recurrent(
    kind: CellKind,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any,
    b_hh: Any,
    w_hr: Any,
    dtype: np.dtype,
    options: Mapping[str, Any],
) -> RecurrentLayer:
    w_ih = _as_array(w_ih, dtype)
    gates = w_ih.shape[0] if w_ih.ndim == 2 else 0
    zeros = np.zeros(gates, dtype)
    return RecurrentLayer(
        kind=kind,
        w_ih=w_ih,
        w_hh=_as_array(w_hh, dtype),
        b_ih=zeros if b_ih is None else _as_array(b_ih, dtype),
        b_hh=zeros.copy() if b_hh is None else _as_array(b_hh, dtype),
        w_hr=None if w_hr is None else _as_array(w_hr, dtype),
        **options,
    )


def dense_layer(
    weight: Any, bias: Any = None, activation: str = "linear", *, dtype: Any = np.float32
) -> DenseLayer:
    """Build a dense head layer; ``weight`` is ``(out, in)`` as in ``torch.nn.Linear``."""
    weight = _as_array(weight, np.dtype(dtype))
    rows = weight.shape[0] if weight.ndim == 2 else 0
    bias = np.zeros(rows, dtype) if bias is None else _as_array(bias, np.dtype(dtype))
    return DenseLayer(weight, bias, activation)


def random_model(
    input_size: int,
    hidden_sizes: Sequence[int],
    *,
    kind: CellKind = "lstm",
    output_size: int | None = None,
    seed: int = 0,
    dtype: Any = np.float32,
    scale: float = 0.3,
) -> Model:
    """A model with random weights, for tests, benchmarks and trying the API out."""
    rng = np.random.default_rng(seed)
    layers = []
    width = input_size
    for hidden in hidden_sizes:
        gates = GATES[kind] * hidden
        make = lstm_layer if kind == "lstm" else gru_layer
        layers.append(
            make(
                rng.normal(0, scale, (gates, width)),
                rng.normal(0, scale, (gates, hidden)),
                rng.normal(0, scale, gates),
                rng.normal(0, scale, gates),
                dtype=dtype,
            )
        )
        width = hidden
    head: tuple[DenseLayer, ...] = ()
    if output_size is not None:
        head = (
            dense_layer(
                rng.normal(0, scale, (output_size, width)),
                rng.normal(0, scale, output_size),
                dtype=dtype,
            ),
        )
    return Model(layers=tuple(layers), head=head, name="random")
