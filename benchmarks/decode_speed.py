"""One generation path's speed, for ``benchmarks/generate.py --targets`` (which runs it in a subprocess).

It imports ``perceiverar`` from wherever ``PYTHONPATH`` points: this tree, or an older revision exported by the
orchestrator, so "today's path" and the new one are measured by the same code, side by side, on one machine.
Only what both revisions have is used: ``Pipeline`` (load, _layout, sampling, image_tokenizer) and ``generate``.

    PYTHONPATH=. python benchmarks/decode_speed.py image --checkpoint checkpoints/emoji
    PYTHONPATH=. python benchmarks/decode_speed.py text --checkpoint checkpoints/shakespeare --compile
    PYTHONPATH=. python benchmarks/decode_speed.py context --checkpoint checkpoints/shakespeare --context 16384

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import threading
import time
import warnings

import torch

import perceiverar
from perceiverar import generate
from perceiverar.pipeline import Pipeline
from tokenizers_mm.vocab import PIXEL_OFFSET, build_sequence, position_features

try:
    from perceiverar.constraints import ModalityConstraint
except ImportError:  # revisions before constraints.py
    from perceiverar.sampling import ModalityConstraint


def timed_generate(model, prompt, n, extra: dict, **kw) -> dict:
    """generate() with a timestamp per token: wall time, time to the first token, then seconds per token; each also
    in this process's CPU seconds (``cpu_*``), which a busy machine inflates far less than wall time (one thread)."""
    stamps: list[tuple[float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = generate(model, prompt, n, on_token=lambda s, i: stamps.append((time.perf_counter(), time.process_time())),
                       **extra, **kw)  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    k = max(1, len(stamps) - 1)
    return {"wall_s": wall, "cpu_s": cpu, "ttft_s": stamps[0][0] - t0, "cpu_ttft_s": stamps[0][1] - c0,
            "s_per_token_after_first": (stamps[-1][0] - stamps[0][0]) / k,
            "cpu_s_per_token_after_first": (stamps[-1][1] - stamps[0][1]) / k, "n_tokens": len(stamps), "out": out}  # fmt: skip


def load(args) -> Pipeline:
    pipe = Pipeline.load(args.checkpoint, device="cpu")
    if args.dtype == "bf16":
        pipe.model.to(torch.bfloat16)
    return pipe


def options(args) -> dict:
    """Keyword arguments only this revision's generate() takes."""
    params = inspect.signature(generate).parameters
    extra = {}
    if args.compile is not None:
        if "compile" not in params:
            raise SystemExit("this revision's generate() has no compile option")
        extra["compile"] = args.compile
    return extra


def run_image(args, pipe: Pipeline, extra: dict) -> dict:
    ids, n_new, kw = pipe._layout(args.caption, "image")
    tok = pipe.image_tokenizer(kw["height"], kw["width"])
    n_ids = 256 if getattr(tok, "palette", None) is None else len(tok.palette)
    opts = pipe.sampling(seed=args.seed).generate_kwargs()
    runs = []
    for _ in range(args.repeats):
        con = ModalityConstraint("image", height=tok.height, width=tok.width, image_mode=getattr(tok, "mode", "subpixel"),
                                 content_range=(PIXEL_OFFSET, PIXEL_OFFSET + n_ids))  # fmt: skip
        r = timed_generate(pipe.model, ids, n_new, extra, constraint=con, **opts)
        runs.append({k: v for k, v in r.items() if k != "out"})
    out = r["out"]
    return {"image": f"{tok.height}x{tok.width}", "image_mode": getattr(tok, "mode", "subpixel"),
            "tokens_per_image": int(out.shape[1]), "prompt_tokens": len(ids), "runs": runs,
            "tokens_sha": hash(tuple(out[0].tolist()))}  # fmt: skip


def run_text(args, pipe: Pipeline, extra: dict) -> dict:
    ids, n_new, _ = pipe._layout(args.prompt, "text", max_new_bytes=args.bytes)
    opts = pipe.sampling(seed=args.seed).generate_kwargs()
    runs = []
    for _ in range(args.repeats):
        r = timed_generate(pipe.model, ids, n_new, extra, constraint=ModalityConstraint("text", max_bytes=args.bytes), **opts)
        n_bytes = sum(1 for t in r["out"][0].tolist() if 0 <= t < 256)
        runs.append({**{k: v for k, v in r.items() if k != "out"}, "bytes": n_bytes, "bytes_per_s": n_bytes / r["wall_s"],
                     "bytes_per_cpu_s": n_bytes / r["cpu_s"]})  # fmt: skip
    return {"prompt_tokens": len(ids), "runs": runs}


def run_context(args, pipe: Pipeline, extra: dict) -> dict:
    """Per-token seconds at a long prompt: cached (window slides included) vs uncached full forward passes.

    The cached run is warmed up first (a few tokens of the same request: a compiled step compiles there). Uncached,
    a token costs one forward pass over its window's crop, whose latents grow from N - stride + 1 right after a
    slide to N before the next: ``uncached_mean_*`` averages passes at the smallest, middle and largest window (what
    a long generation pays on average); ``uncached_*`` times generate(use_cache=False), whose first tokens come
    right after a slide (the cheapest).
    """
    g = torch.Generator().manual_seed(0)
    body = torch.randint(32, 127, (args.context,), generator=g).tolist()  # printable bytes in an open text section
    ids = build_sequence(bytes(body), "text", complete=False)[: args.context]
    model = pipe.model
    stop = threading.Event()  # the warm-up: three tokens of the same request
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(model, ids, args.cached_tokens, seed=0, overflow="truncate", stop_event=stop,
                 on_token=lambda s, i: stop.set() if s >= 2 else None, **extra)  # fmt: skip
    cached = timed_generate(model, ids, args.cached_tokens, extra, seed=0, overflow="truncate")
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(model, ids, args.uncached_tokens, seed=0, use_cache=False, overflow="truncate")
    uncached = (time.perf_counter() - t0) / args.uncached_tokens
    uncached_cpu = (time.process_time() - c0) / args.uncached_tokens
    n, stride = model.cfg.n_latents, max(1, model.cfg.n_latents // 2)
    tokens = torch.tensor([ids])
    feats = torch.from_numpy(position_features(ids))[None]
    passes = []
    for k in (n - stride + 1, n - stride // 2, n):
        t0, c0 = time.perf_counter(), time.process_time()
        model(tokens, feats, n_latents=k)
        passes.append({"n_latents": k, "s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
    mean = sum(p["s"] for p in passes) / len(passes)
    mean_cpu = sum(p["cpu_s"] for p in passes) / len(passes)
    per, per_cpu = cached["s_per_token_after_first"], cached["cpu_s_per_token_after_first"]
    return {"context": len(ids), "cached": {k: v for k, v in cached.items() if k != "out"},
            "uncached_s_per_token": uncached, "uncached_cpu_s_per_token": uncached_cpu,
            "n_uncached_tokens": args.uncached_tokens, "uncached_passes": passes,
            "uncached_mean_s_per_token": mean, "uncached_mean_cpu_s_per_token": mean_cpu,
            "speedup_per_token": mean / per, "cpu_speedup_per_token": mean_cpu / per_cpu,
            "speedup_vs_cheapest_uncached": uncached / per, "cpu_speedup_vs_cheapest_uncached": uncached_cpu / per_cpu}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["image", "text", "context"])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="compile the decode step (new revisions only; default: the revision's own default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="generations per task (the first includes warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption", default="grinning face; Noto style")
    ap.add_argument("--prompt", default="ROMEO:\nBut soft, what light through yonder window breaks?\n")
    ap.add_argument("--bytes", type=int, default=400)
    ap.add_argument("--context", type=int, default=16_384)
    ap.add_argument("--cached-tokens", type=int, default=600)
    ap.add_argument("--uncached-tokens", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = options(args)
    t0 = time.perf_counter()
    pipe = load(args)
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        res = {"image": run_image, "text": run_text, "context": run_context}[args.task](args, pipe, extra)
    print(json.dumps({"task": args.task, "perceiverar": perceiverar.__file__, "dtype": args.dtype, "compile": args.compile,
                      "threads": args.threads, "load_s": load_s, **res}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
