"""CudaBank against torch nn.LSTMCell (eager and CUDA graph) and the CPU Bank.

One step of N streams (H=64, D=3, one LSTM layer + Linear head), N in {1, 1k, 64k, 1M}:

* ``bank kernel``: the fused step kernel alone, CUDA events around the launch (samples
  already on the device), median of ``--reps`` after ``--warmup`` steps, for each step
  kernel (``--kernels``: the tiled one and the thread-per-stream one, side by side);
* ``launch floor``: an empty kernel with the same arguments, launched and timed the
  same way: what numba-cuda's launch costs before any work;
* ``bank e2e``: ``CudaBank.step_rows`` from Python, wall clock: samples up, kernel,
  predictions and statuses down, synchronised;
* ``block T``: ``CudaBank.run`` with ``--block-steps`` samples per stream, per step: the
  kernel alone (CUDA events) and end to end (host transposes and transfers included);
* ``torch eager`` / ``torch graph``: ``nn.LSTMCell`` + ``nn.Linear`` on CUDA, the same
  step replayed from a captured ``torch.cuda.CUDAGraph``, CUDA events, median;
* floors: state bytes moved (read + write ``(h, c)``, samples in, outputs out) at the
  measured device-to-device copy bandwidth, and FLOPs at the FP32 peak from the device
  properties; ``CPU bank`` and the CPU/GPU crossover (smallest N where the GPU e2e wins).

Prints a table with ratios and writes JSON (``--json``). Without a CUDA GPU it prints
``skipped: no CUDA GPU`` and exits 0; ``--simulate`` runs a tiny case on the CUDA
simulator to exercise the code path (its timings are meaningless).

    python benchmarks/bench_cuda.py                 # on a GPU machine
    python benchmarks/bench_cuda.py --simulate      # anywhere, proves the path
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "bench_cuda.json"
#: FP32 lanes per SM by compute capability major.minor (CUDA programming guide tables).
FP32_LANES = {
    (7, 0): 64,
    (7, 5): 64,
    (8, 0): 64,
    (8, 6): 128,
    (8, 7): 128,
    (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128,
    (12, 0): 128,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1024, 65536, 1048576])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--inputs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=50, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--block-steps", type=int, default=100, help="T of the block mode")
    parser.add_argument(
        "--block-max",
        type=int,
        default=65536,
        help="largest N for the block mode (host memory: N*T*(D+O+1) floats)",
    )
    parser.add_argument("--cpu-max", type=int, default=65536, help="largest N for the CPU bank")
    parser.add_argument(
        "--crossover-sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536]
    )
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=["tiled", "per-stream"],
        choices=["tiled", "per-stream"],
        help="step kernels to compare",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="CudaBank threads per block (default: the bank's)",
    )
    parser.add_argument(
        "--max-registers",
        type=int,
        default=None,
        help="CudaBank register cap per thread (default: the compiler's)",
    )
    parser.add_argument(
        "--launch",
        default="packed",
        choices=["packed", "dispatcher"],
        help="CudaBank host launch path (see streamlstm.cuda.launch)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="tiny run on the CUDA simulator (checks the code path only)",
    )
    args = parser.parse_args(argv)
    if args.simulate:
        args.sizes, args.hidden, args.reps, args.warmup = [1, 8], 4, 2, 1
        args.block_steps, args.crossover_sizes = 3, [2, 8]
    return args


def median_ms(samples: list[float]) -> float:
    return float(statistics.median(samples))


def event_times(
    cuda: Any, stream: Any, fn: Callable[[], None], reps: int, warmup: int, *, simulated: bool
) -> float:
    """Median milliseconds of ``fn`` between two CUDA events on ``stream``."""
    for _ in range(warmup):
        fn()
    stream.synchronize()
    times = []
    for _ in range(reps):
        start, stop = cuda.event(), cuda.event()
        start.record(stream=stream)
        tic = time.perf_counter()
        fn()
        stop.record(stream=stream)
        stop.synchronize()
        # The simulator's events carry no time; fall back to the wall clock there.
        times.append((time.perf_counter() - tic) * 1e3 if simulated else start.elapsed_time(stop))
    return median_ms(times)


def wall_times(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    """Median wall-clock milliseconds of ``fn`` (which must synchronise itself)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return median_ms(times)


