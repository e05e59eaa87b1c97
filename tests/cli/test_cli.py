"""The command line as a person meets it: help, pipes, file permissions, readable objects."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import streamlstm as sl
from streamlstm.cli import COMMANDS, main
from streamlstm.formats import save

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", *args],
        input=input_text,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_bare_command_prints_help_with_every_subcommand(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "exit codes:" in text
    assert "one subcommand per module" not in text
    for name in COMMANDS:
        assert name in text


def test_subcommand_help_shows_defaults(capsys):
    try:
        main(["calibrate", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "(default: " in capsys.readouterr().out


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    model = save(sl.random_model(3, [8], output_size=3, seed=1), tmp_path / "m.npz")
    lines = "\n".join("1,2,3" for _ in range(20_000)) + "\n"
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    writer = subprocess.run(
        [sys.executable, "-m", "streamlstm.cli", "step", str(model)],
        input=lines,
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        timeout=120,
    )
    reader.stdin.close()
    reader.wait(10)
    assert writer.returncode == 0
    assert "Traceback" not in writer.stderr and "BrokenPipeError" not in writer.stderr


def test_inspect_into_head_has_no_traceback(tmp_path):
    model = save(sl.random_model(3, [8], output_size=3, seed=1), tmp_path / "m.npz")
    done = subprocess.run(
        f"{sys.executable} -m streamlstm.cli inspect {model} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert "Traceback" not in done.stderr


def test_written_models_follow_the_umask(tmp_path):
    model = sl.random_model(3, [8], output_size=3, seed=1)
    old = os.umask(0o022)
    try:
        path = save(model, tmp_path / "shared.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a service user can read it
    old = os.umask(0o077)
    try:
        path = save(model, tmp_path / "private.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_models_and_layers_print_as_a_summary():
    model = sl.random_model(3, [64, 32], output_size=3, seed=0)
    text = repr(model)
    assert len(text) < 200 and "LSTM(3->64)" in text and "parameters" in text
    assert repr(model.layers[0]) == "RecurrentLayer(lstm 3->64, float32)"
    assert repr(model.head[0]) == "DenseLayer(32->3, linear, float32)"


def test_every_train_option_has_help_text_and_its_default(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (
        ("--hidden", "32"),
        ("--layers", "1"),
        ("--epochs", "40"),
        ("--lr", "0.003"),
        ("--seq-len", "32"),
        ("--patience", "5"),
    ):
        after = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert len(after.split("(default:")[0].split()) >= 2, (option, after)  # a help text
        assert f"(default: {default})" in after, (option, after)
    # Durations default to the recipe's values: train makes a calibration, reads none.
    assert "model's calibration" not in text
    for option, default in (("--warmup-steps", "50 steps"), ("--quiet-s", "1.0 s")):
        assert f"(default: {default})" in text.split(f" {option} ", 1)[1].split(" --", 1)[0]
