#!/usr/bin/env bash
# checkpoints/shakespeare: byte-level text with a 65,536-byte context on ../shared/data/shakespeare.
# Crops of N+1..L+1 bytes, so every prefix length up to 65,536 is trained. On a GPU use e.g.
# STEPS=20000 and --batch-size 8 (bf16 autocast is automatic on CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/shakespeare}
RUN=${RUN:-runs/shakespeare}
.venv/bin/python -m perceiverar.train --data "$DATA" --preset small --n-latents 1024 --context-len 65536 \
    --out "$RUN" --max-steps "${STEPS:-600}" --batch-size "${BATCH:-1}" --lr 1e-3 --warmup 50 \
    --val-every 200 --val-items 4 --save-every 50 --sample-every 0 --no-progress --log-every 10 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name shakespeare --data "$DATA" --eval-items 2 --eval-max-windows 40 \
    --recipe "bash recipes/shakespeare.sh"
