#!/usr/bin/env bash
# The CUDA bank's checks on a real GPU, in one go (issue 15): environment, exactness tests
# against the CPU bank, the benchmark against torch (both step kernels side by side), a
# launch-tuning variant, and an ncu profile of the tiled kernel at a million streams.
# Every figure lands in $OUT (default: benchmarks/results/gpu). Run from the repo root:
#     bash benchmarks/gpu/run_checks.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import numba, numba_cuda, numpy, torch; print('numba', numba.__version__, \
'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
  nproc
} 2>&1 | tee "$OUT/env.txt"
# Kernel compilation dominates the tests: one worker per core (pytest-xdist on the GPU box).
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n $(( $(nproc) > 12 ? 12 : $(nproc) ))")
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" \
  $workers tests/test_cuda_bank.py tests/test_cuda_env.py 2>&1 | tee "$OUT/tests.txt"
timeout ${BENCH_TIMEOUT:-200} python3 benchmarks/bench_cuda.py --json "$OUT/bench.json" \
  ${BENCH_ARGS:-} 2>&1 | grep -v "NumbaPerformanceWarning\|warn(errors" | tee "$OUT/bench.txt"
for threads in ${TILE_THREADS:-}; do  # threads per block of the tiled kernel
  timeout 90 python3 benchmarks/bench_cuda.py --block-size "$threads" --kernels tiled \
    --sizes 65536 1048576 --cpu-max 0 --crossover-sizes 1024 \
    --json "$OUT/bench-threads$threads.json" 2>&1 \
    | grep -v "NumbaPerformanceWarning\|warn(errors" | tee -a "$OUT/variants.txt"
done
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
  timeout 120 ncu --clock-control none -k regex:tiles -s 1 -c 1 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    python3 benchmarks/gpu/profile_step.py --streams 1048576 --kernel tiled 2>&1 \
    | tee "$OUT/ncu.txt"
fi
