#!/usr/bin/env bash
# checkpoints/bach: text -> music on the Bach chorales rendered to audio (fluidsynth), in one command:
#   bash recipes/bach.sh
# fits the audio codebook (4,096 codes on 150 training chorales, AUDIO_OPTIONS below: see the tokens-per-second
# table in tokenizers_mm/audio.py), trains (items longer than the latents get uniform windows, so every position
# of a clip is trained equally often), exports checkpoints/$NAME and measures it with benchmarks/music_quality.py
# (key following, notes-not-noise, held-out bits/token, a spectrogram PNG) into the model card.
# Needs Debian's fluidsynth + fluid-soundfont-gm (scripts/setup-debian.sh).
# Train in stretches, each continuing from the committed checkpoint (its codebook is kept):
#   INIT_FROM=checkpoints/bach STEPS=1000 LR=5e-4 bash recipes/bach.sh
# The shipped checkpoint: stage 1 `STEPS=1000 BATCH=8 bash recipes/bach.sh`; stage 2 on transposed copies
#   python -m recipes.transpose_midi --data ../shared/data/bach --out /work/data/bach_t \
#     --shifts=-5,-4,-3,-2,-1,1,2,3,4,5,6 --per-file 2
#   RUN=runs/bach-t DATA=/work/data/bach_t INIT_FROM=checkpoints/bach STEPS=550 LR=5e-4 BATCH=8 bash recipes/bach.sh
# stage 3 puts a chord label before every 22 codes (tokenizers_mm/chords.py) and trains mostly on 12-second
# openings, whole (the export then takes the lowest held-out loss: step 1,000); guidance 3 by default after it:
#   RUN=runs/bach-chords DATA=/work/data/bach_t INIT_FROM=checkpoints/bach STEPS=1000 LR=5e-4 BATCH=8 \
#     bash recipes/bach.sh --audio-mode chords --chord-weight 3 --opening-clips 0.75:12 --warmup 50 --val-every 200
# On a GPU: drop --cpu-bf16, raise STEPS and BATCH. Extra arguments go to perceiverar.train.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/bach}
RUN=${RUN:-runs/bach}
NAME=${NAME:-bach}
AUDIO_OPTIONS=${AUDIO_OPTIONS:-"n_mels=128 patch_frames=2 max_frames=250000"}
INIT=()
[[ -n "${INIT_FROM:-}" ]] && INIT=(--init-from "$INIT_FROM")
OPTS=()
for o in $AUDIO_OPTIONS; do OPTS+=(--audio-option "$o"); done
.venv/bin/python -m perceiverar.train --data "$DATA" --preset small --n-latents 1024 --context-len 16384 \
    --audio-codebook-size 4096 --audio-fit-files "${FIT_FILES:-150}" "${OPTS[@]}" --audio-seconds 12 "${INIT[@]}" \
    --out "$RUN" --max-steps "${STEPS:-1000}" --batch-size "${BATCH:-2}" --lr "${LR:-1e-3}" --warmup 100 \
    --val-every 250 --val-items 16 --save-every 100 --keep-last 2 --sample-every 0 --no-progress --log-every 10 \
    --compile --cpu-bf16 "$@"
.venv/bin/python -m recipes.export_checkpoint --run "$RUN" --name "$NAME" --data "$DATA" --eval-items 16 \
    --recipe "bash recipes/bach.sh" \
    --limitations "Trained on a 2-core CPU: see the key following and notes-not-noise measures and the spectrograms below."
# shellcheck disable=SC2086  # MQ_ARGS: extra music_quality arguments, split on spaces (e.g. "--items 8")
.venv/bin/python -m benchmarks.music_quality --checkpoint "checkpoints/$NAME" --data "$DATA" --model-card ${MQ_ARGS:-}
