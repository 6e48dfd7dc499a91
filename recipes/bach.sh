#!/usr/bin/env bash
# checkpoints/bach: text -> music on the Bach chorales rendered to audio (fluidsynth), with a 4,096-code
# k-means codebook over 80-mel frames (86 tokens per second). Needs Debian's fluidsynth + fluid-soundfont-gm
# (scripts/setup-debian.sh). Default clip length 12 s. On a GPU use e.g. STEPS=20000 --batch-size 8.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/bach}
RUN=${RUN:-runs/bach}
.venv/bin/python -m perceiverar.train --data "$DATA" --preset small --n-latents 1024 --context-len 16384 \
    --audio-codebook-size 4096 --audio-fit-files "${FIT_FILES:-150}" --audio-seconds 12 \
    --out "$RUN" --max-steps "${STEPS:-1000}" --batch-size "${BATCH:-2}" --lr 1e-3 --warmup 100 \
    --val-every 250 --val-items 16 --save-every 100 --sample-every 0 --no-progress --log-every 10 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name bach --data "$DATA" --eval-items 16 \
    --recipe "bash recipes/bach.sh"
