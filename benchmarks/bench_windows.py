"""Window-model benchmark: windows per second, streamlstm vs torch and onnxruntime.

    python benchmarks/bench_windows.py [--quick] [--json benchmarks/results/windows.json]

The model: LSTM H=64 over D=3 inputs, unidirectional and bidirectional, ``out[:, -1, :]``
-> Linear(4) -> softmax (the ``SimpleLSTM`` classifier); windows of W=128 samples every
K=32 samples. For N = 1 and 1,000 sensors, each timed round pushes K new samples per
sensor to a :class:`streamlstm.windows.WindowBank` (rings already full), which completes
one window per sensor: windows/s = N / (time per round). The peers evaluate the same N
windows as one batch: torch ``nn.LSTM`` (``inference_mode``) and onnxruntime (an ``LSTM``
node, ``direction`` forward or bidirectional). Everything on 1 thread. For the
unidirectional model the streaming cost of the same network (``Bank.step``, N sensors x 1
sample) is printed too: the issue's target is a per-sample window cost of at most
(W/K) x that + 20 %. Outputs are cross-checked before timing. Medians of repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

import streamlstm as sl
from streamlstm.formats.torch import load_torch
from streamlstm.window_spec import WindowSpec

D, H, CLASSES, W, K = 3, 64, 4, 128, 32


def median_time(fn: Callable[[], Any], *, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class Classifier:
    """The torch network: ``nn.LSTM`` (batch_first), last step, Linear, softmax."""

    def __init__(self, bidirectional: bool, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.lstm = torch.nn.LSTM(D, H, batch_first=True, bidirectional=bidirectional).eval()
        self.fc = torch.nn.Linear(H * (2 if bidirectional else 1), CLASSES).eval()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out, _ = self.lstm(torch.from_numpy(windows))
            return torch.softmax(self.fc(out[:, -1, :]), dim=-1).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {**{f"lstm.{k}": v for k, v in self.lstm.state_dict().items()},
                **{f"fc.{k}": v for k, v in self.fc.state_dict().items()}}


def onnx_session(net: Classifier):
    """onnxruntime session: LSTM node over (T, N, D), last step, Gemm, Softmax."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    lstm = net.lstm
    directions = 2 if lstm.bidirectional else 1
    order = [0, 3, 1, 2]  # torch i,f,g,o -> ONNX i,o,f,c

    def gates(array: np.ndarray) -> np.ndarray:
        blocks = np.split(array, 4, axis=0)
        return np.concatenate([blocks[i] for i in order], axis=0)

    def weight(name: str) -> np.ndarray:
        suffixes = ["_l0", "_l0_reverse"][:directions]
        return np.stack([gates(getattr(lstm, name + s).detach().numpy()) for s in suffixes])

    bias = np.concatenate([weight("bias_ih"), weight("bias_hh")], axis=1)
    inits = [numpy_helper.from_array(weight("weight_ih"), "W"),
             numpy_helper.from_array(weight("weight_hh"), "R"),
             numpy_helper.from_array(bias, "B"),
             numpy_helper.from_array(np.array(W - 1, np.int64), "last"),
             numpy_helper.from_array(np.array([0, directions * H], np.int64), "shape"),
             numpy_helper.from_array(net.fc.weight.detach().numpy(), "Wfc"),
             numpy_helper.from_array(net.fc.bias.detach().numpy(), "bfc")]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y"], hidden_size=H,
                         direction="bidirectional" if directions == 2 else "forward"),
        helper.make_node("Gather", ["Y", "last"], ["y_last"], axis=0),  # (dirs, N, H)
        helper.make_node("Transpose", ["y_last"], ["y_t"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["y_t", "shape"], ["features"]),
        helper.make_node("Gemm", ["features", "Wfc", "bfc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "window_classifier",
                              [helper.make_tensor_value_info("x", f32, ["n", W, D])],
                              [helper.make_tensor_value_info("p", f32, ["n", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda windows: session.run(["p"], {"x": windows})[0]


def bench_case(bidirectional: bool, sensors: int, repeats: int, tmp: Path) -> dict[str, Any]:
    import torch

    net = Classifier(bidirectional)
    path = tmp / f"net-{int(bidirectional)}.pt"
    torch.save(net.state_dict(), path)
    model = load_torch(path)
    spec = WindowSpec(W, K, "probabilities")
    bank = model.windows(capacity=sensors, spec=spec, threads=1)
    rng = np.random.default_rng(0)
    names = np.arange(sensors)
    history = rng.normal(0, 1, (sensors, W - K, D)).astype(np.float32)
    for t in range(W - K):  # fill the rings up to one round before the first window
        bank.push(names, history[:, t])
    fresh = rng.normal(0, 1, (K, sensors, D)).astype(np.float32)
    ids = np.tile(names, K)
    batch = fresh.reshape(K * sensors, D)
    out = bank.push(ids, batch)
    windows = np.ascontiguousarray(np.concatenate([history, fresh.transpose(1, 0, 2)], axis=1))
    assert len(out) == sensors
    onnx_run = onnx_session(net)
    for peer in (net, onnx_run):
        error = float(np.max(np.abs(peer(windows)[np.asarray(out.sensors)] - out.values)))
        assert error < 1e-5, f"cross-check failed: {error}"
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    ours = median_time(lambda: bank.push(ids, batch), repeats=repeats)
    row = {"bidirectional": bidirectional, "sensors": sensors,
           "streamlstm_windows_per_s": sensors / ours,
           "torch_windows_per_s": sensors / median_time(lambda: net(windows), repeats=repeats),
           "onnxruntime_windows_per_s": sensors / median_time(lambda: onnx_run(windows),
                                                              repeats=repeats),
           "streamlstm_ns_per_sample": ours / (sensors * K) * 1e9}
    if not bidirectional:
        stream_model = sl.load(path)
        stream_bank = stream_model.bank(capacity=sensors, threads=1)
        one = rng.normal(0, 1, (sensors, D)).astype(np.float32)
        step = median_time(lambda: stream_bank.step(names, one), repeats=max(repeats, 20))
        row["stream_step_ns_per_sample"] = step / sensors * 1e9
        row["target_ns_per_sample"] = 1.2 * (W / K) * row["stream_step_ns_per_sample"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    import tempfile

    repeats = 3 if args.quick else 15
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bidirectional in (False, True):
            for sensors in (1, 1000):
                row = bench_case(bidirectional, sensors, repeats, Path(tmp))
                rows.append(row)
                ratio = row["streamlstm_windows_per_s"] / row["onnxruntime_windows_per_s"]
                line = (f"{'bi ' if bidirectional else 'uni'} N={sensors:5d}: streamlstm "
                        f"{row['streamlstm_windows_per_s']:10.0f} windows/s, torch "
                        f"{row['torch_windows_per_s']:10.0f}, onnxruntime "
                        f"{row['onnxruntime_windows_per_s']:10.0f} ({ratio:.2f}x ort); "
                        f"{row['streamlstm_ns_per_sample']:.0f} ns/sample")
                if "stream_step_ns_per_sample" in row:
                    line += (f" (stream step {row['stream_step_ns_per_sample']:.0f} ns, "
                             f"target <= {row['target_ns_per_sample']:.0f} ns)")
                print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "W": W, "K": K, "H": H, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
