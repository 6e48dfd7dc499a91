"""Which of k draws to keep? Selection rules for ``candidates`` (``perceiverar.candidates``), compared on the same draws.

    python -m benchmarks.rerank --checkpoint checkpoints/emoji --n-captions 40 --groups 2 --k 4

For each of ``--n-captions`` held-out captions (picked as ``benchmarks.image_quality`` picks them, ``--seed``),
``--groups`` x ``--k`` images are drawn in one batched ``generate`` call (the checkpoint's sampling defaults unless
overridden), with each draw's log-likelihood given the caption summed while it is sampled (``log_probs``). Every
draw is then scored teacher-forced without the caption (one full forward pass per draw) and classified by the
independent classifier of ``image_quality``. Each group of k is reduced to one image by each rule:

- ``first``: the first draw (no reranking; the expected accuracy of a single draw is ``all_draws``);
- ``likeliest``: the highest log p(image | caption): what ``candidates`` keeps;
- ``pmi``: the highest log p(image | caption) - log p(image | no caption) (pointwise mutual information).

Because every rule chooses among the same draws, differences between rules are paired and far less noisy than
two separate runs of ``image_quality``. Reported per rule: category accuracy, and blank and uniform shares; the
classifier's accuracy on the real images of the same captions is the reference (``real_picked``).
The generation-time scores are checked against a teacher-forced pass with the caption (``max_abs_diff``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import image_classifier as IC
from benchmarks import image_measures as IM
from benchmarks.image_quality import DEFAULT_DATA, as_tokenized, pick_val
from benchmarks.results_io import save_result
from perceiverar import Pipeline
from perceiverar.constraints import ModalityConstraint
from perceiverar.data import caption_from
from perceiverar.generation import generate
from tokenizers_mm.features import FeatureTracker
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.vocab import PIXEL_OFFSET, build_sequence

RULES = ("first", "likeliest", "pmi")


def teacher_forced(model, prompt: list[int], content: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """(R,) sum of log p(id | prompt, earlier ids) over the content ids (R, n) in [lo, hi), one forward pass each.
    The whole sequence must fit in the model's latents (true for the 16x16 emoji: ~350 of 512)."""
    out = []
    with torch.inference_mode():
        for row in content.tolist():
            seq = prompt + row
            if len(seq) > model.cfg.n_latents:
                raise ValueError(f"{len(seq)} tokens do not fit in {model.cfg.n_latents} latents: no single-pass score")
            feats = torch.from_numpy(FeatureTracker().extend(seq))[None]
            logits = model(torch.tensor([seq]), feats, n_latents=len(seq))[0].float()  # (L, V)
            lp = logits[:, lo:hi].log_softmax(-1)  # (L, hi - lo), over the ids the constraint allows
            at = torch.arange(len(prompt) - 1, len(seq) - 1)
            out.append(float(lp[at, torch.tensor(row) - lo].sum()))
    return torch.tensor(out)


