"""Whole-model training step: our Triton kernels vs the PyTorch reference attention, side by side.

One forward + backward + AdamW step of a preset at a given context, timed with each attention backend
(``PERCEIVERAR_ATTENTION=triton`` and ``=reference``) in the same process, and the ratio. Meant for a GPU
(issue 5's target: the ``base`` preset at T = 65,536 is faster with our kernels); on a CPU only the
reference runs.

    python -m benchmarks.model_step                       # base, T = 65,536, batch 1, bf16 autocast
    python -m benchmarks.model_step --preset small --T 16384 --steps 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.results_io import save_result
from perceiverar import PerceiverAR, PerceiverARConfig


def time_steps(model, opt, tokens, steps: int, device: str) -> tuple[float, float]:
    """Median seconds per training step and peak GiB (CUDA) for the current attention backend."""
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):  # the first step warms up (Triton compilation, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            loss = model.loss(tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--T", type=int, default=65_536)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    cfg = PerceiverARConfig.preset(a.preset, context_len=max(a.T, 256), activation_checkpointing=a.activation_checkpointing)
    torch.manual_seed(0)
    model = PerceiverAR(cfg).to(a.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=a.device == "cuda")
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.T + 1), device=a.device)
    backends = ["reference", "triton"] if a.device == "cuda" else ["reference"]
    records = []
    for backend in backends:
        os.environ["PERCEIVERAR_ATTENTION"] = backend
        try:
            sec, peak = time_steps(model, opt, tokens, a.steps, a.device)
            rec = {"impl": "ours" if backend == "triton" else "reference", "seconds_per_step": round(sec, 4),
                   "tokens_per_s": round(a.batch * a.T / sec, 1), "peak_gib": None if peak is None else round(peak, 2)}
        except torch.OutOfMemoryError as e:
            rec = {"impl": backend, "error": f"out of memory: {str(e).splitlines()[0]}"}
            torch.cuda.empty_cache()
        print(rec)
        records.append(rec)
    ratio = None
    secs = {r["impl"]: r.get("seconds_per_step") for r in records}
    if secs.get("reference") and secs.get("ours"):
        ratio = round(secs["reference"] / secs["ours"], 3)
        print(f"speed-up of our kernels over the reference path: {ratio}x")
    save_result("model_step", a.device, {
        "triton": _triton_version(), "preset": a.preset, "T": a.T, "batch": a.batch,
        "params_m": round(model.num_params() / 1e6, 1), "results": records, "speedup_ours_over_reference": ratio,
    }, a.out)

def _triton_version() -> str | None:
    try:
        import triton  # noqa: PLC0415

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
