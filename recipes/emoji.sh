#!/usr/bin/env bash
# checkpoints/emoji: text -> 32x32 image on ../shared/data/emoji, CPU recipe (about 75 min on 1 core of a
# 2-core machine). On a GPU, raise --batch-size/--max-steps (and --image-size 64 with --context-len 16384).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/emoji}
RUN=${RUN:-runs/emoji}
.venv/bin/python -m perceiverar.train --data "$DATA" --image-size 32 --preset small --context-len 4096 \
    --n-latents 512 --out "$RUN" --max-steps "${STEPS:-1500}" --batch-size 4 --lr 1e-3 --warmup 100 \
    --val-every 250 --val-items 64 --save-every 100 --sample-every 500 --no-progress --log-every 10 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name emoji --data "$DATA" \
    --recipe "bash recipes/emoji.sh" \
    --limitations "Trained for about an hour on one CPU core: samples show emoji-like colours and shapes but are rarely recognisable."
