"""What re-rendering does to a picture's labels: the independent classifier on real held-out images, as they are and
re-rendered (``perceiverar/data/rerender.py``), moved and scaled (and turned), moved only, scaled only, turned only.

    python -m benchmarks.rerender_labels --checkpoint checkpoints/emoji --variants 2

A model trained on re-renders learns to draw what they look like; if the classifier of ``benchmarks.image_quality``
cannot tell a re-render's style (or category, or skin tone) from its pixels as well as the original's, a model
trained on them will not draw the style as recognisably either. Each held-out image is tokenized as the checkpoint
sees it (its size, layout and palette) and classified; variants ``0..variants-1`` use the same (dx, dy, scale,
degrees) as training does (``--max-shift``, ``--rerender-scale`` and ``--max-rotate`` set the ranges). Writes JSON
(``--tag``) and prints the counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import image_classifier as IC
from benchmarks.image_quality import DEFAULT_DATA, as_tokenized
from benchmarks.results_io import save_result
from perceiverar import Pipeline
from perceiverar.data.rerender import RerenderSpec, rerender, variant_params
from tokenizers_mm.image import ImageTokenizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/emoji", help="image checkpoint (its size, layout, palette)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="emoji folder (captions.jsonl with category and style)")
    ap.add_argument("--variants", type=int, default=2, help="re-render variants per image to score (k = 0, 1, ...)")
    ap.add_argument("--max-shift", type=float, default=RerenderSpec.max_shift, help="target pixels")
    ap.add_argument("--rerender-scale", type=float, default=RerenderSpec.min_scale, help="smallest scale")
    ap.add_argument("--max-rotate", type=float, default=RerenderSpec.max_rotate, help="degrees either way")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="emoji16")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = Path(args.data)
    pipe = Pipeline.load(args.checkpoint)
    tok = pipe.image_tokenizer()
    records = IC.read_records(data)
    clf, clf_info = IC.fit_or_load(data, records, ImageTokenizer(tok.height, tok.width, tok.resize))
    val = [r for r in records if r["val"]]
    labels = [r["labels"] for r in val]
    sources = [tok.open_image(data / r["file"]) for r in val]
    spec = RerenderSpec(variants=max(1, args.variants), max_shift=args.max_shift, min_scale=args.rerender_scale,
                        max_rotate=args.max_rotate)

    def score(moved) -> dict:
        """Correct labels of the held-out images, each drawn as ``moved(source image, its record)`` returns it."""
        imgs = np.stack([as_tokenized(tok, np.asarray(tok.preprocess(moved(img, r)), np.uint8))
                         for img, r in zip(sources, val)])  # fmt: skip
        return {k: v["correct"] for k, v in IC.accuracy(clf.predict(imgs), labels).items()}

    rows = {"original": score(lambda img, r: img)}
    for k in range(args.variants):
        p = lambda r: variant_params(r["file"], k, spec)  # noqa: E731
        rows[f"moved_and_scaled_k{k}"] = score(lambda img, r: rerender(img, tok, *p(r)))
        rows[f"moved_only_k{k}"] = score(lambda img, r: rerender(img, tok, *p(r)[:2], 1.0))
        rows[f"scaled_only_k{k}"] = score(lambda img, r: rerender(img, tok, 0.0, 0.0, p(r)[2]))
        if spec.max_rotate:
            rows[f"turned_only_k{k}"] = score(lambda img, r: rerender(img, tok, 0.0, 0.0, 1.0, p(r)[3]))
    for name, row in rows.items():
        print(f"{name:22s} " + "  ".join(f"{k} {v}/{len(val)}" for k, v in row.items()))
    save_result("rerender_labels", "cpu", {
        "checkpoint": str(args.checkpoint), "data": str(data), "held_out_images": len(val),
        "spec": {"max_shift": spec.max_shift, "min_scale": spec.min_scale, "max_rotate": spec.max_rotate},
        "correct": rows,
        "classifier": clf_info, "threads": args.threads, "wall_seconds": round(time.perf_counter() - t0, 1),
    }, tag=args.tag)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
