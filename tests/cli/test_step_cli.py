"""``streamlstm step``: CSV samples in, one prediction line out per good sample."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.cli import main
from streamlstm.formats import save

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_file(tmp_path):
    return save(sl.random_model(3, [8], output_size=2, seed=4), tmp_path / "m.npz")


def parse(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])


def test_csv_file_in_predictions_out(tmp_path, model_file, capsys):
    xs = np.random.default_rng(0).normal(0, 1, (20, 3)).astype(np.float32)
    csv = tmp_path / "in.csv"
    csv.write_text("\n".join(",".join(repr(float(v)) for v in x) for x in xs) + "\n")
    assert main(["step", str(model_file), "--input", str(csv)]) == 0
    captured = capsys.readouterr()
    want = sl.formats.load(model_file).stream().run(xs)
    np.testing.assert_array_equal(parse(captured.out).astype(np.float32), want)
    assert captured.err == ""


def test_bad_lines_reported_with_numbers_and_kept_as_nan_rows(model_file, monkeypatch, capsys):
    lines = ["# x,y,z", "1,2,3", "", "1,2", "a,b,c", "1,nan,3", "4,5,inf", "0.5, -1 ,2"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["step", str(model_file)]) == 0
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors[0] == "line 4: expected 3 values, got 2; skipped"
    assert errors[1].startswith("line 5: not a number")
    assert errors[2].startswith("line 6: ") and "NaN or Inf" in errors[2]
    assert errors[3].startswith("line 7: ") and "NaN or Inf" in errors[3]
    assert len(errors) == 4
    stream = sl.formats.load(model_file).stream()
    good = stream.run(np.array([[1, 2, 3], [0.5, -1, 2]], np.float32))
    # One output row per sample line, in order: the four bad lines are rows of NaN.
    want = np.vstack([good[:1], np.full((4, 2), np.nan, np.float32), good[1:]])
    np.testing.assert_array_equal(parse(captured.out).astype(np.float32), want)


def test_loader_options_and_dtype(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    state = {
        **{f"lstm.{k}": v for k, v in torch.nn.LSTM(2, 4).state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    path = tmp_path / "w.pt"
    torch.save(state, path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("1,2\n3,4\n"))
    assert main(["step", str(path)]) == 2
    assert "pass head_activation=" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("1,2\n3,4\n"))
    assert (
        main(
            [
                "step",
                str(path),
                "-o",
                "head_activation=relu",
                "-o",
                "input_mean=[1,2]",
                "-o",
                "input_std=[2,2]",
                "--dtype",
                "float64",
            ]
        )
        == 0
    )
    model = sl.formats.load(
        path, head_activation="relu", input_mean=[1, 2], input_std=[2, 2], dtype=np.float64
    )
    want = model.stream().run(np.array([[1, 2], [3, 4]], np.float64))
    np.testing.assert_array_equal(parse(capsys.readouterr().out), want)


@pytest.mark.parametrize("argv_tail", [["--input", "/nonexistent/in.csv"], ["-o", "novalue"]])
def test_usage_errors_exit_2(model_file, argv_tail, capsys):
    assert main(["step", str(model_file), *argv_tail]) == 2
    assert capsys.readouterr().err.startswith("streamlstm step: ")


def test_model_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["step", str(bad)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert main(["step", str(tmp_path / "model.xyz")]) == 2
    assert "unknown weight file type" in capsys.readouterr().err
    assert main(["step", str(bad), "-o", "colour=1"]) == 2
    assert "unexpected keyword argument 'colour'" in capsys.readouterr().err


def test_pipe_through_the_console_command(model_file):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "step", str(model_file)],
        input="1,2,3\n4,5\n4,5,6\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 3 and rows[1] == "nan,nan"  # the bad line keeps its place
    assert result.stderr.strip() == "line 2: expected 3 values, got 2; skipped"


# -- window models: one line per completed window ------------------------------------------


def window_model(output: str) -> sl.Model:
    """A float64 GRU window model, W=6, K=2: 2 class probabilities, or 3 outputs per step."""
    model = sl.random_model(
        3, [5], kind="gru", output_size=2 if output != "every" else 3, seed=7, dtype=np.float64
    )
    return model.with_window(sl.WindowSpec(6, 2, output))


@pytest.mark.parametrize("output", ["probabilities", "every"])
def test_a_window_model_prints_each_completed_window_with_its_end_index(tmp_path, capsys, output):
    model = window_model(output)
    path = save(model, tmp_path / "w.npz")
    xs = np.random.default_rng(2).normal(0, 1, (15, 3))
    csv = tmp_path / "in.csv"
    csv.write_text("# a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in x) for x in xs))
    assert main(["step", str(path), "--input", str(csv)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = parse(captured.out)
    ends = np.arange(5, 15, 2)
    np.testing.assert_array_equal(rows[:, 0], ends)
    windows = np.stack([xs[e - 5 : e + 1] for e in ends])
    want = sl.windows.evaluate_windows(model, windows).reshape(len(ends), -1)
    np.testing.assert_array_equal(rows[:, 1:], want)  # .17g round-trips float64


def test_a_window_holding_a_bad_line_is_skipped_and_counted(tmp_path, monkeypatch, capsys):
    model = window_model("probabilities")
    path = save(model, tmp_path / "w.npz")
    xs = np.random.default_rng(3).normal(0, 1, (16, 3))
    lines = [",".join(repr(float(v)) for v in x) for x in xs]
    lines[3] = "1,2"  # sample 3: wrong field count
    lines[12] = "1,nan,3"  # sample 12: NaN
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(["", *lines]) + "\n"))
    assert main(["step", str(path)]) == 0
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors[0] == "line 5: expected 3 values, got 2; skipped, and the windows that hold it"
    assert errors[1] == ("line 14: sample holds NaN or Inf; skipped, and the windows that hold it")
    # Windows end at 5, 7, 9, 11, 13, 15; those holding sample 3 or 12 are skipped.
    kept = [e for e in range(5, 16, 2) if not (e - 5 <= 3 <= e or e - 5 <= 12 <= e)]
    assert kept == [9, 11]
    assert errors[2] == (
        "streamlstm step: 4 window(s) skipped (they held a rejected sample), "
        "0 left out (evaluation overflowed to NaN/Inf)"
    )
    rows = parse(captured.out)
    np.testing.assert_array_equal(rows[:, 0], kept)
    windows = np.stack([xs[e - 5 : e + 1] for e in kept])
    np.testing.assert_array_equal(rows[:, 1:], sl.windows.evaluate_windows(model, windows))
