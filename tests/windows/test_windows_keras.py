"""Keras 3 window models against Keras itself: SimpleRNN, Bidirectional (concat, returning
sequences or its final state), softmax heads, TimeDistributed(Dense) autoencoders and
LSTM -> RepeatVector -> LSTM autoencoders, random weights, windows streamed through the
WindowBank and compared with ``model.predict`` on the same windows as a batch (float32,
within 1e-5 of the output scale); and the Keras shapes still refused, by name and reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
from window_streams import stream_windows

import streamlstm as sl
from streamlstm.errors import ModelFormatError

TOLERANCE = 1e-5
INPUT_SIZE = 3


@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
    return keras


def architecture(keras, name: str, length: int) -> list:
    layers = keras.layers
    return {
        "simple_rnn_softmax": [
            layers.SimpleRNN(8, activation="relu"),
            layers.Dense(4, activation="softmax"),
        ],
        "bi_lstm_lstm_softmax": [
            layers.Bidirectional(layers.LSTM(8, return_sequences=True)),
            layers.LSTM(6),
            layers.Dense(3, activation="softmax"),
        ],
        "bi_gru_every": [
            layers.Bidirectional(layers.GRU(6, return_sequences=True)),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        "bi_rnn_log_softmax": [
            layers.Bidirectional(layers.SimpleRNN(5, return_sequences=True)),
            layers.SimpleRNN(6, activation="relu"),
            layers.Dense(3, activation="log_softmax"),
        ],
        "lstm_autoencoder": [
            layers.LSTM(8, return_sequences=True),
            layers.LSTM(8, return_sequences=True),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        # Bidirectional(return_sequences=False): the backward direction's final state.
        "bi_lstm_final_softmax": [
            layers.Bidirectional(layers.LSTM(8)),
            layers.Dense(4, activation="softmax"),
        ],
        "bi_gru_bi_rnn_final": [
            layers.Bidirectional(layers.GRU(6, return_sequences=True)),
            layers.Bidirectional(layers.SimpleRNN(5)),
            layers.Dense(2),
        ],
        # The sequence-to-sequence autoencoder: the encoder's final state fed to every step.
        "repeat_autoencoder": [
            layers.LSTM(8),
            layers.RepeatVector(length),
            layers.LSTM(8, return_sequences=True),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        "bi_repeat_autoencoder": [
            layers.LSTM(8, return_sequences=True),
            layers.Bidirectional(layers.GRU(6)),
            layers.RepeatVector(length),
            layers.GRU(7, return_sequences=True),
            layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
            layers.Dense(INPUT_SIZE),
        ],
    }[name]


OUTPUTS = {
    "simple_rnn_softmax": "probabilities",
    "bi_lstm_lstm_softmax": "probabilities",
    "bi_gru_every": "every",
    "bi_rnn_log_softmax": "log_probabilities",
    "lstm_autoencoder": "every",
    "bi_lstm_final_softmax": "probabilities",
    "bi_gru_bi_rnn_final": "last",
    "repeat_autoencoder": "every",
    "bi_repeat_autoencoder": "every",
}
#: How the window reads the chain: (final_state, encoder_layers).
READINGS = {
    "bi_lstm_final_softmax": (True, 0),
    "bi_gru_bi_rnn_final": (True, 0),
    "repeat_autoencoder": (False, 1),
    "bi_repeat_autoencoder": (False, 2),
}


def saved_model(keras, tmp_path, name: str, length: int, seed: int):
    model = keras.Sequential(
        [keras.Input((length, INPUT_SIZE)), *architecture(keras, name, length)]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in model.get_weights()])
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return model, path


@pytest.mark.parametrize("length,hop", [(16, 4), (128, 32)])
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_keras_window_models_stream_exactly_as_keras_predicts(keras, tmp_path, name, length, hop):
    reference, path = saved_model(keras, tmp_path, name, length, seed=length)
    model = sl.load(path, window=length, hop=hop)
    assert model.window.output == OUTPUTS[name] and model.window.length == length
    assert (model.window.final_state, model.window.encoder_layers) == READINGS.get(name, (False, 0))
    rng = np.random.default_rng(1)
    sensors = 4
    steps = length + hop * (200 // sensors + 1)  # >= 200 windows in all
    streams = rng.normal(0, 1, (sensors, steps, INPUT_SIZE)).astype(np.float32)
    windows, ours = stream_windows(model, model.window, streams, rng)
    assert len(windows) >= 200
    expected = reference.predict(windows, verbose=0, batch_size=256)
    scale = max(1.0, float(np.max(np.abs(expected))))
    error = float(np.max(np.abs(ours - expected)))
    assert error <= TOLERANCE * scale, f"max error {error:.3g} at scale {scale:.3g}"


def test_convert_reads_a_keras_window_classifier_with_its_classes(keras, tmp_path, capsys):
    from streamlstm.cli import main

    _, path = saved_model(keras, tmp_path, "simple_rnn_softmax", 16, seed=3)
    out = tmp_path / "classifier.npz"
    assert (
        main(
            [
                "convert",
                str(path),
                str(out),
                "--window",
                "16",
                "--hop",
                "4",
                "--classes",
                "normal,inner,ball,outer",
            ]
        )
        == 0
    )
    model = sl.load(out)
    assert model.window.describe() == (
        "window 16, hop 4, zero state, probabilities (normal, inner, ball, outer)"
    )


def test_keras_window_models_need_their_window(keras, tmp_path):
    _, path = saved_model(keras, tmp_path, "bi_gru_every", 16, seed=4)
    with pytest.raises(
        ModelFormatError,
        match=r"a window model \(it has bidirectional or "
        r"SimpleRNN layers\): pass window=N",
    ):
        sl.load(path)
    _, path = saved_model(keras, tmp_path, "simple_rnn_softmax", 16, seed=4)
    with pytest.raises(
        ModelFormatError, match=r"a window model \(its head ends in a softmax\): pass window=N"
    ):
        sl.load(path)


def test_the_final_state_and_the_encoder_survive_convert_and_inspect(keras, tmp_path, capsys):
    from streamlstm.cli import main

    _, path = saved_model(keras, tmp_path, "bi_repeat_autoencoder", 16, seed=5)
    with pytest.raises(
        ModelFormatError,
        match=r"a window model \(it repeats its encoder's "
        r"final state over the window \(RepeatVector\)\)",
    ):
        sl.load(path)
    out = tmp_path / "autoencoder.npz"
    assert main(["convert", str(path), str(out), "--window", "16", "--hop", "8"]) == 0
    assert sl.load(out).window.encoder_layers == 2
    assert main(["inspect", str(out)]) == 0
    assert (
        "window 16, hop 8, zero state, every, encoder of 2 layer(s) whose final state "
        "feeds every decoder step"
    ) in capsys.readouterr().out
    _, path = saved_model(keras, tmp_path, "bi_lstm_final_softmax", 16, seed=6)
    assert main(["convert", str(path), str(out), "--window", "16", "--force"]) == 0
    assert sl.load(out).window.final_state
    assert main(["inspect", str(out)]) == 0
    assert "probabilities, read from the final state" in capsys.readouterr().out


@pytest.mark.parametrize(
    "shape,words",
    [
        (
            "repeat_after_dense",
            r"layer 'repeat' \(RepeatVector\): a Dense layer between the "
            r"encoder and RepeatVector is not supported",
        ),
        (
            "repeat_wrong_length",
            r"layer 'repeat' \(RepeatVector\): n=20 decoder steps for a "
            r"window of 16 samples",
        ),
        ("repeat_twice", r"layer 'repeat_again' \(RepeatVector\): a second RepeatVector"),
        (
            "repeat_without_decoder",
            r"layer 'repeat' \(RepeatVector\): supported only when a "
            r"recurrent decoder layer follows it",
        ),
        ("bidirectional_sum", r"merge_mode='sum' is not supported"),
        (
            "softmax_every_step",
            r"activation='softmax' is supported only on the final layer of a "
            r"head that reads the last step",
        ),
    ],
)
def test_keras_shapes_that_do_not_map_are_refused_by_name_and_reason(keras, tmp_path, shape, words):
    layers = keras.layers
    stack = {
        "repeat_after_dense": [
            layers.LSTM(8),
            layers.Dense(4),
            layers.RepeatVector(16, name="repeat"),
            layers.LSTM(8, return_sequences=True),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        "repeat_wrong_length": [
            layers.LSTM(8),
            layers.RepeatVector(20, name="repeat"),
            layers.LSTM(8, return_sequences=True),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        "repeat_twice": [
            layers.LSTM(8),
            layers.RepeatVector(16),
            layers.LSTM(8),
            layers.RepeatVector(16, name="repeat_again"),
            layers.LSTM(8, return_sequences=True),
            layers.Dense(INPUT_SIZE),
        ],
        "repeat_without_decoder": [
            layers.LSTM(8),
            layers.RepeatVector(16, name="repeat"),
            layers.TimeDistributed(layers.Dense(INPUT_SIZE)),
        ],
        "bidirectional_sum": [
            layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode="sum"),
            layers.GRU(3),
        ],
        "softmax_every_step": [
            layers.LSTM(4, return_sequences=True),
            layers.Dense(3, activation="softmax"),
        ],
    }[shape]
    model = keras.Sequential([keras.Input((16, INPUT_SIZE)), *stack])
    path = tmp_path / f"{shape}.keras"
    model.save(path)
    with pytest.raises(ModelFormatError, match=words):
        sl.load(path, window=16, hop=4)
