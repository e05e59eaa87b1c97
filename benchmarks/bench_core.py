"""Core engine benchmark: streamlstm side by side with torch, onnxruntime and NumPy.

    python benchmarks/bench_core.py [--quick] [--json benchmarks/results/core.json]

Three parts, all in one run on one machine, medians of repeated timings taken in turns
(each round gives us and every peer a warm-up call and about 20 ms of calls: a slow
spell of a shared machine weighs on all alike), every library on 1 thread unless a row
says otherwise, then a table of how far each of
our kernels is from the machine's limits: its FMA rate as a share of the peak measured in
the same run (:mod:`fma_peak`), and the bytes it reads as a share of one core's L2 read
bandwidth (:mod:`cache_bandwidth`), with the FMAs and the bytes each stream-step moves:

1. single-stream latency per sample (D=3, Linear head), called from Python with the state
   carried between calls: ``Stream.step`` vs torch ``nn.LSTM`` (seq_len 1,
   ``inference_mode``), torch ``nn.LSTMCell``, onnxruntime (state fed back) and NumPy;
2. ``Stream.run`` over a 10,000-sample block (ns per sample) vs torch ``nn.LSTM`` over the
   same sequence;
3. ``Bank.step`` of N sensors x 1 sample (H=64) vs torch ``LSTMCell`` and onnxruntime
   batched, stream-steps per second, 1 and 2 threads.

Every peer runs the same weights; outputs are cross-checked before timing.

FMAs per step are the multiply-adds of the matrix products (one per weight; the
activations' few dozen are left out). Bytes per step are what the kernel reads and
writes between core and cache: the packed weights (read once per step by one stream,
once per tile of ``TILE_STREAMS`` streams by a bank), the state row read and written,
the sample and the prediction. The weights of the H=64 model (69 kB) do not fit in L1,
so they come from L2 at every step: a single stream is bound by that bandwidth long
before its FMAs (``of L2``), a bank, reading them once per tile, by its FMAs. (A run walks
the weight blocks in alternate directions, so some of them are still in L1: its ``of L2``
is an upper bound.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from streamlstm.kernels import TILE_STREAMS
from streamlstm.model import Model, dense_layer, lstm_layer
from streamlstm.packing import packed

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bandwidth import L2_KIB, read_bytes_per_second
from fma_peak import peak_fmas_per_second
from harness import interleaved_medians, machine_facts

D = 3


# -- the same network in every library ----------------------------------------------------
def torch_net(hidden: int, layers: int, seed: int):
    import torch

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, hidden, num_layers=layers).eval()
    head = torch.nn.Linear(hidden, D).eval()
    return lstm, head


def model_from_torch(lstm, head) -> Model:
    def get(name: str, layer: int) -> np.ndarray:
        return getattr(lstm, f"{name}_l{layer}").detach().numpy()

    layers = tuple(
        lstm_layer(get("weight_ih", k), get("weight_hh", k), get("bias_ih", k), get("bias_hh", k))
        for k in range(lstm.num_layers)
    )
    return Model(
        layers=layers, head=(dense_layer(head.weight.detach().numpy(), head.bias.detach().numpy()),)
    )


def onnx_session(lstm, head, threads: int):
    """An onnxruntime session of the network with (h, c) as explicit inputs and outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    hidden, layers = lstm.hidden_size, lstm.num_layers
    to_onnx_gates = [0, 3, 1, 2]  # torch i,f,g,o -> ONNX i,o,f,c

    def reorder(array: np.ndarray) -> np.ndarray:
        blocks = np.split(array, 4, axis=0)
        return np.concatenate([blocks[i] for i in to_onnx_gates], axis=0)

    inits, nodes = [], []
    x_name = "x"
    for k in range(layers):
        w = reorder(getattr(lstm, f"weight_ih_l{k}").detach().numpy())[None]
        r = reorder(getattr(lstm, f"weight_hh_l{k}").detach().numpy())[None]
        b = np.concatenate(
            [
                reorder(getattr(lstm, f"bias_ih_l{k}").detach().numpy()),
                reorder(getattr(lstm, f"bias_hh_l{k}").detach().numpy()),
            ]
        )[None]
        inits += [
            numpy_helper.from_array(w, f"W{k}"),
            numpy_helper.from_array(r, f"R{k}"),
            numpy_helper.from_array(b, f"B{k}"),
            numpy_helper.from_array(np.array([k], np.int64), f"idx{k}"),
        ]
        nodes += [
            helper.make_node("Gather", ["h0", f"idx{k}"], [f"h0_{k}"], axis=0),
            helper.make_node("Gather", ["c0", f"idx{k}"], [f"c0_{k}"], axis=0),
            helper.make_node(
                "LSTM",
                [x_name, f"W{k}", f"R{k}", f"B{k}", "", f"h0_{k}", f"c0_{k}"],
                [f"Y{k}", f"hn{k}", f"cn{k}"],
                hidden_size=hidden,
            ),
            helper.make_node("Squeeze", [f"Y{k}", "axis1"], [f"Ys{k}"]),
        ]
        x_name = f"Ys{k}"
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(head.weight.detach().numpy(), "Wlin"),
        numpy_helper.from_array(head.bias.detach().numpy(), "blin"),
    ]
    nodes += [
        helper.make_node("Concat", [f"hn{k}" for k in range(layers)], ["hn"], axis=0),
        helper.make_node("Concat", [f"cn{k}" for k in range(layers)], ["cn"], axis=0),
        helper.make_node("Squeeze", [f"hn{layers - 1}", "axis0"], ["h_last"]),
        helper.make_node("Gemm", ["h_last", "Wlin", "blin"], ["y"], transB=1),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "lstm_step",
        [
            helper.make_tensor_value_info("x", f32, [1, "n", D]),
            helper.make_tensor_value_info("h0", f32, [layers, "n", hidden]),
            helper.make_tensor_value_info("c0", f32, [layers, "n", hidden]),
        ],
        [
            helper.make_tensor_value_info("y", f32, ["n", D]),
            helper.make_tensor_value_info("hn", f32, [layers, "n", hidden]),
            helper.make_tensor_value_info("cn", f32, [layers, "n", hidden]),
        ],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


class NumpyStream:
    """The straightforward NumPy implementation a user would write first."""

    def __init__(self, model: Model) -> None:
        self.layers = [(l.w_ih, l.w_hh, l.b_ih + l.b_hh) for l in model.layers]
        self.head = model.head[0]
        hidden = model.layers[0].hidden_size
        self.h = [np.zeros(hidden, np.float32) for _ in self.layers]
        self.c = [np.zeros(hidden, np.float32) for _ in self.layers]

    def step(self, x: np.ndarray) -> np.ndarray:
        for k, (w_ih, w_hh, b) in enumerate(self.layers):
            gates = w_ih @ x + w_hh @ self.h[k] + b
            i, f, g, o = np.split(gates, 4)
            i, f, o = (1 / (1 + np.exp(-v)) for v in (i, f, o))
            self.c[k] = f * self.c[k] + i * np.tanh(g)
            self.h[k] = x = o * np.tanh(self.c[k])
        return self.head.weight @ x + self.head.bias


# -- the three parts ------------------------------------------------------------------------
def bench_single(hidden: int, layers: int, quick: bool) -> dict[str, float]:
    import torch

    lstm, head = torch_net(hidden, layers, seed=hidden + layers)
    model = model_from_torch(lstm, head)
    x = np.random.default_rng(0).standard_normal(D).astype(np.float32)
    xt = torch.from_numpy(x)
    repeats = 5 if quick else 9
    fns: dict[str, Callable[[], Any]] = {}

    stream = model.stream()
    fns["streamlstm Stream.step"] = lambda: stream.step(x)
    out = np.empty(D, np.float32)
    fns["streamlstm Stream.step(out=)"] = lambda: stream.step(x, out=out)

    state = [None]
    x3 = xt.view(1, 1, D)

    def torch_lstm() -> None:
        with torch.inference_mode():
            y, state[0] = lstm(x3, state[0])
            head(y[0, 0])

    fns["torch nn.LSTM (seq_len 1)"] = torch_lstm
    if layers == 1:
        cell = torch.nn.LSTMCell(D, hidden).eval()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(lstm, f"{name}_l0"))
        hc = [None]
        x2 = xt.view(1, D)

        def torch_cell() -> None:
            with torch.inference_mode():
                hc[0] = cell(x2, hc[0])
                head(hc[0][0])

        fns["torch nn.LSTMCell"] = torch_cell

    session = onnx_session(lstm, head, threads=1)
    feeds = {
        "x": x.reshape(1, 1, D),
        "h0": np.zeros((layers, 1, hidden), np.float32),
        "c0": np.zeros((layers, 1, hidden), np.float32),
    }
    _check_onnx(session, model, feeds)

    def onnx_step() -> None:
        _, feeds["h0"], feeds["c0"] = session.run(None, feeds)

    fns["onnxruntime (state fed back)"] = onnx_step
    numpy_stream = NumpyStream(model)
    fns["NumPy"] = lambda: numpy_stream.step(x)
    return interleaved_medians(fns, repeats=repeats)