def choose(scores: np.ndarray, k: int, rule: str) -> np.ndarray:
    """(G * k,) scores -> (G,) indices of the kept draws."""
    groups = scores.reshape(-1, k)
    pick = np.zeros(len(groups), dtype=int) if rule == "first" else groups.argmax(1)
    return np.arange(len(groups)) * k + pick


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/emoji"), help="an image checkpoint")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="emoji folder (captions.jsonl)")
    ap.add_argument("--n-captions", type=int, default=40, help="held-out captions")
    ap.add_argument("--groups", type=int, default=2, help="groups of k draws per caption")
    ap.add_argument("--k", type=int, default=4, help="draws per group")
    ap.add_argument("--seed", type=int, default=0, help="picks the captions; caption i is drawn with seed + i")
    ap.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument("--classifier-cache", type=Path, default=None, help="default ~/.cache/perceiverar/image_classifier")
    ap.add_argument("--classifier-epochs", type=int, default=IC.FitSettings().epochs, help="if it must be fitted")
    ap.add_argument("--tag", default="", help="result file tag")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default results/rerank-TAG-cpu-DATE.json)")
    args = ap.parse_args(argv)

    t0 = time.time()
    pipe = Pipeline.load(args.checkpoint, device="cpu")
    model, tok = pipe.model, pipe.image_tokenizer()
    if tok.palette is None:
        raise SystemExit("rerank: needs a palette or sketch checkpoint (one token per pixel)")
    lo, hi, n_px = PIXEL_OFFSET, PIXEL_OFFSET + len(tok.palette), tok.n_tokens
    opts = pipe.sampling(temperature=args.temperature, top_p=args.top_p, cfg_scale=args.cfg_scale)
    kw = dict(height=tok.height, width=tok.width, image_mode=tok.mode)
    template = pipe.config.get("caption_template", "{text}")
    records = IC.read_records(args.data)
    clf, clf_info = IC.fit_or_load(args.data, records, ImageTokenizer(tok.height, tok.width, tok.resize),
                                   settings=IC.FitSettings(epochs=args.classifier_epochs),
                                   cache_root=args.classifier_cache, log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    picked = pick_val(records, args.n_captions, args.seed)
    real = np.stack([as_tokenized(tok, a) for a in IC.load_images(args.data, picked, tok)])
    real_ok = np.array([p == r["labels"]["category"] for p, r in zip(clf.predict(real)["category"], picked)])
    uncond = build_sequence("", "image", complete=False, **kw)
    rows = args.groups * args.k
    draws = {"liked": [], "pmi": [], "check": [], "ok": [], "blank": [], "uniform": []}
    for i, r in enumerate(picked):
        t = time.time()
        prompt = build_sequence(caption_from(r, template), "image", complete=False, **kw)
        log_p = torch.zeros(rows)
        out = generate(model, prompt, n_px + 2, num_samples=rows, seed=args.seed + i, temperature=opts.temperature,
                       top_p=opts.top_p if opts.top_p < 1 else None, cfg_scale=opts.cfg_scale,
                       constraint=ModalityConstraint("image", content_range=(lo, hi), **kw), log_probs=log_p)
        content = out[:, :n_px]
        forced = teacher_forced(model, prompt, content, lo, hi)
        imgs = np.stack([np.asarray(tok.decode([t for t in c if lo <= t < hi])) for c in content.tolist()])
        pred = clf.predict(imgs)["category"]
        draws["liked"] += log_p.tolist()
        draws["pmi"] += (log_p - teacher_forced(model, uncond, content, lo, hi)).tolist()
        draws["check"].append(float((forced - log_p).abs().max()))
        draws["ok"] += [p == r["labels"]["category"] for p in pred]
        draws["blank"] += [bool(IM.is_blank(a)) for a in imgs]
        draws["uniform"] += [bool(IM.is_uniform(a)) for a in imgs]
        print(f"[{i + 1}/{len(picked)}] {time.time() - t:.1f} s  {r['text'][:50]!r}", file=sys.stderr, flush=True)

    ok, blank, uniform = (np.array(draws[k]) for k in ("ok", "blank", "uniform"))
    share = lambda a: {"share": round(float(a.mean()), 4), "count": int(a.sum()), "n": int(a.size)}  # noqa: E731
    by_rule = {}
    for rule in RULES:
        key = {"first": "liked", "likeliest": "liked", "pmi": "pmi"}[rule]
        kept = choose(np.array(draws[key]), args.k, rule)
        by_rule[rule] = {"category": share(ok[kept]), "blank": share(blank[kept]), "uniform": share(uniform[kept])}
    fields = {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "n_captions": len(picked), "groups": args.groups,
        "k": args.k, "seed": args.seed, "sampling": {"temperature": opts.temperature, "top_p": opts.top_p,
                                                     "cfg_scale": opts.cfg_scale},
        "classifier": clf_info, "real_picked": {"category": share(real_ok)}, "all_draws": {"category": share(ok), "blank": share(blank), "uniform": share(uniform)},
        "rules": by_rule, "max_abs_diff_generation_vs_teacher_forced": round(max(draws["check"]), 6),
        "threads": torch.get_num_threads(), "wall_seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    save_result("rerank", "cpu", fields, out=args.out, tag=args.tag)
    for rule, v in {"real": fields["real_picked"], "all draws": fields["all_draws"], **by_rule}.items():
        c = v["category"]
        print(f"{rule:10s} category {c['count']}/{c['n']} = {c['share']:.3f}   blank {v.get('blank', {}).get('count', '-')}")
    return fields


if __name__ == "__main__":
    main()
