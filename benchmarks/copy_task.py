"""Copy task: does the model really use its whole context?

A sequence of ``context // 2`` random byte tokens followed by its exact repeat. To predict a token of
the second half the model must look back exactly half the context: at 65,536 tokens, 32,768 positions.
As in the Perceiver AR paper (and the official code's copy task, which ran at 131,072 with 1,024 latents
and 6 layers), a small model suffices. Training uses crops that start at the sequence start and end
anywhere in the second half; evaluation scores every position of the second half, teacher-forced, with
windows of N latents, and reports accuracy per position bucket.

    python -m benchmarks.copy_task --context 65536 --n-latents 1024 --steps 3000 --device cuda
    python -m benchmarks.copy_task --contexts 512 1024 2048 --steps 600     # CPU sweep

Writes benchmarks/results/copy_task-<device>-<date>.json with records
``{"task": "copy", "context": T, "accuracy": a, ...}``; ``--save DIR`` keeps the trained checkpoint.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.results_io import save_result
from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint

N_SYMBOLS = 256  # random tokens are text-byte ids 0..255


def copy_batch(batch: int, context: int, generator: torch.Generator, device) -> torch.Tensor:
    """(B, context) random first halves followed by their repeat (an odd context gets one extra token)."""
    half = context // 2
    first = torch.randint(0, N_SYMBOLS, (batch, half), generator=generator)
    seq = torch.cat([first, first, first[:, : context - 2 * half]], dim=1)
    return seq.to(device)


def copy_config(context: int, n_latents: int, width: int, n_layers: int, rope_base: float | None = None) -> PerceiverARConfig:
    extra = {} if rope_base is None else {"rope_base": rope_base}
    return PerceiverARConfig(
        width=width, n_heads=max(1, width // 32), head_dim=32, n_layers=n_layers,
        context_len=context, n_latents=min(n_latents, context // 2), **extra,
    )


def train_synthetic(cfg: PerceiverARConfig, steps: int, lr: float, device, next_batch, seed: int = 0, log_every: int = 50):
    """Train a fresh model on a synthetic task: ``next_batch(generator)`` -> tokens (B, T + 1), loss mask or None.

    AdamW with a 5% warm-up and a cosine decay; shared by the copy and recall tasks.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = PerceiverAR(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else torch.autocast("cpu", enabled=False)
    t0, history = time.time(), []
    for step in range(steps):
        tokens, mask = next_batch(g)
        with autocast:
            loss = model.loss(tokens, loss_mask=mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
            print(f"  step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:7.1f}s", flush=True)
    return model.eval(), history


def train_copy(cfg: PerceiverARConfig, steps: int, batch: int, lr: float, device, seed: int = 0, log_every: int = 50):
    L, N, half = cfg.context_len, cfg.n_latents, cfg.context_len // 2

    def next_batch(g: torch.Generator):
        seq = copy_batch(batch, L, g, device)
        # Crop from the start to an end inside the second half: the latents then sit where copying is possible.
        end = int(torch.randint(half + N, L + 1, (1,), generator=g))
        return seq[:, :end], None

    return train_synthetic(cfg, steps, lr, device, next_batch, seed, log_every)


@torch.no_grad()
def copy_accuracy(model: PerceiverAR, context: int, n_seqs: int, device, seed: int = 1234, buckets: int = 8):
    """Teacher-forced accuracy over every position of the second half (whose target is a copy)."""
    g = torch.Generator().manual_seed(seed)
    N, half = model.cfg.n_latents, context // 2
    seq = copy_batch(n_seqs, context, g, device)
    correct = torch.zeros(context, dtype=torch.long)
    # Windows of N latents ending at half + N, half + 2N, ..., context: each scores the positions of its latents.
    ends = list(range(half + N, context + 1, N))
    if ends[-1] != context:
        ends.append(context)
    scored = torch.zeros(context, dtype=torch.bool)
    for end in ends:
        logits = model(seq[:, : end - 1])  # predicts tokens end - N .. end - 1
        n = logits.shape[1]
        pred = logits.argmax(-1)  # (B, n)
        target = seq[:, end - n : end]
        hit = (pred == target).sum(0).cpu()
        idx = torch.arange(end - n, end)
        fresh = ~scored[idx]
        correct[idx[fresh]] = hit[fresh]
        scored[idx] = True
    positions = torch.arange(half, context)  # targets that are copies
    acc = correct[positions].float() / n_seqs
    per_bucket = [round(c.mean().item(), 4) for c in acc.chunk(buckets)]
    return acc.mean().item(), per_bucket


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", "--context", nargs="+", type=int, default=[1024])
    p.add_argument("--n-latents", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-seqs", type=int, default=8)
    p.add_argument("--rope-base", type=float, default=None,
                   help="rotary base (default: the config's 500,000); a lower base gives more high frequencies, "
                        "so the exact look-back of half the context is easier to pin down")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed (runs differ a lot in how long the plateau lasts)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", type=Path, default=None, help="save the checkpoint of the longest context here")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    records = []
    for T in a.contexts:
        cfg = copy_config(T, a.n_latents, a.width, a.layers, a.rope_base)
        print(f"copy task, context {T}, N = {cfg.n_latents}, width {cfg.width}, {cfg.n_layers} latent layers")
        t0 = time.time()
        model, history = train_copy(cfg, a.steps, a.batch, a.lr, device, seed=a.seed)
        train_s = time.time() - t0
        acc, per_bucket = copy_accuracy(model, T, a.eval_seqs, device)
        print(f"  context {T}: copy accuracy {acc:.4f}; by position in the second half: {per_bucket}")
        records.append({
            "task": "copy", "context": T, "accuracy": round(acc, 5), "accuracy_by_position": per_bucket,
            "n_latents": cfg.n_latents, "width": cfg.width, "layers": cfg.n_layers, "rope_base": cfg.rope_base,
            "lr": a.lr, "steps": a.steps, "seed": a.seed,
            "batch": a.batch, "train_seconds": round(train_s, 1), "loss_history": history,
        })
        if a.save is not None and T == max(a.contexts):
            save_checkpoint(a.save, model, {"task": "copy", "symbols": N_SYMBOLS}, training=records[-1], dtype=torch.bfloat16)
            print(f"  saved {a.save}")
        # Rewritten after every context, so a long sweep that is stopped keeps what it measured.
        save_result("copy_task", device, {"results": records}, a.out)

if __name__ == "__main__":
    main()
