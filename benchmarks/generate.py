"""Generation speed: cached vs uncached Perceiver AR, Perceiver AR vs a decoder-only Transformer, n_latents.

    python benchmarks/generate.py --quick          # a few minutes on a 2-core CPU
    python benchmarks/generate.py                  # longer runs; the decoder-only 65,536 prefill is really run
    python benchmarks/generate.py --checkpoint DIR --eval-file some.txt   # adds bits/dim per n_latents

Without --checkpoint the model is a randomly initialised preset (``small`` by default): speed does not
depend on the weights, but bits/dim would be meaningless, so it is only measured on a checkpoint.

Records (JSON under benchmarks/results/generate-<device>-<date>.json):

* ``cached_vs_uncached``: for a prompt of ``context`` tokens, time to first token and tokens/s of
  ``generate(use_cache=True)`` over enough tokens to include window slides (amortised), against
  seconds per token of ``use_cache=False`` (a full forward pass per token over the same windows; a few
  tokens only, timed right after a slide, where the latent stack is smallest: the cheapest uncached
  tokens, so the speed-up is if anything understated).
* ``vs_decoder_only``: the same 65,536-token prompt through a decoder-only Transformer of the same width,
  heads, depth and MLP (RoPE, RMSNorm, squared-ReLU, a standard KV cache, F.scaled_dot_product_attention
  with its memory-efficient causal CPU kernel, so the whole-prompt prefill needs no chunking for memory).
  With --quick its prefill is measured at 8,192 and 16,384 tokens and extrapolated to 65,536 with a fit
  a*T + b*T^2 (labelled ``extrapolated``); its decode step is timed against a KV cache of 65,536 entries.
* ``n_latents``: time to first token and tokens/s at a 16,384-token prompt for several n_latents
  (plus bits/dim on --eval-file when a checkpoint is given).

``--targets`` measures issue 21's CPU targets instead (JSON: results/generate-targets-cpu-<date>.json), today's path
(``--baseline``, a git revision exported to a temporary folder) beside this tree's variants (eager fp32, the
default; compiled; bf16), each in its own process (``benchmarks/decode_speed.py``), one task at a time:

    python benchmarks/generate.py --targets       # (1) one emoji image, (2) shakespeare text bytes/s, (3) 16K context
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perceiverar import PerceiverAR, PerceiverARConfig, generate, load_checkpoint  # noqa: E402
from perceiverar.generation import append, make_schedule, new_stream, next_logits  # noqa: E402
from perceiverar.layers import MLP, apply_rope, rope_angles  # noqa: E402
from tokenizers_mm.vocab import build_sequence  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def image_prompt(n: int, seed: int = 0) -> list[int]:
    """n tokens of a (partial) 256x256 image sequence: realistic layout and position features."""
    ids = build_sequence("", "image", height=256, width=256, complete=False)  # no condition bytes to drop
    g = torch.Generator().manual_seed(seed)
    return ids + torch.randint(256, 512, (n - len(ids),), generator=g).tolist()


# ------------------------------------------------------------------------------------ Perceiver AR


COMPILE: dict = {}  # generate()'s compile= (main's --compile / --no-compile; empty: generate's default)


def time_generate(model, prompt, n, device, **kw) -> dict:
    """Wall time of generate(): time to first token, then the rate of the remaining tokens.

    A warm-up of three tokens of the same request runs first, so that a compiled decode step is compiled (and its
    CUDA graph recorded) before the clock starts.
    """
    stop = threading.Event()

    def stamp(step, ids):
        sync(device)  # the ids exist: on CUDA, the step really finished
        stamps.append(time.perf_counter())

    with warnings.catch_warnings():  # a prompt that fills the context slides the window: expected here
        warnings.simplefilter("ignore")
        generate(model, prompt, n, seed=0, overflow="truncate", stop_event=stop,
                 on_token=lambda s, i: stop.set() if s >= 2 else None, **COMPILE, **kw)  # fmt: skip
        stamps: list[float] = []
        sync(device)
        t0 = time.perf_counter()
        generate(model, prompt, n, seed=0, overflow="truncate", on_token=stamp, **COMPILE, **kw)
    sync(device)
    ttft = stamps[0] - t0
    rest = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return {"ttft_s": ttft, "s_per_token": rest, "tokens_per_s": 1.0 / rest if rest > 0 else None, "n_tokens": len(stamps)}


def count_slides(model, P: int, n: int, n_latents=None) -> int:
    sch = make_schedule(model, n_latents)
    w, slides = sch.window(None, P), 0
    for length in range(P + 1, P + n):
        nw = sch.window(w, length)
        slides += nw != w
        w = nw
    return slides


def bench_cached_vs_uncached(model, P: int, n_cached: int, n_uncached: int, device) -> dict:
    prompt = image_prompt(P)
    cached = time_generate(model, prompt, n_cached, device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(model, prompt, n_uncached, seed=0, use_cache=False, overflow="truncate")
    uncached = (time.perf_counter() - t0) / n_uncached
    return {
        "kind": "cached_vs_uncached",
        "context": P,
        "cached": cached,
        "window_slides_in_cached_run": count_slides(model, P, n_cached),
        "uncached_s_per_token": uncached,
        "n_uncached_tokens": n_uncached,
        "speedup_per_token": uncached / cached["s_per_token"],
    }


# -------------------------------------------------------------------- decoder-only baseline (same size)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.wqkv = nn.Linear(cfg.width, 3 * cfg.attn_dim, bias=False)
        self.wo = nn.Linear(cfg.attn_dim, cfg.width, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim)

    def forward(self, x, rope, cache, pos: int):  # x (B, T, C); cache: (k, v) (B, H, S, D)
        B, T, _ = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).view(B, T, 3, self.cfg.n_heads, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        kc, vc = cache
        kc[:, :, pos : pos + T], vc[:, :, pos : pos + T] = k, v
        if pos == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, kc[:, :, : pos + 1], vc[:, :, : pos + 1])  # sees every cached key
        else:
            raise NotImplementedError("the benchmark prefills in one pass")
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, -1))
        return x + self.mlp(self.mlp_norm(x))


class DecoderOnly(nn.Module):
    """A standard decoder-only Transformer with a KV cache, the width / heads / depth of a Perceiver AR config."""

    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)

    def new_cache(self, B: int, S: int, device, dtype):
        shape = (B, self.cfg.n_heads, S, self.cfg.head_dim)
        return [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)) for _ in self.blocks]

    def forward(self, tokens, pos: int, caches):  # -> logits (B, V) of the last position
        T = tokens.shape[1]
        rope = rope_angles(torch.arange(pos, pos + T, device=tokens.device), self.cfg.head_dim, self.cfg.rope_base)
        x = self.embed(tokens)
        for block, cache in zip(self.blocks, caches):
            x = block(x, rope, cache, pos)
        return self.head(self.norm(x[:, -1]))


def time_decoder_prefill(dec: DecoderOnly, T: int, device) -> float:
    tokens = torch.tensor([image_prompt(T)], device=device)
    caches = dec.new_cache(1, T + 1, device, torch.float32)
    sync(device)
    t0 = time.perf_counter()
    dec(tokens, 0, caches)
    sync(device)
    return time.perf_counter() - t0


def bench_vs_decoder_only(model, P: int, ours: dict, device, quick: bool, n_decode: int) -> dict:
    torch.manual_seed(0)
    dec = DecoderOnly(model.cfg).to(device).eval()
    rec = {"kind": "vs_decoder_only", "context": P, "decoder_only_params": sum(p.numel() for p in dec.parameters()),
           "perceiver_ar_params": model.num_params()}  # fmt: skip
    with torch.inference_mode():
        if quick:
            pts = [8_192, 16_384]
            ts = [time_decoder_prefill(dec, T, device) for T in pts]
            # t = a T + b T^2 through both points
            (t1, t2), (x1, x2) = ts, pts
            b = (t2 / x2 - t1 / x1) / (x2 - x1)
            a = t1 / x1 - b * x1
            rec["decoder_only_prefill_measured"] = {str(T): t for T, t in zip(pts, ts)}
            rec["decoder_only_ttft_s"] = a * P + b * P * P
            rec["decoder_only_ttft_note"] = "extrapolated from the measured 8,192 and 16,384 prefills with a*T + b*T^2"
        else:
            rec["decoder_only_ttft_s"] = time_decoder_prefill(dec, P, device)
            rec["decoder_only_ttft_note"] = "measured: one whole-prompt prefill"
        # decode steps against a full KV cache (values do not change the cost)
        caches = dec.new_cache(1, P + n_decode + 1, device, torch.float32)
        for kc, vc in caches:
            kc[:, :, :P].normal_()
            vc[:, :, :P].normal_()
        tok = torch.tensor([[300]], device=device)
        dec(tok, P, caches)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for i in range(n_decode):
            dec(tok, P + 1 + i, caches)
        sync(device)
        rec["decoder_only_s_per_token"] = (time.perf_counter() - t0) / n_decode
    rec["perceiver_ar_ttft_s"] = ours["ttft_s"]
    rec["perceiver_ar_s_per_token"] = ours["s_per_token"]
    rec["ttft_speedup"] = rec["decoder_only_ttft_s"] / ours["ttft_s"]
    rec["tokens_per_s_ratio"] = rec["decoder_only_s_per_token"] / ours["s_per_token"]
    return rec


# ------------------------------------------------------------------------------------------ n_latents


def bits_per_dim(model, ids: list[int], n_latents: int, n_scored: int) -> float:
    """Teacher-forced bits per token of the last n_scored ids, through the cached generation path."""
    sch = make_schedule(model, n_latents)
    P = len(ids) - n_scored
    total = 0.0
    with torch.inference_mode():
        st = new_stream(model, ids[:P], 1, n_scored, schedule=sch, use_cache=True)
        for t in range(P, len(ids)):
            logp = next_logits(model, st, sch).log_softmax(-1)[0, ids[t]]
            total -= float(logp)
            append(st, torch.tensor([ids[t]]))
    return total / n_scored / math.log(2)


def bench_n_latents(model, P: int, values: list[int], n_tokens: int, device, eval_ids=None) -> list[dict]:
    prompt = image_prompt(P, seed=1)
    out = []
    for k in values:
        r = time_generate(model, prompt, n_tokens, device, n_latents=k)
        rec = {"kind": "n_latents", "context": P, "n_latents": k, **r, "window_slides": count_slides(model, P, n_tokens, k)}
        if eval_ids is not None:
            rec["bits_per_dim"] = bits_per_dim(model, eval_ids, k, min(512, len(eval_ids) // 2))
        out.append(rec)
    return out


# ------------------------------------------------------------------------ targets: today's path vs the new one

# "Today's path": the code before the static-shape decode step (issue 21), exported from git and measured by the
# same worker (benchmarks/decode_speed.py) in its own process, beside this tree's variants. It is the parent of the
# commit that added perceiverar/decode_step.py. (Until 2026-12-01 this was c212e05, whose pipeline.py imports
# perceiverar/constraints.py, committed a minute later: that tree only ran where the installed package lent it the
# missing module, and in a fresh editable install it lends today's, which no longer fits the old vocab.)
BASELINE_REV = "ff03c90a1468501590ae93342211716ef535de44"
TARGETS = {"image_wall_s": 5.0, "text_bytes_per_s": 200.0, "cached_vs_uncached_per_token": 50.0}
VARIANTS = {  # name -> (tree: "baseline" | "this", worker flags)
    "today": ("baseline", []),
    "new": ("this", []),
    "new_compiled": ("this", ["--compile"]),
    "new_bf16": ("this", ["--dtype", "bf16"]),
}


def export_revision(rev: str, dest: Path) -> Path:
    """The packages of git revision ``rev`` in ``dest`` (what PYTHONPATH points the baseline worker at)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "perceiverar", "tokenizers_mm", "kernels"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_worker(tree: Path, task: str, flags: list[str], threads: int, timeout: float) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "decode_speed.py"), task, *flags, "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"]}
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "process_wall_s": time.perf_counter() - t0}