def device_facts(cuda: Any, simulated: bool) -> dict[str, Any]:
    """Name, FP32 peak (FLOP/s) from the device properties, and measured copy bandwidth."""
    if simulated:
        return {"name": "CUDA simulator", "fp32_flops": None, "copy_bytes_s": None}
    device = cuda.get_current_device()
    cc = tuple(device.compute_capability)
    sms = device.MULTIPROCESSOR_COUNT
    clock_hz = device.CLOCK_RATE * 1e3  # reported in kHz
    lanes = FP32_LANES.get(cc, 128)
    size = 1 << 28  # 1 GiB of float32 each way
    src = cuda.device_array(size, np.float32)
    dst = cuda.device_array(size, np.float32)
    stream = cuda.stream()
    copy_ms = event_times(
        cuda, stream, lambda: dst.copy_to_device(src, stream=stream), 5, 2, simulated=False
    )
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return {
        "name": name,
        "compute_capability": cc,
        "sms": sms,
        "clock_hz": clock_hz,
        "fp32_flops": 2.0 * lanes * sms * clock_hz,  # one FMA = 2 FLOPs per lane per clock
        "copy_bytes_s": 2 * size * 4 / (copy_ms * 1e-3),
    }  # read + write


def floors(n: int, hidden: int, inputs: int, outputs: int, facts: dict[str, Any]) -> dict[str, Any]:
    """Lower bounds in microseconds for one step of ``n`` streams."""
    state_bytes = n * 2 * hidden * 4 * 2  # (h, c) read and written
    io_bytes = n * (inputs + outputs + 1) * 4  # samples in, outputs + status out
    flops = n * (2 * 4 * hidden * (inputs + hidden) + 2 * hidden * outputs + 12 * hidden)
    out: dict[str, Any] = {
        "flops": flops,
        "bytes": state_bytes + io_bytes,
        "memory_us": None,
        "compute_us": None,
    }
    if facts["copy_bytes_s"] and facts["fp32_flops"]:  # None on the simulator
        out["memory_us"] = (state_bytes + io_bytes) / facts["copy_bytes_s"] * 1e6
        out["compute_us"] = flops / facts["fp32_flops"] * 1e6
    return out


def cuda_bank(model: Any, n: int, args: argparse.Namespace, kernel: str) -> Any:
    from streamlstm.cuda import CudaBank

    registers = args.max_registers if kernel == "per-stream" else None
    return CudaBank(
        model,
        n,
        block_size=args.block_size,
        max_registers=registers,
        kernel=kernel,
        launch=args.launch,
    )


def launch_floor(cuda: Any, args: argparse.Namespace, simulated: bool) -> float:
    """Milliseconds of an empty kernel with the step kernel's arguments (CUDA events)."""

    @cuda.jit
    def empty(buffer, index, capacity, groups, samples, steps):
        if groups < 0:  # never: the body must not be optimised away entirely
            buffer[0] = index[0]

    stream = cuda.stream()
    buffer = cuda.device_array(1024, np.float32)
    index = cuda.device_array(1024, np.int32)
    launch = empty[1, 128, stream]
    return event_times(
        cuda,
        stream,
        lambda: launch(buffer, index, 1024, 1, 1, 1),
        args.reps,
        args.warmup,
        simulated=simulated,
    )


