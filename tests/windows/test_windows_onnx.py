"""ONNX window models: torch-exported graphs (bidirectional LSTM/GRU, RNN, last-step heads,
softmax) read by the ONNX importer, streamed through a WindowBank, against onnxruntime
evaluating the same windows as one batch (float32, within 1e-5 of the output scale)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx_graphs import lstm_graph
from window_streams import stream_windows

import streamlstm as sl
from streamlstm.errors import ModelFormatError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from window_torch import WindowNet  # noqa: E402  (needs torch)

nn = torch.nn


def _net(cell: str, layers: int, bidirectional: bool, output: str, reads: str = "out"):
    """A 3-input, 12-unit :class:`WindowNet` whose head reads ``reads``: ``"out"`` (the
    output sequence) or ``"h_n"`` (the top layer's final state: ``h_n[-1]``, or
    ``cat((h_n[-2], h_n[-1]), 1)`` when bidirectional)."""
    return WindowNet(cell, layers, bidirectional, output, hidden=12, final_state=reads == "h_n")


def export(net: nn.Module, path, steps: int = 16) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, steps, 3),),
            str(path),
            input_names=["x"],
            dynamo=False,
            dynamic_axes={"x": {0: "batch", 1: "steps"}},
        )


CASES = [
    # cell, layers, bidirectional, output, W, K, what the head reads
    ("lstm", 1, False, "probabilities", 128, 32, "out"),
    ("lstm", 2, True, "probabilities", 16, 4, "out"),
    ("gru", 1, True, "last", 16, 1, "out"),
    ("rnn_relu", 2, True, "every", 16, 16, "out"),
    ("rnn_tanh", 1, False, "log_probabilities", 128, 128, "out"),
    ("lstm", 2, True, "probabilities", 128, 32, "h_n"),
    ("gru", 2, False, "last", 16, 4, "h_n"),
    ("rnn_tanh", 1, True, "log_probabilities", 16, 16, "h_n"),
]


@pytest.mark.parametrize(
    "cell,layers,bidirectional,output,length,hop,reads",
    CASES,
    ids=["-".join(map(str, c)) for c in CASES],
)
def test_exported_window_models_match_onnxruntime(
    tmp_path, cell, layers, bidirectional, output, length, hop, reads
):
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    export(_net(cell, layers, bidirectional, output, reads), path)
    model = sl.load(path, window=length, hop=hop)
    final_state = reads == "h_n" and bidirectional  # uni: h_n[-1] is the last step's output
    assert model.window == sl.WindowSpec(length, hop, output, final_state=final_state)
    assert [layer.backward is not None for layer in model.layers] == [bidirectional] * layers
    rng = np.random.default_rng(1)
    per_sensor = 50
    streams = rng.normal(0, 1, (4, length + (per_sensor - 1) * hop, 3)).astype(np.float32)
    windows, ours = stream_windows(model, model.window, streams, rng)
    assert len(windows) == 200
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"x": windows})[0]
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert float(np.max(np.abs(ours - ref))) <= 1e-5 * scale


def test_window_graph_without_a_window_is_refused_with_the_option_to_pass(tmp_path):
    path = tmp_path / "net.onnx"
    export(_net("lstm", 1, False, "probabilities"), path)
    with pytest.raises(ModelFormatError, match=r"its head reads the last step\): pass window=N"):
        sl.load(path)
    export(_net("gru", 1, True, "every"), path)
    with pytest.raises(ModelFormatError, match="it has bidirectional or RNN layers"):
        sl.load(path)


class StateHead(nn.Module):
    """Heads on final states the engine cannot give: a lower layer's, one direction of a
    bidirectional layer, or the LSTM cell state."""

    def __init__(self, reads: str) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 12, 2, batch_first=True, bidirectional=reads == "backward")
        self.fc = nn.Linear(12, 4)
        self.reads = reads

    def forward(self, x):
        _, (h_n, c_n) = self.rnn(x)
        picked = {"lower": h_n[0], "backward": h_n[-1], "cell": c_n[-1]}[self.reads]
        return self.fc(picked)


@pytest.mark.parametrize(
    "reads,message",
    [
        ("lower", "reads the final state of .* direction 0; only the top layer's"),
        ("backward", "reads the final state of .* direction 1; only the top layer's"),
        ("cell", "reads Y_c"),
    ],
)
def test_heads_on_other_final_states_are_refused_by_name(tmp_path, reads, message):
    path = tmp_path / "net.onnx"
    export(StateHead(reads), path)
    with pytest.raises(ModelFormatError, match=message):
        sl.load(path, window=16)


def test_softmax_over_every_step_and_other_gathers_are_refused(tmp_path):
    from onnx import helper, numpy_helper

    def save(extra_nodes, output, constants=()):
        proto = lstm_graph()
        graph = proto.graph
        previous = graph.output[0].name
        for node in extra_nodes(previous):
            graph.node.append(node)
        graph.initializer.extend(constants)
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
        path = tmp_path / "edited.onnx"
        onnx.save(proto, str(path))
        return path

    path = save(lambda y: [helper.make_node("Softmax", [y], ["p"], name="soft", axis=-1)], "p")
    with pytest.raises(ModelFormatError, match="softmax over every step is not supported"):
        sl.load(path, window=8)
    first = numpy_helper.from_array(np.array(0, np.int64), "first")
    path = save(
        lambda y: [helper.make_node("Gather", [y, "first"], ["g"], name="pick", axis=1)],
        "g",
        [first],
    )
    with pytest.raises(
        ModelFormatError,
        match=r"'pick' \(Gather\): only a Gather of the last "
        r"step \(index -1\)",
    ):
        sl.load(path, window=8)


def test_convert_passes_the_window_to_the_onnx_importer(tmp_path, capsys):
    from streamlstm.cli import main

    path = tmp_path / "net.onnx"
    export(_net("lstm", 2, True, "probabilities"), path)
    target = tmp_path / "net.npz"
    assert main(["convert", str(path), str(target)]) == 2
    assert "pass window=N and hop=K" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(path),
                str(target),
                "--window",
                "64",
                "--hop",
                "8",
                "--classes",
                "a,b,c,d",
            ]
        )
        == 0
    )
    assert sl.load(target).window == sl.WindowSpec(64, 8, "probabilities", ("a", "b", "c", "d"))
