"""The training recipe on tiny data: reproducible, loads, runs, detects."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.formats import load, save
from streamlstm.train import train

TINY = dict(hidden=8, epochs=3, seq_len=16, windows_per_epoch=64, batch_size=16,
            progress=False, calibration={"warmup": 5})


def two_units(count, seed=0):
    """Channels in very different units: one around 1e3, one around 1e-3."""
    rng = np.random.default_rng(seed)
    t = np.arange(count)
    return np.stack([1000 + 50 * np.sin(0.3 * t), 1e-3 * np.cos(0.3 * t)], axis=1) * (
        1 + 0.02 * rng.normal(size=(count, 2)))


def test_training_is_reproducible_and_the_model_loads_and_runs(tmp_path):
    data = two_units(400)
    first = train(data, seed=3, **TINY)
    second = train(data, seed=3, **TINY)
    a, b = first.model, second.model
    np.testing.assert_array_equal(a.layers[0].w_ih, b.layers[0].w_ih)
    assert first.history == second.history
    assert a.calibration == b.calibration
    np.testing.assert_allclose(a.input_norm.mean, data[:320].mean(axis=0), rtol=1e-5)
    loaded = load(save(a, tmp_path / "m.npz"))
    preds = loaded.stream().run(data[:50])
    assert preds.shape == (50, 2) and np.all(np.isfinite(preds))
    det = sl.Detector(loaded)
    broken = two_units(200, seed=1)
    broken[100:, 0] += 400  # a big step on the large-unit channel
    events = det.update(["s"] * 200, broken, np.arange(200) * 0.02)
    assert [e.kind for e in events][:1] == ["start"]
    assert events[0].t >= 2.0


def test_training_on_features(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3000, 2)) * [1.0, 0.01]
    result = train(raw, features={"window": 32, "hop": 16, "stats": ["log_rms", "kurtosis"]},
                   **TINY)
    model = result.model
    assert model.input_size == 4 and model.metadata["features"]["hop"] == 16
    assert model.channels == ("c0.log_rms", "c0.kurtosis", "c1.log_rms", "c1.kurtosis")
    det = sl.Detector(model)
    det.update(["s"] * 500, raw[:500], np.arange(500) / 1000)
    assert np.isfinite(det.last_scores[-1])


def test_train_command(tmp_path, capsys):
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, two_units(300), delimiter=",", header="big,small", comments="")
    out = tmp_path / "model.npz"
    code = main(["train", "--data", str(csv), "--out", str(out), "--hidden", "8", "--epochs",
                 "2", "--seq-len", "16", "--windows-per-epoch", "32", "--warmup", "5",
                 "--quiet", "--sample-rate", "50"])
    assert code == 0, capsys.readouterr().err
    model = load(out)
    assert model.channels == ("big", "small") and model.sample_rate == 50
    assert model.calibration["warmup"] == 5 and model.name == "model"


def test_train_refuses_data_it_cannot_use():
    with pytest.raises(sl.ShapeError, match="NaN"):
        train(np.full((100, 2), np.nan), **TINY)
    with pytest.raises(sl.ShapeError, match="too short"):
        train(np.zeros((5, 2)), **TINY)