def bench_bank(
    cuda: Any, model: Any, n: int, args: argparse.Namespace, simulated: bool, kernel: str
) -> dict[str, Any]:
    bank = cuda_bank(model, n, args, kernel)
    rows = bank.rows(range(n))
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(n, args.inputs)).astype(np.float32)
    bank.step_rows(rows, xs)  # compiles, uploads, fills the I/O buffers for the timing below
    # The kernel alone: the bank's own buffers and launcher, samples already on the device.
    launch = bank.repeat_launch()
    result = {
        "bank_kernel_ms": event_times(
            cuda, bank.stream, launch, args.reps, args.warmup, simulated=simulated
        ),
        "bank_e2e_ms": wall_times(lambda: bank.step_rows(rows, xs), args.reps, args.warmup),
        "launch_path": bank.launch_path,
    }
    if n <= args.block_max:
        block = rng.normal(size=(n, args.block_steps, args.inputs)).astype(np.float32)
        sensors = list(range(n))
        bank.run(sensors, block)
        block_launch = bank.repeat_launch()
        reps = max(3, args.reps // 10)
        result["block_kernel_ms_per_step"] = (
            event_times(cuda, bank.stream, block_launch, reps, 1, simulated=simulated)
            / args.block_steps
        )
        result["block_e2e_ms_per_step"] = (
            wall_times(lambda: bank.run(sensors, block), reps, 1) / args.block_steps
        )
    return result


def bench_torch(n: int, args: argparse.Namespace, outputs: int) -> dict[str, float]:
    try:
        import torch
    except ImportError:
        return {"note": "torch not installed"}
    if not torch.cuda.is_available():
        return {"note": "torch has no CUDA"}
    device = torch.device("cuda")
    cell = torch.nn.LSTMCell(args.inputs, args.hidden).to(device)
    head = torch.nn.Linear(args.hidden, outputs).to(device)
    x = torch.randn(n, args.inputs, device=device)
    h = torch.zeros(n, args.hidden, device=device)
    c = torch.zeros(n, args.hidden, device=device)

    def step() -> torch.Tensor:
        h2, c2 = cell(x, (h, c))
        h.copy_(h2)
        c.copy_(c2)
        return head(h2)

    def timed(fn: Callable[[], Any]) -> float:
        with torch.no_grad():
            for _ in range(args.warmup):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.reps):
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
        return median_ms(times)

    eager = timed(step)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            step()
    return {"torch_eager_ms": eager, "torch_graph_ms": timed(graph.replay)}


