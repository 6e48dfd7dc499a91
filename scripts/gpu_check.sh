#!/usr/bin/env bash
# The one call a session with a CUDA GPU makes: every check that needs the GPU, results as JSON.
#
#   bash scripts/gpu_check.sh              # all steps: tests bench generate bf16
#   bash scripts/gpu_check.sh tests bf16   # some of them
#   bash scripts/gpu_check.sh --dry-run    # print the commands and limits, run nothing (works on a CPU)
#
# Steps, each under its own time limit (GPU_CHECK_TIMEOUT_<STEP> seconds; the defaults add up to
# 540 s, inside one 600 s device call: run it with timeout_s=600; on a cold machine the first
# launches of each kernel also compile and autotune it). A failing step does not stop the others; the exit code is 1
# if any failed, 2 if there is no CUDA GPU (checked first), 64 for a bad argument.
#   tests     the gpu-marked tests of tests/kernels: compiled Triton vs the reference, bf16/fp16
#   bench     python -m kernels.bench --quick: ours vs SDPA vs FlexAttention, bf16
#   generate  python -m benchmarks.generate --quick --device cuda: cached vs uncached generation
#   bf16      python -m benchmarks.bf16_exactness --device cuda: cached vs uncached greedy decoding
#             in bf16 (same tokens or a measured near-tie) and fp32 (same tokens)
# JSON goes to benchmarks/results/ (the steps' own files, plus gpu_check-<date>.json with each step's
# exit code and seconds); the logs to $GPU_CHECK_LOGS (default /tmp/gpu_check-logs), the last 40
# lines of each to stdout. Where $OUT is a folder (the device machine: only $OUT comes back from it,
# at most 8 files) this run's JSON files and one combined log are copied there after every step.
# Python: $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ALL_STEPS=(tests bench generate bf16)

DRY=0
STEPS=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) [[ " ${ALL_STEPS[*]} " == *" $arg "* ]] \
         || { echo "gpu_check: unknown step '$arg' (choose from: ${ALL_STEPS[*]}; or --dry-run)" >&2; exit 64; }
       STEPS+=("$arg") ;;
  esac
done
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=("${ALL_STEPS[@]}")

PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
unset TRITON_INTERPRET  # the kernels must run compiled
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# step_cmd STEP: sets CMD (an array) and LIMIT (seconds) for a step.
step_cmd() {
  case $1 in
    tests) CMD=("$PY" -m pytest -q -m gpu -p no:cacheprovider --durations=10 tests/kernels); LIMIT=160 ;;
    bench) CMD=("$PY" -m kernels.bench --quick --budget-s 70); LIMIT=120 ;;
    generate) CMD=("$PY" -m benchmarks.generate --quick --device cuda); LIMIT=110 ;;
    bf16) CMD=("$PY" -m benchmarks.bf16_exactness --device cuda --tokens 200); LIMIT=150 ;;
  esac
  local var=GPU_CHECK_TIMEOUT_${1^^}
  LIMIT=${!var:-$LIMIT}
}

if [[ $DRY -eq 1 ]]; then
  for s in "${STEPS[@]}"; do
    step_cmd "$s"
    echo "$s (limit ${LIMIT}s): ${CMD[*]}"
  done
  exit 0
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU is visible to PyTorch ($PY: torch.cuda.is_available() is False)." >&2
  echo "gpu_check: these checks need one; on a CPU run the test suite instead (scripts/test.sh)." >&2
  exit 2
fi
"$PY" -c 'import torch, triton; print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")' \
  || { echo "gpu_check: PyTorch sees a GPU but Triton does not import" >&2; exit 2; }

RESULTS=benchmarks/results
LOGS=${GPU_CHECK_LOGS:-/tmp/gpu_check-logs}
mkdir -p "$RESULTS" "$LOGS"
DATE=$(date -u +%Y-%m-%d)
MARK=$(mktemp)  # result files newer than this one are this run's
SUMMARY=$RESULTS/gpu_check-$DATE.json

failed=0
entries=()
# The summary and, on the device machine, the copies in $OUT are rewritten after every step, so that
# a call cut short still brings back what finished.
write_summary() {
  {
    echo "{\"benchmark\": \"gpu_check\", \"date\": \"$DATE\", \"ok\": $([[ $failed -eq 0 ]] && echo true || echo false),"
    echo " \"device\": \"$DEVICE\", \"steps_planned\": \"${STEPS[*]}\", \"steps\": ["
    for i in "${!entries[@]}"; do
      [[ $i -gt 0 ]] && echo ","
      printf '  %s' "${entries[$i]}"
    done
    printf '\n]}\n'
  } > "$SUMMARY"
  if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    find "$RESULTS" -maxdepth 1 -name '*.json' -newer "$MARK" -exec cp {} "$OUT/" \;
    for s in "${STEPS[@]}"; do [[ -f $LOGS/$s.log ]] && { echo "=== $s"; cat "$LOGS/$s.log"; }; done > "$OUT/gpu_check.log"
  fi
}
DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')
for s in "${STEPS[@]}"; do rm -f "$LOGS/$s.log"; done
for s in "${STEPS[@]}"; do
  step_cmd "$s"
  echo "=== $s: ${CMD[*]} (limit ${LIMIT}s; log $LOGS/$s.log)"
  t0=$(date +%s)
  # To a file, not a pipe: a child process left holding a pipe would outlive the time limit.
  timeout --signal=INT --kill-after=20 "$LIMIT" "${CMD[@]}" > "$LOGS/$s.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  tail -n 40 "$LOGS/$s.log"
  timed_out=false
  [[ $rc -eq 124 || $rc -eq 137 ]] && { timed_out=true; echo "=== $s: stopped at its ${LIMIT}s limit"; }
  echo "=== $s: exit $rc after ${secs}s"
  [[ $rc -ne 0 ]] && failed=1
  entries+=("{\"step\": \"$s\", \"command\": \"${CMD[*]}\", \"exit_code\": $rc, \"seconds\": $secs, \"limit_s\": $LIMIT, \"timed_out\": $timed_out}")
  write_summary
done
"$PY" -m json.tool "$SUMMARY" >/dev/null || echo "gpu_check: $SUMMARY is not valid JSON" >&2
echo "wrote $SUMMARY"
[[ -n ${OUT:-} && -d ${OUT:-} ]] && echo "copied this run's JSON and gpu_check.log to $OUT"
rm -f "$MARK"
if [[ $failed -ne 0 ]]; then
  echo "gpu_check: FAILED (see the steps above and $SUMMARY)" >&2
  exit 1
fi
echo "gpu_check: all steps passed"
