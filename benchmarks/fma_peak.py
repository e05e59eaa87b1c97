"""The machine's peak float32 FMA rate on one core, measured by a tiny compiled kernel.

    python benchmarks/fma_peak.py [--asm]

The kernel runs ``CHAINS`` independent chains of ``acc = acc * m + c`` on vectors of
``LANES`` float32 (one AVX-512 register each; on a machine without AVX-512 LLVM splits
each into two AVX2 registers, so the chains stay independent). Twelve chains cover the
FMA latency (4 cycles) times the FMA ports (2) with room to spare, so the loop is bound
by FMA throughput alone: the rate it reaches is the ceiling of any float32 kernel here.
The loop is written in LLVM IR (a numba intrinsic) rather than left to the
auto-vectoriser, so what is measured does not depend on how LLVM happens to vectorise a
Python loop; ``--asm`` prints the compiled loop to check it is ``vfmadd`` on ``zmm``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.typing import signature
from numba.extending import intrinsic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import best_time_of_rounds

CHAINS = 12
LANES = 16


@intrinsic
def _fma_chains(typingctx, rounds, start):
    """``CHAINS`` vector FMA chains of ``rounds`` steps from ``start``; the sum of their lanes
    (returned, so the work cannot be optimised away)."""
    if not (isinstance(rounds, types.Integer) and start == types.float32):
        return None

    def codegen(context, builder, sig, args):
        n, x0 = args
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{LANES}f32"
        )

        def splat(value):
            undef = ir.Constant(vec, ir.Undefined)
            one = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(
                one, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            )

        # m just below 1 and a small c: every chain converges to c / (1 - m), no overflow,
        # no denormals, whatever ``rounds`` is.
        m = splat(ir.Constant(f32, 0.999))
        c = splat(ir.Constant(f32, 1e-3))
        slots = []
        for k in range(CHAINS):
            slot = cgutils.alloca_once(builder, vec)
            offset = builder.fadd(x0, ir.Constant(f32, float(k)))
            builder.store(splat(offset), slot)
            slots.append(slot)
        with cgutils.for_range(builder, n):
            for slot in slots:
                builder.store(builder.call(fma, [builder.load(slot), m, c]), slot)
        total = builder.load(slots[0])
        for slot in slots[1:]:
            total = builder.fadd(total, builder.load(slot))
        result = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
        for lane in range(1, LANES):
            result = builder.fadd(
                result, builder.extract_element(total, ir.Constant(ir.IntType(32), lane))
            )
        return result

    return signature(types.float32, rounds, start), codegen


@njit(nogil=True)
def fma_chains(rounds, start):
    """Run the chains for ``rounds`` steps (``rounds * CHAINS * LANES`` FMAs)."""
    return _fma_chains(rounds, start)


FMAS_PER_ROUND = CHAINS * LANES


def peak_fmas_per_second(seconds: float = 0.05, repeats: int = 7) -> float:
    """FMAs per second on one core: the best of ``repeats`` timings of about ``seconds``
    each (:func:`harness.best_time_of_rounds`)."""
    start = numba.float32(0.5)
    fma_chains(1000, start)  # compile and warm up
    rounds, best = best_time_of_rounds(
        lambda n: fma_chains(n, start), rounds=1000, seconds=seconds, repeats=repeats
    )
    return rounds * FMAS_PER_ROUND / best


def loop_asm() -> str:
    """The compiled inner loop's FMA instructions (to check they are vector FMAs)."""
    asm = next(iter(fma_chains.inspect_asm().values()))
    return "\n".join(line.strip() for line in asm.splitlines() if re.search(r"vfmadd", line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asm", action="store_true", help="print the loop's FMA instructions")
    args = parser.parse_args(argv)
    rates = [peak_fmas_per_second() for _ in range(3)]
    print(
        f"peak: {max(rates) / 1e9:.1f} G FMA/s = {2 * max(rates) / 1e9:.1f} GFLOP/s per core "
        f"(float32; runs {', '.join(f'{r / 1e9:.1f}' for r in rates)}; "
        f"median {statistics.median(rates) / 1e9:.1f})"
    )
    if args.asm:
        print(loop_asm())
    return 0


if __name__ == "__main__":
    sys.exit(main())
