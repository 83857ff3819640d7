#!/usr/bin/env bash
# GPU check: run on a machine with a CUDA GPU, from the repository root.
#
#   scripts/gpu_check.sh OUTDIR
#
# 1. builds the extension from source with PESC_WITH_CUDA=1 (build log with ptxas resource usage),
# 2. runs the whole test suite (CUDA cases run because a GPU is visible),
# 3. runs compute-sanitizer memcheck and racecheck over scripts/sanitize_ops.py, which calls every
#    CUDA op forward and backward,
# 4. runs the benchmark runner on CUDA (bf16, the "gpu" size set: the GPU target shapes of
#    docs/design.md, "Performance", a few minutes in all): the same cases as benchmarks/test_benchmarks.py,
#    plus copy-bandwidth/matmul calibration; OUTDIR/results.json and OUTDIR/speedups.png. Copy
#    results.json to benchmarks/results/cuda-bfloat16-gpu.json and run benchmarks/make_results.py
#    to publish the figures.
# Every step runs even if an earlier one fails; OUTDIR/summary.txt lists PASS/FAIL per step and the
# script exits non-zero if any step failed. OUTDIR stays flat: a handful of logs and results.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"
failed=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record PASS/FAIL with the duration
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "FAIL $name ($((SECONDS - start)) s): see $name.log" | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
    failed=1
  fi
}

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  "$PY" -c "import torch; print('torch:', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$OUT/summary.txt"

step build env PESC_WITH_CUDA=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" setup.py build_ext --inplace
step tests "$PY" -m pytest tests -q --maxfail=25 --durations=15  # many failures per lease, not just the first
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all "$PY" scripts/sanitize_ops.py
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 --target-processes all "$PY" scripts/sanitize_ops.py
step benchmarks "$PY" -m pesc_kernels.bench --device cuda --dtype bfloat16 --gpu-set --out "$OUT"
"$PY" -m pesc_kernels info >> "$OUT/summary.txt" 2>&1
exit $failed
