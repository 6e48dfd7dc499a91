"""Compute at inference: quality and speed of one checkpoint for several numbers of latents.

The paper's point: the number of latents N can change at test time, trading compute for quality. For
n_latents in {N/4, N/2, N, 2N} (2N where the context allows) this measures held-out bits per dim/token/byte
(``perceiverar-eval --n-latents k``), its scoring throughput (target tokens/s: a window scores k tokens,
so fewer latents mean more windows over the same context) and cached generation speed (tokens/s of a fixed-length sample).

    python -m benchmarks.latents_tradeoff --checkpoint checkpoints/emoji --data ../shared/data/emoji --max-items 16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

from benchmarks.results_io import save_result
from perceiverar import Pipeline
from perceiverar.evaluate import METRIC
from perceiverar.evaluate import main as evaluate


def generation_speed(pipe: Pipeline, n_latents: int, rows: int, seed: int = 0) -> dict:
    """Tokens/s of a cached generation of ``rows`` image rows (or 3 * 32 * rows text bytes)."""
    t0 = time.perf_counter()
    if "image" in pipe.modalities:
        width = pipe.config["image"]["width"]
        pipe.generate_image("grinning face", height=rows, width=width, seed=seed, n_latents=n_latents)
        n = rows * width * 3
    else:
        n = 96 * rows
        pipe.generate_text("ROMEO.\n", max_new_bytes=n, seed=seed, n_latents=n_latents)
    sec = time.perf_counter() - t0
    return {"tokens": n, "seconds": round(sec, 3), "tokens_per_s": round(n / sec, 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max-items", type=int, default=16)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--rows", type=int, default=4, help="image rows generated for the speed figure")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    pipe = Pipeline.load(a.checkpoint, device=a.device)
    cfg = pipe.model.cfg
    records = []
    print(f"{'n_latents':>9} {'quality':>10} {'gen tok/s':>9} {'scored tokens/s':>15}")
    for f in a.fractions:
        k = int(cfg.n_latents * f)
        if k < 1 or k > cfg.context_len:
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # evaluate prints its JSON; keep the table readable
            res = evaluate(["--checkpoint", a.checkpoint, "--data", a.data, "--max-items", str(a.max_items),
                            "--n-latents", str(k), "--no-speed", "--device", a.device]
                           + (["--max-windows", str(a.max_windows)] if a.max_windows else []))
        metric = next(m for m in METRIC.values() if m in res)
        speed = generation_speed(pipe, k, a.rows)
        scored = next(v for key, v in res.items() if key.endswith("_tokens_scored"))
        # Scoring (teacher-forced windows of k latents) is where the number of latents shows in the cost.
        score_speed = round(scored / res["eval_seconds"], 2)
        rec = {"n_latents": k, "fraction_of_N": f, metric: res[metric], "score_tokens_per_s": score_speed,
               **{f"gen_{k2}": v for k2, v in speed.items()}}  # fmt: skip
        records.append(rec)
        print(f"{k:>9} {res[metric]:>10.4f} {speed['tokens_per_s']:>9.2f} {score_speed:>15.1f}")
    save_result("latents_tradeoff", next(pipe.model.parameters()).device, {"checkpoint": str(a.checkpoint), "trained_n_latents": cfg.n_latents,
                                                  "max_items": a.max_items, "results": records},
                a.out, tag=Path(a.checkpoint).name)

if __name__ == "__main__":
    main()
