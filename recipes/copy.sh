#!/usr/bin/env bash
# Copy task (issue 10): random sequences followed by their exact repeat. On an H100:
#   CONTEXTS="65536" STEPS=3000 bash recipes/copy.sh --n-latents 1024 --width 256 --layers 6 --batch 8
# On a CPU, a sweep of short contexts (a few minutes each on one core):
#   CONTEXTS="128 256 512" STEPS=2000 bash recipes/copy.sh --n-latents 32 --width 64 --batch 32 --lr 3e-3
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m benchmarks.copy_task --contexts ${CONTEXTS:-1024} --steps "${STEPS:-2000}" "$@"
