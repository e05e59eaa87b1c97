"""ONNX graphs holding LSTM/GRU nodes, read with the ``onnx`` package (no code runs).

What is accepted, as ``torch.onnx.export`` emits it (both exporters) or as built by hand:

* one graph input and one output; a chain of forward ``LSTM``/``GRU`` nodes, one per
  layer, ``layout`` 0 or 1, default activations (or Keras 3's ``HardSigmoid`` with
  alpha 1/6, beta 0.5), ``linear_before_reset`` 0 or 1, no ``clip``, no peepholes, no
  ``sequence_lens``; weights from initializers or ``Constant`` nodes;
* between them only layout plumbing (``Transpose``, ``Squeeze``, ``Unsqueeze``,
  ``Reshape``, ``Identity``), plus whatever side nodes compute shapes or zero initial
  states;
* a head of ``Gemm`` or ``MatMul`` (+ ``Add``) layers, each optionally followed by
  ``Relu``/``Tanh``/``Sigmoid``/``HardSigmoid`` (alpha 1/6, beta 0.5).

Window models (:mod:`streamlstm.windows`) too: ``bidirectional`` LSTM/GRU nodes, ``RNN``
nodes (``Tanh`` or ``Relu``), and a head that reads the last step (a ``Gather`` of index
-1 on the time axis, as ``out[:, -1, :]`` exports) or the top node's final hidden state
``Y_h`` (as ``h_n[-1]`` and, bidirectional, ``cat((h_n[-2], h_n[-1]), 1)`` export) and
may end in ``Softmax`` / ``LogSoftmax``. Such a graph needs ``window=N`` (and ``hop=K``,
default N): the window it is evaluated on.

Plumbing is judged by what it does, not by its shape: after extraction the whole graph is
run once by ``onnx.reference`` (numpy) on a random input and must agree with the engine,
otherwise the file is refused. ONNX gate orders are ``i, o, f, c`` (LSTM) and ``z, r, h``
(GRU); ``B`` is ``[1, 2*gates*H]``: the input biases, then the recurrent ones.
"""

from __future__ import annotations

import dataclasses
import os
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
from ..window_spec import WindowSpec
from ._model_build import checked_model

MAX_FILE_BYTES = 2 << 30
MAX_LAYERS = 64
#: Steps of the random sequence that checks the extracted model against the graph.
CHECK_STEPS = 12
#: Longest fixed sequence length of a graph input that is still checked (onnx.reference
#: runs recurrences in Python).
MAX_CHECK_STEPS = 4096
CHECK_ATOL, CHECK_RTOL = 1e-4, 1e-3

PLUMBING = ("Transpose", "Squeeze", "Unsqueeze", "Reshape", "Identity")
HEAD_ACTIVATIONS = {
    "Relu": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
}
#: ONNX gate block -> canonical (PyTorch) position: LSTM i,o,f,c -> i,f,g,o; GRU z,r,h -> r,z,n.
GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
RECURRENT_OPS = tuple(GATE_ORDER)
#: A head's final normalisation -> the window output mode it makes.
CLASS_OUTPUTS = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}


def load_onnx(
    path: str | Path,
    *,
    dtype: Any = np.float32,
    name: str | None = None,
    window: int | None = None,
    hop: int | None = None,
    **model_fields: Any,
) -> Model:
    """Load an ONNX file holding a chain of recurrent nodes and an optional dense head.

    ``dtype``: float32 (default) or float64. ``window``/``hop``: the window a window model
    (module doc) is evaluated on, required for one; given for a streaming graph, it makes
    a window model of it with every step as output. ``model_fields`` (``sample_rate``,
    ``channels``, normalisation...) go to the :class:`Model`. Anything the engine cannot
    run exactly is refused with :class:`ModelFormatError` naming the node and the reason.
    """
    import onnx  # optional dependency: only this format needs it

    path = Path(path)
    proto = _read(path, onnx)
    graph = _Graph(path, proto, onnx)
    layers, head, output, final_state = graph.extract(np.dtype(dtype))
    model_name = name or proto.graph.name or path.stem
    metadata: dict[str, Any] = {"onnx_producer": proto.producer_name}
    why = (
        "its head reads the final state"
        if final_state
        else "its head reads the last step"
        if output != "every"
        else "it has bidirectional or RNN layers"
        if any(layer.backward is not None or layer.kind == "rnn" for layer in layers)
        else None
    )
    if window is None and why is not None:
        raise ModelFormatError(
            f"{path}: a window model ({why}): pass window=N and hop=K, the "
            "window it was trained on (command line: --window N --hop K)"
        )
    if window is not None:
        if hop is None:
            hop = window
        try:
            spec = WindowSpec(window, hop, output, final_state=final_state)
            metadata["window"] = spec.to_metadata()
        except StreamLSTMError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
    model = checked_model(
        path,
        "onnx",
        layers=tuple(layers),
        head=tuple(head),
        name=model_name,
        metadata=metadata,
        **model_fields,
    )
    layout = _verify(path, proto, graph, model)
    return model.replace(metadata={**model.metadata, "onnx_input_layout": layout})


