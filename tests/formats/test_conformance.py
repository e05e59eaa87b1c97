"""One conformance suite: every weight loader x every backend, through the same checks.

Sources (each LSTM and GRU, with a dense head; random weights):

* PyTorch ``nn.LSTM``/``nn.GRU`` + MLP head, saved as ``.pt`` and ``.safetensors``,
  converted to native ``.npz``, and exported to ONNX by both ``torch.onnx.export``
  exporters (legacy TorchScript and dynamo);
* Keras 3 (``KERAS_BACKEND=torch``): LSTM stack, GRU ``reset_after=True`` (functional
  API, with a Dropout) and GRU ``reset_after=False``, some layers without biases
  (``use_bias=False``), saved as ``.keras`` and as
  ``.weights.h5`` (+ its config);
* ONNX graphs written with ``onnx.helper`` from those Keras weights (LSTM ``layout=0``
  between Transposes with a MatMul+Add head; GRU ``layout=0``, ``linear_before_reset``
  1 and 0, with a Gemm head), checked against Keras itself while being built; and the
  same weights with ``layout=1`` (onnxruntime cannot run those: Keras is the reference).

Reference: the source framework's own full-sequence output (torch, keras ``predict``,
onnxruntime for ONNX files). Checks, on each backend of conformance_backends.BACKENDS:
the stream, fed one sample at a time for STEPS steps, matches within TOLERANCE; a state
snapshot restored into a fresh runner continues identically; reset starts over. A backend
with a ``steps`` limit (the CUDA simulator) is fed that many first samples of each case,
and the whole case only in the LONG_RUN cases of the first check.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conformance_backends import BACKENDS, Backend

from streamlstm.formats import load
from streamlstm.formats.native import save_native
from streamlstm.packing import TARGETS, pack

# Keras 3 with numpy 2 warns from inside its own code on every array conversion.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STEPS = 1200
TOLERANCE = 1e-5
INPUT_SIZE = 3
#: Cases every backend runs for all STEPS in test_streamed_output_matches_source_framework:
#: an LSTM and a GRU of each reset placement, so that the long-run agreement of every
#: backend, the step-limited ones too, with a framework is checked.
LONG_RUN = ("native/lstm", "native/gru", "keras/gru-reset-before")


@dataclasses.dataclass(frozen=True)
class Case:
    """A weight file, how to load it, and what its own framework computes on ``xs``."""

    path: Path
    options: dict[str, Any]
    xs: np.ndarray  # (STEPS, D) float32
    expected: np.ndarray  # (STEPS, O)
    name: str = ""  # its id in SOURCE_IDS

    def fed_to(self, backend: Backend, *, long_run: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, expected)`` for ``backend``: its first ``backend.steps`` samples (a stream
        is causal: a prefix of the input gives the same prefix of the output), or all of
        them where it has no limit or ``long_run`` asks for it in a LONG_RUN case."""
        if backend.steps is None or (long_run and self.name in LONG_RUN):
            return self.xs, self.expected
        return self.xs[: backend.steps], self.expected[: backend.steps]


def _inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (STEPS, INPUT_SIZE)).astype(np.float32)


