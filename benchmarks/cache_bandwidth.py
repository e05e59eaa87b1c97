"""How fast one core reads from its L1 and from its L2 cache, measured by a compiled sum.

    python benchmarks/cache_bandwidth.py [--sweep]

A stream's step reads every packed weight once: at H=64, D=3 that is 69 kB in float32,
more than a core's L1 data cache (32 KiB on the machine these figures were first taken
on). So a single stream is bound by how fast its weights come from L2, whatever its FMA
rate; a bank reads them once per tile of four streams, which is what lets it reach the
FMA limit instead (:mod:`bench_core`, part 4, gives each kernel's share of both).

The kernel sums a float32 buffer over and over. With reassociation allowed LLVM
vectorises the sum into several independent vector accumulators, so the loop is bound
by loads alone. A buffer of :data:`L1_KIB` stays in L1; one of :data:`L2_KIB` is larger
than any L1 data cache and smaller than any L2 of a current x86 or Arm server core.
``--sweep`` prints the rate for buffers from 8 KiB to 8 MiB, and the cache sizes Linux
reports, to see the steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import best_time_of_rounds

L1_KIB = 16
L2_KIB = 128


@njit(fastmath=True, nogil=True)
def _sum_rounds(buffer, rounds):
    """``rounds`` passes over ``buffer``; the sum is returned so that it is not optimised
    away."""
    total = np.float32(0)
    for _ in range(rounds):
        for i in range(buffer.shape[0]):
            total += buffer[i]
    return total


def read_bytes_per_second(kib: int, seconds: float = 0.05, repeats: int = 7) -> float:
    """Bytes per second one core reads from a buffer of ``kib`` KiB it passes over again
    and again: the best of ``repeats`` timings of about ``seconds`` each
    (:func:`harness.best_time_of_rounds`)."""
    count = kib * 1024 // 4
    # On a cache-line boundary: a vector load that straddles two lines costs two.
    spare = np.ones(count + 16, np.float32)
    start = (-spare.ctypes.data % 64) // 4
    buffer = spare[start : start + count]
    _sum_rounds(buffer, 1)  # compile, and bring the buffer into the caches
    rounds, best = best_time_of_rounds(
        lambda n: _sum_rounds(buffer, n), rounds=1, seconds=seconds, repeats=repeats
    )
    return buffer.nbytes * rounds / best


def cache_sizes() -> dict[str, int]:
    """Linux's data and unified cache sizes for CPU 0 (``{"L1d": 32768, "L2": ...}``);
    empty where ``/sys`` does not say."""
    sizes = {}
    units = {"K": 1024, "M": 1024**2}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        name = f"L{level}" + ("d" if kind == "Data" else "")
        sizes[name] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="every size from 8 KiB to 8 MiB")
    args = parser.parse_args(argv)
    sizes = ", ".join(f"{name} {size // 1024} KiB" for name, size in cache_sizes().items())
    print(f"caches of CPU 0: {sizes or 'not reported'}")
    for kib in [8 << k for k in range(11)] if args.sweep else [L1_KIB, L2_KIB]:
        print(f"{kib:6d} KiB buffer: {read_bytes_per_second(kib) / 1e9:6.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
