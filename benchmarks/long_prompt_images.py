"""Images under long prompts, to look at: for each caption, four images after the caption alone (left) and four
after the caption opening a long prompt, followed by held-out filler text (right), at the checkpoint's default
sampling, the same seed on both sides.

    python -m benchmarks.long_prompt_images --checkpoint checkpoints/emoji-long --filler ../shared/data/shakespeare \\
        --prompt-bytes 3000 --out benchmarks/results/long_prompt_images-emoji16.png

The numbers behind such pictures are ``benchmarks/long_prompt.py``'s.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image

from perceiverar import Pipeline
from perceiverar.data import DatasetError, Filler, TokenizerSettings, default_cache_dir, parse_data_arg, prepare_source

CAPTIONS = ("red heart", "blue heart", "green apple", "smiling face with sunglasses", "dog face", "blue book")
SCALE, GAP = 4, 4  # each image drawn 4x, 4 pixels apart; a wider gap between the two halves


def filler_text(folder: str, n_bytes: int, cache_dir=None) -> str:
    """``n_bytes`` of held-out text from a folder of .txt documents (the same bytes every run)."""
    src = prepare_source(parse_data_arg(folder, "text"), TokenizerSettings(), cache_dir or default_cache_dir(),
                         progress=False, log=lambda m: None)  # fmt: skip
    filler = Filler(src, split="val" if len(src.val_items) else "train")
    ids = filler.window(np.random.default_rng(0), n_bytes)
    return bytes(ids.astype(np.uint8)).decode("utf-8", "replace")


def grid(pipe: Pipeline, captions, filler: str, samples: int = 4, seed: int = 0, **sampling) -> Image.Image:
    rows = []
    for c in captions:
        short = pipe.generate_image(c, num_samples=samples, seed=seed, **sampling)
        long = pipe.generate_image(c + "\n\n" + filler, num_samples=samples, seed=seed, **sampling)
        rows.append(short + long)
        print(c, file=sys.stderr, flush=True)
    w, h = rows[0][0].size
    W, H = w * SCALE, h * SCALE
    out = Image.new("RGB", (2 * samples * (W + GAP) + 2 * GAP, len(rows) * (H + GAP) - GAP), "white")
    for r, imgs in enumerate(rows):
        for k, im in enumerate(imgs):
            x = k * (W + GAP) + (3 * GAP if k >= samples else 0)
            out.paste(im.resize((W, H), Image.NEAREST), (x, r * (H + GAP)))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--filler", required=True, help="folder of .txt documents (its held-out text follows the caption)")
    p.add_argument("--prompt-bytes", type=int, default=3000, help="filler bytes after each caption")
    p.add_argument("--caption", action="append", default=None, help="a caption (repeatable; default: six)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance (default: the checkpoint's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="PNG file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        text = filler_text(a.filler, a.prompt_bytes)
        pipe = Pipeline.load(a.checkpoint, device="cpu")
        img = grid(pipe, a.caption or CAPTIONS, text, a.samples, a.seed, cfg_scale=a.cfg_scale)
    except (DatasetError, ValueError) as e:
        raise SystemExit(f"long_prompt_images: error: {e}") from None
    img.save(a.out)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
