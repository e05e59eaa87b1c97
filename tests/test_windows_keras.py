"""Keras 3 window models against Keras itself: SimpleRNN, Bidirectional (concat), softmax
heads, TimeDistributed(Dense) autoencoders, random weights, windows streamed through the
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
        "simple_rnn_softmax": [layers.SimpleRNN(8, activation="relu"),
                               layers.Dense(4, activation="softmax")],
        "bi_lstm_lstm_softmax": [layers.Bidirectional(layers.LSTM(8, return_sequences=True)),
                                 layers.LSTM(6), layers.Dense(3, activation="softmax")],
        "bi_gru_every": [layers.Bidirectional(layers.GRU(6, return_sequences=True)),
                         layers.TimeDistributed(layers.Dense(INPUT_SIZE))],
        "bi_rnn_log_softmax": [layers.Bidirectional(layers.SimpleRNN(5, return_sequences=True)),
                               layers.SimpleRNN(6, activation="relu"),
                               layers.Dense(3, activation="log_softmax")],
        "lstm_autoencoder": [layers.LSTM(8, return_sequences=True),
                             layers.LSTM(8, return_sequences=True),
                             layers.TimeDistributed(layers.Dense(INPUT_SIZE))],
    }[name]


OUTPUTS = {"simple_rnn_softmax": "probabilities", "bi_lstm_lstm_softmax": "probabilities",
           "bi_gru_every": "every", "bi_rnn_log_softmax": "log_probabilities",
           "lstm_autoencoder": "every"}


def saved_model(keras, tmp_path, name: str, length: int, seed: int):
    model = keras.Sequential([keras.Input((length, INPUT_SIZE)),
                              *architecture(keras, name, length)])
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return model, path


@pytest.mark.parametrize("length,hop", [(16, 4), (128, 32)])
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_keras_window_models_stream_exactly_as_keras_predicts(keras, tmp_path, name, length,
                                                              hop):
    reference, path = saved_model(keras, tmp_path, name, length, seed=length)
    model = sl.load(path, window=length, hop=hop)
    assert model.window.output == OUTPUTS[name] and model.window.length == length
    rng = np.random.default_rng(1)
    sensors = 4
    steps = length + hop * (200 // sensors + 1)      # >= 200 windows in all
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
    assert main(["convert", str(path), str(out), "--window", "16", "--hop", "4",
                 "--classes", "normal,inner,ball,outer"]) == 0
    model = sl.load(out)
    assert model.window.describe() == ("window 16, hop 4, zero state, probabilities "
                                       "(normal, inner, ball, outer)")


def test_keras_window_models_need_their_window(keras, tmp_path):
    _, path = saved_model(keras, tmp_path, "bi_gru_every", 16, seed=4)
    with pytest.raises(ModelFormatError, match=r"a window model \(it has bidirectional or "
                                               r"SimpleRNN layers\): pass window=N"):
        sl.load(path)
    _, path = saved_model(keras, tmp_path, "simple_rnn_softmax", 16, seed=4)
    with pytest.raises(ModelFormatError,
                       match=r"a window model \(its head ends in a softmax\): pass window=N"):
        sl.load(path)


@pytest.mark.parametrize("shape,words", [
    ("bidirectional_last", r"layer 'bi' \(Bidirectional\): return_sequences=False: its output "
                           r"is the backward direction's final state"),
    ("repeat_vector", r"\(RepeatVector\): RepeatVector feeds the encoder's final state"),
    ("bidirectional_sum", r"merge_mode='sum' is not supported"),
    ("softmax_every_step", r"activation='softmax' is supported only on the final layer of a "
                           r"head that reads the last step"),
])
def test_keras_shapes_that_do_not_map_are_refused_by_name_and_reason(keras, tmp_path, shape,
                                                                     words):
    layers = keras.layers
    stack = {
        "bidirectional_last": [layers.Bidirectional(layers.LSTM(4), name="bi"),
                               layers.Dense(2, activation="softmax")],
        "repeat_vector": [layers.LSTM(8), layers.RepeatVector(16),
                          layers.LSTM(8, return_sequences=True),
                          layers.TimeDistributed(layers.Dense(INPUT_SIZE))],
        "bidirectional_sum": [layers.Bidirectional(layers.GRU(4, return_sequences=True),
                                                   merge_mode="sum"), layers.GRU(3)],
        "softmax_every_step": [layers.LSTM(4, return_sequences=True),
                               layers.Dense(3, activation="softmax")],
    }[shape]
    model = keras.Sequential([keras.Input((16, INPUT_SIZE)), *stack])
    path = tmp_path / f"{shape}.keras"
    model.save(path)
    with pytest.raises(ModelFormatError, match=words):
        sl.load(path, window=16, hop=4)
