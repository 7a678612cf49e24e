#!/usr/bin/env bash
# The GPU check: one command that says whether the CUDA path works and how fast it is, on a machine with an
# NVIDIA GPU, nvcc and a CUDA build of torch (>= 2.4) with pytest installed.
#
#   bash bench/gpu_check.sh [OUT_DIR]     results in OUT_DIR (default ./gpu_check_out)
#   bash bench/gpu_check.sh --dry-run     print the steps and their time limits, run nothing
#
# Steps, each under its own time limit so that the results file is always written (the limits add up to
# 8 minutes; about 5 expected on one H200):
#   build      the extension with its CUDA kernels (LMCL_CUDA=1, MAX_JOBS=16, the default archs)
#   tests      every CUDA test: python_tests -k cuda (each op against the CPU, streams, a second device,
#              mixed-precision training steps, >2^31-element outputs, lmc_loss at B=256 against float64)
#   bench      bench/gpu_bench.py: every op against eager PyTorch and torch.compile
#   memcheck, racecheck, initcheck
#              compute-sanitizer over the small all-ops test (python_tests/test_cuda.py -k sanitizer),
#              the three tools in parallel, the caching allocator off so every allocation is exact
# OUT_DIR/gpu_check.md says what ran, what passed, how long each step took, and holds the benchmark table;
# the logs of each step lie beside it (7 files in all).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
OUT=$(mkdir -p "${1:-$ROOT/gpu_check_out}" && cd "${1:-$ROOT/gpu_check_out}" && pwd)
RESULTS="$OUT/gpu_check.md"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

LIMIT_BUILD=160
LIMIT_TESTS=100
LIMIT_BENCH=100
LIMIT_SANITIZER=120

ROWS=()
FAILED=()

# run NAME LIMIT LOG COMMAND...: one step under `timeout`; records status, seconds and the log's last line.
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  if [ "$DRY" = 1 ]; then
    echo "[$name, ${limit}s] $*"
    return 0
  fi
  echo "== $name (limit ${limit}s): $*" >&2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$log" 2>&1  # bash -c: steps may be functions
  local rc=$? status=PASS
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    status="TIMEOUT"
  elif [ $rc != 0 ]; then
    status="FAIL (exit $rc)"
  fi
  [ "$status" = PASS ] || FAILED+=("$name:$log")
  ROWS+=("| $name | $status | $((SECONDS - start)) | $(summary "$name" "$log") |")
  echo "== $name: $status in $((SECONDS - start)) s" >&2
  [ "$status" = PASS ]
}

# The line of a step's log that says how it went.
summary() {
  local name=$1 log=$2 line
  case $name in
    tests) line=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$log" | tail -1) ;;
    memcheck | racecheck | initcheck)
      line="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1); $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$log" | tail -1)" ;;
    build) line=$(grep -E '^build_info' "$log" | tail -1) ;;
    *) line=$(tail -1 "$log") ;;
  esac
  echo "${line//|//}" | cut -c1-300
}

environment() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  if command -v nvidia-smi >/dev/null; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | paste -sd ';')"
  else
    echo "- GPU: nvidia-smi not found"
  fi
  echo "- $($PY -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), devices: {torch.cuda.device_count()}")' 2>&1 | tail -1)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -2 | head -1 || echo 'not found'); compute-sanitizer: $(command -v compute-sanitizer || echo 'not found')"
  echo "- CPU cores: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
}

build() {
  cd "$ROOT" && LMCL_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace \
    && "$PY" -c 'import lmcl_fast, torch; i = lmcl_fast.build_info(); assert i["cuda"] and torch.cuda.is_available(), i; print("build_info", i)'
}

sanitize() {
  local tool=$1
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 50 \
    "$PY" -m pytest -q -p no:cacheprovider --benchmark-disable "$ROOT/python_tests/test_cuda.py" -k sanitizer
}

export ROOT PY
export -f build sanitize

if [ "$DRY" = 0 ]; then
  echo "# lmcl_fast GPU check" >"$RESULTS"
  environment >>"$RESULTS"
fi

if run build "$LIMIT_BUILD" "$OUT/build.log" build; then
  run tests "$LIMIT_TESTS" "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider --benchmark-disable -rs \
    "$ROOT/python_tests" -k "cuda and not compiles"
  run bench "$LIMIT_BENCH" "$OUT/bench.log" "$PY" "$ROOT/bench/gpu_bench.py" --out "$OUT/bench.json"
  if [ "$DRY" = 1 ]; then
    for tool in memcheck racecheck initcheck; do run "$tool" "$LIMIT_SANITIZER" "$OUT/$tool.log" sanitize "$tool"; done
  elif command -v compute-sanitizer >/dev/null; then
    # In parallel: three processes on one GPU, each small; their rows are added in a fixed order afterwards.
    for tool in memcheck racecheck initcheck; do
      (ROWS=() FAILED=()
       run "$tool" "$LIMIT_SANITIZER" "$OUT/$tool.log" sanitize "$tool"; printf '%s\n' "${ROWS[-1]}" >"$OUT/.$tool.row"
       [ "${#FAILED[@]}" = 0 ] || echo "${FAILED[-1]}" >"$OUT/.$tool.failed") &
    done
    wait
    for tool in memcheck racecheck initcheck; do
      ROWS+=("$(cat "$OUT/.$tool.row")")
      [ -f "$OUT/.$tool.failed" ] && FAILED+=("$(cat "$OUT/.$tool.failed")")
      rm -f "$OUT/.$tool.row" "$OUT/.$tool.failed"
    done
  else
    ROWS+=("| compute-sanitizer | NOT RUN | 0 | compute-sanitizer not on the PATH |")
    FAILED+=("compute-sanitizer:")
  fi
fi

[ "$DRY" = 1 ] && exit 0

{
  echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg); total $SECONDS s"
  echo
  echo "| step | status | seconds | summary |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Benchmark (bench/gpu_bench.py)"
  echo
  if [ -s "$OUT/bench.log" ] && grep -q '^| case' "$OUT/bench.log"; then
    grep -E '^(Device |\|)' "$OUT/bench.log" | sed '1a\\'
  else
    echo "no benchmark table (see bench.log)"
  fi
  for entry in "${FAILED[@]}"; do
    echo
    echo "## ${entry%%:*}: last lines of ${entry#*:}"
    echo '```'
    [ -n "${entry#*:}" ] && tail -40 "${entry#*:}"
    echo '```'
  done
  echo
  [ "${#FAILED[@]}" = 0 ] && echo "RESULT: every step passed" || echo "RESULT: ${#FAILED[@]} step(s) did not pass"
} >>"$RESULTS"
cat "$RESULTS"
[ "${#FAILED[@]}" = 0 ]