def _check_onnx(session, model: Model, feeds: dict[str, np.ndarray]) -> None:
    """The ONNX peer computes the same function as the engine (20 carried steps)."""
    feeds = dict(feeds)
    stream = model.stream()
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.standard_normal(D).astype(np.float32)
        feeds["x"] = x.reshape(1, 1, D)
        y, feeds["h0"], feeds["c0"] = session.run(None, feeds)
        mine = stream.step(x)
        if not np.allclose(y[0], mine, atol=1e-5):
            sys.exit(f"onnx peer disagrees with streamlstm: {y[0]} vs {mine}")


def bench_model() -> Model:
    """The H=64, D=3, one-layer model of parts 2 and 3 (for counting FMAs and bytes)."""
    return model_from_torch(*torch_net(64, 1, seed=7))


def bench_run(quick: bool) -> dict[str, float]:
    import torch

    lstm, head = torch_net(64, 1, seed=7)
    model = model_from_torch(lstm, head)
    xs = np.random.default_rng(0).standard_normal((10_000, D)).astype(np.float32)
    stream = model.stream()
    repeats = 3 if quick else 7
    xt = torch.from_numpy(xs).view(-1, 1, D)

    def torch_seq() -> None:
        with torch.inference_mode():
            head(lstm(xt)[0])

    times = interleaved_medians(
        {
            "streamlstm Stream.run": lambda: stream.run(xs),
            "torch nn.LSTM (whole sequence)": torch_seq,
        },
        repeats=repeats,
    )
    return {name: seconds / len(xs) for name, seconds in times.items()}


