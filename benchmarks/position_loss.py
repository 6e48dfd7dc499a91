"""Where an image model is trained and how well it predicts each pixel row: before and after whole-item training.

    python -m benchmarks.position_loss --checkpoint checkpoints/emoji --data ../shared/data/emoji --out J.json

Two figures per checkpoint, both per image row (row 0 is the first row, the one only the caption can help):

- ``train_target_share``: how often a row's tokens are loss targets in the training batches the checkpoint's
  recipe draws (the real ``Mixture``, prefix crops or whole items, with the checkpoint's L and N), as a share of
  sampled rows of the batch; a uniform policy gives every row the same share.
- ``val_bits``: held-out bits per target token of that row (``perceiverar.evaluate.item_nll``: every target
  scored once, as ``perceiverar-eval`` scores it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_io import print_result
from perceiverar.data import Mixture, default_cache_dir, parse_data_arg, prepare_sources
from perceiverar.evaluate import data_settings, item_nll
from perceiverar.pipeline import Pipeline


def row_of_targets(src, i: int, positions: np.ndarray, tokens_per_row: int) -> np.ndarray:
    """Image row of item positions (-1 outside the pixels)."""
    a, b = src.target_range(i)
    rows = (positions - a) // tokens_per_row
    return np.where((positions >= a) & (positions < b), rows, -1)


def train_share(src, *, context_len: int, n_latents: int, whole_items: bool, batches: int, rows_per_batch: int,
                height: int, tokens_per_row: int, seed: int = 0, skip: int = 0) -> list[float]:  # fmt: skip
    """Share of sampled items whose row r holds at least one loss target, per row (prompt dropout off)."""
    mix = Mixture([src], context_len, n_latents, prompt_dropout=0.0, seed=seed, whole_items=whole_items)
    hits = np.zeros(height)
    items = 0
    for step in range(batches):
        tokens, _, st = mix.batch(step, 0, rows_per_batch)
        T = tokens.shape[1]
        mask = st.get("loss_mask")
        for r in range(tokens.shape[0]):
            # Which item is this row? Re-draw the picks exactly as Mixture does would duplicate its code; instead
            # the rows of an image batch all share the layout up to the caption, so find the pixel start here.
            row = tokens[r].numpy()
            start = int(np.flatnonzero(row >= 5632)[4]) + 3 + skip  # BOS TEXT_BEGIN TEXT_END SEP BEGIN | h w (sketch)
            if mask is not None:
                targets = np.flatnonzero(mask[r].numpy()[1:]) + 1
            else:
                n = min(n_latents, T - 1)
                targets = np.arange(T - n, T)
            px = targets[(targets >= start) & (targets < start + height * tokens_per_row)]
            hits[np.unique((px - start) // tokens_per_row)] += 1
            items += 1
    return (hits / max(1, items)).round(4).tolist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="image checkpoint directory")
    ap.add_argument("--data", default="../shared/data/emoji", help="its image folder")
    ap.add_argument("--items", type=int, default=32, help="val items to score")
    ap.add_argument("--batches", type=int, default=200, help="training batches to sample for the target shares")
    ap.add_argument("--whole-items", choices=["auto", "on", "off"], default="auto",
                    help="the training policy to sample (auto: whole items when the checkpoint's N holds an item)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.checkpoint, device="cpu")
    model, tok_cfg = pipe.model, pipe.config
    settings, _ = data_settings(tok_cfg, args.checkpoint)
    (src,), _ = prepare_sources([parse_data_arg(args.data, "image")], settings, default_cache_dir(), progress=False)
    tok = pipe.image_tokenizer()
    per_row = tok.width * tok.channels
    L, N = model.cfg.context_len, model.cfg.n_latents
    whole = {"on": True, "off": False, "auto": max(src.length(int(i)) for i in src.train_items) <= min(N, L) + 1}[args.whole_items]
    t0 = time.perf_counter()
    share = train_share(src, context_len=L, n_latents=N, whole_items=whole, batches=args.batches, rows_per_batch=8,
                        height=tok.height, tokens_per_row=per_row, skip=tok.n_sketch)  # fmt: skip
    sums, counts = np.zeros(tok.height), np.zeros(tok.height)
    sk = tok.n_sketch  # sketch mode: the sketch's tokens come first; scored apart from the rows
    sketch_sum, sketch_count = 0.0, 0
    for i in src.val_items[: args.items]:
        i = int(i)
        ids = src.item(i)
        nll = item_nll(model, ids, src.features(ids), src.target_range(i))  # (h * per_row,)
        sketch_sum += float(np.nansum(nll[:sk]))
        sketch_count += int((~np.isnan(nll[:sk])).sum())
        rows = nll[sk : sk + tok.height * per_row].reshape(tok.height, per_row)
        sums += np.nansum(rows, 1)
        counts += (~np.isnan(rows)).sum(1)
    bits = (sums / np.maximum(counts, 1) / np.log(2)).round(4).tolist()
    result = {
        "checkpoint": str(args.checkpoint), "image": f"{tok.height}x{tok.width} {tok.mode}",
        "policy": "whole items" if whole else "prefix crops", "context_len": L, "n_latents": N,
        "train_target_share": share, "val_bits_per_token": bits, "val_items": int(min(args.items, len(src.val_items))),
        "first_row_share_over_mean": round(share[0] / float(np.mean(share)), 3) if np.mean(share) else None,
        "sketch_bits_per_token": round(sketch_sum / sketch_count / np.log(2), 4) if sketch_count else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    print_result("position_loss", "cpu", result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
