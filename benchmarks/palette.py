"""The colour-token palette's own error: PSNR of palette-quantised vs original images, k-means vs a fixed cube.

    python -m benchmarks.palette --data ../shared/data/emoji --size 16 --out benchmarks/results/palette-emoji16.json

Fits the k-means palette on the training split (as ``perceiverar-train --image-mode palette`` does) and scores
both palettes on the held-out split, after the same preprocessing the tokenizer applies (alpha onto white,
resize). Writes JSON and prints it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import print_result
from perceiverar.data import is_val, list_entries
from tokenizers_mm.image import ImageTokenizer, cube_palette, fit_palette


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def load_split(folder: Path, size: int, limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    entries, _ = list_entries(folder, "image")
    tok = ImageTokenizer(size, size)
    train, val = [], []
    for e in entries[:limit]:
        (val if is_val(e.file) else train).append(np.asarray(tok.preprocess(folder / e.file)))
    return train, val


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/emoji", help="captioned image folder")
    ap.add_argument("--size", type=int, default=16, help="image side the tokenizer resizes to")
    ap.add_argument("--colours", type=int, default=256, help="palette size (k-means)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    train, val = load_split(Path(args.data), args.size, args.limit)
    t0 = time.perf_counter()
    fitted = fit_palette(train, args.colours)
    fit_s = time.perf_counter() - t0
    result = {"data": str(args.data), "size": args.size, "n_train": len(train), "n_val": len(val), "fit_seconds": round(fit_s, 2)}
    for name, pal in (("kmeans", fitted), ("cube", cube_palette())):
        tok = ImageTokenizer(args.size, args.size, mode="palette", palette=pal)
        scores = [psnr(np.asarray(tok.decode(tok.encode(img))), img) for img in val]
        finite = [s for s in scores if np.isfinite(s)]
        result[name] = {
            "colours": len(pal),
            "val_psnr_db_mean": round(float(np.mean(finite)), 2) if finite else None,
            "val_psnr_db_median": round(float(np.median(scores)), 2),
            "val_exact_images": int(len(scores) - len(finite)),
        }
    print_result("palette", "cpu", result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
