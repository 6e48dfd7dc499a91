"""Do generated emoji look like emoji and follow their prompt? The image-generation papers' measures, on one checkpoint.

    python -m benchmarks.image_quality --checkpoint checkpoints/emoji --n-captions 48 --out benchmarks/results/x.json

Measures (issue 18), all on the checkpoint's image size, written to one JSON (and a PNG grid beside it):

- **Classifier score.** An independent tiny CNN (``benchmarks/image_classifier.py``), fitted on the real
  *training* images of ``--data``, predicts category, style (google / twitter) and skin tone. Its accuracy on
  the real held-out images (all of them, and those of the picked captions) against its accuracy on images
  generated from those held-out captions. ``--n-captions`` held-out captions are picked round-robin over the
  categories (seeded), so two thirds of them are not "People & Body" and answering the majority class scores
  little; ``--samples`` images per caption. The ratio generated / real accuracy on the same captions is the
  headline (target >= 0.8 for category).
- **Non-blank share** of every generated image (target >= 95%). Blank: fewer than 3% of the pixels are not
  near-white (all channels >= 240); see ``benchmarks/image_measures.py``. The share of near-uniform images is
  reported beside it.
- **Colour words.** For the captions that name a colour and a shape ("large red circle", "green book", "white
  heart", "black small square", ...; hearts, circles, squares and books, both styles; ``--n-colour`` of them,
  evenly spaced), the dominant colour name of the generated image's drawn pixels against the named colour
  (HSV rules in ``image_measures``; target >= 70% matched). The same measure on the real images of those
  captions is the sanity reference (it should be 100%).
- **Held-out likelihood** through ``perceiverar.evaluate.evaluate_sources`` on the first ``--bits-items`` val
  items: bits per sub-pixel (= bits/dim) for a sub-pixel checkpoint, bits per pixel token for a palette one.
  Lossless WebP of the same preprocessed images is the reference: in sub-pixel mode the target is to beat it.

Sampling options (--temperature, --top-k, --top-p, --cfg-scale) left unset take the checkpoint's defaults;
the JSON records the values used. Real images are preprocessed exactly as the tokenizer does (alpha onto white,
resized; palette-quantised too for a palette checkpoint). Caption ``i`` is generated with seed ``--seed + i``.
Everything runs on the CPU by default; set OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from benchmarks import image_classifier as IC
from benchmarks import image_measures as IM
from benchmarks.results_io import RESULTS, save_result
from perceiverar.data import caption_from, default_cache_dir, parse_data_arg, prepare_sources
from perceiverar.evaluate import bits_per_pixel_token, data_settings, evaluate_sources
from tokenizers_mm.image import ImageTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emoji"
TARGETS = {"category_ratio": 0.8, "non_blank_share": 0.95, "colour_matched_share": 0.7}
UNITS = {"subpixel": "bits per sub-pixel (bits/dim)", "palette": "bits per pixel token",
         "sketch": "bits per pixel token (the sketch's bits included)"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ which captions


def pick_val(records: list[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` held-out records, round-robin over the categories (in name order), each category's order seeded."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["val"]:
            by_cat[r["category"]].append(r)
    rng = np.random.default_rng(seed)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_cat.items())]
    out: list[dict] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def pick_colour(records: list[dict], n: int) -> list[dict]:
    """``n`` colour-word records (``image_measures.colour_word``), evenly spaced in (colour, shape, style) order."""
    found = [(IM.colour_word(r["text"].split(";")[0]), r) for r in records]
    found = sorted(((cw, r) for cw, r in found if cw), key=lambda x: (*x[0], x[1]["style"], x[1]["file"]))
    if n >= len(found):
        return [{**r, "colour": cw[0], "shape": cw[1]} for cw, r in found]
    idx = np.linspace(0, len(found) - 1, n).round().astype(int)
    return [{**found[i][1], "colour": found[i][0][0], "shape": found[i][0][1]} for i in idx]


# ------------------------------------------------------------------------------------------ images


def as_tokenized(tok: ImageTokenizer, img: np.ndarray) -> np.ndarray:
    """A preprocessed real image as the model sees it: palette-quantised in palette mode, else unchanged."""
    if getattr(tok, "mode", "subpixel") != "subpixel":
        return tok.palette[tok.quantize(img)]
    return img


def generate(pipe, records: list[dict], template: str, *, samples: int, seed: int, sampling: dict,
             what: str) -> list[list[np.ndarray]]:  # fmt: skip
    """``samples`` generated (H, W, 3) uint8 images per record, from its caption; record ``i`` has seed ``seed + i``."""
    out = []
    for i, r in enumerate(records):
        t0 = time.perf_counter()
        imgs = pipe.generate_image(caption_from(r, template), num_samples=samples, seed=seed + i, **sampling)
        out.append([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in imgs])
        log(f"[{what} {i + 1}/{len(records)}] {time.perf_counter() - t0:.1f} s  {r['text'][:60]!r}")
    return out


def webp_bits(images: list[np.ndarray]) -> tuple[float, float]:
    """Lossless WebP (method 6) bits per sub-pixel of the images, summed over all of them, each encoded once:
    (whole files, the entropy-coded bitstream only). The bitstream is the VP8L chunk's payload less its 5-byte
    signature and size header, without the 20-byte RIFF framing: the fairer reference for tiny images, where
    ~25 bytes of headers are a sizeable share of each file.
    """
    files, stream, dims = 0, 0, 0
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="WEBP", lossless=True, quality=100, method=6)
        data = buf.getvalue()
        if data[12:16] != b"VP8L":
            raise ValueError(f"expected a VP8L chunk in a lossless WebP, got {data[12:16]!r}")
        files += 8 * len(data)
        stream += 8 * (int.from_bytes(data[16:20], "little") - 5)
        dims += a.size
    return files / max(dims, 1), stream / max(dims, 1)


def save_grid(path: Path, prompts: list[str], reals: list[np.ndarray], gens: list[list[np.ndarray]],
              cell: int = 64) -> None:  # fmt: skip
    """PNG: one row per prompt: its text, the real image, then the generated samples (nearest-neighbour upscaled)."""
    cols = 1 + max(len(g) for g in gens)
    text_w, pad = 260, 4
    grid = Image.new("RGB", (text_w + cols * (cell + pad) + pad, len(prompts) * (cell + pad) + 20 + pad), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    draw.text((pad, 4), "prompt", fill="black", font=font)
    draw.text((text_w + pad, 4), "real", fill="black", font=font)
    draw.text((text_w + cell + 2 * pad, 4), "generated", fill="black", font=font)
    for row, (p, real, gen) in enumerate(zip(prompts, reals, gens)):
        y = 20 + row * (cell + pad)
        draw.multiline_text((pad, y), "\n".join(textwrap.wrap(p, 40)[:4]), fill="black", font=font)
        for c, a in enumerate([real, *gen]):
            big = Image.fromarray(a).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(big, (text_w + c * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


# ------------------------------------------------------------------------------------------ measures


def share(flags: list[bool]) -> dict:
    n = len(flags)
    return {"share": round(sum(flags) / n, 4) if n else None, "count": int(sum(flags)), "n": n}


def classifier_scores(clf, val_records, val_real, picked, picked_real, picked_gen) -> tuple[dict, list[dict]]:
    """Accuracy per task on all real val images, the picked captions' real images and their generated ones.

    Also returns one row per picked caption with the classifier's answers (real image, each generated image).
    """
    flat = np.stack([img for g in picked_gen for img in g])  # (n * samples, H, W, 3)
    flat_labels = [r["labels"] for r, g in zip(picked, picked_gen) for _ in g]
    real_pred, gen_pred = clf.predict(picked_real), clf.predict(flat)
    majority = {}
    for t in IC.TASKS:  # the share of the most common class: what always answering it would score
        counts = defaultdict(int)
        for r in picked:
            counts[r["labels"][t]] += 1
        majority[t] = round(max(counts.values()) / len(picked), 4)
    real = IC.accuracy(real_pred, [r["labels"] for r in picked])
    gen = IC.accuracy(gen_pred, flat_labels)
    ratio = {t: round(gen[t]["accuracy"] / real[t]["accuracy"], 4) if real[t]["accuracy"] else None for t in IC.TASKS}
    rows, k = [], 0
    for i, (r, g) in enumerate(zip(picked, picked_gen)):
        rows.append({"file": r["file"], "labels": r["labels"], "real_pred": {t: real_pred[t][i] for t in IC.TASKS},
                     "generated_pred": [{t: gen_pred[t][k + j] for t in IC.TASKS} for j in range(len(g))]})  # fmt: skip
        k += len(g)
    scores = {"real_val_all": IC.accuracy(clf.predict(val_real), [r["labels"] for r in val_records]),
              "real_picked": real, "generated": gen, "generated_over_real": ratio,
              "majority_class_share_of_picked": majority}  # fmt: skip
    return scores, rows


def colour_scores(records: list[dict], reals: list[np.ndarray], gens: list[list[np.ndarray]]) -> dict:
    rows, real_ok, gen_ok, named = [], [], [], []
    for r, real, gen in zip(records, reals, gens):
        real_dom = IM.dominant_colour(real)
        gen_dom = [IM.dominant_colour(g) for g in gen]
        real_ok.append(real_dom == r["colour"])
        gen_ok += [d == r["colour"] for d in gen_dom]
        named += [IM.colour_shares(g).get(r["colour"], 0.0) for g in gen]
        rows.append({"file": r["file"], "name": r["text"].split(";")[0], "style": r["style"], "colour": r["colour"],
                     "real": real_dom, "generated": gen_dom})  # fmt: skip
    return {"generated": share(gen_ok), "real": share(real_ok),
            "generated_mean_named_colour_share": round(float(np.mean(named)), 4) if named else None,
            "per_prompt": rows}  # fmt: skip


def likelihood(pipe, checkpoint: Path, data: Path, n_items: int, cache_dir, mode: str, tok: ImageTokenizer) -> dict:
    """Held-out bits per target token through perceiverar.evaluate, and lossless WebP on the same images."""
    settings, codec = data_settings(pipe.config, checkpoint)
    (source,), _ = prepare_sources([parse_data_arg(str(data), "image")], settings, cache_dir or default_cache_dir(),
                                   codec=codec, log=log)  # fmt: skip
    t0 = time.perf_counter()
    nats, count = evaluate_sources(pipe.model, [source], split="val", max_items=n_items)["image"]
    items = [source.file(int(i)) for i in source.val_items[:n_items]]
    bits = nats / max(count, 1) / math.log(2)
    bits = bits_per_pixel_token(bits, tok.height, tok.width, mode)  # sketch mode: its bits count against the pixels
    webp, stream = webp_bits([np.asarray(tok.preprocess(data / f), dtype=np.uint8) for f in items])
    out = {"unit": UNITS.get(mode, mode), "bits": round(bits, 4), "tokens_scored": int(count), "items": len(items),
           "seconds": round(time.perf_counter() - t0, 1),
           "webp_lossless_bits_per_subpixel": round(webp, 4),
           "webp_lossless_bitstream_bits_per_subpixel": round(stream, 4)}  # fmt: skip
    if mode == "subpixel":
        out["webp_lossless_bits_per_subpixel_note"] = ("same images, same size; whole files, and the bitstream "
                                                       "without the ~25 bytes of RIFF and VP8L headers")
    return out


def target(value, goal: float, below: bool = False) -> dict:
    ok = None if value is None else (value < goal if below else value >= goal)
    return {"value": value, "target": f"{'<' if below else '>='} {goal}", "pass": ok}


# ------------------------------------------------------------------------------------------ command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.image_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="image checkpoint directory (e.g. checkpoints/emoji)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="emoji folder (captions.jsonl with category and style)")
    p.add_argument("--n-captions", type=int, default=24, help="held-out captions to generate from (classifier score)")
    p.add_argument("--n-colour", type=int, default=24, help="colour-word captions to generate from (0: skip)")
    p.add_argument("--samples", type=int, default=8,
                   help="images per caption (one batched generate call); 8 x 40 captions: ~2.8 points standard error "
                        "on the category share, where 2 per caption left it at ~5.5")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="caption i is generated with seed + i; also picks the captions")
    p.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's (0 disables)")
    p.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's (1 disables)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance; default: the checkpoint's")
    p.add_argument("--candidates", type=int, default=None,
                   help="drawn per image, the likeliest given its caption kept (1: off); default: the checkpoint's")
    p.add_argument("--bits-items", type=int, default=64, help="held-out items scored for bits (0: skip)")
    p.add_argument("--grid", type=int, default=8, help="rows of the PNG grid saved beside the JSON (0: none)")
    p.add_argument("--cache-dir", default=None, help="token cache (default ~/.cache/perceiverar/datasets)")
    p.add_argument("--classifier-cache", default=None, help="default ~/.cache/perceiverar/image_classifier")
    p.add_argument("--classifier-epochs", type=int, default=IC.FitSettings().epochs,
                   help="epochs of the classifier's fit (part of its cache key)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--tag", default=None, help="result file tag (default: the checkpoint folder's name)")
    p.add_argument("--out", default=None, help="result JSON (default results/image_quality-TAG-DEVICE-DATE.json)")
    args = p.parse_args(argv)
    for name in ("n_captions", "n_colour", "bits_items", "grid"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.samples < 1 or args.n_captions < 1 or args.classifier_epochs < 1:
        p.error("--samples, --n-captions and --classifier-epochs must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from perceiverar import CheckpointError, Pipeline  # noqa: PLC0415  (after argument errors: no model import)
    from perceiverar.checkpoint import WEIGHTS  # noqa: PLC0415

    t_start = time.perf_counter()
    data, ckpt = Path(args.data), Path(args.checkpoint)
    try:
        pipe = Pipeline.load(ckpt, device=args.device)
        if "image" not in pipe.modalities:
            raise ValueError(f"{ckpt} generates {', '.join(pipe.modalities)}, not images")
        records = IC.read_records(data)
    except (OSError, ValueError, CheckpointError) as e:
        raise SystemExit(f"image_quality: error: {e}") from None
    # which weights were measured (a checkpoint folder may be replaced by a newer model later)
    weights_sha = hashlib.sha256((ckpt / WEIGHTS).read_bytes()).hexdigest()[:16]
    tok = pipe.image_tokenizer()  # the checkpoint's size, layout (and palette)
    mode = getattr(tok, "mode", "subpixel")
    template = pipe.config.get("caption_template", "{text}")
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg_scale,
                "candidates": args.candidates}
    used = {k: (pipe.defaults[k] if v is None else v) for k, v in sampling.items()}

    clf, clf_info = IC.fit_or_load(data, records, ImageTokenizer(tok.height, tok.width, tok.resize),
                                   settings=IC.FitSettings(epochs=args.classifier_epochs),
                                   cache_root=args.classifier_cache and Path(args.classifier_cache),
                                   log=log)  # fmt: skip
    real = lambda rs: np.stack([as_tokenized(tok, a) for a in IC.load_images(data, rs, tok)])  # noqa: E731
    val = [r for r in records if r["val"]]
    picked, colour = pick_val(records, args.n_captions, args.seed), pick_colour(records, args.n_colour)
    picked_real = real(picked)
    t0 = time.perf_counter()
    picked_gen = generate(pipe, picked, template, samples=args.samples, seed=args.seed, sampling=sampling,
                          what="caption")  # fmt: skip
    colour_gen = generate(pipe, colour, template, samples=args.samples, seed=args.seed + 10_000, sampling=sampling,
                          what="colour") if colour else []  # fmt: skip
    gen_seconds = time.perf_counter() - t0

    scores, per_caption = classifier_scores(clf, val, real(val), picked, picked_real, picked_gen)
    all_gen = [g for gs in picked_gen + colour_gen for g in gs]
    blank = {"generated_non_blank": share([not IM.is_blank(g) for g in all_gen]),
             "generated_uniform": share([IM.is_uniform(g) for g in all_gen]),
             "real_picked_non_blank": share([not IM.is_blank(a) for a in picked_real])}  # fmt: skip
    colour_real = list(real(colour)) if colour else []
    colours = colour_scores(colour, colour_real, colour_gen) if colour else None
    bits = likelihood(pipe, ckpt, data, args.bits_items, args.cache_dir, mode, tok) if args.bits_items else None

    targets = {
        "category_generated_over_real": target(scores["generated_over_real"]["category"], TARGETS["category_ratio"]),
        "non_blank_share": target(blank["generated_non_blank"]["share"], TARGETS["non_blank_share"]),
        "colour_matched_share": target(colours and colours["generated"]["share"], TARGETS["colour_matched_share"]),
    }
    if bits and mode == "subpixel":
        webp = bits["webp_lossless_bits_per_subpixel"]
        targets["bits_per_subpixel_below_webp"] = target(bits["bits"], webp, below=True)
        stream = bits["webp_lossless_bitstream_bits_per_subpixel"]
        targets["bits_per_subpixel_below_webp_bitstream"] = target(bits["bits"], stream, below=True)
    for row, r, gs in zip(per_caption, picked, picked_gen):
        row.update(prompt=caption_from(r, template), generated_blank=[IM.is_blank(g) for g in gs])

    tag = args.tag or ckpt.resolve().name
    device = torch.device(args.device)
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else RESULTS / f"image_quality-{tag}-{device.type}-{date}.json"
    grid = None
    if args.grid:  # the first val captions, then colour-word captions spread over the colours
        grid = out.with_suffix(".png")
        step = max(1, len(colour) // args.grid)
        rows = [(r, a, g) for r, a, g in zip(picked, picked_real, picked_gen)][: args.grid]
        rows += [(r, a, g) for r, a, g in zip(colour, colour_real, colour_gen)][::step][: args.grid]
        prompts = [caption_from(r, template) for r, _, _ in rows]
        save_grid(grid, prompts, [a for _, a, _ in rows], [g for _, _, g in rows])
    fields = {
        "checkpoint": str(ckpt), "weights_sha256": weights_sha, "data": str(data),
        "image": {"height": tok.height, "width": tok.width, "mode": mode}, "caption_template": template,
        "settings": {"n_captions": len(picked), "n_colour": len(colour), "samples_per_caption": args.samples,
                     "seed": args.seed, "bits_items": args.bits_items, **used,
                     "threads": torch.get_num_threads()},
        "real_images": "tokenizer preprocess" + (" + palette quantisation" if mode != "subpixel" else ""),
        "targets": targets,
        "classifier": {**clf_info, **scores},
        "blank": blank,
        "colour_words": colours,
        "likelihood": bits,
        "generated_images": len(all_gen),
        "seconds": {"generation": round(gen_seconds, 1), "per_image": round(gen_seconds / max(len(all_gen), 1), 2),
                    "total": round(time.perf_counter() - t_start, 1)},
        "grid": str(grid) if grid else None,
        "per_caption": per_caption,
    }  # fmt: skip
    save_result("image_quality", device, fields, out=out)
    for name, t in targets.items():
        log(f"{name:34s} {t['value']!s:>8}  target {t['target']:8s} {'PASS' if t['pass'] else 'fail'}")
    return fields


if __name__ == "__main__":
    main()
