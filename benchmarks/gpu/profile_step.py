"""A few steps of a CudaBank for a profiler (``ncu``) to attach to: no timing of its own.

    ncu --clock-control none -k regex:tiles -c 1 --section SpeedOfLight \\
        python3 benchmarks/gpu/profile_step.py --streams 1048576 --kernel tiled
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlstm as sl
from streamlstm.cuda import CudaBank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1 << 20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--kernel", choices=["tiled", "per-stream"], default="tiled")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    model = sl.random_model(3, [args.hidden], output_size=3, seed=0)
    bank = CudaBank(model, args.streams, kernel=args.kernel)
    rows = bank.rows(range(args.streams))
    xs = np.random.default_rng(0).normal(size=(args.streams, 3)).astype(np.float32)
    for _ in range(args.steps):
        bank.step_rows(rows, xs)
    print(f"{args.steps} steps of {args.streams} streams, {bank.kernel} kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
