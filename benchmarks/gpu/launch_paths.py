"""Host cost of launching the bank's step kernel, per launch path, on a real GPU.

For an empty kernel with the step kernel's six arguments and for the tiled step kernel at
each ``--sizes`` N (H=64, D=3), each launch path:

* ``dispatcher``: numba-cuda's cached ``kernel[blocks, threads, stream](*args)`` (the bank's
  path before issue 15b);
* ``overload``: the compiled overload's public ``launch(args, griddim, blockdim, stream, 0)``
  (skips argument typing and overload lookup, still packs every argument per call);
* ``packed``: :class:`streamlstm.cuda.launch.PackedStepLaunch` (the bank's default now);
* ``bindings``: ``cuda.bindings`` ``cuLaunchKernel`` with a prebuilt parameter array, four
  int64 values rewritten in place per call: the floor of a Python launch, for reference.

Per path: ``host us``, the wall time per launch of ``--reps`` back-to-back launches before
synchronising (what Python spends); ``sync us``, the same including the final synchronise;
``event us``, the median of CUDA events around single launches (the figure
``bench_cuda.py`` reports). Then, per N, two banks (``launch="dispatcher"`` and ``"packed"``)
step the same batches (one sample per sensor, then repeated sensors) and must give
bit-identical predictions, statuses and states; their end-to-end ``step_rows`` wall times
are printed too. A failing path is recorded and the others still run. Prints a table and
writes JSON (``--json``). Without a CUDA GPU it prints ``skipped`` and exits 0.

    PYTHONPATH=. python3 benchmarks/gpu/launch_paths.py --json /tmp/launch.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import operator
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PATHS = ("dispatcher", "overload", "packed", "bindings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1024])
    parser.add_argument("--reps", type=int, default=2000, help="back-to-back launches timed")
    parser.add_argument("--event-reps", type=int, default=200, help="single launches timed")
    parser.add_argument("--e2e-reps", type=int, default=300, help="bank steps timed")
    parser.add_argument("--budget", type=float, default=100.0, help="seconds; later parts skip")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/launch.json")
    return parser.parse_args(argv)


def time_path(cuda: Any, stream: Any, fn: Callable[[], None], args: argparse.Namespace) -> dict:
    """Host, synchronised and CUDA-event microseconds per launch of ``fn`` on ``stream``."""
    for _ in range(20):
        fn()
    stream.synchronize()
    tic = time.perf_counter()
    for _ in range(args.reps):
        fn()
    host = time.perf_counter() - tic
    stream.synchronize()
    synced = time.perf_counter() - tic
    events = []
    for _ in range(args.event_reps):
        start, stop = cuda.event(), cuda.event()
        start.record(stream=stream)
        fn()
        stop.record(stream=stream)
        stop.synchronize()
        events.append(start.elapsed_time(stop) * 1e3)
    return {
        "host_us": host / args.reps * 1e6,
        "sync_us": synced / args.reps * 1e6,
        "event_us": float(statistics.median(events)),
    }


def bindings_launch(
    dispatcher: Any, blocks: int, threads: int, stream: Any, buffer: Any, index: Any
) -> Callable[[int, int, int, int], None]:
    """``cuLaunchKernel`` from ``cuda.bindings`` with the parameter array built once."""
    from cuda.bindings import driver as cu

    from streamlstm.cuda.launch import PackedStepLaunch

    packed = PackedStepLaunch(dispatcher, blocks, threads, stream, buffer, index)
    prefix = [operator.index(v) for v in packed._prefix]  # flattened arrays (benchmark peek)
    values = (ctypes.c_int64 * (len(prefix) + 4))(*prefix, 0, 0, 0, 0)
    pointers = (ctypes.c_void_p * len(values))(
        *(ctypes.addressof(values) + 8 * i for i in range(len(values)))
    )
    function = packed._kernel.handle  # a CUkernel, which cuLaunchKernel accepts
    handle = cu.CUstream(int(packed._stream.handle))
    address = ctypes.addressof(pointers)
    tail = len(prefix)

    def launch(capacity: int, groups: int, samples: int, steps: int) -> None:
        values[tail] = capacity
        values[tail + 1] = groups
        values[tail + 2] = samples
        values[tail + 3] = steps
        (err,) = cu.cuLaunchKernel(function, blocks, 1, 1, threads, 1, 1, 0, handle, address, 0)
        if err != cu.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"cuLaunchKernel: {err}")

    return launch


def path_launcher(
    path: str, dispatcher: Any, blocks: int, threads: int, stream: Any, buffer: Any, index: Any
) -> Callable[[int, int, int, int], None]:
    from streamlstm.cuda.launch import PackedStepLaunch

    if path == "dispatcher":
        configured = dispatcher[blocks, threads, stream]
        return lambda c, g, s, t: configured(buffer, index, c, g, s, t)
    if path == "overload":
        configured = dispatcher[blocks, threads, stream]
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in (buffer, index, 0, 0, 0, 0))
        overload = dispatcher.compile(argtypes)
        grid, block, core_stream = configured.griddim, configured.blockdim, configured.stream
        return lambda c, g, s, t: overload.launch(
            (buffer, index, c, g, s, t), grid, block, core_stream, 0
        )
    if path == "packed":
        launcher = PackedStepLaunch(dispatcher, blocks, threads, stream, buffer, index)
        return launcher
    return bindings_launch(dispatcher, blocks, threads, stream, buffer, index)


def bench_target(
    cuda: Any,
    name: str,
    dispatcher: Any,
    blocks: int,
    threads: int,
    stream: Any,
    buffer: Any,
    index: Any,
    scalars: tuple[int, int, int, int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows = []
    for path in PATHS:
        row: dict[str, Any] = {"target": name, "path": path}
        try:
            launch = path_launcher(path, dispatcher, blocks, threads, stream, buffer, index)
            row.update(time_path(cuda, stream, lambda launch=launch: launch(*scalars), args))
        except Exception as exc:  # one path failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(limit=3)
            stream.synchronize()
        print_row(row)
        rows.append(row)
    return rows


def empty_kernel(cuda: Any) -> Any:
    @cuda.jit
    def empty(buffer, index, capacity, groups, samples, steps):
        if groups < 0:  # never: the body must not be optimised away entirely
            buffer[0] = index[0]

    return empty


def equivalence(model: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Two banks, dispatcher and packed launch, same batches: identical results and e2e."""
    from streamlstm.cuda import CudaBank

    rng = np.random.default_rng(n)
    banks = {p: CudaBank(model, n, kernel="tiled", launch=p) for p in ("dispatcher", "packed")}
    batches = [(np.arange(n), rng.normal(size=(n, model.input_size))) for _ in range(3)]
    repeated = np.concatenate([np.arange(n), np.arange(min(n, 7))])  # CSR mode
    batches.append((repeated, rng.normal(size=(repeated.size, model.input_size))))
    batches.append((np.arange(n), np.full((n, model.input_size), np.nan)))  # rejected
    same = True
    for rows, xs in batches:
        outs = {p: b.step_rows(rows, xs.astype(np.float32)) for p, b in banks.items()}
        status = {p: b.last_status.copy() for p, b in banks.items()}
        same &= np.array_equal(outs["dispatcher"], outs["packed"], equal_nan=True)
        same &= np.array_equal(status["dispatcher"], status["packed"])
    states = {p: b.export_state().states for p, b in banks.items()}
    same &= np.array_equal(states["dispatcher"], states["packed"])
    result: dict[str, Any] = {
        "n": n,
        "identical": bool(same),
        "packed_bank_launch_path": banks["packed"].launch_path,
    }
    xs = rng.normal(size=(n, model.input_size)).astype(np.float32)
    rows = np.arange(n)
    for path, bank in banks.items():
        for _ in range(20):
            bank.step_rows(rows, xs)
        times = []
        for _ in range(args.e2e_reps):
            tic = time.perf_counter()
            bank.step_rows(rows, xs)
            times.append((time.perf_counter() - tic) * 1e6)
        result[f"e2e_{path}_us"] = float(statistics.median(times))
    print(
        f"N={n}: packed bank uses {result['packed_bank_launch_path']!r}; results identical to "
        f"the dispatcher bank: {result['identical']}; step_rows e2e median: dispatcher "
        f"{result['e2e_dispatcher_us']:.1f} us, packed {result['e2e_packed_us']:.1f} us"
    )
    return result


