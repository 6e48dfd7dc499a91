#!/usr/bin/env bash
# checkpoints/emoji, stage 2 (after recipes/emoji.sh): captions that steer from far away. Fine-tunes stage 1
# (runs/emoji/best) at a 65,536-token context; in half of the batches the caption is buried at the start,
# middle or end of up to ~62,000 bytes of Shakespeare (perceiverar-train --filler), so a caption at the start
# of a long prompt still steers the image. The captions now also name the set's style ("...; google style"),
# which the name alone leaves open. Measure with recipes/caption_probe.sh (benchmarks/long_prompt.py). About an hour on one core of a
# 2-core CPU; on a GPU raise STEPS and --batch-size.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/emoji}
FILLER=${FILLER:-../shared/data/shakespeare}
BASE=${BASE:-runs/emoji/best}
RUN=${RUN:-runs/emoji-long}
.venv/bin/python -m perceiverar.train --data "$DATA" --image-size 32 --init-from "$BASE" --context-len 65536 \
    --caption-template "{text}; {style} style" --filler "$FILLER:0.5" --out "$RUN" --max-steps "${STEPS:-300}" --batch-size 4 --lr 3e-4 --warmup 20 \
    --val-every 100 --val-items 64 --save-every 25 --sample-every 0 --no-progress --log-every 5 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name emoji --data "$DATA" \
    --recipe "bash recipes/emoji.sh && bash recipes/emoji_long.sh" \
    --limitations "Trained for about two hours on one CPU core: samples show emoji-like colours and shapes but are rarely recognisable."
