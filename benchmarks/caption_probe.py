"""Which parts of its caption does an image checkpoint read? Bits of real images under edited captions.

For image items of ``--data``, the bits of the real image's colour or sub-pixel tokens (teacher-forced, laid out
as training lays a whole item out) under its true caption and under captions with one part changed:

- ``name``: the first part ("blue heart") replaced by the name of an item of another category;
- ``colour``: for names with a colour word ("blue heart", "large red circle"), the colour replaced by each of
  the other colours in turn (mean over them; the true caption should be the likeliest);
- ``style``: the style part ("google style") replaced by the other style;
- ``rest``: every part after the name removed (the prompt a user who types only "blue heart" gives);
- ``empty``: no caption at all.

A cost near 0 bits means the model ignores that part. Reported per edit as mean +- standard error of
``bits(edited) - bits(true)`` and the share of items whose true caption is the likelier, on held-out items
(``val``: unseen emoji) and, for colour words, on every item with a colour word (both splits, marked).

    python -m benchmarks.caption_probe --checkpoint checkpoints/emoji --items 48 --tag emoji

Cheap beside ``benchmarks/image_quality.py`` (no generation): a few CPU minutes for ~50 items.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import image_classifier as IC
from benchmarks import image_measures as IM
from benchmarks.conv_ablation import image_bits
from benchmarks.results_io import save_result
from perceiverar.data import caption_from

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")
STYLES = ("google", "twitter")


def edits(rec: dict, template: str, other_name: str) -> dict[str, list[str]]:
    """Each edited caption of one record, as a list (``colour``: one per other colour; the others: one)."""
    true = caption_from(rec, template)
    name = rec["text"].split(";")[0]
    out = {"name": [true.replace(name, other_name, 1)], "empty": [""], "rest": [name]}
    if rec.get("style") in STYLES:
        other = STYLES[1 - STYLES.index(rec["style"])]
        out["style"] = [true.replace(f"{rec['style']} style", f"{other} style")]
    cw = IM.colour_word(name)
    if cw and cw[0] in COLOURS:
        out["colour"] = [true.replace(cw[0], c, 1) for c in COLOURS if c != cw[0]]
    return out


def summarize(deltas: list[float]) -> dict:
    d = np.asarray(deltas, dtype=np.float64)
    if not len(d):
        return {"n": 0}
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"n": len(d), "mean_bits": round(float(d.mean()), 2), "se_bits": se and round(se, 2),
            "true_likelier_share": round(float((d > 0).mean()), 3)}  # fmt: skip


def probe(model, tok, folder: Path, records: list[dict], template: str, names: list[tuple[str, str]],
          log=print) -> dict:  # fmt: skip
    """Per edit, the deltas of bits(edited) - bits(true) over ``records`` of image ``folder`` (``names``: the
    (category, name) pool the ``name`` edit draws from)."""
    deltas: dict[str, list[float]] = {}
    rows = []
    for k, rec in enumerate(records):
        others = [n for c, n in names if c != rec["category"]]
        other = others[int(hashlib.sha256(rec["file"].encode()).hexdigest(), 16) % len(others)]
        img = tok.preprocess(Path(folder) / rec["file"])
        true = caption_from(rec, template)
        true_bits, n_tok = image_bits(model, tok, true, img)
        row = {"file": rec["file"], "caption": true, "val": rec["val"], "true_bits": round(true_bits, 2),
               "tokens": n_tok}  # fmt: skip
        for kind, caps in edits(rec, template, other).items():
            b = np.mean([image_bits(model, tok, c, img)[0] for c in caps])
            deltas.setdefault(kind, []).append(float(b - true_bits))
            row[kind] = round(float(b - true_bits), 2)
        rows.append(row)
        if log and (k + 1) % 8 == 0:
            log(f"  {k + 1}/{len(records)} items")
    return {"edits": {k: summarize(v) for k, v in deltas.items()}, "items": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/emoji"))
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji")
    ap.add_argument("--items", type=int, default=48, help="held-out items (evenly spaced over the val split)")
    ap.add_argument("--colour-items", type=int, default=24, help="items with a colour word in their name (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from perceiverar import Pipeline  # noqa: PLC0415

    pipe = Pipeline.load(args.checkpoint, device="cpu")
    if "image" not in pipe.modalities:
        raise SystemExit(f"caption_probe: error: {args.checkpoint} generates {', '.join(pipe.modalities)}, not images")
    tok, template = pipe.image_tokenizer(), pipe.config.get("caption_template", "{text}")
    records = IC.read_records(args.data)
    names = sorted({(r["category"], r["text"].split(";")[0]) for r in records})
    val = [r for r in records if r["val"]]
    picked = [val[i] for i in np.linspace(0, len(val) - 1, min(args.items, len(val))).astype(int)]
    coloured = [r for r in records if (cw := IM.colour_word(r["text"].split(";")[0])) and cw[0] in COLOURS]
    spaced = np.linspace(0, len(coloured) - 1, min(args.colour_items, len(coloured))).astype(int)
    coloured = [coloured[i] for i in spaced]
    t0 = time.perf_counter()
    print(f"{len(picked)} held-out items, {len(coloured)} colour-word items")
    held_out = probe(pipe.model, tok, args.data, picked, template, names)
    colour = probe(pipe.model, tok, args.data, coloured, template, names) if coloured else None
    for what, res in (("held-out", held_out), ("colour words", colour)):
        for kind, s in (res or {"edits": {}})["edits"].items():
            print(f"{what:13s} {kind:7s} +{s.get('mean_bits')} bits (se {s.get('se_bits')}), true likelier "
                  f"{s.get('true_likelier_share')} of {s['n']}")  # fmt: skip
    save_result("caption_probe", "cpu", {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "caption_template": template,
        "seconds": round(time.perf_counter() - t0, 1), "held_out": held_out, "colour_words": colour,
        "command": "python -m benchmarks.caption_probe " + " ".join(sys.argv[1:] if argv is None else argv),
    }, tag=args.tag)  # fmt: skip


if __name__ == "__main__":
    main()
