"""Static resource report of the CUDA step kernel, no GPU needed.

Compiles the kernel for a model shape to PTX (numba-cuda + libNVVM + NVRTC) and runs
``ptxas -v`` on it: registers per thread, stack frame, spills, shared memory, and the
inner-loop instruction mix. Use it to judge a kernel change before a GPU is at hand;
timings still need ``bench_cuda.py`` on a GPU.

    python benchmarks/cuda_kernel_report.py --hidden 64 --inputs 3 --arch sm_90
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--inputs", type=int, default=3)
    parser.add_argument("--outputs", type=int, default=3)
    parser.add_argument("--kind", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--arch", default="sm_90", help="ptxas target, e.g. sm_80, sm_90")
    parser.add_argument(
        "--kernel",
        choices=["tiled", "per-stream"],
        default="tiled",
        help="which step kernel to report (see CudaBank(kernel=))",
    )
    parser.add_argument(
        "--max-registers",
        type=int,
        default=None,
        help="pass -maxrregcount to ptxas (what CudaBank(max_registers=) does)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # compile for the real target
    sys.path.insert(0, str(ROOT))
    import numba
    import numpy as np

    from streamlstm.cuda import import_cuda

    cuda = import_cuda()
    import numba.cuda.dispatcher as dispatcher

    from streamlstm.cuda.kernels import step_kernel
    from streamlstm.cuda.tiles import tile_kernel
    from streamlstm.model import random_model
    from streamlstm.packing import CUDA, pack

    major, minor = int(args.arch[3:-1]), int(args.arch[-1])

    class TargetDevice:  # numba-cuda asks the current device its capability for device functions
        compute_capability = (major, minor)

    dispatcher.get_current_device = lambda: TargetDevice()
    ptxas = shutil.which("ptxas") or str(
        Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "ptxas"
    )
    model = random_model(
        args.inputs,
        args.hidden,
        kind=args.kind,
        output_size=args.outputs,
        dtype=np.dtype(args.dtype),
    )
    pk = pack(model, CUDA)
    kernel = (
        tile_kernel(pk.layout, model.dtype, pk.params.size) if args.kernel == "tiled" else None
    ) or step_kernel(pk.layout, model.dtype, pk.params.size)
    real = numba.from_dtype(model.dtype)
    signature = (real[::1], numba.int32[::1], numba.int64, numba.int64, numba.int64, numba.int64)
    try:
        ptx, _ = cuda.compile_ptx(kernel.kernel.py_func, signature, cc=(major, minor))
    except Exception as exc:  # missing NVRTC/libNVVM is the usual cause
        print(f"skipped: cannot compile to PTX here ({type(exc).__name__}: {exc})")
        return 0
    shape = (
        f"tiled, {kernel.tile_streams} streams per block" if kernel.tile_streams else "per-stream"
    )
    print(
        f"model: {model.describe()} ({model.dtype}), {pk.params.size} weights, "
        f"weights in {'shared' if kernel.weights_in_shared else 'global'} memory; {shape}"
    )
    mix = Counter(
        m.group(1) for m in re.finditer(r"^\s+((?:ld|st|fma|bra)[.\w]*)", ptx, re.MULTILINE)
    )
    print("PTX instruction mix:", ", ".join(f"{k} {v}" for k, v in mix.most_common(8)))
    ops = Counter(
        m.group(1) for m in re.finditer(r"^\s+(?:@!?%p\d+\s+)?([a-z]+[.\w]*)", ptx, re.MULTILINE)
    )
    wide = sum(
        n
        for op, n in ops.items()
        if re.search(r"\.[subw]64$|\.wide\.", op) and not op.startswith(("ld", "st", "cvta"))
    )
    print(f"PTX: {sum(ops.values())} instructions (static), {wide} of them 64-bit integer")
    if not Path(ptxas).exists():
        print("ptxas not found: set CUDA_HOME or put ptxas on PATH for register figures")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "step.ptx"
        source.write_text(ptx)
        command = [ptxas, f"-arch={args.arch}", "-v", str(source), "-o", os.devnull]
        if args.max_registers:
            command.insert(1, f"-maxrregcount={args.max_registers}")
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        older = re.search(
            r"Unsupported \.version \S+; current version is '([\d.]+)'", result.stderr
        )
        if older:  # libNVVM newer than ptxas: the kernels use nothing the older ISA lacks
            print(f"note: PTX ISA lowered to {older.group(1)} for this ptxas")
            source.write_text(
                re.sub(
                    r"^\.version \S+",
                    f".version {older.group(1)}",
                    ptx,
                    count=1,
                    flags=re.MULTILINE,
                )
            )
            result = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in result.stderr.splitlines():
        if "registers" in line or "spill" in line or "error" in line.lower():
            print("ptxas:", line.strip())
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
