"""CudaWindowBank against the CPU WindowBank: the same windows, outputs, skips and failures.

The CPU window bank is parity-tested against torch, Keras and onnxruntime
(``tests/windows/test_windows_parity.py`` and neighbours); here the GPU one must give what it
gives, push for push, within 1e-9 (float64) or 1e-5 (float32) of the output scale. Runs on
the CUDA simulator (see conftest.py) with tiny sizes and 8-thread blocks, or on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from window_streams import stream_windows

from streamlstm.errors import ShapeError
from streamlstm.formats.torch import load_torch
from streamlstm.kernels.layout import OK, REJECTED_SAMPLE
from streamlstm.model import Model, Normalization, dense_layer, gru_layer, lstm_layer, rnn_layer
from streamlstm.window_spec import WindowSpec
from streamlstm.windows import evaluate_windows

window_bank = pytest.importorskip("streamlstm.cuda.window_bank", reason="numba-cuda not installed")
from streamlstm.cuda import is_available  # noqa: E402
from streamlstm.cuda.window_tiles import window_kernel  # noqa: E402

if not is_available():
    pytest.skip(
        "no CUDA GPU and the simulator is off (NUMBA_ENABLE_CUDASIM=0)", allow_module_level=True
    )

D = 3
BLOCK = 8  # threads per block: the simulator runs a Python thread per CUDA thread


def _direction(rng, kind, width, hidden, dtype, **options):
    if kind == "rnn":
        return rnn_layer(
            rng.normal(0, 0.4, (hidden, width)),
            rng.normal(0, 0.4, (hidden, hidden)),
            rng.normal(0, 0.2, hidden),
            rng.normal(0, 0.2, hidden),
            dtype=dtype,
            **options,
        )
    gates = (4 if kind == "lstm" else 3) * hidden
    proj = options.pop("proj", None)
    args = [
        rng.normal(0, 0.4, (gates, width)),
        rng.normal(0, 0.4, (gates, proj or hidden)),
        rng.normal(0, 0.2, gates),
        rng.normal(0, 0.2, gates),
    ]
    if kind == "lstm":
        w_hr = None if proj is None else rng.normal(0, 0.4, (proj, hidden))
        return lstm_layer(*args, w_hr=w_hr, dtype=dtype, **options)
    return gru_layer(*args, dtype=dtype, **options)


def _layer(rng, kind, width, hidden, dtype, bidirectional=False, **options):
    forward = _direction(rng, kind, width, hidden, dtype, **dict(options))
    if not bidirectional:
        return forward
    return dataclasses.replace(
        forward, backward=_direction(rng, kind, width, hidden, dtype, **dict(options))
    )


# name: (layers as (kind, hidden, bidirectional, options), outputs, spec fields, dtype)
CASES = {
    "lstm_last": (
        [("lstm", 5, False, {}), ("lstm", 4, False, {"proj": 3})],
        2,
        {"output": "last"},
        np.float64,
    ),
    "gru_softmax": (
        [("gru", 5, False, {"reset_after": False})],
        3,
        {"output": "probabilities"},
        np.float64,
    ),
    "rnn_log_softmax": (
        [("rnn", 6, False, {"activation": "tanh"})],
        3,
        {"output": "log_probabilities"},
        np.float64,
    ),
    "lstm_every_f32": ([("lstm", 6, False, {})], D, {"output": "every"}, np.float32),
    "bi_lstm_softmax": (
        [("lstm", 4, True, {}), ("gru", 3, True, {})],
        3,
        {"output": "probabilities"},
        np.float64,
    ),
    "bi_rnn_final_state": (
        [("rnn", 4, True, {"activation": "relu"})],
        2,
        {"output": "last", "final_state": True},
        np.float64,
    ),
    "bi_gru_every": ([("gru", 4, True, {})], D, {"output": "every"}, np.float64),
    "encoder_decoder": (
        [("lstm", 4, True, {}), ("lstm", 5, False, {})],
        D,
        {"output": "every", "encoder_layers": 1},
        np.float64,
    ),
}


def _model(name: str) -> Model:
    layers_spec, outputs, fields, dtype = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    layers, width = [], D
    for kind, hidden, bidirectional, options in layers_spec:
        layer = _layer(rng, kind, width, hidden, dtype, bidirectional, **options)
        layers.append(layer)
        width = layer.output_size
    head = (
        dense_layer(rng.normal(0, 0.4, (5, width)), rng.normal(0, 0.1, 5), "relu", dtype=dtype),
        dense_layer(rng.normal(0, 0.4, (outputs, 5)), rng.normal(0, 0.1, outputs), dtype=dtype),
    )
    norm_in = Normalization(rng.normal(0, 1, D).astype(dtype), rng.uniform(0.5, 2, D).astype(dtype))
    spec = WindowSpec(length=5, hop=2, **fields)
    return Model(
        layers=tuple(layers),
        head=head,
        input_norm=norm_in,
        name=name,
        metadata={"window": spec.to_metadata()},
    )


def _tolerance(model: Model, values: np.ndarray) -> float:
    budget = 1e-9 if model.dtype == np.float64 else 1e-5
    return budget * max(1.0, float(np.max(np.abs(values))) if values.size else 1.0)


def _assert_same_push(cpu, gpu, ids, xs) -> int:
    """Push the same micro-batch to both banks, compare; return how many windows completed."""
    want, got = cpu.push(ids, xs), gpu.push(ids, xs)
    assert got.sensors == want.sensors
    np.testing.assert_array_equal(got.end_index, want.end_index)
    np.testing.assert_array_equal(got.batch_index, want.batch_index)
    assert (got.skipped, got.failed) == (want.skipped, want.failed)
    assert got.values.shape == want.values.shape
    np.testing.assert_allclose(
        got.values, want.values, rtol=0, atol=_tolerance(cpu.model, want.values)
    )
    if want.inputs is not None:
        np.testing.assert_array_equal(got.inputs, want.inputs)
    return len(got)


@pytest.mark.parametrize("name", list(CASES))
def test_pushes_match_the_cpu_window_bank(name):
    model = _model(name)
    cpu = model.windows(capacity=2)
    gpu = window_bank.CudaWindowBank(model, capacity=2, block_size=BLOCK)
    rng = np.random.default_rng(1)
    sensors = ["a", "b", "c"]
    completed = 0
    for size in (7, 4, 9):  # uneven micro-batches, sensors interleaved, rings wrap
        ids = [sensors[i] for i in rng.integers(0, len(sensors), size)]
        completed += _assert_same_push(cpu, gpu, ids, rng.normal(0, 1.5, (size, D)))
    assert completed >= 4
    for sensor in sensors:
        assert gpu.sample_count(sensor) == cpu.sample_count(sensor)
    assert gpu.launches >= 1


def test_windows_holding_a_rejected_sample_are_skipped_and_counted():
    model = _model("gru_softmax")
    cpu = model.windows(capacity=4)
    gpu = model.windows(capacity=4, device="cuda")
    assert isinstance(gpu, window_bank.CudaWindowBank)
    rng = np.random.default_rng(2)
    xs = rng.normal(0, 1, (16, D))
    xs[5, 1] = np.nan  # sensor "a": its windows ending at samples 4..6 hold it
    xs[8, 0] = np.inf  # sensor "b"
    ids = ["a", "b"] * 8
    _assert_same_push(cpu, gpu, ids, xs)
    _assert_same_push(cpu, gpu, ids, rng.normal(0, 1, (16, D)))
    for sensor in ("a", "b"):
        assert gpu.skipped(sensor) == cpu.skipped(sensor) > 0
        assert gpu.rejected(sensor) == cpu.rejected(sensor) == 1


def test_the_windows_of_many_sensors_run_in_one_launch():
    model = _model("lstm_last")
    cpu = model.windows(capacity=8)
    gpu = window_bank.CudaWindowBank(model, capacity=8, block_size=BLOCK)
    sensors = [f"s{i}" for i in range(40)]  # more than one tile of windows
    rng = np.random.default_rng(3)
    ids = sensors * 5  # each sensor's first window ends with this push
    _assert_same_push(cpu, gpu, ids, rng.normal(0, 1, (len(ids), D)))
    assert (gpu.launches, gpu.last_launch) == (1, 40)
    _assert_same_push(cpu, gpu, sensors * 2, rng.normal(0, 1, (80, D)))
    assert (gpu.launches, gpu.last_launch) == (2, 40)


def test_rings_move_between_cpu_and_gpu_window_banks():
    """The rings are host state in the CPU bank's layout: a snapshot taken from one bank
    continues in the other, window for window."""
    model = _model("bi_rnn_final_state")
    cpu = model.windows(capacity=2)
    rng = np.random.default_rng(8)
    cpu.push(["p", "q", "p", "q", "p"], rng.normal(0, 1, (5, D)))
    rows = [cpu.row(s) for s in ("p", "q")]
    snapshot = {name: array[rows] for name, array in cpu.row_arrays().items()}
    gpu = window_bank.CudaWindowBank(model, capacity=2, block_size=BLOCK)
    gpu.load_rows(["p", "q"], snapshot)
    assert _assert_same_push(cpu, gpu, ["q", "p"] * 4, rng.normal(0, 1, (8, D))) == 3
    assert gpu.sample_count("p") == cpu.sample_count("p") == 7


@pytest.mark.filterwarnings(
    "ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning"
)  # the simulator's numpy
def test_overflowing_windows_fail_as_on_the_cpu():
    model = _model("rnn_log_softmax")
    layer = model.layers[0]
    huge = dataclasses.replace(
        layer, activation="relu", w_hh=layer.w_hh * 0 + 1e170, w_ih=np.abs(layer.w_ih) * 1e170
    )
    model = model.replace(layers=(huge,))
    cpu = model.windows()
    gpu = window_bank.CudaWindowBank(model, block_size=BLOCK)
    xs = np.abs(np.random.default_rng(4).normal(0, 1, (6, D))) + 100
    want, got = cpu.push(["x"] * 6, xs), gpu.push(["x"] * 6, xs)
    assert want.failed == got.failed == 1 and len(got) == 0
    assert gpu.failed("x") == cpu.failed("x") == 1


def test_a_model_too_large_for_the_tiles_is_refused_by_name():
    rng = np.random.default_rng(5)
    big = _layer(rng, "lstm", D, 400, np.float32, bidirectional=True)
    model = Model(
        layers=(big,),
        head=(dense_layer(rng.normal(0, 0.1, (2, 800))),),
        name="wide",
        metadata={"window": WindowSpec(4, 1).to_metadata()},
    )
    with pytest.raises(ShapeError, match=r"wide: too large for the GPU window kernel.*'cpu'"):
        window_bank.CudaWindowBank(model)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        model.windows(device="tpu")
    with pytest.raises(ValueError, match="block_size"):
        window_bank.CudaWindowBank(model, block_size=0)


def test_benchmark_runs_on_the_simulator(tmp_path):
    """``bench_windows.py --device cuda --simulate`` walks the GPU benchmark's code path."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "windows.json"
    result = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "bench_windows.py"),
            "--device",
            "cuda",
            "--simulate",
            "--json",
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["simulated"] is True
    assert [(row["bidirectional"], row["sensors"]) for row in record["rows"]] == [
        (False, 1),
        (False, 8),
        (True, 1),
        (True, 8),
    ]
    assert all(
        row["gpu_windows_per_s"] > 0 and row["cpu_windows_per_s"] > 0 for row in record["rows"]
    )


