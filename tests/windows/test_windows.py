"""Window models apart from framework parity: the spec, the native format, convert/inspect,
refusals on the streaming paths, the ring buffer's bookkeeping, and the Keras message."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.errors import ModelFormatError, ShapeError
from streamlstm.formats.native import model_sha256
from streamlstm.model import Model, dense_layer, gru_layer, lstm_layer, rnn_layer
from streamlstm.window_spec import WindowSpec
from streamlstm.windows import evaluate_windows
from streamlstm.windows.bank import SHARE_MIN_WORK, STEP_OVERHEAD


def bidirectional_rnn_model(dtype=np.float64, seed=0) -> Model:
    """A 2-layer bidirectional ReLU RNN with a 3-class head, random weights."""
    rng = np.random.default_rng(seed)

    def rnn(width):
        return rnn_layer(
            rng.normal(0, 0.3, (6, width)),
            rng.normal(0, 0.3, (6, 6)),
            rng.normal(0, 0.1, 6),
            rng.normal(0, 0.1, 6),
            activation="relu",
            dtype=dtype,
        )

    layers = [
        dataclasses.replace(rnn(2), backward=rnn(2)),
        dataclasses.replace(rnn(12), backward=rnn(12)),
    ]
    head = (dense_layer(rng.normal(0, 0.3, (3, 12)), rng.normal(0, 0.1, 3), dtype=dtype),)
    spec = WindowSpec(8, 2, "probabilities", ("normal", "inner", "ball"))
    return Model(
        layers=tuple(layers), head=head, name="bi-rnn", metadata={"window": spec.to_metadata()}
    )


# -- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,words",
    [
        ({"length": 0, "hop": 1}, "window.length: expected a positive integer"),
        ({"length": 8, "hop": True}, "window.hop: expected a positive integer"),
        ({"length": 8, "hop": 2, "output": "softmax"}, "window.output: 'softmax' is not one of"),
        ({"length": 8, "hop": 2, "initial_state": "carried"}, "each window starts from the zero"),
        ({"length": 8, "hop": 2, "output": "every", "classes": ("a", "b")}, "per-window output"),
        ({"length": 8, "hop": 2, "classes": ("a", "a")}, "names repeat"),
        ({"length": 1 << 20, "hop": 2}, "over the limit"),
        (
            {"length": 8, "hop": 2, "output": "every", "final_state": True},
            "a final state is one vector per window",
        ),
        (
            {"length": 8, "hop": 2, "final_state": "yes"},
            "window.final_state: expected true or false",
        ),
        (
            {"length": 8, "hop": 2, "encoder_layers": -1},
            "window.encoder_layers: expected an integer",
        ),
    ],
)
def test_window_spec_refuses_bad_fields(fields, words):
    with pytest.raises(ShapeError, match=words):
        WindowSpec(**fields)


def test_window_spec_round_trips_through_metadata_and_is_checked_against_the_model():
    spec = WindowSpec(128, 32, "log_probabilities", ("a", "b", "c"))
    assert WindowSpec.from_metadata({"window": spec.to_metadata()}) == spec
    assert WindowSpec.from_metadata({}) is None
    with pytest.raises(ShapeError, match=r"unknown key\(s\) \['lenght'\]"):
        WindowSpec.from_metadata({"window": {"lenght": 3, "hop": 1}})
    model = sl.random_model(3, [8], output_size=2)
    with pytest.raises(ShapeError, match="3 names for a model with 2 outputs"):
        model.replace(metadata={"window": spec.to_metadata()})
    with pytest.raises(ShapeError, match="needs at least 2 outputs"):
        sl.random_model(3, [8], output_size=1).replace(
            metadata={"window": {"length": 4, "hop": 1, "output": "probabilities"}}
        )
    # The final state and the encoder are stored only when set, and checked against the layers.
    assert "final_state" not in spec.to_metadata()
    reading = WindowSpec(16, 4, "every", encoder_layers=1)
    assert WindowSpec.from_metadata({"window": reading.to_metadata()}) == reading
    final = WindowSpec(16, 4, final_state=True)
    assert WindowSpec.from_metadata({"window": final.to_metadata()}) == final
    with pytest.raises(ShapeError, match=r"1 encoder layer\(s\) leave no decoder layer"):
        sl.random_model(3, [8]).with_window(reading)


# -- the final state and the encoder (Keras return_sequences=False, RepeatVector) ---------


def bidirectional_lstm(width: int, hidden: int, rng: np.random.Generator):
    def direction():
        return lstm_layer(
            rng.normal(0, 0.4, (4 * hidden, width)),
            rng.normal(0, 0.4, (4 * hidden, hidden)),
            rng.normal(0, 0.1, 4 * hidden),
            rng.normal(0, 0.1, 4 * hidden),
            dtype=np.float64,
        )

    return dataclasses.replace(direction(), backward=direction())


def test_final_state_reads_the_backward_direction_at_the_first_step():
    """A bidirectional top layer's final state: forward output at the last step, backward at
    the first; the same head then reads it. Without a bidirectional top it is the last step."""
    rng = np.random.default_rng(3)
    layers = (bidirectional_lstm(2, 5, rng), bidirectional_lstm(10, 4, rng))
    head = (dense_layer(rng.normal(0, 0.4, (3, 8)), rng.normal(0, 0.1, 3), dtype=np.float64),)
    bare, headed = Model(layers=layers), Model(layers=layers, head=head)
    windows = rng.normal(0, 1, (7, 12, 2))
    every = evaluate_windows(bare, windows, output="every")
    state = np.concatenate([every[:, -1, :4], every[:, 0, 4:]], axis=1)
    final = bare.with_window(WindowSpec(12, 4, final_state=True))
    np.testing.assert_allclose(evaluate_windows(final, windows), state, rtol=0, atol=1e-12)
    assert np.max(np.abs(state - every[:, -1])) > 1e-3  # the two readings differ
    logits = headed.with_window(WindowSpec(12, 4, "log_probabilities", final_state=True))
    expected = state @ head[0].weight.T + head[0].bias
    expected -= np.log(np.exp(expected).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(evaluate_windows(logits, windows), expected, rtol=0, atol=1e-12)
    unidirectional = sl.random_model(2, [6], output_size=2, dtype=np.float64)
    np.testing.assert_array_equal(
        evaluate_windows(unidirectional.with_window(WindowSpec(12, 4, final_state=True)), windows),
        evaluate_windows(unidirectional, windows),
    )
    # Every step of a final-state model is its plain every-step output.
    np.testing.assert_array_equal(evaluate_windows(final, windows, output="every"), every)


def test_an_encoder_feeds_its_final_state_to_every_decoder_step():
    """encoder_layers=n: layers n+1.. run on the n-th layer's final state repeated over the
    window, exactly as the decoder alone would run on that repeated input."""
    rng = np.random.default_rng(4)
    encoder = (bidirectional_lstm(3, 5, rng),)
    decoder = (
        lstm_layer(rng.normal(0, 0.4, (24, 10)), rng.normal(0, 0.4, (24, 6)), dtype=np.float64),
        bidirectional_lstm(6, 4, rng),
    )
    head = (dense_layer(rng.normal(0, 0.4, (3, 8)), rng.normal(0, 0.1, 3), dtype=np.float64),)
    model = Model(layers=encoder + decoder, head=head).with_window(
        WindowSpec(9, 9, "every", encoder_layers=1)
    )
    windows = rng.normal(0, 1, (6, 9, 3))
    states = evaluate_windows(
        Model(layers=encoder).with_window(WindowSpec(9, 3, final_state=True)), windows
    )
    expected = evaluate_windows(
        Model(layers=decoder, head=head), np.repeat(states[:, None], 9, axis=1), output="every"
    )
    ours = evaluate_windows(model, windows)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    bank = model.windows()
    out = bank.push(["a"] * 18, windows[:2].reshape(18, 3))
    np.testing.assert_allclose(out.values, ours[:2], rtol=0, atol=1e-12)
    assert out.reconstruction_error.shape == (2,)
    # A spec override keeps the trained structure or is refused.
    assert model.windows(spec=dataclasses.replace(model.window, hop=3)).spec.hop == 3
    with pytest.raises(ShapeError, match="was trained with final_state=False, encoder_layers=1"):
        model.windows(spec=WindowSpec(9, 3, "every"))


# -- streaming paths refuse window-only models -------------------------------------------


def test_streams_and_banks_refuse_window_models_pointing_to_the_window_api():
    windowed = sl.random_model(3, [8], output_size=2).replace(
        metadata={"window": {"length": 16, "hop": 4}}
    )
    for model, words in ((bidirectional_rnn_model(), "bidirectional"), (windowed, "window model")):
        for start in (model.stream, model.bank, lambda m=model: sl.Bank(m)):
            with pytest.raises(ShapeError, match=rf"{words}.*model\.windows\(\)"):
                start()
    rng = np.random.default_rng(0)
    plain_rnn = Model(layers=(rnn_layer(rng.normal(size=(4, 3)), rng.normal(size=(4, 4))),))
    with pytest.raises(ShapeError, match="plain RNN, supported for window models only"):
        plain_rnn.stream()
    with pytest.raises(ShapeError, match="declares no window"):
        plain_rnn.windows()


def test_unidirectional_window_equals_a_fresh_stream_over_the_window():
    """With one direction, a window is exactly a stream started from zero on its samples."""
    model = sl.random_model(3, [20, 12], kind="gru", output_size=3, dtype=np.float64)
    rng = np.random.default_rng(1)
    windows = rng.normal(0, 1, (5, 16, 3))
    every = evaluate_windows(model, windows, output="every")
    for window, ours in zip(windows, every, strict=True):
        np.testing.assert_allclose(ours, model.stream().run(window), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(evaluate_windows(model, windows), every[:, -1])


def test_windows_split_across_threads_equal_one_thread_bit_exact():
    """301 windows of 8 steps: two threads each take a slice (of at least SHARE_MIN_WORK,
    cut at a multiple of the four windows run in lockstep), one slice holding a NaN
    window, and give what one thread gives, bit for bit."""
    model = bidirectional_rnn_model()
    count = 301
    weights = model.parameter_count + STEP_OVERHEAD
    assert count * 8 * weights >= 2 * SHARE_MIN_WORK  # enough work for two shares
    windows = np.random.default_rng(2).normal(0, 1, (count, 8, 2))
    windows[200, 3, 1] = np.nan
    for output in ("probabilities", "every"):
        one = evaluate_windows(model, windows, output=output, threads=1)
        two = evaluate_windows(model, windows, output=output, threads=2)
        np.testing.assert_array_equal(two, one)
        assert np.isnan(one[200]).all() and not np.isnan(np.delete(one, 200, axis=0)).any()


# -- the bank's bookkeeping ---------------------------------------------------------------


def test_window_bank_counts_hops_per_sensor_and_forgets():
    model = bidirectional_rnn_model()
    bank = model.windows(capacity=1)
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, (20, 2)), rng.normal(0, 1, (9, 2))
    out = bank.push(["a"] * 7 + ["b"] * 9, np.vstack([a[:7], b]))
    assert out.sensors == ["b"] and out.end_index.tolist() == [7]
    assert out.batch_index.tolist() == [14]
    out = bank.push(["a"] * 13, a[7:])
    assert out.end_index.tolist() == [7, 9, 11, 13, 15, 17, 19]
    np.testing.assert_allclose(
        out.values,
        evaluate_windows(model, np.stack([a[e - 7 : e + 1] for e in out.end_index])),
        rtol=0,
        atol=0,
    )
    np.testing.assert_allclose(out.values.sum(axis=1), 1.0, atol=1e-12)
    assert out.labels == [("normal", "inner", "ball")[i] for i in out.predicted]
    assert bank.sample_count("a") == 20 and len(bank) == 2 and bank.capacity >= 2
    bank.reset("a")
    assert bank.sample_count("a") == 0 and bank.sample_count("b") == 9
    out = bank.push(["a"] * 9, a[:9])  # the window restarts: the first one ends 8 samples on
    assert out.end_index.tolist() == [7] and bank.rejected("b") == 0
    np.testing.assert_array_equal(out.values, evaluate_windows(model, a[None, :8]))
    bank.forget("a")
    assert len(bank.push(["a"] * 7, a[:7])) == 0  # a fresh ring: 8 samples before a window
    with pytest.raises(ShapeError, match="2 ids for 3 samples"):
        bank.push(["a", "b"], np.zeros((3, 2)))


def test_a_micro_batch_larger_than_the_window_buffer_is_evaluated_in_rounds(monkeypatch):
    from streamlstm.windows import bank as window_bank

    model = bidirectional_rnn_model()
    rng = np.random.default_rng(8)
    samples = rng.normal(0, 1, (400, 2))
    samples[101] = np.inf
    sensors = [f"s{i % 3}" for i in range(400)]
    whole = model.windows().push(sensors, samples)
    one_window = 8 * 2 + 3  # bytes per window / itemsize: input (8, 2) and output (1, 3)
    monkeypatch.setattr(window_bank, "WINDOW_BUFFER_BYTES", 5 * one_window * 8)
    calls = []
    assemble = window_bank.K.assemble_windows
    monkeypatch.setattr(
        window_bank.K, "assemble_windows", lambda *args: calls.append(1) or assemble(*args)
    )
    rounds = model.windows().push(sensors, samples)
    assert len(calls) == -(-len(whole) // 5)
    assert len(whole) == len(rounds) == 64 + 63 + 63 - 4 and rounds.skipped == whole.skipped == 4
    assert rounds.sensors == whole.sensors
    np.testing.assert_array_equal(rounds.batch_index, whole.batch_index)
    np.testing.assert_array_equal(rounds.end_index, whole.end_index)
    np.testing.assert_array_equal(rounds.values, whole.values)


def test_autoencoder_windows_give_reconstruction_error():
    rng = np.random.default_rng(3)
    model = Model(
        layers=(
            lstm_layer(rng.normal(0, 0.3, (32, 2)), rng.normal(0, 0.3, (32, 8)), dtype=np.float64),
        ),
        head=(dense_layer(rng.normal(0, 0.3, (2, 8)), dtype=np.float64),),
        metadata={"window": {"length": 6, "hop": 3, "output": "every"}},
    )
    stream = rng.normal(0, 1, (12, 2))
    out = model.windows().push([7] * 12, stream)
    assert out.values.shape == (3, 6, 2) and out.sensors == [7, 7, 7]
    expected = [
        np.mean((out.values[i] - stream[e - 5 : e + 1]) ** 2) for i, e in enumerate(out.end_index)
    ]
    np.testing.assert_allclose(out.reconstruction_error, expected, rtol=1e-12)


# -- native format ------------------------------------------------------------------------


def test_native_round_trip_of_a_bidirectional_rnn_window_model(tmp_path):
    model = bidirectional_rnn_model()
    path = sl.save(model, tmp_path / "bi.npz")
    loaded = sl.load(path)
    assert loaded.window == model.window and loaded.layers[1].backward.activation == "relu"
    assert model_sha256(loaded) == model_sha256(model)
    windows = np.random.default_rng(4).normal(0, 1, (3, 8, 2))
    np.testing.assert_array_equal(
        evaluate_windows(loaded, windows), evaluate_windows(model, windows)
    )


def test_unidirectional_models_keep_their_content_hash():
    """The bidirectional flag is written only when set: existing files' hashes stand."""
    from streamlstm.formats.native import _architecture

    model = sl.random_model(3, [8], output_size=2)
    assert "bidirectional" not in _architecture(model)["layers"][0]


