#!/usr/bin/env bash
# Does a checkpoint read its captions, and from how far? Runs benchmarks/long_prompt.py with the controls that
# isolate one phrase of the caption (--swap), then with another item's whole caption:
#   emoji: the skin tone swapped (light -> medium-dark, ...), the style swapped (google <-> twitter), a random caption
#   bach:  the mode swapped (F major -> F minor, ...), a random caption
# Read `wrong_only_minus_caption_only` first (is the phrase read at all, right before the target?), then
# `wrong_far_minus_far` against `wrong_near_minus_near` (is it read as well from ~60,000 tokens away?).
#   bash recipes/caption_probe.sh runs/emoji-long/best emoji
#   PROMPT_TOKENS=200 bash recipes/caption_probe.sh runs/emoji/best emoji   # quick: short prompts only
# Extra arguments go to every run (e.g. --split val, --items 64). Results: benchmarks/results/long_prompt-<tag>-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 || ! "$2" =~ ^(emoji|bach)$ ]]; then
    echo "usage: bash recipes/caption_probe.sh CHECKPOINT emoji|bach [long_prompt arguments...]" >&2
    exit 2
fi
CKPT=$1 KIND=$2
shift 2
DATA=${DATA:-../shared/data/$KIND}
FILLER=${FILLER:-../shared/data/shakespeare}
NAME=$(basename "$CKPT")  # a run's best/ or checkpoints/step-N/ is named after its run
case $NAME in
    best) NAME=$(basename "$(dirname "$CKPT")")-best ;;
    step-*) NAME=$(basename "$(dirname "$(dirname "$CKPT")")")-$NAME ;;
esac
TAG=${TAG:-$NAME}
probe() {  # probe NAME [--swap OLD=NEW ...]
    local name=$1
    shift
    .venv/bin/python -m benchmarks.long_prompt --checkpoint "$CKPT" --data "$DATA" --filler "$FILLER" \
        --prompt-tokens "${PROMPT_TOKENS:-60000}" --items "${ITEMS:-32}" --split train --tag "$TAG-$name" "$@" "${EXTRA[@]}"
}
EXTRA=("$@")
if [[ $KIND == emoji ]]; then
    probe tone --swap "light skin tone=medium-dark skin tone" --swap "medium-light skin tone=dark skin tone" \
        --swap "medium skin tone=light skin tone" --swap "medium-dark skin tone=medium-light skin tone" \
        --swap "dark skin tone=medium skin tone"
    probe style --swap "google style=twitter style" --swap "twitter style=google style"
else
    probe mode --swap "major=minor" --swap "minor=major"
fi
probe wrong
