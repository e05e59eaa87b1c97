#!/usr/bin/env bash
# The CUDA checks on a real GPU, in one bounded go (issue 15): environment, exactness tests
# against the CPU bank (step kernels and window bank), the step benchmark against torch
# (both step kernels side by side), an ncu profile of the tiled kernel at a million streams
# when ncu is installed, and the GPU window bank benchmark, in that order.
#
# Each part runs under its own hard `timeout`, and all of them within BUDGET seconds (a
# part gets what its cap and the time left allow; one failing or timing out does not stop
# the others). Every figure lands in $OUT (default: benchmarks/results/gpu), at most 8
# files: env.txt tests.txt bench.txt bench.json windows.txt windows.json ncu.txt parts.txt
# (parts.txt: each part's exit status and seconds; 124 = timed out). From the repo root:
#     bash benchmarks/gpu/run_checks.sh            # ~6 min on an H200 with 16 cores
#     BUDGET=300 SKIP_WINDOWS=1 bash benchmarks/gpu/run_checks.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
BUDGET=${BUDGET:-375}  # seconds for everything; the caller's limit minus a margin
START=$SECONDS
NOISE="NumbaPerformanceWarning\|warn(errors"

# run_part NAME CAP LOG COMMAND...: COMMAND under `timeout min(CAP, time left)`, output
# appended to LOG; its status and duration go to parts.txt.
run_part() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    echo "$name: skipped (budget spent)" | tee -a "$OUT/parts.txt"
    return
  fi
  local tic=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v "$NOISE" | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc=$rc in $((SECONDS - tic)) s (limit $limit s)" | tee -a "$OUT/parts.txt"
}

: >"$OUT/parts.txt"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  timeout 60 python3 -c "import numba, numba_cuda, numpy, torch; print('numba', \
numba.__version__, 'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__, \
'torch', torch.__version__, 'torch.cuda', torch.cuda.is_available())"
  echo "cores: $(nproc)"
  git log -1 --oneline 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"

# Kernel compilation dominates the tests: one worker per core with pytest-xdist; without
# it, one pytest per test file side by side (each file's report follows the others').
TESTS="tests/cuda/test_cuda_bank.py tests/cuda/test_cuda_windows.py tests/cuda/test_cuda_env.py"
PYTEST="python3 -m pytest -q -p no:cacheprovider -o addopts=-ra --durations=10"
if python3 -c "import xdist" 2>/dev/null; then
  # shellcheck disable=SC2086  # word lists
  run_part tests "${TEST_CAP:-130}" "$OUT/tests.txt" \
    $PYTEST -n "$(($(nproc) > 12 ? 12 : $(nproc)))" $TESTS
else
  echo "pytest-xdist absent: one pytest per file" | tee -a "$OUT/tests.txt"
  logs=$(mktemp -d)
  # shellcheck disable=SC2016  # expanded by the inner shell
  run_part tests "${TEST_CAP:-130}" "$OUT/tests.txt" bash -c \
    'for f in $2; do $1 "$f" >"$3/$(basename "$f").log" 2>&1 & done
     rc=0; for job in $(jobs -p); do wait "$job" || rc=1; done; exit $rc' \
    _ "$PYTEST" "$TESTS" "$logs"
  cat "$logs"/*.log >>"$OUT/tests.txt" 2>/dev/null
  rm -rf "$logs"
fi

# One step of N streams, both kernels, torch eager and CUDA graph, CPU bank, block mode.
# shellcheck disable=SC2086
run_part bench "${BENCH_CAP:-120}" "$OUT/bench.txt" python3 benchmarks/bench_cuda.py \
  --json "$OUT/bench.json" --sizes 1 1024 65536 1048576 --reps 30 --warmup 5 \
  --crossover-sizes 1024 4096 16384 65536 ${BENCH_ARGS:-}

# ncu on the tiled kernel at 1M streams: one launch after the first, a few sections.
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu \
  2>/dev/null | head -n 1)}
if [ -n "$NCU" ]; then
  run_part ncu "${NCU_CAP:-50}" "$OUT/ncu.txt" "$NCU" --clock-control none -k regex:tiles -s 1 -c 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
    --section LaunchStats --section Occupancy --section WarpStateStats \
    python3 benchmarks/gpu/profile_step.py --streams 1048576 --kernel tiled
else
  echo "ncu: absent, no profile" | tee -a "$OUT/parts.txt"
fi

# The GPU window bank (never run on a GPU before): W=128, K=32, H=64, uni and bidirectional.
if [ -z "${SKIP_WINDOWS:-}" ]; then
  # shellcheck disable=SC2086
  run_part windows "${WINDOWS_CAP:-70}" "$OUT/windows.txt" python3 benchmarks/bench_windows.py \
    --device cuda --quick --sizes ${WINDOW_SIZES:-1 1000 10000} --json "$OUT/windows.json"
fi

echo "total: $((SECONDS - START)) s" | tee -a "$OUT/parts.txt"
