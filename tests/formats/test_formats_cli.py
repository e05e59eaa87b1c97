"""``streamlstm convert`` and ``streamlstm inspect``: outputs, files written, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx_graphs import WIDTH, lstm_graph

from streamlstm.cli import main
from streamlstm.formats import load
from streamlstm.formats._model_build import file_sha256


@pytest.fixture()
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "net.onnx"
    path.write_bytes(lstm_graph().SerializeToString())
    return path


def test_convert_onnx_to_native_with_options(onnx_file, tmp_path, capsys):
    out = tmp_path / "net.npz"
    code = main(
        [
            "convert",
            str(onnx_file),
            str(out),
            "--name",
            "fan-7",
            "--sample-rate",
            "200",
            "--channels",
            "x,y,z",
            "--input-mean",
            "1,2,3",
            "--input-std",
            "2,2,2",
            "--dtype",
            "float64",
        ]
    )
    assert code == 0
    assert "net.npz" in capsys.readouterr().out
    converted, source = load(out), load(onnx_file)
    assert (converted.name, converted.sample_rate, converted.channels) == (
        "fan-7",
        200.0,
        ("x", "y", "z"),
    )
    assert converted.dtype == np.float64
    assert converted.metadata["source"] == "onnx"
    xs = np.random.default_rng(0).normal(size=(40, WIDTH))
    # The converted model normalises its input: feed the source the normalised samples.
    np.testing.assert_allclose(
        converted.stream().run(xs),
        source.stream().run(((xs - [1, 2, 3]) / 2).astype(np.float32)),
        atol=1e-5,
    )


def test_convert_refuses_to_overwrite_without_force(onnx_file, tmp_path, capsys):
    out = tmp_path / "net.npz"
    assert main(["convert", str(onnx_file), str(out)]) == 0
    assert main(["convert", str(onnx_file), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(onnx_file), str(out), "--force"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "lstm"], "--kind: only for PyTorch files"),
        (["--config", "x.keras"], "--config: only for Keras .weights.h5"),
        (["--input-mean", "0,0,0"], "--input-mean and --input-std go together"),
        (["--input-mean", "0,0", "--input-std", "1,1"], "input_norm.mean"),
        (["--sample-rate", "-5"], "--sample-rate must be > 0"),
        (["--option", "bogus=1"], "option not understood"),
    ],
    ids=["kind", "config", "half_norm", "norm_width", "rate", "unknown_option"],
)
def test_convert_bad_options_exit_2(onnx_file, tmp_path, capsys, extra, message):
    assert main(["convert", str(onnx_file), str(tmp_path / "o.npz"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_convert_unreadable_and_unknown_inputs_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    assert main(["convert", str(broken), str(tmp_path / "o.npz")]) == 2
    assert "broken.onnx" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "model.tflite"), str(tmp_path / "o.npz")]) == 2
    assert "unknown weight file type" in capsys.readouterr().err
    assert main(["convert", str(broken), str(tmp_path / "o.bin")]) == 2
    assert ".npz" in capsys.readouterr().err


def test_convert_unwritable_output_exits_1(onnx_file, tmp_path, capsys):
    assert main(["convert", str(onnx_file), str(tmp_path / "no" / "such" / "dir.npz")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_inspect_json(onnx_file, capsys):
    assert main(["inspect", str(onnx_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx"
    assert info["file_sha256"] == file_sha256(onnx_file)
    assert info["architecture"] == "LSTM(3->4) -> Dense(4->2, linear)"
    assert info["parameter_count"] == 4 * 4 * 3 + 4 * 4 * 4 + 2 * 16 + 4 * 2 + 2
    assert info["layers"][0]["shapes"] == {
        "w_ih": [16, 3],
        "w_hh": [16, 4],
        "b_ih": [16],
        "b_hh": [16],
    }
    assert info["head"][0]["shapes"] == {"weight": [2, 4], "bias": [2]}
    assert info["input_norm"] is None and info["calibration"] is None
    assert info["metadata"]["onnx_input_layout"] == "time_first"


def test_inspect_text_of_converted_file(onnx_file, tmp_path, capsys):
    out = tmp_path / "n.npz"
    assert (
        main(["convert", str(onnx_file), str(out), "--input-mean", "0,0,0", "--input-std", "1,2,4"])
        == 0
    )
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bytes, native)" in text and file_sha256(out) in text
    assert "input_norm    mean [0.0, 0.0, 0.0] std [1.0, 2.0, 4.0]" in text
    assert "layers[0]     lstm tanh/sigmoid: w_ih(16, 3)" in text


def test_inspect_unreadable_exits_2(tmp_path, capsys):
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"not hdf5")
    assert main(["inspect", str(path)]) == 2
    assert "no architecture" in capsys.readouterr().err