# -- reading ------------------------------------------------------------------------------
def _read(path: Path, onnx: Any) -> Any:
    from google.protobuf.message import DecodeError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{path}: over {MAX_FILE_BYTES} bytes")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: not a readable ONNX model ({exc})") from exc
    _check_external_data(path, proto, onnx)
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: cannot read external tensor data ({exc})") from exc
    return proto


def _check_external_data(path: Path, proto: Any, onnx: Any) -> None:
    """External tensors must live in files inside the model's own folder."""
    folder = path.parent.resolve()
    for tensor in _all_tensors(proto.graph, onnx):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise ModelFormatError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside "
                "the model's folder; refused (a model file must not read other files)"
            )
        if not target.is_file():
            raise ModelFormatError(
                f"{path}: tensor {tensor.name!r}: external data file {location!r} is missing"
            )


def _all_tensors(graph: Any, onnx: Any) -> Any:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_tensors(sub, onnx)


# -- graph walking ------------------------------------------------------------------------
class _Graph:
    """Constants, producers and the recurrent chain of one ONNX graph."""

    def __init__(self, path: Path, proto: Any, onnx: Any) -> None:
        self.path, self.onnx = path, onnx
        graph = proto.graph
        self.nodes = list(graph.node)
        self.constants: dict[str, np.ndarray] = {}
        for tensor in graph.initializer:
            self.constants[tensor.name] = self._array(tensor, tensor.name)
        self.producer: dict[str, Any] = {}
        for node in self.nodes:
            for output in node.output:
                self.producer[output] = node
            if node.op_type == "Constant":
                value = self._constant_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        inputs = [i.name for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelFormatError(
                f"{path}: expected one graph input and one output, got "
                f"{len(inputs)} and {len(graph.output)}"
            )
        self.input_name, self.output_name = inputs[0], graph.output[0].name

    def _array(self, tensor: Any, where: str) -> np.ndarray:
        try:
            return np.asarray(self.onnx.numpy_helper.to_array(tensor))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ModelFormatError(f"{self.path}: tensor {where!r} is unreadable ({exc})") from exc

    def _constant_value(self, node: Any) -> np.ndarray | None:
        for attribute in node.attribute:
            if attribute.name == "value":
                return self._array(attribute.t, node.output[0])
            if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
                return np.asarray(self.onnx.helper.get_attribute_value(attribute))
        return None

    def fail(self, node: Any, reason: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type}): {reason}"
        )

    def attributes(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def directions(self, node: Any) -> int:
        """2 for a bidirectional recurrent node, else 1."""
        return (
            2
            if self.attributes(node).get("direction") in (b"bidirectional", "bidirectional")
            else 1
        )

    def constant(self, node: Any, index: int, what: str) -> np.ndarray | None:
        """Input ``index`` of ``node`` as a constant array; None when the input is omitted."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            raise self.fail(
                node,
                f"{what} ({name!r}) is computed in the graph; only "
                "initializers or Constant nodes are supported",
            )
        return self.constants[name]

    def trace_back(self, name: str) -> tuple[str, Any]:
        """Follow layout plumbing upstream from tensor ``name``: (tensor, its producer)."""
        for _ in range(len(self.nodes) + 1):
            node = self.producer.get(name)
            if node is None or node.op_type not in PLUMBING:
                return name, node
            name = node.input[0]
        raise ModelFormatError(f"{self.path}: the graph has a cycle")

    # -- extraction -------------------------------------------------------------------
    def extract(self, dtype: np.dtype) -> tuple[list[RecurrentLayer], list[DenseLayer], str, bool]:
        """Recurrent layers, head, the output mode (``every`` step, or the window modes of a
        head that reads the last step, see :data:`streamlstm.window_spec.OUTPUTS`), and
        whether the head reads a bidirectional top layer's final state (``Y_h``)."""
        recurrent = [n for n in self.nodes if n.op_type in RECURRENT_OPS]
        if not recurrent:
            raise ModelFormatError(
                f"{self.path}: no LSTM or GRU node in the graph (nor an RNN node)"
            )
        if len(recurrent) > MAX_LAYERS:
            raise ModelFormatError(
                f"{self.path}: {len(recurrent)} recurrent nodes, over the limit of {MAX_LAYERS}"
            )
        upstream = self.input_name
        layers = []
        for node in recurrent:
            source, producer = self.trace_back(node.input[0])
            if source != upstream:
                where = "the graph input" if upstream == self.input_name else "the previous layer"
                culprit = f"node {producer.name!r} ({producer.op_type})" if producer else source
                raise self.fail(
                    node,
                    f"its input does not come from {where} through layout "
                    f"plumbing only ({culprit} is in the way)",
                )
            layers.append(self.recurrent_layer(node, dtype))
            upstream = node.output[0]
        return (layers, *self.head(upstream, dtype))

    def recurrent_layer(self, node: Any, dtype: np.dtype) -> RecurrentLayer:
        op = node.op_type
        attributes = self.attributes(node)
        direction = attributes.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        if direction not in ("forward", "bidirectional"):
            raise self.fail(
                node,
                f"direction={direction!r}; only forward and bidirectional "
                "layers are supported (a reverse-only layer is not)",
            )
        directions = 2 if direction == "bidirectional" else 1
        if "clip" in attributes:
            raise self.fail(node, "clip is set; cell clipping is not implemented by the engine")
        if attributes.get("input_forget", 0):
            raise self.fail(
                node, "input_forget=1 (coupled input and forget gates) is not supported"
            )
        if attributes.get("layout", 0) not in (0, 1):
            raise self.fail(node, f"layout={attributes['layout']} (0 or 1 expected)")
        activation, recurrent_activation = self.recurrent_activations(node, attributes, directions)
        if len(node.input) > 4 and node.input[4]:
            raise self.fail(node, "sequence_lens is set; a stream has no fixed length")
        for index, what in ((5, "initial_h"), (6, "initial_c"), (7, "P (peepholes)")):
            name = node.input[index] if index < len(node.input) else ""
            if name in self.constants and np.any(self.constants[name]):
                raise self.fail(node, f"{what} is non-zero; streams start from zero state")
        gates = len(GATE_ORDER[op])
        hidden = int(attributes.get("hidden_size", 0))
        w = self.constant(node, 1, "W")
        r = self.constant(node, 2, "R")
        b = self.constant(node, 3, "B")
        if w is None or r is None:
            raise self.fail(node, "W and R are required")
        if w.ndim != 3 or w.shape[0] != directions or w.shape[1] != gates * hidden:
            raise self.fail(
                node,
                f"W has shape {w.shape}, expected ({directions}, "
                f"{gates}*{hidden}, input) for {gates} gates of hidden_size={hidden} "
                f"and direction={direction!r}",
            )
        if r.shape != (directions, gates * hidden, hidden):
            raise self.fail(
                node,
                f"R has shape {r.shape}, expected ({directions}, "
                f"{gates * hidden}, {hidden}) for direction={direction!r}",
            )
        if b is not None and b.shape != (directions, 2 * gates * hidden):
            raise self.fail(
                node,
                f"B has shape {b.shape}, expected ({directions}, "
                f"{2 * gates * hidden}) for direction={direction!r}",
            )
        reset_after = attributes.get("linear_before_reset", 0)
        if reset_after not in (0, 1):
            raise self.fail(node, f"linear_before_reset={reset_after} (0 or 1 expected)")
        order = np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in GATE_ORDER[op]])
        layers = []
        for d in range(directions):
            w_ih, w_hh = w[d][order], r[d][order]
            b_ih = b_hh = None
            if b is not None:
                b_ih, b_hh = b[d, : gates * hidden][order], b[d, gates * hidden :][order]
            if op == "LSTM":
                layers.append(
                    lstm_layer(
                        w_ih,
                        w_hh,
                        b_ih,
                        b_hh,
                        dtype=dtype,
                        activation=activation,
                        recurrent_activation=recurrent_activation,
                    )
                )
            elif op == "GRU":
                layers.append(
                    gru_layer(
                        w_ih,
                        w_hh,
                        b_ih,
                        b_hh,
                        dtype=dtype,
                        reset_after=bool(reset_after),
                        activation=activation,
                        recurrent_activation=recurrent_activation,
                    )
                )
            else:
                layers.append(rnn_layer(w_ih, w_hh, b_ih, b_hh, activation=activation, dtype=dtype))
        if directions == 2:
            return dataclasses.replace(layers[0], backward=layers[1])
        return layers[0]

    def recurrent_activations(
        self, node: Any, attributes: dict[str, Any], directions: int
    ) -> tuple[str, str]:
        """(activation, recurrent_activation) in Keras terms from ONNX's activation list
        (a plain RNN's recurrent_activation is unused: ``"sigmoid"``)."""
        default = DEFAULT_ACTIVATIONS[node.op_type]
        names = [
            a.decode() if isinstance(a, bytes) else str(a)
            for a in attributes.get("activations", default * directions)
        ]
        alphas = list(attributes.get("activation_alpha", []))
        betas = list(attributes.get("activation_beta", []))
        if len(names) != len(default) * directions:
            raise self.fail(
                node,
                f"{len(names)} activations for {directions} direction(s), "
                f"expected {len(default) * directions}",
            )
        if directions == 2:
            half = len(default)
            if (
                names[:half] != names[half:]
                or alphas[:half] != alphas[half:]
                or betas[:half] != betas[half:]
            ):
                raise self.fail(node, "the two directions use different activations")
            names, alphas, betas = names[:half], alphas[:half], betas[:half]
        if node.op_type == "RNN":
            if names[0] not in ("Tanh", "Relu"):
                raise self.fail(node, f"activation {names[0]!r} is not supported (Tanh, Relu)")
            return names[0].lower(), "sigmoid"
        mapped = []
        for index, activation in enumerate(names):
            if activation == "HardSigmoid":
                if len(alphas) != len(names) or len(betas) != len(names):
                    raise self.fail(
                        node,
                        "HardSigmoid needs explicit alpha=1/6, beta=0.5 for "
                        "every activation (ONNX's default alpha=0.2 is not "
                        "Keras 3's hard_sigmoid)",
                    )
                if abs(alphas[index] - 1 / 6) > 1e-7 or abs(betas[index] - 0.5) > 1e-7:
                    raise self.fail(
                        node,
                        f"HardSigmoid alpha={alphas[index]}, "
                        f"beta={betas[index]}; only alpha=1/6, beta=0.5 is supported",
                    )
                mapped.append("hard_sigmoid")
            elif activation in ("Sigmoid", "Tanh"):
                mapped.append(activation.lower())
            else:
                raise self.fail(
                    node, f"activation {activation!r} is not supported (Sigmoid, Tanh, HardSigmoid)"
                )
        if node.op_type == "LSTM" and mapped[1] != mapped[2]:
            raise self.fail(
                node, "different cell and output activations (g != h) are not supported"
            )
        return mapped[1], mapped[0]

    def head(self, recurrent_output: str, dtype: np.dtype) -> tuple[list[DenseLayer], str, bool]:
        """Dense layers between the last recurrent node and the graph output, the output
        mode and whether the head reads a bidirectional final state. The head reads ``Y``
        (``every`` step), its ``last`` step (a ``Gather`` of index -1 right after ``Y``), or
        the top layer's final hidden state ``Y_h`` (torch's ``h_n[-1]``, or
        ``cat((h_n[-2], h_n[-1]), 1)`` for a bidirectional layer); then maybe
        ``probabilities``/``log_probabilities`` (a final softmax)."""
        ops: list[Any] = []
        name = self.output_name
        output, last_step, softmax, final_state = "every", None, None, False
        for _ in range(len(self.nodes) + 1):
            name, node = self.trace_back(name)
            if name == recurrent_output:
                break
            if node is None:
                raise ModelFormatError(
                    f"{self.path}: the graph output does not come from the "
                    "last recurrent node's Y or Y_h output"
                )
            reads = self.final_state_read(name, node)
            if reads is not None:
                final_state = self.check_final_state(node, reads, recurrent_output)
                last_step = node
                break
            if node.op_type in RECURRENT_OPS:
                raise self.fail(
                    node,
                    "the head reads a stacked Y_h; only Y (every step, or its last step "
                    "through a Gather) and the top layer's final hidden state are supported",
                )
            if last_step is not None:
                raise self.fail(
                    last_step,
                    "only layout plumbing may sit between the recurrent "
                    f"output and the last-step Gather (node {node.name!r} "
                    f"({node.op_type}) does)",
                )
            if node.op_type in CLASS_OUTPUTS:
                if ops or output != "every":
                    raise self.fail(node, "a softmax is supported only as the graph's last node")
                if self.attributes(node).get("axis", -1) != -1:
                    raise self.fail(node, "only a softmax over the last axis is supported")
                output, softmax = CLASS_OUTPUTS[node.op_type], node
                name = node.input[0]
                continue
            if node.op_type == "Gather":
                index = self.constant(node, 1, "the Gather index")
                if index is None or index.shape != () or int(index) != -1:
                    raise self.fail(
                        node, "only a Gather of the last step (index -1) is supported in the head"
                    )
                last_step = node
                name = node.input[0]
                continue
            data_inputs = [i for i in node.input if i and i not in self.constants]
            supported = node.op_type in ("MatMul", "Add", "Gemm", *HEAD_ACTIVATIONS)
            if not supported or len(data_inputs) != 1:
                raise self.fail(
                    node,
                    "not supported in the head (Gemm, MatMul, Add and "
                    f"{', '.join(HEAD_ACTIVATIONS)} are)",
                )
            ops.append(node)
            name = data_inputs[0]
        else:
            raise ModelFormatError(f"{self.path}: the graph has a cycle")
        if softmax is not None and last_step is None:
            raise self.fail(
                softmax,
                "a softmax over every step is not supported (only over "
                "the last step's output, after a Gather of index -1)",
            )
        if last_step is not None and output == "every":
            output = "last"
        return self.dense_layers(ops[::-1], dtype), output, final_state

    def final_state_entries(self, name: str) -> list[tuple[Any, int]] | None:
        """The (recurrent node, direction) pairs a stacked final-state tensor holds along
        its first axis: one node's ``Y_h``, or a ``Concat`` over axis 0 of such tensors
        (torch's ``h_n``); None if ``name`` is no such tensor."""
        name, node = self.trace_back(name)
        if node is None:
            return None
        if node.op_type in RECURRENT_OPS:
            if len(node.output) > 2 and name == node.output[2]:
                raise self.fail(
                    node, "the head reads Y_c (the cell state); only Y and Y_h are supported"
                )
            if len(node.output) < 2 or name != node.output[1]:
                return None
            return [(node, d) for d in range(self.directions(node))]
        if node.op_type == "Concat" and self.attributes(node).get("axis") == 0:
            entries: list[tuple[Any, int]] = []
            for part in node.input:
                held = self.final_state_entries(part)
                if held is None:
                    return None
                entries += held
            return entries
        return None

    def final_state_read(self, name: str, node: Any) -> list[tuple[Any, int]] | None:
        """The final states head node ``node`` (producing ``name``) reads, in order: a
        ``Gather`` over axis 0 of a stacked final-state tensor reads one; a ``Concat`` over
        the last axis of such reads reads several; a single-direction ``Y_h`` itself (with
        its first axis squeezed away) reads its one. None: not a final-state read."""
        if node.op_type in RECURRENT_OPS:
            held = self.final_state_entries(name)
            return held if held is not None and len(held) == 1 else None
        if node.op_type == "Gather" and self.attributes(node).get("axis", 0) == 0:
            held = self.final_state_entries(node.input[0])
            if held is None:
                return None
            index = self.constant(node, 1, "the Gather index")
            if index is None or index.shape != () or not -len(held) <= int(index) < len(held):
                raise self.fail(node, "a Gather of final states needs a constant index in range")
            return [held[int(index)]]
        if node.op_type == "Concat" and self.attributes(node).get("axis") in (1, -1):
            reads: list[tuple[Any, int]] = []
            for part in node.input:
                part_name, producer = self.trace_back(part)
                read = None if producer is None else self.final_state_read(part_name, producer)
                if read is None:
                    return None
                reads += read
            return reads
        return None

    def check_final_state(
        self, node: Any, reads: list[tuple[Any, int]], recurrent_output: str
    ) -> bool:
        """Refuse final-state reads the engine cannot give; True when they are a
        bidirectional top layer's (forward, backward) final state, False for a
        unidirectional top layer's (which is its output at the last step)."""
        top = self.producer[recurrent_output]
        wanted = [(top, d) for d in range(self.directions(top))]
        if [(id(n), d) for n, d in reads] != [(id(n), d) for n, d in wanted]:
            read = ", ".join(f"{n.name or n.op_type} direction {d}" for n, d in reads)
            raise self.fail(
                node,
                f"the head reads the final state of {read}; only the top layer's final "
                "state is supported (forward then backward for a bidirectional layer)",
            )
        return len(wanted) == 2

    def dense_layers(self, ops: list[Any], dtype: np.dtype) -> list[DenseLayer]:
        layers: list[list[Any]] = []  # [weight (out, in), bias or None, activation or None]
        for node in ops:
            constants = [self.constants[i] for i in node.input if i in self.constants]
            if node.op_type == "MatMul":
                weight = constants[0]
                if weight.ndim != 2 or node.input[1] not in self.constants:
                    raise self.fail(node, "expected data @ W with a 2-D constant W")
                layers.append([weight.T, None, None])
            elif node.op_type == "Gemm":
                layers.append(self.gemm(node))
            elif node.op_type == "Add":
                if not layers or layers[-1][1] is not None or layers[-1][2] is not None:
                    raise self.fail(node, "an Add that is not the bias of a MatMul")
                bias = constants[0]
                out = layers[-1][0].shape[0]
                if bias.size != out or (bias.ndim > 1 and bias.shape[-1] != out):
                    raise self.fail(node, f"bias of shape {bias.shape} for {out} outputs")
                layers[-1][1] = bias.reshape(out)
            else:
                if not layers or layers[-1][2] is not None:
                    raise self.fail(node, "an activation that does not follow a dense layer")
                attributes = self.attributes(node)
                if node.op_type == "HardSigmoid" and (
                    abs(attributes.get("alpha", 0.2) - 1 / 6) > 1e-7
                    or abs(attributes.get("beta", 0.5) - 0.5) > 1e-7
                ):
                    raise self.fail(
                        node, "only alpha=1/6, beta=0.5 (Keras 3's hard_sigmoid) is supported"
                    )
                layers[-1][2] = HEAD_ACTIVATIONS[node.op_type]
        return [dense_layer(w, b, a or "linear", dtype=dtype) for w, b, a in layers]

    def gemm(self, node: Any) -> list[Any]:
        attributes = self.attributes(node)
        if (
            attributes.get("transA", 0)
            or attributes.get("alpha", 1.0) != 1.0
            or attributes.get("beta", 1.0) != 1.0
        ):
            raise self.fail(node, "only Gemm with transA=0, alpha=1, beta=1 is supported")
        if len(node.input) < 2 or node.input[1] not in self.constants:
            raise self.fail(node, "B must be a constant")
        weight = self.constants[node.input[1]]
        if weight.ndim != 2:
            raise self.fail(node, f"B has shape {weight.shape}, expected 2-D")
        weight = weight if attributes.get("transB", 0) else weight.T
        bias = self.constant(node, 2, "C")
        if bias is not None:
            if bias.size != weight.shape[0]:
                raise self.fail(node, f"C of shape {bias.shape} for {weight.shape[0]} outputs")
            bias = bias.reshape(weight.shape[0])
        return [weight, bias, None]


