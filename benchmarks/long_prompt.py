"""Captions from far away: does a caption still steer the output when it stands inside a long prompt?

For held-out items of a captioned image (or audio) folder, the target (pixels or audio codes) is scored
teacher-forced, with the model's sliding windows (``perceiverar.evaluate.score_item``), after five prompts:

    caption_far    the caption, a blank line, then filler text: the caption opens a ~60,000-token prompt
    caption_near   the same filler, a blank line, then the caption: the caption right before the target
    no_caption     filler text alone, as long as the other two (nothing to steer by)
    caption_only   the caption alone (the ordinary short prompt)
    empty          the empty prompt (unconditional)
    wrong_far      like caption_far, with another item's caption (a different one, drawn at random from the folder)
    wrong_near     like caption_near, with that other caption
    wrong_only     that other caption alone

The ``wrong_*`` conditions are the fair control: a caption of the same form that says the wrong thing, so
``wrong_far - caption_far`` is what the right caption is worth from far away, free of any effect of the
prompt's shape. Those differences are also reported in bits per item (bits/dim times the scored target
tokens): a caption holds a few bits, at most log2 of the number of distinct captions, so spread over thousands
of pixels its worth per dim is necessarily tiny; per item it can be set against that bound
(``log2_distinct_captions``). ``far_gain_kept`` is the share of the right caption's worth that survives at the
far end: ``(wrong_far - caption_far) / (wrong_near - caption_near)``, in bits per item.

``--swap OLD=NEW`` (repeatable) makes the control sharper: the wrong caption is the item's own with one
phrase swapped (the first pair, in order, whose OLD stands in the caption as a whole phrase), and only items
with such a phrase are scored. Everything else about the prompt stays the same, so ``wrong_far - caption_far``
is then what that one phrase is worth from far away, e.g. the skin tone of an emoji:

    python -m benchmarks.long_prompt ... --swap "light skin tone=dark skin tone" --swap "dark skin tone=light skin tone"

The filler is held-out text (the validation plays of a text folder such as ``../shared/data/shakespeare``),
the same bytes for the three long prompts of an item. A model that uses its whole context scores
``caption_far`` close to ``caption_near`` and below ``no_caption`` and ``wrong_far``.

    python -m benchmarks.long_prompt --checkpoint checkpoints/emoji --data ../shared/data/emoji \\
        --filler ../shared/data/shakespeare --prompt-tokens 60000 --items 16

A target too long to fit after the longest prompt (a long chorale) is scored on its first tokens only, the
same ones in every condition. ``--context-len`` evaluates a checkpoint trained with a shorter context at a
longer one (rotary positions extrapolate in form, if not in quality): the "before fine-tuning" baseline;
``--query-len-scale N0`` runs the weights with length-scaled cross-attention queries (0: without);
``--pinned-latents P`` with the prompt's first P positions pinned in the latent stack (0: without). Writes
benchmarks/results/long_prompt-<name>-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_io import save_result
from perceiverar import PerceiverAR, load_checkpoint
from perceiverar.data import (
    CAPTION_SEP, DatasetError, Filler, bury_caption, default_cache_dir, parse_data_arg, prepare_source, prepare_sources,
    prompted_sequence,
)  # fmt: skip
from perceiverar.evaluate import METRIC, data_settings, score_item

CONDITIONS = ("caption_far", "caption_near", "no_caption", "caption_only", "empty", "wrong_far", "wrong_near", "wrong_only")


def prompts(caption: np.ndarray, filler: np.ndarray, prompt_tokens: int, wrong: np.ndarray) -> dict[str, np.ndarray]:
    """The eight prompts (text-byte ids) of one item, ``wrong`` being another item's caption.

    ``filler`` must hold at least ``prompt_tokens`` bytes; every long prompt is ``prompt_tokens`` long.
    """
    def far_near(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = filler[: max(0, prompt_tokens - len(c) - len(CAPTION_SEP))]
        return bury_caption(c, f, 0.0), bury_caption(c, f, 1.0)

    (far, near), (wrong_far, wrong_near) = far_near(caption), far_near(wrong)
    return {
        "caption_far": far, "caption_near": near, "no_caption": filler[:prompt_tokens],
        "caption_only": caption, "empty": caption[:0],
        "wrong_far": wrong_far, "wrong_near": wrong_near, "wrong_only": wrong,
    }  # fmt: skip


def caption_of(source, i: int) -> np.ndarray:
    """The prompt (caption) ids of item ``i`` (read alone, without the rest of the item)."""
    off, _, plen = (int(x) for x in source.index[int(i), :3])
    return np.asarray(source.ids[off + 2 : off + 2 + plen], dtype=np.int64)


def swap_phrase(caption: str, swaps: list[tuple[str, str]]) -> str | None:
    """``caption`` with the first pair's OLD (standing as a whole phrase) replaced by NEW; None if none stands in it."""
    for old, new in swaps:
        pattern = r"(?<![\w-])" + re.escape(old) + r"(?![\w-])"  # 'dark skin tone' is not in 'medium-dark skin tone'
        if re.search(pattern, caption):
            return re.sub(pattern, lambda _: new, caption)
    return None