def print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['target']:>14} {row['path']:>10}  FAILED {row['error'][:200]}")
        return
    print(
        f"{row['target']:>14} {row['path']:>10} {row['host_us']:>9.1f} "
        f"{row['sync_us']:>9.1f} {row['event_us']:>9.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import streamlstm as sl
    from streamlstm.cuda import CudaBank, import_cuda, is_available

    if not is_available():
        print("skipped: no CUDA GPU (numba.cuda.is_available() is False)")
        return 0
    cuda = import_cuda()
    record: dict[str, Any] = {"benchmark": "launch_paths", "rows": [], "equivalence": []}
    from importlib.metadata import version

    record["versions"] = {p: version(p) for p in ("numba", "numba-cuda", "cuda-core", "numpy")}
    print(f"{'target':>14} {'path':>10} {'host us':>9} {'sync us':>9} {'event us':>9}")
    stream = cuda.stream()
    buffer = cuda.device_array(1024, np.float32)
    index = cuda.device_array(1024, np.int32)
    try:
        empty = empty_kernel(cuda)
        empty[1, 128, stream](buffer, index, 1024, 1, 1, 1)  # compile
        stream.synchronize()
        record["rows"] += bench_target(
            cuda, "empty", empty, 1, 128, stream, buffer, index, (1024, 1, 1, 1), args
        )
    except Exception as exc:
        record["empty_error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(limit=3)
    write(record, args.json, start)
    model = sl.random_model(3, [64], output_size=3, seed=0)
    for n in args.sizes:
        if time.perf_counter() - start > args.budget:
            print(f"N={n}: skipped (budget of {args.budget:.0f} s spent)")
            continue
        try:
            bank = CudaBank(model, n, kernel="tiled", launch="dispatcher")
            rows = bank.rows(range(n))
            bank.step_rows(rows, np.zeros((n, 3), np.float32))  # compiles, fills the I/O
            groups, samples, steps = bank.last_launch
            blocks = bank._step.launch_shape(groups, bank._block)
            record["rows"] += bench_target(
                cuda,
                f"tiled N={n}",
                bank._step.kernel,
                blocks,
                bank._block,
                bank._stream,
                bank._buffer,
                bank._index_dev,
                (bank.capacity, groups, samples, steps),
                args,
            )
            record["equivalence"].append(equivalence(model, n, args))
        except Exception as exc:
            record.setdefault("errors", []).append(f"N={n}: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=5)
        write(record, args.json, start)
    write(record, args.json, start)
    print(f"wrote {args.json} in {record['seconds']:.1f} s")
    return 0


def write(record: dict[str, Any], path: Path, start: float) -> None:
    """Write what is measured so far (a run cut short by a timeout keeps its figures)."""
    record["seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