# -- checking the extraction against the graph ---------------------------------------------
def _verify(path: Path, proto: Any, graph: _Graph, model: Model) -> str:
    """Run the graph with ``onnx.reference`` on a random input and compare with the engine.

    Returns which input layout matched: ``"batch_first"`` (1, T, D), ``"time_first"``
    (T, 1, D) or ``"time_only"`` (T, D).
    """
    from onnx.reference import ReferenceEvaluator

    proto, model = _with_default_activations(proto, model)
    declared = next(i for i in proto.graph.input if i.name == graph.input_name)
    tensor_type = declared.type.tensor_type
    dims = (
        [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape")
        else None
    )  # None: any rank, any size
    try:
        evaluator = ReferenceEvaluator(proto)
    except Exception as exc:  # the reference implementation raises many kinds
        raise ModelFormatError(
            f"{path}: the graph cannot be checked by onnx.reference ({exc})"
        ) from exc
    rng = np.random.default_rng(0)  # fixed: a file is accepted or refused the same each time
    problems = []
    for layout, steps, shape in _candidate_inputs(dims, model.input_size):
        if steps > MAX_CHECK_STEPS:
            problems.append(f"{layout}: input fixed to {steps} steps, too long to check")
            continue
        xs = rng.normal(0.0, 1.0, (steps, model.input_size)).astype(np.float32)
        expected = _engine_output(model, xs.astype(model.dtype))
        try:
            outputs = evaluator.run(None, {graph.input_name: xs.reshape(shape)})
            assert isinstance(outputs, list)  # run(None, ...) returns every output, in order
            got = outputs[0]
        except Exception as exc:  # a layout the graph does not take fails somewhere inside
            problems.append(f"{layout}: {type(exc).__name__}")
            continue
        got = np.asarray(got, np.float64)
        if got.size != expected.size:
            problems.append(f"{layout}: output of shape {got.shape}")
            continue
        got = got.reshape(expected.shape)  # batch of one: (1, T, O), (T, 1, O), (T, O), (1, O)
        if np.allclose(got, expected, atol=CHECK_ATOL, rtol=CHECK_RTOL):
            return layout
        problems.append(f"{layout}: outputs differ by up to {np.max(np.abs(got - expected)):.3g}")
    raise ModelFormatError(
        f"{path}: the graph does not compute what its LSTM/GRU and head nodes say when run one "
        "step after another (checked against onnx.reference on a random input: "
        f"{'; '.join(problems) or 'no input layout fits'}); refused rather than run inexactly"
    )


def _engine_output(model: Model, xs: np.ndarray) -> np.ndarray:
    """What the engine computes for the sequence ``xs``: ``(T, O)`` per step, or ``(1, O)``
    for a window model whose head reads the last step."""
    if model.window is None:
        return model.stream().run(xs)
    from ..windows import evaluate_windows

    out = evaluate_windows(model, xs[None])[0]
    return out if model.window.per_step else out[None]


def _candidate_inputs(
    dims: list[int | None] | None, width: int
) -> list[tuple[str, int, list[int]]]:
    """(layout, steps, input shape) for each input layout the declared ``dims`` allow.

    A batch axis holds 1. A fixed time axis keeps its length; one fixed to 1 step cannot
    tell layouts apart, so such candidates come last.
    """
    candidates = []
    for layout, time_axis in (("batch_first", 1), ("time_first", 0), ("time_only", 0)):
        rank = 2 if layout == "time_only" else 3
        known = [None] * rank if dims is None else dims
        if len(known) != rank:
            continue
        steps = known[time_axis] or CHECK_STEPS
        shape = [1] * rank
        shape[time_axis], shape[-1] = steps, width
        if all(d is None or d == s for d, s in zip(known, shape, strict=True)):
            candidates.append((layout, steps, shape))
    return sorted(candidates, key=lambda candidate: candidate[1] == 1)


def _with_default_activations(proto: Any, model: Model) -> tuple[Any, Model]:
    """Graph and model with every recurrent layer on ONNX's default activations.

    ``onnx.reference`` ignores the ``activations`` attribute of LSTM/GRU, so the check
    compares both sides with the defaults; the activations themselves were read straight
    from the attributes and need no check.
    """

    probe = type(proto)()
    probe.CopyFrom(proto)
    for node in probe.graph.node:
        if node.op_type in RECURRENT_OPS:
            keep = [
                a
                for a in node.attribute
                if a.name not in ("activations", "activation_alpha", "activation_beta")
            ]
            del node.attribute[:]
            node.attribute.extend(keep)

    def default(layer: RecurrentLayer | None) -> RecurrentLayer | None:
        if layer is None:
            return None
        return dataclasses.replace(
            layer,
            activation="tanh",
            recurrent_activation="sigmoid",
            backward=default(layer.backward),
        )

    return probe, model.replace(layers=tuple(default(layer) for layer in model.layers))
