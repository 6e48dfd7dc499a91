#!/usr/bin/env bash
# checkpoints/emoji-lossless: text -> 16x16 emoji in sub-pixel mode (3 tokens per pixel, every value exact), the
# lossless counterpart of checkpoints/emoji, for held-out bits/dim against lossless WebP of the same images.
# From scratch, trained whole: caption + 768 sub-pixels (~850 tokens) fit in the 1,024 latents, so every
# position is a target in every step and the caption is read by the latent stack. 800 steps of 16 items
# (~1.9 epochs), about 4.4 s per step on 2 threads of an AMD EPYC (66 min with --compile's warm-up).
# Measure: python -m benchmarks.image_quality --checkpoint checkpoints/emoji-lossless --n-captions 8 --samples 2
# On a GPU: raise STEPS and --batch-size, or train 32x32 (--image-size 32, --n-latents 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/emoji}
RUN=${RUN:-runs/emoji-lossless}
.venv/bin/python -m perceiverar.train --data "$DATA" --image-size 16 --image-mode subpixel \
    --caption-template "{text}; {style} style" --preset small --n-latents 1024 --context-len 4096 --out "$RUN" \
    --max-steps "${STEPS:-800}" --batch-size 16 --lr "${LR:-1e-3}" --warmup 50 --val-every 200 --val-items 64 \
    --save-every 100 --keep-last 3 --sample-every 0 --no-progress --log-every 10 --compile --cpu-bf16 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name emoji-lossless --data "$DATA" \
    --recipe "bash recipes/emoji_lossless.sh" \
    --limitations "Trained on a 2-core CPU for an hour at 16x16 pixels: a likelihood model (see the held-out bits/dim against lossless WebP above); its samples are far rougher than checkpoints/emoji's."