def bench_cpu(model: Any, n: int, args: argparse.Namespace) -> float:
    bank = model.bank(n)
    rows = bank.rows(range(n))
    xs = np.random.default_rng(1).normal(size=(n, args.inputs)).astype(np.float32)
    return wall_times(lambda: bank.step_rows(rows, xs), max(3, args.reps // 5), 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulate:
        # numba-cuda reads this once, at its first import, which happens below.
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    sys.path.insert(0, str(ROOT))
    import streamlstm as sl
    from streamlstm.cuda import import_cuda, is_available

    if not is_available():
        print(
            "skipped: no CUDA GPU (numba.cuda.is_available() is False); "
            "run with --simulate to exercise the code path on the simulator"
        )
        return 0
    cuda = import_cuda()
    simulated = args.simulate
    outputs = args.inputs
    model = sl.random_model(args.inputs, [args.hidden], output_size=outputs, seed=0)
    facts = device_facts(cuda, simulated)
    facts["launch_floor_ms"] = launch_floor(cuda, args, simulated)
    print(
        f"device: {facts['name']}; numba-cuda launch floor (empty kernel, same arguments): "
        f"{facts['launch_floor_ms'] * 1e3:.1f} us"
    )
    rows_out = []
    for n in args.sizes:
        peers: dict[str, Any] = {}
        if not simulated:
            peers.update(bench_torch(n, args, outputs))
        if n <= args.cpu_max:
            peers["cpu_bank_ms"] = bench_cpu(model, n, args)
        peers.update(floors(n, args.hidden, args.inputs, outputs, facts))
        for kernel in args.kernels:
            row: dict[str, Any] = {"n": n, "kernel": kernel}
            row.update(bench_bank(cuda, model, n, args, simulated, kernel))
            row.update(peers)
            rows_out.append(row)
            print_row(row, first=len(rows_out) == 1)
    crossover = measure_crossover(model, cuda, args, simulated)
    print(
        f"CPU/GPU crossover (smallest N where the GPU e2e step beats the CPU bank, "
        f"{args.kernels[0]} kernel): {crossover['crossover_n']}"
    )
    record = {
        "benchmark": "bench_cuda",
        "device": facts,
        "hidden": args.hidden,
        "block_size": args.block_size,
        "max_registers": args.max_registers,
        "launch": args.launch,
        "inputs": args.inputs,
        "simulated": simulated,
        "python": platform.python_version(),
        "versions": versions(),
        "rows": rows_out,
        "crossover": crossover,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


def measure_crossover(
    model: Any, cuda: Any, args: argparse.Namespace, simulated: bool
) -> dict[str, Any]:
    table = []
    found = None
    for n in args.crossover_sizes:
        bank = cuda_bank(model, n, args, args.kernels[0])
        rows = bank.rows(range(n))
        xs = np.random.default_rng(2).normal(size=(n, args.inputs)).astype(np.float32)
        gpu = wall_times(
            lambda bank=bank, rows=rows, xs=xs: bank.step_rows(rows, xs), args.reps, args.warmup
        )
        cpu = bench_cpu(model, n, args)
        table.append({"n": n, "gpu_e2e_ms": gpu, "cpu_ms": cpu})
        if found is None and gpu < cpu:
            found = n
    return {"crossover_n": found, "table": table}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numba", "numba-cuda", "numpy", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


COLUMNS = [
    ("N", "n", "{:>8d}"),
    ("step kernel", "kernel", "{:>11s}"),
    ("kernel us", "bank_kernel_ms", "{:>10.1f}"),
    ("e2e us", "bank_e2e_ms", "{:>10.1f}"),
    ("block kern/step us", "block_kernel_ms_per_step", "{:>18.2f}"),
    ("block e2e/step us", "block_e2e_ms_per_step", "{:>17.2f}"),
    ("torch eager us", "torch_eager_ms", "{:>14.1f}"),
    ("torch graph us", "torch_graph_ms", "{:>14.1f}"),
    ("CPU bank us", "cpu_bank_ms", "{:>11.1f}"),
]


def sample_cell(fmt: str) -> str:
    """A cell printed with ``fmt``, for its width."""
    return fmt.format({"d": 0, "s": ""}.get(fmt[-2], 0.0))


def print_row(row: dict[str, Any], *, first: bool) -> None:
    if first:
        print(
            " | ".join(f"{title:>{len(sample_cell(fmt))}}" for title, _, fmt in COLUMNS)
            + " | eager/kernel | graph/kernel | steps/s (kernel) | floor mem us | floor flop us"
            " | kernel/floor"
        )
    cells = []
    for _title, key, fmt in COLUMNS:
        value = row.get(key)
        if value is None:
            cells.append(" " * len(sample_cell(fmt)))
        elif key in ("n", "kernel"):
            cells.append(fmt.format(value))
        else:
            cells.append(fmt.format(value * 1e3))
    kernel = row["bank_kernel_ms"]

    def ratio(key: str) -> str:
        return f"{row[key] / kernel:>12.2f}" if key in row and kernel > 0 else " " * 12

    rate = row["n"] / (kernel * 1e-3) if kernel > 0 else float("nan")
    if row["memory_us"] is None:
        bounds = f"{'-':>12} | {'-':>13} | {'-':>13}"
    else:
        floor_us = max(row["memory_us"], row["compute_us"])
        bounds = (
            f"{row['memory_us']:>12.2f} | {row['compute_us']:>13.2f} | "
            f"{kernel * 1e3 / floor_us:>13.1f}"
        )
    print(
        " | ".join(cells) + f" | {ratio('torch_eager_ms')} | {ratio('torch_graph_ms')} | "
        f"{rate:>16.3g} | {bounds}"
    )


if __name__ == "__main__":
    sys.exit(main())
