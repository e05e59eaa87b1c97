"""Corrupt, hostile and unsupported Keras, ONNX and PyTorch files: each refused with a clear
error.

Keras variants are made by rewriting one real Keras 3 archive (its config.json or its
weights); ONNX graphs are written with ``onnx.helper``; hostile ``.pt`` archives by
rewriting a real ``torch.save`` zip. Every test asserts the error type and the words that
tell the user what is wrong. (The pickle-bearing ``.pt`` lives with the PyTorch loader's
tests, test_torch_import.py.)
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_graphs import HIDDEN, WIDTH, lstm_graph

from streamlstm.errors import ModelFormatError
from streamlstm.formats import keras as keras_format
from streamlstm.formats import load

# Keras 3 with numpy 2 warns from inside its own code on every array conversion.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

h5py = pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
helper, numpy_helper = onnx.helper, onnx.numpy_helper


# -- Keras ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_archive(tmp_path_factory) -> Path:
    """A real Keras 3 model: LSTM(4) -> GRU(4, reset_after=False) -> Dense(2)."""
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.GRU(4, return_sequences=True, reset_after=False),
            keras.layers.Dense(2),
        ]
    )
    path = tmp_path_factory.mktemp("keras-hostile") / "base.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def branching_archive(keras_archive) -> Path:
    """A functional model whose two LSTM branches are added: not a chain."""
    import keras

    inputs = keras.Input((None, 3))
    left = keras.layers.LSTM(4, return_sequences=True)(inputs)
    right = keras.layers.LSTM(4, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Add()([left, right])))
    path = keras_archive.with_name("branching.keras")
    model.save(path)
    return path


def test_keras_branching_functional_model_refused(branching_archive):
    _refused(branching_archive, "not fed by the layer before it", "branching")


def _members(path: Path | io.BytesIO) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _with_config(base: Path, target: Path, edit: Any) -> Path:
    members = _members(base)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return _write_archive(target, members)


def _with_weights(base: Path, target: Path, edit: Any) -> Path:
    members = _members(base)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        edit(f)
    members["model.weights.h5"] = buffer.getvalue()
    return _write_archive(target, members)


def _layer(config: dict[str, Any], class_name: str) -> dict[str, Any]:
    return next(e["config"] for e in config["config"]["layers"] if e["class_name"] == class_name)


def _refused(path: Path, *words: str, **options: Any) -> str:
    with pytest.raises(ModelFormatError) as info:
        load(path, **options)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def test_base_archive_loads(keras_archive):
    model = load(keras_archive)
    assert model.describe() == "LSTM(3->4) -> GRU(4->4, reset_after=False) -> Dense(4->2, linear)"


def test_truncated_keras_archive(keras_archive, tmp_path):
    data = keras_archive.read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "unreadable .keras archive")


def test_keras_archive_without_weights(keras_archive, tmp_path):
    members = _members(keras_archive)
    del members["model.weights.h5"]
    _refused(_write_archive(tmp_path / "empty.keras", members), "no model.weights.h5")


def test_keras_member_over_size_cap(keras_archive, monkeypatch):
    monkeypatch.setattr(keras_format, "MAX_WEIGHTS_BYTES", 1024)
    _refused(keras_archive, "model.weights.h5", "over the 1024-byte limit")


def test_keras_bomb_that_lies_about_its_size(keras_archive, tmp_path, monkeypatch):
    # The zip directory says 10 bytes; the deflated member inflates to 1 MiB of zeros.
    monkeypatch.setattr(keras_format, "MAX_WEIGHTS_BYTES", 4096)
    members = _members(keras_archive)
    members["model.weights.h5"] = bytes(1 << 20)
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    raw = bytearray(path.read_bytes())
    central = raw.find(b"model.weights.h5", raw.find(b"PK\x01\x02")) - 46
    assert raw[central : central + 4] == b"PK\x01\x02"
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))
    _refused(path, "model.weights.h5")


def test_keras_wrong_tensor_shape(keras_archive, tmp_path):
    def edit(f):
        del f["layers/lstm/cell/vars/1"]
        f["layers/lstm/cell/vars/1"] = np.zeros((4, 12), np.float32)

    _refused(
        _with_weights(keras_archive, tmp_path / "shape.keras", edit),
        "layers/lstm/cell/vars/1",
        "(4, 12)",
        "expected (4, 16)",
    )


def test_keras_missing_tensor(keras_archive, tmp_path):
    def edit(f):
        del f["layers/gru/cell/vars/2"]

    _refused(
        _with_weights(keras_archive, tmp_path / "missing.keras", edit),
        "layers/gru/cell/vars",
        "holds 2 tensor(s), expected 3",
    )


def test_keras_nan_weight(keras_archive, tmp_path):
    def edit(f):
        kernel = f["layers/dense/vars/0"]
        values = kernel[()]
        values[1, 0] = np.nan
        kernel[...] = values

    _refused(_with_weights(keras_archive, tmp_path / "nan.keras", edit), "non-finite")


def test_keras_gate_count_mismatch(keras_archive, tmp_path):
    # The config says LSTM (4 gates); the weights are a GRU's (3 gates).
    def edit(f):
        for index, shape in enumerate([(3, 12), (4, 12), (12,)]):
            del f[f"layers/lstm/cell/vars/{index}"]
            f[f"layers/lstm/cell/vars/{index}"] = np.zeros(shape, np.float32)

    _refused(
        _with_weights(keras_archive, tmp_path / "gates.keras", edit),
        "layers/lstm/cell/vars/0",
        "(3, 12)",
        "expected (3, 16)",
    )


def test_keras_config_not_json(keras_archive, tmp_path):
    members = _members(keras_archive)
    members["config.json"] = b"{" * 100_000
    _refused(_write_archive(tmp_path / "deep.keras", members), "config.json is not valid JSON")


def test_legacy_keras2_h5_refused(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{}"
        f.create_group("model_weights")
    _refused(
        path,
        "legacy Keras 2",
        config={
            "class_name": "Sequential",
            "config": {"layers": [{"class_name": "LSTM", "config": {"units": 2}}]},
        },
    )


def test_weights_h5_needs_config(keras_archive, tmp_path):
    path = tmp_path / "w.weights.h5"
    path.write_bytes(_members(keras_archive)["model.weights.h5"])
    _refused(path, "holds no architecture", "config=")
    assert load(path, config=keras_archive).output_size == 2


def test_corrupt_weights_h5(tmp_path, keras_archive):
    path = tmp_path / "junk.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    _refused(path, "unreadable weights", config=keras_archive)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: _layer(c, "LSTM").update(go_backwards=True), ("(LSTM)", "go_backwards")),
        (lambda c: _layer(c, "LSTM").update(return_sequences=False), ("return_sequences=False",)),
        (lambda c: _layer(c, "LSTM").update(return_state=True), ("return_state",)),
        (lambda c: _layer(c, "GRU").update(activation="relu"), ("activation='relu'",)),
        (
            lambda c: _layer(c, "GRU").update(recurrent_activation="softsign"),
            ("recurrent_activation='softsign'",),
        ),
        (lambda c: _layer(c, "Dense").update(activation="softmax"), ("activation='softmax'",)),
        (lambda c: _layer(c, "Dense").update(dtype="mixed_float16"), ("mixed_float16",)),
        (
            lambda c: c["config"]["layers"].__setitem__(
                1, {"class_name": "Bidirectional", "config": {"name": "bi"}}
            ),
            ("(Bidirectional)", "malformed 'layer'"),
        ),
        (lambda c: c.update(class_name="MyModel"), ("'MyModel' is not supported",)),
        (lambda c: _layer(c, "LSTM").update(units=10**9), ("units=1000000000",)),
    ],
    ids=[
        "go_backwards",
        "middle_return_sequences_false",
        "return_state",
        "relu_cell",
        "softsign_gate",
        "softmax_head",
        "mixed_precision",
        "bidirectional",
        "subclassed",
        "huge_units",
    ],
)
def test_keras_architectures_refused(keras_archive, tmp_path, edit, words):
    _refused(_with_config(keras_archive, tmp_path / "variant.keras", edit), *words)


def test_keras_too_many_layers(keras_archive, tmp_path):
    def edit(config):
        dropout = {"class_name": "Dropout", "config": {"name": "d", "rate": 0.1}}
        config["config"]["layers"][2:2] = [dropout] * keras_format.MAX_LAYERS

    _refused(_with_config(keras_archive, tmp_path / "long.keras", edit), "over the limit")


def _weights_file_with(keras_archive: Path, target: Path, where: str, make: Any) -> Path:
    """The archive's ``model.weights.h5`` as a file, with dataset ``where`` replaced by
    ``make(f, where, shape, dtype)``."""
    target.write_bytes(_members(keras_archive)["model.weights.h5"])
    with h5py.File(target, "r+") as f:
        shape, dtype = f[where].shape, f[where].dtype
        del f[where]
        make(f, where, shape, dtype)
    return target


def _external(source: str):
    def make(f, where, shape, dtype):
        size = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset(where, shape, dtype, external=[(source, 0, size)])

    return make


def _virtual(other: Path):
    def make(f, where, shape, dtype):
        with h5py.File(other, "w") as g:
            g["data"] = np.ones(shape, dtype)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(other), "data", shape=shape)
        f.create_virtual_dataset(where, layout, fillvalue=0)

    return make


def _external_link(other: Path, in_group: bool):
    def make(f, where, shape, dtype):
        with h5py.File(other, "w") as g:
            g["data/0"] = np.ones(shape, dtype)
        if in_group:  # the whole vars group lives in the other file
            group = where.rsplit("/", 1)[0]
            for name in list(f[group]):
                del f[f"{group}/{name}"]
            del f[group]
            f[group] = h5py.ExternalLink(str(other), "/data")
        else:
            f[where] = h5py.ExternalLink(str(other), "/data/0")

    return make


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("passwd", ("layers/lstm/cell/vars/0", "external files", "/etc/passwd")),
        ("zero", ("layers/lstm/cell/vars/0", "external files", "/dev/zero")),
        ("virtual", ("layers/lstm/cell/vars/0", "virtual dataset")),
        ("link", ("layers/lstm/cell/vars/0 is an external link",)),
        ("group-link", ("layers/lstm/cell/vars is an external link",)),
    ],
)
def test_keras_weights_pointing_outside_the_file_are_refused(keras_archive, tmp_path, case, words):
    where = "layers/lstm/cell/vars/0"
    make = {
        "passwd": _external("/etc/passwd"),
        "zero": _external("/dev/zero"),
        "virtual": _virtual(tmp_path / "other.h5"),
        "link": _external_link(tmp_path / "other.h5", in_group=False),
        "group-link": _external_link(tmp_path / "other.h5", in_group=True),
    }[case]
    path = _weights_file_with(keras_archive, tmp_path / "w.weights.h5", where, make)
    with h5py.File(path, "r") as f:  # the hostile file is readable: h5py would follow it
        assert f[where].shape
    _refused(path, *words, config=keras_archive)
    # The same weights inside a .keras archive are refused too.
    members = _members(keras_archive)
    members["model.weights.h5"] = path.read_bytes()
    _refused(_write_archive(tmp_path / "hostile.keras", members), *words)


# -- PyTorch ---------------------------------------------------------------------------------
def _pt_with_huge_tensor(path: Path, *, deflated: bool) -> Path:
    """A ``torch.save`` zip whose one tensor claims 1.3 GB: its record deflated (about 1.3 MB
    on disk) or left at its real 16 bytes."""
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"weight_ih_l0": torch.zeros(4)}, buffer)
    members = _members(io.BytesIO(buffer.getvalue()))
    pickled = members["archive/data.pkl"]
    count = b"K\x04"  # BININT1 4: the storage's numel, then the tensor's size
    assert pickled.count(count) == 2
    numel = (1300 << 20) // 4
    members["archive/data.pkl"] = pickled.replace(count, b"J" + struct.pack("<i", numel))
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name == "archive/data/0" and deflated:
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                chunk = bytes(16 << 20)
                with archive.open(info, "w", force_zip64=True) as member:
                    for _ in range(numel * 4 // len(chunk)):
                        member.write(chunk)
                    member.write(bytes(numel * 4 % len(chunk)))
            else:
                archive.writestr(name, data)
    return path


def test_pt_with_a_deflated_record_is_refused_before_anything_is_inflated(tmp_path):
    path = _pt_with_huge_tensor(tmp_path / "bomb.pt", deflated=True)
    assert path.stat().st_size < 2 << 20
    # In a fresh interpreter, measuring the growth of the peak RSS over the load alone
    # (an exec'd child starts from its parent's peak on Linux, and torch's import is big).
    script = (
        "import resource, sys, torch\n"
        "from streamlstm.errors import ModelFormatError\n"
        "from streamlstm.formats import load\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load(sys.argv[1])\n"
        "except ModelFormatError as exc:\n"
        "    print('refused:', exc)\n"
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert "refused:" in out.stdout, out.stdout + out.stderr
    assert "record 'archive/data/0' is compressed" in out.stdout
    growth_mb = int(out.stdout.split("maxrss_kb")[1]) / 1024
    assert growth_mb < 100, out.stdout  # the tensor would inflate to 1.3 GB


def test_pt_whose_tensor_claims_more_than_its_record_is_refused(tmp_path):
    path = _pt_with_huge_tensor(tmp_path / "short.pt", deflated=False)
    _refused(path, "short.pt", "record size")


def test_legacy_pre_zip_pt_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "old.pt"
    torch.save({"weight_ih_l0": torch.zeros(4, 3)}, path, _use_new_zipfile_serialization=False)
    _refused(path, "not a zip-format PyTorch file", "safetensors")


# -- ONNX ----------------------------------------------------------------------------------
def _save(proto: Any, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def test_minimal_onnx_graph_loads_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _save(lstm_graph(), tmp_path / "ok.onnx")
    model = load(path)
    xs = np.random.default_rng(0).normal(size=(50, WIDTH)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": xs[:, None]})[0][:, 0]
    np.testing.assert_allclose(model.stream().run(xs), expected, atol=1e-5)
    assert model.metadata["onnx_input_layout"] == "time_first"


@pytest.mark.parametrize(
    "shape",
    [[7, 1, WIDTH], [WIDTH, 1, WIDTH], None],
    ids=["fixed_length", "length_equals_width", "no_shape"],
)
def test_onnx_input_shapes_accepted(tmp_path, shape):
    proto = lstm_graph()
    declared = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    proto.graph.input[0].CopyFrom(declared)
    model = load(_save(proto, tmp_path / "shaped.onnx"))
    assert model.metadata["onnx_input_layout"] == "time_first"


def test_onnx_weights_from_constant_nodes(tmp_path):
    proto = lstm_graph()
    weights = {t.name: t for t in proto.graph.initializer if t.name in ("W", "R")}
    kept = [t for t in proto.graph.initializer if t.name not in weights]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    constants = [
        helper.make_node("Constant", [], [name], name=f"const_{name}", value=tensor)
        for name, tensor in weights.items()
    ]
    nodes = constants + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    reference = load(_save(lstm_graph(), tmp_path / "init.onnx"))
    model = load(_save(proto, tmp_path / "const.onnx"))
    np.testing.assert_array_equal(model.layers[0].w_ih, reference.layers[0].w_ih)


def test_truncated_onnx(tmp_path):
    data = lstm_graph().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "not a readable ONNX model")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_onnx_external_data_outside_folder(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(4 * 4 * HIDDEN * WIDTH))
    path = _save(lstm_graph(external={"W": location}), folder / "escape.onnx")
    _refused(path, "'W'", "outside the model's folder")


def test_onnx_external_data_symlink_escape(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(4 * 4 * HIDDEN * WIDTH))
    (folder / "inside.bin").symlink_to(tmp_path / "outside.bin")
    path = _save(lstm_graph(external={"W": "inside.bin"}), folder / "link.onnx")
    _refused(path, "outside the model's folder")


def test_onnx_external_data_inside_folder_loads(tmp_path):
    w = np.random.default_rng(5).normal(0, 0.5, (1, 4 * HIDDEN, WIDTH)).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    model = load(_save(lstm_graph(external={"W": "w.bin"}), tmp_path / "ext.onnx"))
    reordered = np.concatenate([w[0][k * HIDDEN : (k + 1) * HIDDEN] for k in (0, 2, 3, 1)])
    np.testing.assert_array_equal(model.layers[0].w_ih, reordered)


def test_onnx_missing_external_file(tmp_path):
    _refused(_save(lstm_graph(external={"W": "gone.bin"}), tmp_path / "m.onnx"), "missing")


def test_onnx_nan_weight(tmp_path):
    w = np.random.default_rng(1).normal(size=(1, 4 * HIDDEN, WIDTH))
    w[0, 5, 1] = np.nan
    _refused(_save(lstm_graph(w=w), tmp_path / "nan.onnx"), "non-finite")


def test_onnx_gate_count_mismatch(tmp_path):
    w = np.zeros((1, 3 * HIDDEN, WIDTH))  # a GRU's three gates in an LSTM node
    _refused(
        _save(lstm_graph(w=w), tmp_path / "gates.onnx"),
        "lstm0",
        "W has shape (1, 12, 3)",
        "4 gates",
    )


def test_onnx_missing_weight_tensor(tmp_path):
    proto = lstm_graph()
    kept = [t for t in proto.graph.initializer if t.name != "R"]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.graph.input.append(helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, None))
    _refused(_save(proto, tmp_path / "noR.onnx"), "expected one graph input")


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({"direction": "reverse"}, ("direction='reverse'",)),
        ({"direction": "bidirectional"}, ("direction='bidirectional'",)),
        ({"clip": 3.0}, ("clip",)),
        ({"input_forget": 1}, ("input_forget=1",)),
        ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, ("alpha=0.2",)),
        ({"activations": ["Relu", "Tanh", "Tanh"]}, ("'Relu'",)),
        ({"activations": ["Sigmoid", "Tanh", "Sigmoid"]}, ("g != h",)),
    ],
    ids=[
        "reverse",
        "bidirectional",
        "clip",
        "input_forget",
        "hard_sigmoid_default_alpha",
        "relu_gate",
        "mixed_cell_activations",
    ],
)
def test_onnx_recurrent_attributes_refused(tmp_path, attributes, words):
    _refused(_save(lstm_graph(lstm_attributes=attributes), tmp_path / "attr.onnx"), "lstm0", *words)


def test_onnx_sequence_lens_refused(tmp_path):
    proto = lstm_graph(extra_inputs=("lens",))
    proto.graph.initializer.append(numpy_helper.from_array(np.array([5], np.int32), "lens"))
    _refused(_save(proto, tmp_path / "lens.onnx"), "sequence_lens")


def test_onnx_nonzero_initial_state_refused(tmp_path):
    proto = lstm_graph(extra_inputs=("", "h0"))
    proto.graph.initializer.append(
        numpy_helper.from_array(np.ones((1, 1, HIDDEN), np.float32), "h0")
    )
    _refused(_save(proto, tmp_path / "h0.onnx"), "initial_h is non-zero")


def test_onnx_computed_initial_state_caught_by_the_check(tmp_path):
    # initial_h = zeros + 0.5, computed in the graph: only running the graph reveals it.
    before = [
        helper.make_node("ConstantOfShape", ["h0_shape"], ["zeros"], name="zeros"),
        helper.make_node("Add", ["zeros", "half"], ["h0"], name="sneaky_add"),
    ]
    proto = lstm_graph(extra_inputs=("", "h0"), before=before)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1, 1, HIDDEN], np.int64), "h0_shape"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ]
    )
    _refused(_save(proto, tmp_path / "computed.onnx"), "does not compute what", "onnx.reference")


def test_onnx_arithmetic_before_the_lstm_refused(tmp_path):
    before = [helper.make_node("Mul", ["x", "two"], ["x2"], name="scale_input")]
    proto = lstm_graph(before=before, x_into_lstm="x2")
    proto.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    _refused(_save(proto, tmp_path / "mul.onnx"), "lstm0", "'scale_input' (Mul)")


@pytest.mark.parametrize(
    ("head", "words"),
    [
        ([helper.make_node("Softmax", ["h"], ["y"], name="probs")], ("'probs'", "Softmax")),
        (
            [helper.make_node("Relu", ["h"], ["y"], name="bare_relu")],
            ("'bare_relu'", "does not follow a dense layer"),
        ),
        (
            [helper.make_node("Gemm", ["h", "K", "b"], ["y"], name="scaled", alpha=2.0)],
            ("'scaled'", "alpha=1"),
        ),
        (
            [
                helper.make_node("MatMul", ["h", "K"], ["m"], name="mm"),
                helper.make_node("Add", ["m", "b"], ["a"], name="add"),
                helper.make_node("Add", ["a", "b"], ["y"], name="second_bias"),
            ],
            ("'second_bias'", "not the bias of a MatMul"),
        ),
    ],
    ids=["softmax", "activation_without_dense", "gemm_alpha", "double_bias"],
)
def test_onnx_heads_refused(tmp_path, head, words):
    _refused(_save(lstm_graph(head=head), tmp_path / "head.onnx"), *words)


def test_onnx_head_reading_the_cell_state_refused(tmp_path):
    proto = lstm_graph(head=[helper.make_node("Identity", ["Y_c"], ["y"], name="cell")])
    proto.graph.node[0].output.extend(["Y_h", "Y_c"])
    _refused(_save(proto, tmp_path / "yc.onnx"), "Y_c (the cell state)", window=8)


def test_onnx_head_reading_the_final_hidden_state_is_a_last_step_window_model(tmp_path):
    proto = lstm_graph(head=[helper.make_node("Identity", ["Y_h"], ["y"], name="last")])
    proto.graph.node[0].output.append("Y_h")
    path = _save(proto, tmp_path / "yh.onnx")
    _refused(path, "its head reads the last step): pass window=N")
    assert load(path, window=8).window.output == "last"  # checked against onnx.reference


def test_onnx_without_recurrent_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    _refused(_save(helper.make_model(graph), tmp_path / "plain.onnx"), "no LSTM or GRU node")