@pytest.mark.parametrize("cell,output", [("gru", "probabilities"), ("rnn_relu", "every")])
def test_streamed_windows_match_torch(tmp_path, cell, output):
    """The GPU window bank against torch itself (a bidirectional net, float64, W=16, K=4,
    200 windows of 4 sensors), as tests/windows/test_windows_parity.py does for the CPU bank."""
    torch = pytest.importorskip("torch")
    from window_torch import WindowNet, check_close, torch_windows

    torch.manual_seed(0)
    net = WindowNet(cell, 1, True, output, hidden=4).double()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    model = load_torch(
        tmp_path / "net.pt", kind=cell if cell.startswith("rnn") else None, dtype=np.float64
    )
    spec = WindowSpec(16, 4, output)
    rng = np.random.default_rng(6)
    streams = rng.normal(0, 1, (4, 16 + 49 * 4, 3))
    windows, ours = stream_windows(model, spec, streams, rng, device="cuda", batches=6)
    assert len(windows) == 200
    check_close(ours, torch_windows(net, windows), np.float64)


def test_the_kernel_rejects_a_window_holding_a_non_finite_sample():
    """The bank never uploads such a window (it skips it), but the kernel's contract holds:
    ``REJECTED_SAMPLE`` and NaN outputs for it, the other windows untouched."""
    from numba import cuda  # after the module's skips: the simulator or a GPU is there

    model = _model("bi_lstm_softmax")
    spec = model.window
    k = window_kernel(model, spec)
    windows = np.random.default_rng(7).normal(0, 1, (3, spec.length, D))
    windows[1, 2, 0] = np.nan
    cap = k.streams
    outs = cuda.device_array(3 * k.rows * model.output_size, model.dtype)
    status = cuda.device_array(3, np.int32)
    k.kernel[k.launch_shape(3), BLOCK](
        cuda.to_device(k.weights),
        cuda.to_device(windows.ravel()),
        cuda.device_array(k.seq_size(cap, spec.length), model.dtype),
        outs,
        status,
        3,
        cap,
    )
    got = outs.copy_to_host().reshape(3, model.output_size)
    assert status.copy_to_host().tolist() == [OK, REJECTED_SAMPLE, OK]
    assert np.isnan(got[1]).all()
    want = evaluate_windows(model, windows[[0, 2]])
    np.testing.assert_allclose(got[[0, 2]], want, rtol=0, atol=_tolerance(model, want))
