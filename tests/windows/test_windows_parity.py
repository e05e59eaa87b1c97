"""Window models against real PyTorch: every window a stream completes, evaluated from the zero
state, equals torch evaluating the same windows as one batch.

Networks: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (tanh, relu), 1-2 layers, bidirectional or
not, ``batch_first``, with random weights (torch's own initialisation), read back through the
state_dict importer. Heads: the ``SimpleLSTM`` shape (``out[:, -1, :]`` -> Linear ->
softmax / log-softmax, or raw), the same on the final state ``h_n`` (window
``final_state``: a bidirectional net's backward half is its output at the first step), and
an every-step autoencoder (Linear on every step).
Windows: W in {16, 128}, K in {1, W/4, W}, at least 200 windows per case from 4 sensors
pushed interleaved. Budgets relative to the output scale: 1e-5 float32, 1e-9 float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from window_streams import stream_windows

import streamlstm as sl
from streamlstm.formats.torch import load_torch
from streamlstm.window_spec import WindowSpec
from streamlstm.windows import evaluate_windows

torch = pytest.importorskip("torch")
from window_torch import WindowNet, check_close, torch_windows  # noqa: E402  (needs torch)

SENSORS = 4
MIN_WINDOWS = 200


def build(tmp_path, cell, layers, bidirectional, output, dtype, seed=0):
    torch.manual_seed(seed)
    net = WindowNet(cell, layers, bidirectional, output)
    net = net.double() if dtype == np.float64 else net.float()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    kind = cell if cell.startswith("rnn") else None
    model = load_torch(path, kind=kind, dtype=dtype)
    return net, model


CASES = [
    # cell, layers, bidirectional, output, W, K
    ("lstm", 1, False, "probabilities", 16, 1),
    ("lstm", 2, True, "probabilities", 128, 32),
    ("lstm", 1, True, "every", 16, 4),
    ("gru", 2, True, "last", 16, 4),
    ("gru", 1, False, "every", 128, 128),
    ("gru", 1, True, "log_probabilities", 128, 1),
    ("rnn_tanh", 2, True, "log_probabilities", 16, 16),
    ("rnn_tanh", 1, False, "last", 128, 32),
    ("rnn_relu", 1, False, "last", 128, 32),
    ("rnn_relu", 2, True, "every", 16, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "cell,layers,bidirectional,output,length,hop", CASES, ids=["-".join(map(str, c)) for c in CASES]
)
def test_streamed_windows_match_torch(
    tmp_path, cell, layers, bidirectional, output, length, hop, dtype
):
    net, model = build(tmp_path, cell, layers, bidirectional, output, dtype)
    classes = () if output == "every" else ("normal", "inner", "ball", "outer")
    model = model.with_window(WindowSpec(length, hop, output, classes if output != "last" else ()))
    per_sensor = -(-MIN_WINDOWS // SENSORS)
    steps = length + (per_sensor - 1) * hop
    rng = np.random.default_rng(1)
    streams = rng.normal(0, 1, (SENSORS, steps, 3)).astype(dtype)
    windows, ours = stream_windows(model, model.window, streams, rng)
    assert len(windows) == SENSORS * per_sensor >= MIN_WINDOWS
    ref = torch_windows(net, windows)
    check_close(ours, ref, dtype)
    # The batch API gives the same numbers as the stream.
    np.testing.assert_array_equal(evaluate_windows(model, windows), ours)


FINAL_STATE_CASES = [
    # cell, layers, output, W, K (all bidirectional: the final state differs from the last step)
    ("lstm", 2, "probabilities", 128, 32),
    ("gru", 1, "last", 16, 4),
    ("rnn_relu", 2, "log_probabilities", 16, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "cell,layers,output,length,hop",
    FINAL_STATE_CASES,
    ids=["-".join(map(str, c)) for c in FINAL_STATE_CASES],
)
def test_a_head_on_the_final_state_h_n_matches_torch(
    tmp_path, cell, layers, output, length, hop, dtype
):
    from streamlstm.cli import main

    torch.manual_seed(7)
    net = WindowNet(cell, layers, True, output, final_state=True)
    net = net.double() if dtype == np.float64 else net.float()
    source, target = tmp_path / "net.pt", tmp_path / "net.npz"
    torch.save(net.state_dict(), source)
    kind = ["--kind", cell] if cell.startswith("rnn") else []
    assert (
        main(
            [
                "convert",
                str(source),
                str(target),
                *kind,
                "--window",
                str(length),
                "--hop",
                str(hop),
                "--output",
                output,
                "--final-state",
                "--dtype",
                np.dtype(dtype).name,
            ]
        )
        == 0
    )
    model = sl.load(target)
    assert model.window == WindowSpec(length, hop, output, final_state=True)
    per_sensor = -(-MIN_WINDOWS // SENSORS)
    rng = np.random.default_rng(8)
    streams = rng.normal(0, 1, (SENSORS, length + (per_sensor - 1) * hop, 3)).astype(dtype)
    windows, ours = stream_windows(model, model.window, streams, rng)
    assert len(windows) >= MIN_WINDOWS
    check_close(ours, torch_windows(net, windows), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_projected_bidirectional_lstm_matches_torch(tmp_path, dtype):
    torch.manual_seed(3)
    net = torch.nn.LSTM(3, 24, 2, batch_first=True, bidirectional=True, proj_size=7)
    net = net.double() if dtype == np.float64 else net.float()
    path = tmp_path / "proj.pt"
    torch.save(net.state_dict(), path)
    model = load_torch(path, dtype=dtype)
    windows = np.random.default_rng(2).normal(0, 1, (200, 16, 3)).astype(dtype)
    with torch.inference_mode():
        ref = net(torch.from_numpy(windows))[0].numpy()
    check_close(evaluate_windows(model, windows, output="every"), ref, dtype)


def test_safetensors_bidirectional_gru_matches_torch(tmp_path):
    from streamlstm.formats._safetensors import write_safetensors

    torch.manual_seed(4)
    net = WindowNet("gru", 2, True, "probabilities").float()
    path = tmp_path / "net.safetensors"
    write_safetensors(path, {k: v.numpy() for k, v in net.state_dict().items()})
    model = sl.load(path)
    assert model.layers[0].backward is not None and model.layers[1].input_size == 40
    windows = np.random.default_rng(5).normal(0, 1, (200, 16, 3)).astype(np.float32)
    check_close(
        evaluate_windows(model, windows, output="probabilities"),
        torch_windows(net, windows),
        np.float32,
    )


def test_windows_with_a_rejected_sample_are_skipped_and_counted(tmp_path):
    net, model = build(tmp_path, "lstm", 1, True, "probabilities", np.float32)
    spec = WindowSpec(16, 4, "probabilities")
    bank = model.windows(spec=spec)
    rng = np.random.default_rng(6)
    stream = rng.normal(0, 1, (100, 3)).astype(np.float32)
    stream[50, 1] = np.nan
    out = bank.push(["a"] * 100, stream)
    # Windows end at 15, 19, ..., 99; those covering sample 50 end at 51..65: 51, 55, 59, 63.
    expected_ends = [e for e in range(15, 100, 4) if not e - 15 <= 50 <= e]
    assert out.end_index.tolist() == expected_ends
    assert out.skipped == 4 and bank.skipped("a") == 4 and bank.rejected("a") == 1
    windows = np.stack([stream[e - 15 : e + 1] for e in expected_ends])
    check_close(out.values, torch_windows(net, windows), np.float32)
    assert np.isnan(evaluate_windows(model, stream[40:56][None], output="probabilities")).all()