def bench_bank(sizes: list[int], quick: bool) -> list[dict[str, Any]]:
    import torch

    lstm, head = torch_net(64, 1, seed=11)
    model = model_from_torch(lstm, head)
    cell = torch.nn.LSTMCell(D, 64).eval()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, f"{name}_l0"))
    rows = []
    for n in sizes:
        row: dict[str, Any] = {"N": n}
        for threads in (1, 2):
            if threads <= numba.config.NUMBA_NUM_THREADS:
                row.update(_bench_bank_size(model, lstm, head, cell, n, threads, quick))
        torch.set_num_threads(1)
        rows.append(row)
    return rows


def _bench_bank_size(
    model: Model, lstm, head, cell, n: int, threads: int, quick: bool
) -> dict[str, float]:
    """Stream-steps per second of every bank-like peer for N sensors x 1 sample."""
    import torch

    samples = np.random.default_rng(n).standard_normal((n, D)).astype(np.float32)
    sensors = np.arange(n)
    repeats = 3 if quick else 7
    bank = model.bank(n, threads=threads)
    bank_rows = bank.rows(sensors)
    result = {
        f"streamlstm Bank.step_rows {threads}t": lambda: bank.step_rows(bank_rows, samples),
        f"streamlstm Bank.step (ids) {threads}t": lambda: bank.step(sensors, samples),
    }
    torch.set_num_threads(threads)
    xt = torch.from_numpy(samples)
    hc = [(torch.zeros(n, 64), torch.zeros(n, 64))]

    def torch_cell() -> None:
        with torch.inference_mode():
            hc[0] = cell(xt, hc[0])
            head(hc[0][0])

    session = onnx_session(lstm, head, threads=threads)
    feeds = {
        "x": samples.reshape(1, n, D),
        "h0": np.zeros((1, n, 64), np.float32),
        "c0": np.zeros((1, n, 64), np.float32),
    }

    def onnx_batch() -> None:
        _, feeds["h0"], feeds["c0"] = session.run(None, feeds)

    result[f"torch LSTMCell batched {threads}t"] = torch_cell
    result[f"onnxruntime batched {threads}t"] = onnx_batch
    times = interleaved_medians(result, repeats=repeats)
    return {name: n / seconds for name, seconds in times.items()}


