#!/usr/bin/env bash
# checkpoints/emoji, long-prompt stage (after recipes/emoji.sh): captions that steer from far away.
# Continues the bundled checkpoint at its 65,536-token context with the same caption options; in a fraction of
# the batches (FILLER_PROB, default 0.5) the caption is buried at the start, the middle or the end of a run of
# Shakespeare (perceiverar-train --filler), so the one cross-attention, not only the latent stack, has to find it.
# Buried batches are log-uniform in length up to the context (as many per octave of caption-to-target distance)
# and hold about 32K tokens (fewer rows when long): ~1.45 s per step on 2 CPU threads, all batches averaged.
# Measured (runs/emoji-long3, 1,500 steps, 36 min; not shipped): a 60,000-token prompt went from 8.0 to 2.0 bits
# per pixel token, but a caption inside a long prompt was still not read and the category accuracy of generated
# images fell. Measure with benchmarks/long_prompt.py (see the README's long-context section).
# On a GPU: raise STEPS, --batch-size and --filler-tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/emoji}
FILLER=${FILLER:-../shared/data/shakespeare}
BASE=${BASE:-checkpoints/emoji}
RUN=${RUN:-runs/emoji-long}
.venv/bin/python -m perceiverar.train --data "$DATA" --image-size 16 --image-mode sketch \
    --caption-template "{text}; {style} style" --preset small --n-latents 512 --init-from "$BASE" --out "$RUN" \
    --filler "$FILLER:${FILLER_PROB:-0.5}" --filler-lengths log --filler-tokens 32768 \
    --opening-weight 4:16 --caption-part-dropout 0.5 --colour-tags 0.5 --hue-rotate 0.25 \
    --max-steps "${STEPS:-800}" --batch-size 16 --lr "${LR:-1e-4}" --warmup 50 --val-every 200 --val-items 64 \
    --save-every 50 --keep-last 2 --sample-every 0 --no-progress --log-every 10 --compile --cpu-bf16 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name emoji --data "$DATA" \
    --recipe "bash recipes/emoji.sh (five stages, see its header), then bash recipes/emoji_long.sh" \
    --limitations "Trained on a 2-core CPU at 16x16 pixels: see the measured category accuracy, colour-word match and non-blank share above, and the sample grid."
