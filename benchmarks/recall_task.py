"""Recall task: can a short "caption" steer the output from up to a whole context away?

The copy task proves the model can look back a *fixed* distance. A caption in a long prompt is another
matter: it sits at an unknown distance and must be found by what it is, not where it is. This task isolates
that, with no media and no semantics to learn:

    [caption: 8 random symbols] [filler: F random symbols] [marker] [the caption again]

Slot i of the caption draws from its own alphabet of 16 symbols (so the model can tell which slot it is
recalling), the filler from a disjoint alphabet, and the distance F is random: log-uniform from 0 to the
context length, so every scale of distance is trained while the mean step stays short. The loss is on the
recalled caption only; without the caption the best possible accuracy is 1/16 (chance).

    python -m benchmarks.recall_task --context 65536 --steps 1500            # CPU, about 25 min on one core
    python -m benchmarks.recall_task --context 65536 --distances 0 1000 60000 --checkpoint DIR   # eval only

Reports recall accuracy (and bits per recalled symbol) per distance, including distances the model never saw
when ``--eval-context`` exceeds ``--context``. Writes benchmarks/results/recall_task-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.copy_task import copy_config, train_synthetic
from benchmarks.long_prompt import with_context
from benchmarks.results_io import save_result
from perceiverar import CheckpointError, PerceiverAR, load_checkpoint, save_checkpoint

SLOTS, ALPHABET = 8, 16  # caption symbols: slot i uses ids i*16 .. i*16+15
FILLER_LO, MARKER = SLOTS * ALPHABET, 255  # filler: ids 128..254; the marker 255 announces the recall


def recall_batch(batch: int, distance: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, 2 * SLOTS + distance + 1) and the (B, same) mask of the recalled caption's positions."""
    caption = torch.randint(0, ALPHABET, (batch, SLOTS), generator=generator) + ALPHABET * torch.arange(SLOTS)
    filler = torch.randint(FILLER_LO, MARKER, (batch, distance), generator=generator)
    marker = torch.full((batch, 1), MARKER)
    tokens = torch.cat([caption, filler, marker, caption], dim=1)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -SLOTS:] = True
    return tokens.to(device), mask.to(device)


def sample_distance(context: int, generator: torch.Generator) -> int:
    """Log-uniform in [0, context - 2 * SLOTS - 1]: short and long look-backs alike."""
    hi = context - 2 * SLOTS - 1
    u = torch.rand((), generator=generator).item()
    return min(hi, int(math.exp(u * math.log(hi + 1))) - 1)


def train_recall(cfg, steps: int, batch: int, lr: float, device, seed: int = 0, log_every: int = 50):
    def next_batch(g: torch.Generator):
        return recall_batch(batch, sample_distance(cfg.context_len + 1, g), g, device)

    return train_synthetic(cfg, steps, lr, device, next_batch, seed, log_every)


@torch.no_grad()
def recall_accuracy(model: PerceiverAR, distance: int, n_seqs: int, device, seed: int = 4321) -> tuple[float, float]:
    """Teacher-forced accuracy and bits per symbol of the recalled caption after ``distance`` filler symbols."""
    tokens, _ = recall_batch(n_seqs, distance, torch.Generator().manual_seed(seed + distance), device)
    if tokens.shape[1] - 1 > model.cfg.context_len:
        raise ValueError(f"distance {distance:,} needs a context of {tokens.shape[1] - 1:,}; the model's is "
                         f"{model.cfg.context_len:,} (raise --eval-context)")  # fmt: skip
    logits = model(tokens[:, :-1], n_latents=min(model.cfg.n_latents, tokens.shape[1] - 1)).float()
    logits, target = logits[:, -SLOTS:], tokens[:, -SLOTS:]  # (B, SLOTS, V), (B, SLOTS)
    acc = (logits.argmax(-1) == target).float().mean().item()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target).item()
    return acc, nll / math.log(2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=65536, help="training context (longest distance trained)")
    p.add_argument("--eval-context", type=int, default=None, help="evaluate at this context (default: --context)")
    p.add_argument("--distances", nargs="+", type=int, default=None,
                   help="filler lengths to evaluate (default: 0, 16, 256, 4096, ... up to the eval context)")
    p.add_argument("--n-latents", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rope-base", type=float, default=None, help="rotary base (default: the config's 500,000)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-seqs", type=int, default=32)
    p.add_argument("--checkpoint", type=Path, default=None, help="evaluate this trained checkpoint instead of training")
    p.add_argument("--save", type=Path, default=None, help="save the trained checkpoint here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    record: dict = {"task": "recall", "slots": SLOTS, "alphabet": ALPHABET}
    if a.checkpoint is not None:
        try:
            ck = load_checkpoint(a.checkpoint, device=device)
        except CheckpointError as e:
            raise SystemExit(f"recall_task: error: {e}") from None
        if (ck.tokenizer or {}).get("task") != "recall":
            raise SystemExit(f"recall_task: error: {a.checkpoint} is not a recall-task checkpoint")
        model, record["checkpoint"] = ck.model.float().eval(), str(a.checkpoint)
        record["training"] = {k: ck.training.get(k) for k in ("context", "steps", "batch", "lr", "train_seconds")}
    else:
        cfg = copy_config(a.context, a.n_latents, a.width, a.layers, a.rope_base)
        print(f"recall task, context {a.context}, N = {cfg.n_latents}, width {cfg.width}, {cfg.n_layers} latent layers")
        t0 = time.time()
        model, history = train_recall(cfg, a.steps, a.batch, a.lr, device)
        record["training"] = {"context": a.context, "n_latents": cfg.n_latents, "width": cfg.width, "layers": cfg.n_layers,
                              "rope_base": cfg.rope_base, "steps": a.steps, "batch": a.batch, "lr": a.lr,
                              "train_seconds": round(time.time() - t0, 1), "loss_history": history}  # fmt: skip
        if a.save is not None:
            save_checkpoint(a.save, model, {"task": "recall", "slots": SLOTS, "alphabet": ALPHABET},
                            training=record["training"], dtype=torch.bfloat16)  # fmt: skip
            print(f"  saved {a.save}")
    L = a.eval_context or model.cfg.context_len
    model = with_context(model.cpu(), L).to(device)
    hi = L - 2 * SLOTS - 1
    distances = a.distances or sorted({d for d in (0, 16, 256, 1024, 4096, 16384, 32768, 60000, hi) if d <= hi})
    bad = [d for d in distances if not 0 <= d <= hi]
    if bad:
        raise SystemExit(f"recall_task: error: distances {bad} are outside 0..{hi:,}, the most a context of {L:,} "
                         "holds; pass smaller --distances or a larger --eval-context")  # fmt: skip
    rows = []
    for d in distances:
        t0 = time.time()
        acc, bits = recall_accuracy(model, d, a.eval_seqs, device)
        rows.append({"distance": d, "accuracy": round(acc, 4), "bits_per_symbol": round(bits, 4),
                     "seconds": round(time.time() - t0, 2)})  # fmt: skip
        print(f"  distance {d:6d}: recall accuracy {acc:.4f}, {bits:.3f} bits/symbol (chance {1 / ALPHABET:.4f}, 4 bits)")
    save_result("recall_task", device, {**record, "eval_context": L, "chance": 1 / ALPHABET, "results": rows}, a.out)


if __name__ == "__main__":
    main()