# -- distance from the machine's limit ------------------------------------------------------
def fmas_per_step(model: Model) -> int:
    """Multiply-adds of one stream-step's matrix products: one per weight."""
    total = sum(
        layer.w_ih.size + layer.w_hh.size + (0 if layer.w_hr is None else layer.w_hr.size)
        for layer in model.layers
    )
    return total + sum(dense.weight.size for dense in model.head)


def bytes_per_step(model: Model, streams_per_weight_pass: int) -> int:
    """Bytes a stream-step moves between core and cache (see the module docstring)."""
    pk = packed(model)
    item = pk.params.itemsize
    return (
        pk.params.nbytes // streams_per_weight_pass
        + 2 * pk.state_size * item
        + (model.input_size + model.output_size) * item
    )


def limit_rows(
    model: Model, peak: float, l2_bandwidth: float, rates: dict[str, tuple[float, int, int]]
) -> list[dict[str, Any]]:
    """One row per kernel: ``rates[name] = (steps/s, cores, streams per weight pass)``;
    ``peak`` in FMA/s and ``l2_bandwidth`` in bytes/s, per core."""
    fmas = fmas_per_step(model)
    rows = []
    for name, (steps, cores, sharing) in rates.items():
        moved = bytes_per_step(model, sharing)
        rows.append(
            {
                "kernel": name,
                "M steps/s": steps / 1e6,
                "cores": cores,
                "G FMA/s": steps * fmas / 1e9,
                "share of peak": steps * fmas / (peak * cores),
                "GB/s": steps * moved / 1e9,
                "share of L2 bandwidth": steps * moved / (l2_bandwidth * cores),
                "FMAs/step": fmas,
                "bytes/step": moved,
            }
        )
    return rows


