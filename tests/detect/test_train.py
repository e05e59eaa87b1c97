"""The training recipe on tiny data: reproducible, loads, runs, detects; its contracts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import streamlstm as sl  # noqa: E402
from streamlstm.cli import main  # noqa: E402
from streamlstm.formats import load, save  # noqa: E402
from streamlstm.train import recipe, train  # noqa: E402

TINY = dict(
    hidden=8,
    epochs=3,
    seq_len=16,
    windows_per_epoch=64,
    batch_size=16,
    progress=False,
    sample_rate=50.0,
    calibration={"warmup_steps": 5, "false_alarms_per_day": 5000},
)
pytestmark = pytest.mark.filterwarnings("ignore::streamlstm.detect.calibration.CalibrationWarning")


def two_units(count, seed=0):
    """Channels in very different units: one around 1e3, one around 1e-3."""
    rng = np.random.default_rng(seed)
    t = np.arange(count)
    return np.stack([1000 + 50 * np.sin(0.3 * t), 1e-3 * np.cos(0.3 * t)], axis=1) * (
        1 + 0.02 * rng.normal(size=(count, 2))
    )


@pytest.mark.parametrize("target", ["delta", "level"])
def test_training_is_reproducible_and_the_model_loads_and_runs(tmp_path, target):
    data = two_units(400)
    first = train(data, seed=3, target=target, **TINY)
    second = train(data, seed=3, target=target, **TINY)
    a, b = first.model, second.model
    np.testing.assert_array_equal(a.layers[0].w_ih, b.layers[0].w_ih)
    assert first.histories == second.histories and len(first.histories) == 3
    assert a.calibration == b.calibration and a.calibration["target"] == target
    # All rows are used: the normalisation is over the whole recording.
    np.testing.assert_allclose(a.input_norm.mean, data.mean(axis=0), rtol=1e-5)
    assert a.metadata["training"]["samples"] == 400
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
    result = train(
        raw, features={"window": 32, "hop": 16, "stats": ["log_rms", "kurtosis"]}, **TINY
    )
    model = result.model
    assert model.input_size == 4 and model.metadata["features"]["hop"] == 16
    assert model.channels == ("c0.log_rms", "c0.kurtosis", "c1.log_rms", "c1.kurtosis")
    det = sl.Detector(model)
    det.update(["s"] * 500, raw[:500], np.arange(500) / 1000)
    assert np.isfinite(det.last_scores[-1])


def test_dead_and_frozen_channels_are_masked_in_training_and_calibration():
    data = np.column_stack([two_units(400), np.full(400, 5.0), np.full(400, np.nan)])
    data[::15, 0] = np.nan  # scattered gaps in a live channel are carried forward
    model = train(data, **TINY).model
    assert model.calibration["mask"] == [1.0, 1.0, 0.0, 0.0]
    det = sl.Detector(model)
    det.update(["s"] * 100, data[:100], np.arange(100) * 0.02)
    assert det.rejected("s") == 0 and det.filled("s") == 7
    assert np.all(np.isfinite(det.export_state().states))


def test_early_stopping_keeps_the_best_epoch_of_a_constructed_loss_curve(monkeypatch):
    assert recipe.best_epoch([1.0, 0.8, 0.7, 0.75, 0.9], patience=2) == (3, True)
    assert recipe.best_epoch([1.0, 0.8, 0.7, 0.75], patience=2) == (3, False)
    assert recipe.best_epoch([0.5, 0.5, 0.6], patience=5) == (1, False)  # ties: earliest
    curve = iter([3.0, 2.0, 1.0, 1.5, 2.5] * 3)
    monkeypatch.setattr(recipe, "_held_out_loss", lambda net, held_out: next(curve))
    result = train(two_units(400), **{**TINY, "epochs": 10, "patience": 2})
    assert result.best_epochs == [3, 3, 3] and result.epochs == 3
    assert [len(h) for h in result.histories] == [5, 5, 5]  # stopped 2 epochs after best
    assert [h[2] for h in result.histories[0]] == [3.0, 2.0, 1.0, 1.5, 2.5]


def test_stopping_at_the_first_epoch_warns(monkeypatch):
    curve = iter(range(1, 100))  # the held-out loss only ever grows
    monkeypatch.setattr(recipe, "_held_out_loss", lambda net, held_out: float(next(curve)))
    with pytest.warns(recipe.TrainingWarning, match="first epoch"):
        result = train(two_units(400), **{**TINY, "epochs": 10, "patience": 2})
    assert result.best_epochs == [1, 1, 1] and result.epochs == 1


def test_training_restores_torch_global_state():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    try:
        train(two_units(400), threads=1, **TINY)
        assert torch.get_num_threads() == 2
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.equal(torch.get_rng_state(), rng_before)
    finally:
        torch.set_num_threads(threads)


def test_ctrl_c_keeps_the_best_model_so_far(monkeypatch):
    calls = iter([2.0, 1.0, KeyboardInterrupt])

    def held_out(net, data):
        value = next(calls)
        if value is KeyboardInterrupt:
            raise KeyboardInterrupt
        return value

    monkeypatch.setattr(recipe, "_held_out_loss", held_out)
    result = train(two_units(400), **{**TINY, "epochs": 10})
    assert result.interrupted and result.best_epochs == [2]
    assert result.model.calibration["threshold"] > 0
    assert result.model.metadata["training"]["interrupted"] is True


def test_train_command(tmp_path, capsys):
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, two_units(300), delimiter=",", header="big,small", comments="")
    out = tmp_path / "model.npz"
    code = main(
        [
            "train",
            "--data",
            str(csv),
            "--out",
            str(out),
            "--hidden",
            "8",
            "--epochs",
            "2",
            "--seq-len",
            "16",
            "--windows-per-epoch",
            "32",
            "--warmup-steps",
            "5",
            "--false-alarms-per-day",
            "5000",
            "--quiet",
            "--sample-rate",
            "50",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""  # --quiet (and not a terminal): no progress
    model = load(out)
    assert model.channels == ("big", "small") and model.sample_rate == 50
    assert model.calibration["warmup"] == 5 and model.name == "model"


def test_train_refuses_data_it_cannot_use():
    with pytest.raises(sl.ShapeError, match="every channel is masked"):
        train(np.full((100, 2), np.nan), **TINY)
    with pytest.raises(sl.ShapeError, match="too short"):
        train(np.zeros((5, 2)) + np.arange(5)[:, None], **TINY)


def test_train_command_saves_the_best_model_so_far_on_ctrl_c(tmp_path, capsys, monkeypatch):
    calls = iter([2.0, 1.0, KeyboardInterrupt])

    def held_out(net, data):
        value = next(calls)
        if value is KeyboardInterrupt:
            raise KeyboardInterrupt
        return value

    monkeypatch.setattr(recipe, "_held_out_loss", held_out)
    csv = tmp_path / "normal.csv"
    np.savetxt(csv, two_units(400), delimiter=",", header="big,small", comments="")
    out = tmp_path / "model.npz"
    code = main(
        [
            "train",
            "--data",
            str(csv),
            "--out",
            str(out),
            "--hidden",
            "8",
            "--seq-len",
            "16",
            "--windows-per-epoch",
            "32",
            "--warmup-steps",
            "5",
            "--quantile",
            "0.99",
            "--quiet",
            "--sample-rate",
            "50",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "interrupted: best model so far" in capsys.readouterr().out
    assert load(out).metadata["training"]["best_epochs"] == [2]


def test_recipe_defaults_and_durations_named_with_their_unit():
    """The defaults chosen on validation (max-pooled residual, no level term); a duration
    under its old name is resolved once, with a DeprecationWarning at the caller's line."""
    old_names = {**TINY, "calibration": {"warmup": 5, "false_alarms_per_day": 5000}}
    with pytest.warns(DeprecationWarning, match="'warmup' is deprecated") as caught:
        cal = train(two_units(300), **old_names).model.calibration
    deprecations = [w for w in caught if w.category is DeprecationWarning]
    assert len(deprecations) == 1 and deprecations[0].filename == __file__
    assert cal["pool"] == "max" and "level_center" not in cal and cal["warmup"] == 5
    level = {
        **TINY,
        "calibration": {
            "warmup_s": 0.1,
            "level": True,
            "pool": "rms",
            "false_alarms_per_day": 5000,
        },
    }
    cal = train(two_units(300), **level).model.calibration
    assert cal["pool"] == "rms" and len(cal["level_center"]) == 2 and cal["warmup"] == 5
