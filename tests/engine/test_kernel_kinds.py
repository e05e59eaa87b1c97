"""Kind-specialised kernels: a model whose layers are all LSTM (or all GRU) is stepped by
kernels compiled for that cell only; they must compute exactly what the generic kernels
(``streamlstm.kernels.step``, both cells, each layer's kind read at run time) compute."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from streamlstm import kernels
from streamlstm.kernels import layout as L
from streamlstm.model import Model, dense_layer, gru_layer, lstm_layer
from streamlstm.packing import packed

D = 3


def _layer(rng, kind, width, hidden, proj=None, **options):
    gates = (4 if kind == "lstm" else 3) * hidden
    weights = [
        rng.normal(0, 0.4, (gates, width)),
        rng.normal(0, 0.4, (gates, proj or hidden)),
        rng.normal(0, 0.2, gates),
        rng.normal(0, 0.2, gates),
    ]
    if kind == "lstm":
        w_hr = None if proj is None else rng.normal(0, 0.4, (proj, hidden))
        return lstm_layer(*weights, w_hr=w_hr, **options)
    return gru_layer(*weights, **options)


def _model(name: str) -> Model:
    """Every path a kind prunes: full and partial unit blocks, default and other
    activations, the LSTM projection, both GRU reset placements, and a mix of kinds."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "lstm":  # 2 full blocks + a partial one; projection; hard_sigmoid gates
        layers = (
            _layer(rng, "lstm", D, 40, proj=8),
            _layer(rng, "lstm", 8, 16, recurrent_activation="hard_sigmoid"),
        )
    elif name == "gru":  # reset after (PyTorch) then before (Keras reset_after=False)
        layers = (
            _layer(rng, "gru", D, 33),
            _layer(rng, "gru", 33, 16, reset_after=False),
        )
    else:  # mixed kinds: the generic kernels themselves
        layers = (_layer(rng, "gru", D, 20), _layer(rng, "lstm", 20, 16))
    width = layers[-1].output_size
    head = (dense_layer(rng.normal(0, 0.4, (2, width)), rng.normal(0, 0.1, 2)),)
    return Model(layers=layers, head=head)


@pytest.mark.parametrize(
    ("name", "kind"), [("lstm", L.LSTM), ("gru", L.GRU), ("mixed", L.ANY_KIND)]
)
def test_kernel_kind_of_a_model(name, kind):
    assert packed(_model(name)).kernel_kind == kind
    # A mixed model runs on the public, generic kernels; the others on kernels of their own.
    assert (kernels.stream_kernels(kind) == (kernels.step, kernels.run)) == (kind == L.ANY_KIND)
    assert (kernels.bank_kernels(kind) == (kernels.bank_step_serial, kernels.bank_step)) == (
        kind == L.ANY_KIND
    )


@pytest.mark.parametrize("name", ["lstm", "gru", "mixed"])
def test_kind_specialised_kernels_equal_the_generic_kernel_bit_exact(name):
    model = _model(name)
    xs = np.random.default_rng(3).normal(0, 1, (60, D)).astype(model.dtype)
    xs[17, 1] = np.nan  # a rejected sample on the way

    pk = packed(model)
    state = np.zeros(pk.state_size, model.dtype)
    scratch = np.zeros(pk.scratch_size, model.dtype)
    generic = np.zeros((len(xs), model.output_size), model.dtype)
    codes = [
        kernels.step(pk.params, pk.layout, state, x, out, scratch)
        for x, out in zip(xs, generic, strict=True)
    ]
    assert codes.count(L.REJECTED_SAMPLE) == 1 and codes.count(L.OK) == len(xs) - 1

    stream = model.stream(on_invalid="skip")
    stepped = np.stack([stream.step(x) for x in xs])
    np.testing.assert_array_equal(stepped, generic)
    np.testing.assert_array_equal(stream.state_vector, state)
    np.testing.assert_array_equal(model.stream(on_invalid="skip").run(xs), generic)

    # The bank's tiles: five sensors (a tile of four and one alone), all fed the same.
    bank = model.bank(capacity=5, threads=1)
    banked = np.stack([bank.step(list(range(5)), np.repeat(x[None], 5, 0)) for x in xs])
    for sensor in range(5):
        np.testing.assert_array_equal(banked[:, sensor], generic)