def test_native_file_missing_a_reverse_tensor_is_refused(tmp_path):
    path = sl.save(bidirectional_rnn_model(), tmp_path / "bi.npz")
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files if k != "layers.1.reverse.b_hh"}
    np.savez(tmp_path / "cut.npz", **members)
    with pytest.raises(ModelFormatError, match=r"missing tensor\(s\): layers\.1\.reverse\.b_hh"):
        sl.load(tmp_path / "cut.npz")


def test_native_file_with_a_malformed_bidirectional_flag_or_window_is_refused(tmp_path):
    path = sl.save(bidirectional_rnn_model(), tmp_path / "bi.npz")
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    meta = json.loads(members["__meta__"].tobytes())
    for edit, words in (
        (
            lambda m: m["architecture"]["layers"][0].update(bidirectional="yes"),
            r"layers\[0\]\.bidirectional: 'yes' has the wrong type",
        ),
        (
            lambda m: m["metadata"]["window"].update(hop=0),
            r"window\.hop: expected a positive integer",
        ),
    ):
        bad = json.loads(json.dumps(meta))
        edit(bad)
        members["__meta__"] = np.frombuffer(json.dumps(bad).encode(), np.uint8)
        np.savez(tmp_path / "bad.npz", **members)
        with pytest.raises(ModelFormatError, match=words):
            sl.load(tmp_path / "bad.npz")


