#!/usr/bin/env bash
# checkpoints/bach, stage 2 (after recipes/bach.sh): captions that steer from far away. Fine-tunes stage 1
# (runs/bach/best, keeping its audio codebook) at a 65,536-token context; in half of the batches the caption
# is buried at the start, middle or end of up to ~64,000 bytes of Shakespeare (perceiverar-train --filler).
# Measure with recipes/caption_probe.sh (benchmarks/long_prompt.py). About 20 min on one core of a 2-core CPU; on a GPU raise STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/bach}
FILLER=${FILLER:-../shared/data/shakespeare}
BASE=${BASE:-runs/bach/best}
RUN=${RUN:-runs/bach-long}
.venv/bin/python -m perceiverar.train --data "$DATA" --init-from "$BASE" --context-len 65536 --audio-seconds 12 \
    --filler "$FILLER:0.5" --out "$RUN" --max-steps "${STEPS:-200}" --batch-size "${BATCH:-2}" --lr 3e-4 --warmup 20 \
    --val-every 100 --val-items 16 --save-every 25 --sample-every 0 --no-progress --log-every 5 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name bach --data "$DATA" --eval-items 16 \
    --recipe "bash recipes/bach.sh && bash recipes/bach_long.sh" \
    --limitations "Trained briefly on a CPU: samples are chorale-coloured organ-like sound without musical structure."
.venv/bin/python -m benchmarks.music_quality --checkpoint checkpoints/bach --data "$DATA" --model-card