def bench_targets(args) -> dict:
    """(1) one image with the emoji checkpoint, (2) text bytes/s with the shakespeare checkpoint, (3) cached vs
    uncached seconds per token at a 16K prompt: each for today's path and the new one's variants, in one run.

    Each round runs every variant of a task in turn (side by side); the summary takes each variant's best warm run
    over the rounds, the one a busy machine disturbed least.
    """
    tasks = {
        "image": ["--checkpoint", str(args.image_checkpoint)],
        "text": ["--checkpoint", str(args.text_checkpoint), "--bytes", "400"],
        "context": ["--checkpoint", str(args.text_checkpoint), "--context", "16384"],
    }
    tasks = {k: v for k, v in tasks.items() if k in args.tasks}
    variants = {k: VARIANTS[k] for k in args.variants}
    out: dict = {task: {name: [] for name in variants} for task in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this": ROOT, "baseline": export_revision(args.baseline, Path(tmp))}
        for task, task_flags in tasks.items():
            for _ in range(args.rounds):
                for name, (tree, flags) in variants.items():
                    res = run_worker(trees[tree], task, task_flags + flags, args.threads or 1, args.worker_timeout)
                    out[task][name].append(res)
                    print(f"{task:8s} {name:13s} {_summary(task, res)}", flush=True)
    summary = {name: _best(out, name) for name in variants}
    return {"baseline_rev": args.baseline, "targets": TARGETS, "rounds": args.rounds, "summary": summary,
            "measurements": out}  # fmt: skip


def _best(out: dict, name: str) -> dict:
    """A variant's best warm (last) run per task over the rounds, in wall and in CPU seconds, against the targets."""

    def warm(task, key, best):
        vals = [r["runs"][-1][key] for r in out.get(task, {}).get(name, []) if "runs" in r]
        return best(vals) if vals else None

    def ctx(key):
        vals = [r[key] for r in out.get("context", {}).get(name, []) if key in r]
        return max(vals) if vals else None

    res = {
        "image_wall_s": warm("image", "wall_s", min),
        "image_cpu_s": warm("image", "cpu_s", min),
        "text_bytes_per_s": warm("text", "bytes_per_s", max),
        "text_bytes_per_cpu_s": warm("text", "bytes_per_cpu_s", max),
        "cached_vs_uncached_per_token": ctx("speedup_per_token"),
        "cached_vs_uncached_per_cpu_s": ctx("cpu_speedup_per_token"),
    }
    res["meets_wall"] = {
        "image_wall_s": _le(res["image_wall_s"], TARGETS["image_wall_s"]),
        "text_bytes_per_s": _ge(res["text_bytes_per_s"], TARGETS["text_bytes_per_s"]),
        "cached_vs_uncached_per_token": _ge(res["cached_vs_uncached_per_token"], TARGETS["cached_vs_uncached_per_token"]),
    }
    res["meets_cpu_s"] = {
        "image_wall_s": _le(res["image_cpu_s"], TARGETS["image_wall_s"]),
        "text_bytes_per_s": _ge(res["text_bytes_per_cpu_s"], TARGETS["text_bytes_per_s"]),
        "cached_vs_uncached_per_token": _ge(res["cached_vs_uncached_per_cpu_s"], TARGETS["cached_vs_uncached_per_token"]),
    }
    return res


def _le(x, limit):
    return None if x is None else x <= limit


def _ge(x, limit):
    return None if x is None else x >= limit


def _summary(task: str, r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    if task == "image":
        return (f"{r['image']} {r['image_mode']} ({r['tokens_per_image']} tokens): "
                + ", ".join(f"{x['wall_s']:.2f} s ({x['cpu_s']:.2f} CPU s)" for x in r["runs"]))  # fmt: skip
    if task == "text":
        return ", ".join(f"{x['bytes_per_s']:.0f} bytes/s ({x['bytes_per_cpu_s']:.0f} per CPU s)" for x in r["runs"])
    c = r["cached"]
    return (f"@{r['context']}: cached {1e3 * c['s_per_token_after_first']:.1f} ms/token (ttft {c['ttft_s']:.1f} s), "
            f"uncached {r['uncached_mean_s_per_token']:.2f} s/token (mean over a stride) -> {r['speedup_per_token']:.0f}x "
            f"({r['cpu_speedup_per_token']:.0f}x in CPU s; {r['speedup_vs_cheapest_uncached']:.0f}x against the "
            "cheapest uncached tokens)")  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tokens; extrapolate the decoder-only 65,536 prefill")
    ap.add_argument("--preset", default="small", help="random-init preset when no --checkpoint (default small)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="benchmark a trained checkpoint instead")
    ap.add_argument("--eval-file", type=Path, default=None, help="UTF-8 text for bits/dim per n_latents (with --checkpoint)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--note", action="append", default=[], help="a note to store with the results (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--targets", action="store_true",
                    help="issue 21's CPU targets instead: today's path vs the new one (image, text, 16K context)")
    ap.add_argument("--baseline", default=BASELINE_REV, help="git revision of today's path (with --targets)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="with --targets")
    ap.add_argument("--tasks", nargs="+", default=["image", "text", "context"], choices=["image", "text", "context"],
                    help="with --targets")
    ap.add_argument("--rounds", type=int, default=1, help="with --targets: measurements per variant and task")
    ap.add_argument("--tag", default="", help="with --targets: added to the JSON file's name")
    ap.add_argument("--image-checkpoint", type=Path, default=ROOT / "checkpoints" / "emoji")
    ap.add_argument("--text-checkpoint", type=Path, default=ROOT / "checkpoints" / "shakespeare")
    ap.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds per measurement process")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="compile the decode step (default: generate()'s: on CUDA only)")
    args = ap.parse_args(argv)
    if args.compile is not None:
        COMPILE["compile"] = args.compile
    if args.targets:
        load_before = os.getloadavg()
        res = bench_targets(args)
        res = {"benchmark": "generate-targets", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "device": "cpu", "device_name": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "notes": args.note, **res}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "-".join(x for x in ("generate-targets", args.tag, "cpu", dt.date.today().isoformat()) if x)
        path = path.with_suffix(".json")
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["summary"], indent=2))
        print(f"wrote {path}")
        return 0

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, device=device).model
        source = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = PerceiverAR(PerceiverARConfig.preset(args.preset)).to(device).eval()
        nn.init.normal_(model.head.weight, std=0.02)
        source = f"random-init '{args.preset}' preset (speed does not depend on the weights)"
    cfg = model.cfg
    q = args.quick
    contexts = [c for c in (4_096, 16_384, 65_536) if c <= cfg.context_len]
    n_cached = 600 if q else 2_048  # > stride (N/2 = 512): every run includes window slides
    uncached_tokens = {4_096: 3, 16_384: 3, 65_536: 2} if q else {4_096: 8, 16_384: 8, 65_536: 4}

    records: list[dict] = []
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for P in contexts:
        rec = bench_cached_vs_uncached(model, P, n_cached, uncached_tokens[P], device)
        records.append(rec)
        print(f"context {P:>6}: cached {rec['cached']['tokens_per_s']:.1f} tok/s (ttft {rec['cached']['ttft_s']:.2f} s), "
              f"uncached {1 / rec['uncached_s_per_token']:.2f} tok/s -> {rec['speedup_per_token']:.1f}x", flush=True)  # fmt: skip
    if 65_536 in contexts:
        ours = next(r["cached"] for r in records if r["context"] == 65_536)
        rec = bench_vs_decoder_only(model, 65_536, ours, device, q, n_decode=4 if q else 16)
        records.append(rec)
        print(f"vs decoder-only @65,536: ttft {rec['perceiver_ar_ttft_s']:.2f} s vs {rec['decoder_only_ttft_s']:.1f} s "
              f"({rec['ttft_speedup']:.0f}x), tokens/s ratio {rec['tokens_per_s_ratio']:.1f}x", flush=True)  # fmt: skip
    eval_ids = None
    if args.checkpoint is not None and args.eval_file is not None:
        text = args.eval_file.read_bytes()[: 4 * 1024]
        eval_ids = build_sequence(text, "text", complete=False)
    P = min(16_384, cfg.context_len)
    lat = [k for k in (cfg.n_latents, cfg.n_latents // 2, cfg.n_latents // 4, cfg.n_latents // 8) if k >= 1]
    for rec in bench_n_latents(model, P, lat, 300 if q else 1_200, device, eval_ids):
        records.append(rec)
        print(f"n_latents {rec['n_latents']:>5} @ {P}: ttft {rec['ttft_s']:.3f} s, {rec['tokens_per_s']:.1f} tok/s", flush=True)

    result = {
        "benchmark": "generate",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": source,
        "model_config": cfg.to_dict(),
        "quick": q,
        "compile": args.compile,
        "wall_s": time.perf_counter() - t_start,
        "notes": [
            "cached tokens/s is amortised over the tokens after the first, window slides (prefills) included, after a "
            "warm-up of three tokens of the same request (a compiled step compiles there)",
            "uncached tokens are timed right after a slide (smallest latent stack): the cheapest uncached tokens",
            "bits/dim is only measured with --checkpoint and --eval-file",
            *args.note,
        ],
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"generate-{device.type}-{dt.date.today().isoformat()}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