def parse_swap(arg: str) -> tuple[str, str]:
    """'OLD=NEW' -> (OLD, NEW), both non-empty and different."""
    old, sep, new = arg.partition("=")
    if not sep or not old or not new or old == new:
        raise argparse.ArgumentTypeError(f"--swap {arg!r}: write it as OLD=NEW, two different non-empty phrases")
    return old, new


def wrong_captions(source, captions: list[np.ndarray], picked: np.ndarray, seed: int = 1) -> list[np.ndarray]:
    """For each picked item, the caption of a random item of the folder whose caption differs from its own.

    ``captions``: every item's caption, in the folder's order.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in picked:
        others = [c for c in captions if not np.array_equal(c, captions[int(i)])]
        if not others:
            raise DatasetError(f"{source.manifest['folder']}: every item has the same caption; long_prompt "
                               "needs at least two different captions for its wrong-caption control")  # fmt: skip
        out.append(others[int(rng.integers(len(others)))])
    return out


DIFFERENCES = {  # name: (x, y) -> mean over items of x - y, with its standard error
    "far_minus_near": ("caption_far", "caption_near"),
    "no_caption_minus_far": ("no_caption", "caption_far"),
    "no_caption_minus_near": ("no_caption", "caption_near"),
    "empty_minus_caption_only": ("empty", "caption_only"),
    "wrong_far_minus_far": ("wrong_far", "caption_far"),  # the right caption's worth from far away
    "wrong_near_minus_near": ("wrong_near", "caption_near"),
    "wrong_only_minus_caption_only": ("wrong_only", "caption_only"),
}


def paired(rows: list[dict], x: str, y: str, digits: int = 4) -> dict:
    """Mean and standard error over items of rows[x] - rows[y] (each item is its own control)."""
    d = np.asarray([r[x] - r[y] for r in rows], dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": round(float(d.mean()), digits), "stderr": round(se, digits)}


def far_gain_kept(per_bits: dict) -> float | None:
    """How much of the right caption's worth survives at the far end of the prompt: (wrong_far - caption_far) /
    (wrong_near - caption_near), both in bits per item (issue 19's target: >= 0.8). None when the caption is
    worth nothing right before the target (no gain to keep)."""
    far, near = per_bits["wrong_far_minus_far"]["mean"], per_bits["wrong_near_minus_near"]["mean"]
    return round(far / near, 3) if near > 0 else None


HEADER = 5  # [TEXT_END] [SEP] [BEGIN] [h] [w] between the prompt and the target
TRAILER = 2  # [END] [EOS] after it


def item_sequence(prompt: np.ndarray, rest: np.ndarray, n_target: int | None = None):
    """ids, position features and target range of ``[BOS][TEXT_BEGIN] prompt rest`` (rest: from [TEXT_END] on).

    ``n_target`` keeps only the first target tokens (a long clip under a long prompt must fit the context).
    """
    full = len(rest) - HEADER - TRAILER
    n = full if n_target is None else min(n_target, full)
    ids, feats = prompted_sequence(prompt, rest if n == full else rest[: HEADER + n])
    a = 2 + len(prompt) + HEADER
    return ids, feats, (a, a + n)


def with_context(model: PerceiverAR, context_len: int, query_len_scale: int | None = None,
                 pinned_latents: int | None = None) -> PerceiverAR:
    """The same weights under a longer (or shorter) context length, and a ``query_len_scale`` and a number of
    ``pinned_latents`` if given."""
    qls = model.cfg.query_len_scale if query_len_scale is None else query_len_scale
    pin = model.cfg.pinned_latents if pinned_latents is None else pinned_latents
    if context_len == model.cfg.context_len and qls == model.cfg.query_len_scale and pin == model.cfg.pinned_latents:
        return model
    out = PerceiverAR(dataclasses.replace(model.cfg, context_len=context_len, query_len_scale=qls, pinned_latents=pin))
    out.load_state_dict(model.state_dict())
    return out.eval()


def run(model, source, filler: Filler, *, items: int, prompt_tokens: int, split: str = "val", device="cpu",
        swaps: list[tuple[str, str]] | None = None, log=print) -> dict:
    """Per-condition bits (per dim or per token) over the first ``items`` items of ``split``, and timings.

    ``split`` 'val' scores held-out items (unseen captions: does the caption generalize *and* reach far?);
    'train' scores items seen in training, spread over the folder (can a caption the model knows steer from far?).
    ``swaps``: the wrong caption is the item's own with a phrase swapped (see the module docstring).
    """
    metric = METRIC[source.modality]
    rng = np.random.default_rng(0)
    text = lambda c: bytes(c.astype(np.uint8)).decode("utf-8", "replace")  # noqa: E731
    captions = [caption_of(source, j) for j in range(len(source))]  # read once: the controls and the bound
    pool = source.val_items if split == "val" and len(source.val_items) else source.train_items
    if swaps:
        swapped = {int(j): swap_phrase(text(captions[int(j)]), swaps) for j in pool}  # None: no phrase to swap
        pool = pool[[swapped[int(j)] is not None for j in pool]]
        if not len(pool):
            raise DatasetError(f"no {split} item's caption holds any --swap phrase ({', '.join(o for o, _ in swaps)})")
    if split == "val" and len(source.val_items):
        picked = pool[:items]
    else:  # evenly spaced, so the items are not all of one kind (the folder is sorted)
        picked = pool[np.linspace(0, len(pool) - 1, min(items, len(pool))).astype(np.int64)]
    if swaps:
        wrongs = [np.frombuffer(swapped[int(i)].encode(), np.uint8).astype(np.int64) for i in picked]
    else:
        wrongs = wrong_captions(source, captions, picked)
    N = model.cfg.n_latents
    acc = {c: [0.0, 0] for c in CONDITIONS}
    opening = {c: [0.0, 0] for c in CONDITIONS}  # the first N target tokens, before the pixels reveal much
    seconds = {c: 0.0 for c in CONDITIONS}
    per_item = []
    for n, i in enumerate(picked):
        i = int(i)
        ids = source.item(i)
        plen = int(source.index[i, 2])
        caption, rest = ids[2 : 2 + plen], ids[2 + plen :]
        ps = prompts(caption, filler.window(rng, prompt_tokens), prompt_tokens, wrongs[n])
        # Every condition scores the same target tokens: as many as fit after the longest prompt.
        n_target = min(len(rest) - HEADER - TRAILER, model.cfg.context_len + 1 - 2 - prompt_tokens - HEADER)
        if n_target < 1:
            raise SystemExit(f"long_prompt: error: a {prompt_tokens:,}-token prompt leaves no room for the target in "
                             f"the model's context of {model.cfg.context_len:,}; lower --prompt-tokens")  # fmt: skip
        row = {"file": source.file(i), "caption": text(caption), "wrong_caption": text(wrongs[n]),
               "target_tokens": n_target}  # fmt: skip
        for c in CONDITIONS:
            seq, feats, target = item_sequence(ps[c], rest, n_target)
            a, b = target
            t0 = time.perf_counter()
            # The same windows as scoring (a, b) at once: the first ends at a + N, then every N.
            head = score_item(model, seq, feats, (a, min(b, a + N)), device=device)
            tail = score_item(model, seq, feats, (a + N, b), device=device) if b > a + N else (0.0, 0)
            seconds[c] += time.perf_counter() - t0
            nats, count = head[0] + tail[0], head[1] + tail[1]
            acc[c][0] += nats
            acc[c][1] += count
            opening[c][0] += head[0]
            opening[c][1] += head[1]
            row[c] = round(nats / count / math.log(2), 4)
            row[f"{c}_bits"] = round(nats / math.log(2), 3)  # the whole scored target, in bits
            row[f"{c}_opening"] = round(head[0] / head[1] / math.log(2), 4)
        per_item.append(row)
        log(f"[{n + 1}/{len(picked)}] {row['file']}: " + ", ".join(f"{c} {row[c]:.3f}" for c in CONDITIONS))
    out = {c: round(acc[c][0] / acc[c][1] / math.log(2), 4) for c in CONDITIONS}
    head = {c: round(opening[c][0] / opening[c][1] / math.log(2), 4) for c in CONDITIONS}
    per_bits = {k: paired(per_item, f"{x}_bits", f"{y}_bits", 2) for k, (x, y) in DIFFERENCES.items()}
    return {
        "far_gain_kept": far_gain_kept(per_bits),
        "metric": metric,
        "results": out,
        "opening_results": head,
        "opening_tokens": N,
        "differences": {k: paired(per_item, x, y) for k, (x, y) in DIFFERENCES.items()},
        "differences_bits_per_item": per_bits,
        "log2_distinct_captions": round(math.log2(len({c.tobytes() for c in captions})), 2),
        "opening_differences": {k: paired(per_item, f"{x}_opening", f"{y}_opening") for k, (x, y) in DIFFERENCES.items()},
        "tokens_scored_per_condition": acc["caption_far"][1],
        "seconds": {c: round(s, 1) for c, s in seconds.items()},
        "per_item": per_item,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="captioned image or audio folder (its held-out items are scored)")
    p.add_argument("--filler", required=True, help="folder of .txt documents (its held-out text is the filler)")
    p.add_argument("--prompt-tokens", type=int, default=60000, help="length of the three long prompts")
    p.add_argument("--items", type=int, default=16, help="items to score")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="score held-out items (default) or items seen in training, spread over the folder")
    p.add_argument("--swap", type=parse_swap, action="append", default=None, metavar="OLD=NEW",
                   help="the wrong caption is the item's own with OLD swapped for NEW (repeatable; the first that "
                        "fits is used; only items with one are scored)")  # fmt: skip
    p.add_argument("--context-len", type=int, default=None, help="run the weights at this context length")
    p.add_argument("--query-len-scale", type=int, default=None, metavar="N0",
                   help="run the weights with this length-scaled cross-attention (perceiverar.config; 0: off; "
                        "default: the checkpoint's)")
    p.add_argument("--pinned-latents", type=int, default=None, metavar="P",
                   help="run the weights with the prompt's first P positions pinned in the latent stack "
                        "(perceiverar.config; 0: off; default: the checkpoint's)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tag", default=None, help="result file tag (default: the checkpoint folder's name)")
    p.add_argument("--out", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=args.device)
        settings, codec = data_settings(ckpt.tokenizer or {}, args.checkpoint)
        cache = args.cache_dir or default_cache_dir()
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        (source,), _ = prepare_sources([parse_data_arg(args.data)], settings, cache, codec=codec, log=log)
        if source.modality == "text":
            raise DatasetError(f"{args.data} holds text documents; long_prompt needs a captioned image or audio folder")
        text = prepare_source(parse_data_arg(args.filler, "text"), settings, cache, progress=False, log=log)
        filler = Filler(text, split="val" if len(text.val_items) else "train")
        # the config checks --context-len and --query-len-scale (e.g. "query_len_scale must be in [0, ...]")
        model = with_context(ckpt.model.float(), args.context_len or ckpt.config.context_len,
                             args.query_len_scale, args.pinned_latents).to(args.device)
    except (DatasetError, ValueError, RuntimeError) as e:
        raise SystemExit(f"long_prompt: error: {e}") from None
    try:
        res = run(model, source, filler, items=args.items, prompt_tokens=args.prompt_tokens, split=args.split,
                  device=args.device, swaps=args.swap)  # fmt: skip
    except DatasetError as e:
        raise SystemExit(f"long_prompt: error: {e}") from None
    r = res["results"]
    print(f"{res['metric']} over {res['tokens_scored_per_condition']:,} target tokens per condition "
          f"({len(res['per_item'])} {'held-out' if args.split == 'val' else 'training'} items, {args.prompt_tokens:,}-token prompts):")  # fmt: skip
    for c in CONDITIONS:
        print(f"  {c:13s} {r[c]:.4f}   (first {res['opening_tokens']} target tokens: {res['opening_results'][c]:.4f})")
    kept = res["far_gain_kept"]
    print(f"the right caption's worth (against the wrong one) kept at the far end of the prompt: "
          f"{'n/a (worth nothing near)' if kept is None else f'{kept:.0%}'}")
    print(f"paired differences, {res['metric']} and bits per item (log2 of the distinct captions: "
          f"{res['log2_distinct_captions']}):")
    for k, d in res["differences"].items():
        o, b = res["opening_differences"][k], res["differences_bits_per_item"][k]
        print(f"  {k:30s} {d['mean']:+.4f} +- {d['stderr']:.4f}   {b['mean']:+8.2f} +- {b['stderr']:.2f} bits/item"
              f"   (first tokens: {o['mean']:+.4f} +- {o['stderr']:.4f})")
    fields = {"checkpoint": str(args.checkpoint), "trained_context_len": ckpt.config.context_len,
              "context_len": model.cfg.context_len, "n_latents": model.cfg.n_latents,
              "query_len_scale": model.cfg.query_len_scale, "pinned_latents": model.cfg.pinned_latents,
              "data": args.data,
              "filler": args.filler, "prompt_tokens": args.prompt_tokens, "items": args.items, "split": args.split,
              "swaps": [f"{o}={n}" for o, n in args.swap or []], **res}  # fmt: skip
    tag = args.tag or Path(args.checkpoint).resolve().name
    save_result("long_prompt", args.device, fields, out=Path(args.out) if args.out else None, tag=tag)
    return fields


if __name__ == "__main__":
    main()