# -- report ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "core.json"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    peak = peak_fmas_per_second()
    l2_bandwidth = read_bytes_per_second(L2_KIB)
    print(
        f"0. peak of this machine: {peak / 1e9:.1f} G FMA/s per core "
        f"({2 * peak / 1e9:.0f} GFLOP/s float32; benchmarks/fma_peak.py); "
        f"{l2_bandwidth / 1e9:.0f} GB/s read from L2 per core (benchmarks/cache_bandwidth.py)\n"
    )
    report: dict[str, Any] = {
        "peak_gfma_per_core": peak / 1e9,
        "l2_read_gb_per_s_per_core": l2_bandwidth / 1e9,
        "machine": machine_facts("numba", "numpy", "torch", "onnxruntime", "streamlstm"),
        "single": [],
        "run": {},
        "bank": [],
    }
    print("1. single stream, per-sample latency from Python (us), D=3, Linear head, 1 thread")
    print(f"{'H':>4} {'layers':>6}  {'peer':34} {'us':>8} {'peer/ours':>10}")
    for hidden in (32, 64, 128):
        for layers in (1, 2):
            results = bench_single(hidden, layers, args.quick)
            ours = results["streamlstm Stream.step"]
            for name, seconds in results.items():
                print(
                    f"{hidden:>4} {layers:>6}  {name:34} {seconds * 1e6:8.2f} "
                    f"{seconds / ours:9.1f}x"
                )
            report["single"].append(
                {"H": hidden, "layers": layers, **{k: v * 1e6 for k, v in results.items()}}
            )

    print("\n2. block of 10,000 samples, one stream, H=64 (ns per sample)")
    run = bench_run(args.quick)
    ours = run["streamlstm Stream.run"]
    for name, seconds in run.items():
        print(f"   {name:34} {seconds * 1e9:8.0f} {seconds / ours:9.1f}x")
    report["run"] = {k: v * 1e9 for k, v in run.items()}
    h64 = next(r for r in report["single"] if r["H"] == 64 and r["layers"] == 1)
    rates = {
        "Stream.step (from Python)": (1e6 / h64["streamlstm Stream.step"], 1, 1),
        "Stream.step(out=)": (1e6 / h64["streamlstm Stream.step(out=)"], 1, 1),
        "Stream.run": (1 / ours, 1, 1),
    }

    print("\n3. bank of N sensors x 1 sample, H=64 (M stream-steps/s; ours/peer)")
    sizes = [16, 256, 4096] if args.quick else [16, 256, 4096, 65536]
    for row in bench_bank(sizes, args.quick):
        n = row.pop("N")
        for threads in ("1t", "2t"):
            key = f"streamlstm Bank.step_rows {threads}"
            if key not in row:
                continue
            for name in [k for k in row if k.endswith(threads)]:
                print(f"N={n:<6} {name:34} {row[name] / 1e6:8.3f} {row[key] / row[name]:9.1f}x")
        report["bank"].append({"N": n, **{k: v / 1e6 for k, v in row.items()}})
        for threads in (1, 2):
            key = f"streamlstm Bank.step_rows {threads}t"
            if key in row:
                rates[f"Bank.step_rows N={n} {threads}t"] = (row[key], threads, TILE_STREAMS)

    # Measured again at the end, the best kept: on a shared machine a neighbour's burst can
    # only make the peak look lower.
    peak = max(peak, peak_fmas_per_second())
    l2_bandwidth = max(l2_bandwidth, read_bytes_per_second(L2_KIB))
    report["peak_gfma_per_core"] = peak / 1e9
    report["l2_read_gb_per_s_per_core"] = l2_bandwidth / 1e9
    print(
        f"\n4. distance from the limits, H=64, D=3 (peak {peak / 1e9:.1f} G FMA/s and "
        f"{l2_bandwidth / 1e9:.0f} GB/s from L2, per core)"
    )
    print(
        f"   {'kernel':30} {'M steps/s':>9} {'G FMA/s':>8} {'of peak':>8} {'GB/s':>6} "
        f"{'of L2':>6} {'FMAs/step':>9} {'bytes/step':>10}"
    )
    limits = limit_rows(bench_model(), peak, l2_bandwidth, rates)
    for r in limits:
        print(
            f"   {r['kernel']:30} {r['M steps/s']:9.3f} {r['G FMA/s']:8.1f} "
            f"{r['share of peak']:8.0%} {r['GB/s']:6.0f} {r['share of L2 bandwidth']:6.0%} "
            f"{r['FMAs/step']:9d} {r['bytes/step']:10d}"
        )
    report["limits"] = limits

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
