"""Cached vs uncached greedy decoding in bf16 (and fp32) with a small random model: same tokens, or a near-tie.

    python -m benchmarks.bf16_exactness                  # on CUDA (what scripts/gpu_check.sh runs)
    python -m benchmarks.bf16_exactness --device cpu --quick   # the same logic on a CPU, in a minute

The cache is exact in fp32: cached and uncached greedy decoding pick the same tokens. In bf16 the
cached path (prefill chunks, one-token steps, the decode kernel on CUDA) and the uncached one (a
full forward pass per token) round differently, so where the top two logits of a random model are
closer than bf16's error the two may pick different tokens without either being wrong. So:

* fp32: the cached tokens must equal the uncached ones.
* bf16: the same, except at a *near-tie*: at the first token where they differ, the fp32 forward
  pass over that prefix (the uncached computation, in fp32) must rate the two picks within
  ``--tie-factor`` (default 2) times the largest |bf16 - fp32| logit error of that same forward pass.
  The check then resumes from the prefix plus the cached pick (at most ``--max-ties`` times).

The adjudication reproduces the uncached step with the public ``PerceiverAR.forward``: with
``stride=1`` the window of step p is the last ``context_len`` positions with the last
``n_latents`` of them as latents, i.e. ``model(ids[-L:], features[-L:], n_latents=N)``. The script
first checks that claim in fp32 (argmax of that forward equals each uncached token) before using it.
A run at the default stride (n_latents // 2: slides every N/2 tokens) is recorded as well; there the
bf16 tokens are compared but not adjudicated. Results: JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result  # noqa: E402
from perceiverar import PerceiverAR, PerceiverARConfig, generate  # noqa: E402
from tokenizers_mm.vocab import build_sequence, position_features  # noqa: E402


def random_model(device: torch.device, context_len: int, n_latents: int, n_layers: int, pinned: int = 0) -> PerceiverAR:
    """A small random model with native head dim 64 (the Triton kernels' own size, no padding), with ``pinned``
    pinned latents (as the bundled emoji has)."""
    torch.manual_seed(0)
    cfg = PerceiverARConfig.preset("small", n_layers=n_layers, context_len=context_len, n_latents=n_latents,
                                   pinned_latents=pinned)
    model = PerceiverAR(cfg).to(device).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # logits of order 1, as in a trained model
    return model


def prompt_ids(n: int, seed: int) -> list[int]:
    """n ids: an image header, then random pixel bytes (non-trivial position features)."""
    ids = build_sequence("", "image", height=64, width=64, complete=False)
    g = torch.Generator().manual_seed(seed)
    return ids + torch.randint(256, 512, (n - len(ids),), generator=g).tolist()


def greedy(model, prompt, n, stride, use_cache) -> list[int]:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exceed the model's context")  # the window slides: intended
        return generate(model, prompt, n, top_k=1, stride=stride, use_cache=use_cache, overflow="truncate")[0].tolist()


def step_logits(model, ids: list[int]) -> torch.Tensor:
    """fp32 logits (V,) of the uncached step after ``ids`` at stride 1: the last L positions, N latents."""
    L, N = model.cfg.context_len, model.cfg.n_latents
    feats = torch.from_numpy(position_features(ids)[-L:]).unsqueeze(0)
    x = torch.tensor(ids[-L:]).unsqueeze(0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(x.to(device), feats.to(device), n_latents=N)[0, -1].float().cpu()


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def check_window_claim(model32, prompt, tokens) -> int:
    """Steps where argmax of step_logits (fp32) differs from the fp32 uncached token (0 if the claim holds)."""
    ids, bad = list(prompt), 0
    for t in tokens:
        bad += int(step_logits(model32, ids).argmax().item() != t)
        ids.append(t)
    return bad


def adjudicated_bf16(model32, model16, prompt, n, tie_factor, max_ties) -> dict:
    """bf16 cached vs uncached at stride 1, resuming after each near-tie; see the module docstring."""
    ids, done, ties, t0 = list(prompt), 0, [], time.perf_counter()
    while done < n:
        cached = greedy(model16, ids, n - done, 1, True)
        uncached = greedy(model16, ids, n - done, 1, False)
        i = first_mismatch(cached, uncached)
        if i is None:
            return dict(ok=True, tokens=n, ties=ties, wall_s=time.perf_counter() - t0)
        prefix = ids + cached[:i]
        ref, low = step_logits(model32, prefix), step_logits(model16, prefix)
        err = (low - ref).abs().max().item()  # bf16 error of this very step, in logits
        gap = abs(ref[cached[i]] - ref[uncached[i]]).item()
        tie = dict(step=done + i, cached=cached[i], uncached=uncached[i], fp32_gap=gap, bf16_err=err,
                   near_tie=gap <= tie_factor * err)
        ties.append(tie)
        if not tie["near_tie"] or len(ties) > max_ties:
            return dict(ok=False, tokens=done + i, ties=ties, wall_s=time.perf_counter() - t0)
        ids, done = prefix + [cached[i]], done + i + 1
    return dict(ok=True, tokens=n, ties=ties, wall_s=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bf16_exactness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the logic)")
    ap.add_argument("--quick", action="store_true", help="a smaller run (context 256, 40 tokens)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens generated per run (default 300; 40 with --quick)")
    ap.add_argument("--seeds", type=int, default=2, help="prompts to try (default 2)")
    ap.add_argument("--tie-factor", type=float, default=2.0,
                    help="a bf16 divergence is a near-tie if the fp32 gap <= this x the step's bf16 logit error")
    ap.add_argument("--max-ties", type=int, default=5, help="near-ties tolerated per run before failing")
    ap.add_argument("--pinned-latents", type=int, default=None,
                    help="pinned latents of the random model (default: a quarter of its latents; 0: none)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/bf16_exactness-...)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bf16_exactness: no CUDA device (use --device cpu to check the logic on a CPU)", file=sys.stderr)
        return 2
    L, N, layers = (256, 32, 2) if args.quick else (1024, 128, 4)
    n = args.tokens or (40 if args.quick else 300)
    P = L - n // 2  # prompt + output > context: the context start slides as well as the latents
    pinned = N // 4 if args.pinned_latents is None else args.pinned_latents
    model32 = random_model(device, L, N, layers, pinned)
    model16 = random_model(device, L, N, layers, pinned).to(torch.bfloat16)
    runs, ok = [], True
    for seed in range(args.seeds):
        prompt = prompt_ids(P, seed)
        rec = dict(seed=seed, prompt_len=P, tokens=n)
        for stride in (1, None):
            key = "stride1" if stride == 1 else "default_stride"
            c32, u32 = greedy(model32, prompt, n, stride, True), greedy(model32, prompt, n, stride, False)
            rec[f"fp32_{key}_first_mismatch"] = first_mismatch(c32, u32)
            ok &= c32 == u32
            if stride == 1:
                rec["window_claim_violations"] = check_window_claim(model32, prompt, u32)
                ok &= rec["window_claim_violations"] == 0
                rec["bf16_stride1"] = adjudicated_bf16(model32, model16, prompt, n, args.tie_factor, args.max_ties)
                ok &= rec["bf16_stride1"]["ok"]
            else:
                c16, u16 = greedy(model16, prompt, n, stride, True), greedy(model16, prompt, n, stride, False)
                rec["bf16_default_stride_first_mismatch"] = first_mismatch(c16, u16)  # recorded, not judged
                rec["bf16_vs_fp32_cached_first_mismatch"] = first_mismatch(c16, c32)
        runs.append(rec)
        print(rec, flush=True)
    fields = dict(ok=bool(ok), config=dict(context_len=L, n_latents=N, n_layers=layers, head_dim=64, pinned_latents=pinned),
                  tie_factor=args.tie_factor, runs=runs,
                  attention_backend="triton" if device.type == "cuda" else "reference")
    save_result("bf16_exactness", device, fields, out=args.out)
    print("bf16 exactness:", "OK" if ok else "FAILED (see the JSON: fp32 mismatch, window claim or a bf16 divergence "
          "that is not a near-tie)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
