"""Small window models whose outputs are plain to compute, shared by the window-detector
tests on the CPU (``detect/``) and the GPU (``cuda/``)."""

from __future__ import annotations

import numpy as np

import streamlstm as sl
from streamlstm.model import Model, dense_layer, rnn_layer
from streamlstm.window_spec import WindowSpec

CLASSES = ("normal", "inner", "ball")


def channel_classifier(length: int = 8, hop: int = 4, output: str = "probabilities") -> Model:
    """A classifier whose class is the input channel that is on at the window's last step:
    channel 1 -> inner, channel 2 -> ball (p > 0.999), neither -> normal (p(normal) ~0.6).
    A tanh RNN without recurrence, so the expected windows are plain to compute."""
    rnn = rnn_layer(
        2.0 * np.eye(3),
        np.zeros((3, 3)),
        np.zeros(3),
        np.zeros(3),
        activation="tanh",
        dtype=np.float64,
    )
    head = dense_layer(
        np.array([[0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]]), np.array([1.0, 0, 0]), dtype=np.float64
    )
    spec = WindowSpec(length, hop, output, CLASSES)
    return Model(
        layers=(rnn,), head=(head,), name="channels", metadata={"window": spec.to_metadata()}
    )


def fault_sequence(rng: np.random.Generator) -> np.ndarray:
    """40 samples each of normal, inner, ball, normal (small noise on every channel)."""
    x = rng.normal(0, 0.01, (160, 3))
    x[40:80, 1] += 1.0
    x[80:120, 2] += 1.0
    return x


def autoencoder(seed: int = 0) -> Model:
    """A random GRU -> dense 'autoencoder' (output every step) of 2 channels, W=16, K=4."""
    model = sl.random_model(2, [6], kind="gru", output_size=2, seed=seed, dtype=np.float64)
    return model.replace(metadata={"window": WindowSpec(16, 4, "every").to_metadata()})