# -- convert and inspect ------------------------------------------------------------------


def test_convert_declares_the_window_and_inspect_shows_it(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    state = {
        f"rnn.{k}": v
        for k, v in torch.nn.RNN(3, 8, bidirectional=True, batch_first=True).state_dict().items()
    }
    state.update({f"fc.{k}": v for k, v in torch.nn.Linear(16, 3).state_dict().items()})
    source = tmp_path / "bi.pt"
    torch.save(state, source)
    target = tmp_path / "bi.npz"
    assert main(["convert", str(source), str(target)]) == 2
    assert "plain nn.RNN" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(source),
                str(target),
                "--kind",
                "rnn_tanh",
                "--window",
                "64",
                "--hop",
                "16",
                "--output",
                "probabilities",
                "--classes",
                "a,b",
            ]
        )
        == 2
    )
    assert "2 names for a model with 3 outputs" in capsys.readouterr().err
    assert main(["convert", str(source), str(target), "--kind", "rnn_tanh", "--hop", "4"]) == 2
    assert "give --window too" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(source),
                str(target),
                "--kind",
                "rnn_tanh",
                "--window",
                "64",
                "--hop",
                "16",
                "--output",
                "probabilities",
                "--classes",
                "a,b,c",
            ]
        )
        == 0
    )
    assert "BiRNN(3->8, tanh)" in capsys.readouterr().out
    model = sl.load(target)
    assert model.window == WindowSpec(64, 16, "probabilities", ("a", "b", "c"))
    assert main(["inspect", str(target)]) == 0
    text = capsys.readouterr().out
    assert "window        window 64, hop 16, zero state, probabilities (a, b, c)" in text
    assert "streaming     no: layers[0] is bidirectional" in text
    assert main(["inspect", "--json", str(target)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["window"]["hop"] == 16 and info["layers"][0]["bidirectional"] is True
    # Without a window the file converts, with a note on how to run it.
    assert main(["convert", str(source), str(tmp_path / "nowin.npz"), "--kind", "rnn_tanh"]) == 0
    assert "give it a window (--window N --hop K)" in capsys.readouterr().err


def test_step_command_refuses_a_bidirectional_model_without_a_window(tmp_path, capsys):
    path = sl.save(bidirectional_rnn_model().with_window(None), tmp_path / "bi.npz")
    assert main(["step", str(path)]) == 2
    assert "cannot run as a stream: layers[0] is bidirectional" in capsys.readouterr().err


def test_gru_reset_before_window_equals_stream():
    rng = np.random.default_rng(5)
    layer = gru_layer(
        rng.normal(0, 0.4, (24, 3)),
        rng.normal(0, 0.4, (24, 8)),
        rng.normal(0, 0.1, 24),
        rng.normal(0, 0.1, 24),
        dtype=np.float64,
        reset_after=False,
    )
    model = Model(layers=(layer,))
    window = rng.normal(0, 1, (10, 3))
    np.testing.assert_allclose(
        evaluate_windows(model, window[None], output="every")[0],
        model.stream().run(window),
        rtol=0,
        atol=1e-12,
    )