def _onnxruntime(path: Path, feed: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # torch 2.13's dynamo exporter records the example's sequence length in value_info
    # even for a dynamic axis; onnxruntime's optimiser trusts it and fails on other
    # lengths. The unoptimised graph computes the same values.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


# -- PyTorch-trained sources ---------------------------------------------------------------
TORCH_SOURCES = ("torch-pt", "safetensors", "native", "onnx-legacy", "onnx-dynamo")
TORCH_ARCHS = ("lstm", "gru")


@pytest.fixture(scope="module")
def torch_cases(tmp_path_factory) -> dict[str, Case]:
    torch_nets = pytest.importorskip("torch_nets")  # skips when torch is missing
    torch = torch_nets.torch
    directory = tmp_path_factory.mktemp("torch-sources")
    cases = {}
    for seed, kind in enumerate(TORCH_ARCHS):
        net = torch_nets.make_net(kind, 2, 8, head="mlp", seed=seed).eval()
        xs = _inputs(seed)
        expected = torch_nets.reference(net, xs)
        options = torch_nets.load_options("mlp")
        pt, st = torch_nets.save_state_dict(net, directory, kind)
        cases[f"torch-pt/{kind}"] = Case(pt, options, xs, expected)
        cases[f"safetensors/{kind}"] = Case(st, options, xs, expected)
        native = save_native(load(pt, **options), directory / f"{kind}.npz")
        cases[f"native/{kind}"] = Case(native, {}, xs, expected)
        for exporter in ("legacy", "dynamo"):
            path = directory / f"{kind}-{exporter}.onnx"
            if _export_onnx(torch, net, xs, path, dynamo=exporter == "dynamo"):
                from_ort = _onnxruntime(path, xs[None])[0]
                cases[f"onnx-{exporter}/{kind}"] = Case(path, {}, xs, from_ort)
    return cases


def _export_onnx(torch: Any, net: Any, xs: np.ndarray, path: Path, *, dynamo: bool) -> bool:
    """Export with one of torch's exporters; False when that exporter cannot run here."""
    example = (torch.from_numpy(xs[None, :16]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter needs it)
            except ImportError:
                return False
            steps = torch.export.Dim("steps", min=2)
            torch.onnx.export(
                net,
                example,
                str(path),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({1: steps},),
                verbose=False,
            )
        else:
            torch.onnx.export(
                net,
                example,
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {1: "steps"}},
            )
    return True


# -- Keras-trained sources -----------------------------------------------------------------
KERAS_SOURCES = ("keras", "keras-weights-h5", "onnx-helper", "onnx-layout1")
KERAS_ARCHS = ("lstm", "gru-reset-after", "gru-reset-before")


def _keras_model(keras: Any, arch: str, rng: np.random.Generator) -> Any:
    layers = keras.layers
    stack = {
        "lstm": [
            layers.LSTM(8, return_sequences=True),
            layers.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid"),
            layers.Dense(5, activation="relu"),
            layers.Dense(3, use_bias=False),
        ],
        "gru-reset-after": [
            layers.GRU(8, return_sequences=True),
            layers.Dense(3, activation="tanh"),
        ],
        "gru-reset-before": [
            layers.GRU(8, return_sequences=True, reset_after=False),
            layers.GRU(6, return_sequences=True, reset_after=False, use_bias=False),
            layers.Dense(4, activation="relu"),
            layers.Dense(2),
        ],
    }[arch]
    if arch == "gru-reset-after":  # the functional API, with an inference-time no-op
        inputs = keras.Input((None, INPUT_SIZE))
        hidden = layers.Dropout(0.3)(stack[0](inputs))
        model = keras.Model(inputs, stack[1](hidden))
    else:
        model = keras.Sequential([keras.Input((None, INPUT_SIZE)), *stack])
    for weight in model.weights:  # random biases too, not Keras' zeros
        weight.assign(rng.normal(0.0, 0.4, weight.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def keras_cases(tmp_path_factory) -> dict[str, Case]:
    os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
    directory = tmp_path_factory.mktemp("keras-sources")
    cases = {}
    for seed, arch in enumerate(KERAS_ARCHS, start=10):
        model = _keras_model(keras, arch, np.random.default_rng(seed))
        xs = _inputs(seed)
        expected = model.predict(xs[None], verbose=0)[0]
        archive = directory / f"{arch}.keras"
        weights = directory / f"{arch}.weights.h5"
        model.save(archive)
        model.save_weights(weights)
        cases[f"keras/{arch}"] = Case(archive, {}, xs, expected)
        cases[f"keras-weights-h5/{arch}"] = Case(weights, {"config": archive}, xs, expected)
        onnx_path = directory / f"{arch}.onnx"
        time_first = _keras_to_onnx(model, onnx_path, layout=0, gemm_head=arch != "lstm")
        feed = xs[:, None] if time_first else xs[None]
        from_ort = _onnxruntime(onnx_path, feed).reshape(STEPS, -1)
        # The hand-built graph must itself equal Keras, or it proves nothing.
        np.testing.assert_allclose(from_ort, expected, atol=TOLERANCE)
        cases[f"onnx-helper/{arch}"] = Case(onnx_path, {}, xs, from_ort)
        # onnxruntime refuses layout=1 (batch-first LSTM/GRU), so Keras is the reference.
        batch_first = directory / f"{arch}-layout1.onnx"
        _keras_to_onnx(model, batch_first, layout=1, gemm_head=False)
        cases[f"onnx-layout1/{arch}"] = Case(batch_first, {}, xs, expected)
    return cases


def _keras_to_onnx(model: Any, path: Path, *, layout: int, gemm_head: bool) -> bool:
    """Write ``model`` (Keras weights) as an ONNX graph by hand; True if its input is time-first.

    ``layout=0`` with a batch-first input goes through ``Transpose`` nodes; a Gemm head
    needs 2-D data, so it comes with a time-first input and a ``Reshape``.
    """
    onnx = pytest.importorskip("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    nodes, initializers = [], []

    def constant(name: str, array: Any, dtype: Any = np.float32) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(op: str, inputs: list[str], **attributes: Any) -> str:
        output = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    time_first = gemm_head
    data = "x"
    if layout == 0 and not time_first:
        data = node("Transpose", [data], perm=[1, 0, 2])
    recurrent = [layer for layer in model.layers if layer.__class__.__name__ in ("LSTM", "GRU")]
    for index, layer in enumerate(recurrent):
        kernel, recurrent_kernel, *bias = (np.asarray(w) for w in layer.get_weights())
        hidden = recurrent_kernel.shape[0]

        def blocks(a: np.ndarray, order: tuple[int, ...], hidden: int = hidden) -> np.ndarray:
            return np.concatenate([a[..., k * hidden : (k + 1) * hidden] for k in order], axis=-1)

        if layer.__class__.__name__ == "LSTM":  # Keras i,f,c,o -> ONNX i,o,f,c
            order = (0, 3, 1, 2)
            b = np.concatenate([blocks(bias[0], order), np.zeros(4 * hidden)]) if bias else None
            extra: dict[str, Any] = {"activations": ["Sigmoid", "Tanh", "Tanh"]}
            if layer.recurrent_activation.__name__ == "hard_sigmoid":
                extra = {
                    "activations": ["HardSigmoid", "Tanh", "Tanh"],
                    "activation_alpha": [1 / 6, 1.0, 1.0],
                    "activation_beta": [0.5, 0.0, 0.0],
                }
        else:  # Keras z,r,h is ONNX z,r,h; Keras' (2, 3H) bias is ONNX's Wb then Rb
            order = (0, 1, 2)
            b = None  # use_bias=False: the B input is left out
            if bias:
                b = (
                    bias[0].reshape(-1)
                    if layer.reset_after
                    else np.concatenate([bias[0], np.zeros(3 * hidden)])
                )
            extra = {"linear_before_reset": int(layer.reset_after)}
        weights = [
            constant(f"W{index}", blocks(kernel, order).T[None]),
            constant(f"R{index}", blocks(recurrent_kernel, order).T[None]),
            "" if b is None else constant(f"B{index}", b[None]),
        ]
        data = node(
            layer.__class__.__name__, [data, *weights], hidden_size=hidden, layout=layout, **extra
        )
        # Y is (T, 1, B, H) with layout 0 and (B, T, 1, H) with layout 1: drop num_directions.
        data = node("Squeeze", [data, constant(f"axes{index}", [1 + layout], np.int64)])
    if layout == 0 and not time_first:
        data = node("Transpose", [data], perm=[1, 0, 2])
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    if gemm_head:
        data = node("Reshape", [data, constant("flat", [-1, dense[0].kernel.shape[0]], np.int64)])
    for index, layer in enumerate(dense):
        kernel, *bias = (np.asarray(w) for w in layer.get_weights())
        bias_input = [constant(f"b{index}", bias[0])] if bias else []
        if gemm_head:  # alternate transB to cover both forms
            stored = kernel.T if index % 2 == 0 else kernel
            data = node(
                "Gemm", [data, constant(f"K{index}", stored), *bias_input], transB=1 - index % 2
            )
        else:
            data = node("MatMul", [data, constant(f"K{index}", kernel)])
            if bias_input:
                data = node("Add", [data, *bias_input])
        activation = layer.activation.__name__
        if activation != "linear":
            data = node({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[activation], [data])
    nodes.append(helper.make_node("Identity", [data], ["y"], name="output"))
    x_shape = ["steps", 1, INPUT_SIZE] if time_first else [1, "steps", INPUT_SIZE]
    y_shape = [None] * (2 if gemm_head else 3)
    graph = helper.make_graph(
        nodes,
        "keras-equivalent",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return time_first


# -- the checks ----------------------------------------------------------------------------
SOURCE_IDS = [f"{s}/{a}" for s in TORCH_SOURCES for a in TORCH_ARCHS] + [
    f"{s}/{a}" for s in KERAS_SOURCES for a in KERAS_ARCHS
]


#: Each framework model of the cases: all its sources, and the one source that a backend
#: without ``every_source`` (the CUDA simulator, which runs each CUDA thread in Python) is
#: checked on. The bank sees only the loaded model, and every other source of the same
#: model loads into the same packed weights, bit for bit
#: (test_every_source_of_a_model_packs_into_the_same_weights): running it again on them
#: would repeat the same arithmetic. The loaders themselves are checked against their
#: frameworks on every CPU backend.
MODELS = {
    f"{framework}/{arch}": ([f"{source}/{arch}" for source in sources], f"{simulated}/{arch}")
    for framework, sources, archs, simulated in (
        ("torch", TORCH_SOURCES, TORCH_ARCHS, "native"),
        ("keras", KERAS_SOURCES, KERAS_ARCHS, "keras"),
    )
    for arch in archs
}
SIMULATED = tuple(simulated for _, simulated in MODELS.values())
#: Every (source, backend) pair the checks below run, as ``source-backend`` ids.
PAIRS = [
    pytest.param(source, b, id=f"{source}-{b.name}")
    for source in SOURCE_IDS
    for b in BACKENDS
    if b.every_source or source in SIMULATED
]
on_every_pair = pytest.mark.parametrize(("case", "backend"), PAIRS, indirect=True)


def _cases(request: pytest.FixtureRequest, source_id: str) -> dict[str, Case]:
    source = source_id.split("/")[0]
    return request.getfixturevalue("keras_cases" if source in KERAS_SOURCES else "torch_cases")


@pytest.fixture
def case(request) -> Case:
    cases = _cases(request, request.param)
    if request.param not in cases:
        pytest.skip(
            f"{request.param}: exporter not available here (the dynamo exporter needs onnxscript)"
        )
    return dataclasses.replace(cases[request.param], name=request.param)


@pytest.fixture
def backend(request) -> Backend:
    reason = request.param.unavailable()
    if reason:
        pytest.skip(f"{request.param.name}: {reason}")
    return request.param


def _stream(runner: Any, xs: np.ndarray) -> np.ndarray:
    """The runner's outputs over ``xs``: its own ``run`` when it has one (see
    conformance_backends.CudaBankRunner), else one ``step`` per sample."""
    if hasattr(runner, "run"):
        return runner.run(xs)
    return np.stack([runner.step(x) for x in xs])


def _assert_matches(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    error = float(np.max(np.abs(got - expected)))
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert error <= TOLERANCE, f"{what}: max abs error {error:.3g} > {TOLERANCE}"


@on_every_pair
def test_streamed_output_matches_source_framework(case, backend):
    model = load(case.path, **case.options)
    xs, expected = case.fed_to(backend, long_run=True)
    got = _stream(backend.make(model), xs)
    assert np.all(np.isfinite(got))
    assert np.std(expected) > 1e-2, "reference output is flat: the check would be weak"
    _assert_matches(got, expected, f"{case.path.name} on {backend.name}")


@on_every_pair
def test_state_round_trip(case, backend):
    model = load(case.path, **case.options)
    xs, expected = case.fed_to(backend)
    half = len(xs) // 2
    runner = backend.make(model)
    _stream(runner, xs[:half])
    snapshot = runner.state()
    assert snapshot.shape == (model.state_size,) and np.any(snapshot != 0)
    continued = _stream(runner, xs[half:])
    restored = backend.make(model)
    restored.set_state(snapshot)
    np.testing.assert_array_equal(_stream(restored, xs[half:]), continued)
    _assert_matches(continued, expected[half:], "continued after snapshot")


@on_every_pair
def test_reset_starts_over(case, backend):
    model = load(case.path, **case.options)
    xs, expected = case.fed_to(backend)
    runner = backend.make(model)
    _stream(runner, xs[::-1][: len(xs) // 4])  # some other history first
    runner.reset()
    np.testing.assert_array_equal(runner.state(), np.zeros(model.state_size, model.dtype))
    _assert_matches(_stream(runner, xs), expected, "after reset")


@pytest.mark.parametrize("framework_model", list(MODELS))
def test_every_source_of_a_model_packs_into_the_same_weights(request, framework_model):
    """What lets a backend without ``every_source`` run one source per model (SIMULATED):
    each source of a framework model loads into the same packed arrays, for the CPU and
    the CUDA kernels, as the one it runs."""
    sources, simulated = MODELS[framework_model]
    cases = _cases(request, simulated)
    present = [source_id for source_id in sources if source_id in cases]
    assert simulated in present and len(present) >= 4
    packs = {}
    for source_id in present:
        model = load(cases[source_id].path, **cases[source_id].options)
        packs[source_id] = [pack(model, target) for target in TARGETS]
    for source_id, packed in packs.items():
        for mine, reference in zip(packed, packs[simulated], strict=True):
            assert mine.params.dtype == reference.params.dtype, source_id
            np.testing.assert_array_equal(mine.params, reference.params, err_msg=source_id)
            np.testing.assert_array_equal(mine.layout, reference.layout, err_msg=source_id)


def test_keras_last_layer_without_sequences_streams_its_final_output(keras_cases, tmp_path):
    """``return_sequences=False`` on the last recurrent layer: Keras returns one vector per
    sequence; the stream gives one per step, the last of which is Keras' vector."""
    import keras

    model = keras.Sequential(
        [keras.Input((None, INPUT_SIZE)), keras.layers.LSTM(6), keras.layers.Dense(2)]
    )
    for weight in model.weights:
        weight.assign(np.random.default_rng(5).normal(0.0, 0.4, weight.shape).astype(np.float32))
    xs = _inputs(5)[:200]
    model.save(tmp_path / "last.keras")
    streamed = _stream(BACKENDS[0].make(load(tmp_path / "last.keras")), xs)
    _assert_matches(streamed[-1], model.predict(xs[None], verbose=0)[0], "final step")
