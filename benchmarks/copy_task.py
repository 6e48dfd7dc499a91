"""Copy task: does the model really use its whole context?

A sequence of ``context // 2`` random byte tokens followed by its exact repeat. To predict a token of
the second half the model must look back exactly half the context: at 65,536 tokens, 32,768 positions.
As in the Perceiver AR paper (and the official code's copy task, which ran at 131,072 with 1,024 latents
and 6 layers), a small model suffices. Training uses crops that start at the sequence start and end
anywhere in the second half; evaluation scores every position of the second half, teacher-forced, with
windows of N latents, and reports accuracy per position bucket.

    python -m benchmarks.copy_task --context 65536 --n-latents 1024 --steps 3000 --device cuda
    python -m benchmarks.copy_task --contexts 512 1024 2048 --steps 600     # CPU sweep

Look back by content instead (issue 19): with ``--conv-kernel 4`` each key carries the three tokens before
it and each latent's query its own last three, so one cross-attention finds the previous occurrence of the
latest trigram and copies the token that followed it (an induction head). That rule does not depend on the
distance, so it is trained at a short context and tested at a long one (``--eval-contexts``), provided the
rotary phases at untrained distances do not disturb the match (``--rope-fraction``: the slow pairs carry no
position). On a 2-core CPU:

    python -m benchmarks.copy_task --contexts 512 --conv-kernel 4 --rope-fraction 0.25 \
        --eval-contexts 8192 16384 32768 65536 131072 --declare-context 131072 --save checkpoints/copy

Long contexts are scored on ``--eval-windows`` windows of N latents spread over the second half (every
window at a long context would be thousands of forward passes over up to T tokens), plus a control with the
first half shuffled, which a model that really copies must fail.

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


def copy_batch(batch: int, context: int, generator: torch.Generator, device,
               alphabet_min: int = N_SYMBOLS) -> torch.Tensor:  # fmt: skip
    """(B, context) random first halves followed by their repeat (an odd context gets one extra token).

    ``alphabet_min`` < 256: each row draws its tokens from a random subset of k symbols, k uniform in
    [alphabet_min, 256] (training only; see ``--alphabet-min``).
    """
    half = context // 2
    first = torch.randint(0, N_SYMBOLS, (batch, half), generator=generator)  # (B, half)
    if alphabet_min < N_SYMBOLS:
        for r in range(batch):
            k = int(torch.randint(alphabet_min, N_SYMBOLS + 1, (1,), generator=generator))
            symbols = torch.randperm(N_SYMBOLS, generator=generator)[:k]
            first[r] = symbols[torch.randint(0, k, (half,), generator=generator)]
    seq = torch.cat([first, first, first[:, : context - 2 * half]], dim=1)
    return seq.to(device)


def copy_config(context: int, n_latents: int, width: int, n_layers: int, rope_base: float | None = None, *,
                head_dim: int = 32, **extra) -> PerceiverARConfig:
    """The task's model: heads of ``head_dim`` filling ``width``; ``extra`` are further config fields
    (conv_kernel, rope_fraction, vocab_size, ...)."""
    if rope_base is not None:
        extra["rope_base"] = rope_base
    return PerceiverARConfig(
        width=width, n_heads=max(1, width // head_dim), head_dim=head_dim, n_layers=n_layers,
        context_len=context, n_latents=min(n_latents, context // 2), **extra,
    )


def train_synthetic(cfg: PerceiverARConfig, steps: int, lr: float, device, next_batch, seed: int = 0, log_every: int = 50,
                    conv_init_std: float = 0.0, init_state: dict | None = None):
    """Train a fresh model on a synthetic task: ``next_batch(generator)`` -> tokens (B, T + 1), loss mask or None.

    AdamW with a 5% warm-up and a cosine decay; shared by the copy and recall tasks. ``conv_init_std`` > 0
    starts the short convolution at random weights instead of zero (the model's default): keys then carry
    their previous tokens from step 0, which shortens the plateau before an induction look-up forms.
    ``init_state``: start from these weights (a curriculum stage) instead.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = PerceiverAR(cfg).to(device).train()
    if conv_init_std > 0 and model.conv is not None:
        torch.nn.init.normal_(model.conv.weight, std=conv_init_std)
    if init_state is not None:
        model.load_state_dict(init_state)
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


def train_copy(cfg: PerceiverARConfig, steps: int, batch: int, lr: float, device, seed: int = 0, log_every: int = 50,
               vary_length: bool = False, conv_init_std: float = 0.0, init_state: dict | None = None,
               alphabet_min: int = N_SYMBOLS):
    """``alphabet_min``: rows over smaller alphabets (``copy_batch``). ``vary_length``: each batch's sequences
    have a random length in [4N, L], so the copy's distance (half the length) changes from batch to batch and
    the model cannot lean on a fixed look-back: it must find the copy by content. With one length, rotary
    phases at exactly that distance are a free cue that fails elsewhere."""
    L, N = cfg.context_len, cfg.n_latents

    def next_batch(g: torch.Generator):
        length = int(torch.randint(min(4 * N, L), L + 1, (1,), generator=g)) if vary_length else L
        seq = copy_batch(batch, length, g, device, alphabet_min)
        # Crop from the start to an end inside the second half: the latents then sit where copying is possible.
        end = int(torch.randint(length // 2 + N, length + 1, (1,), generator=g))
        return seq[:, :end], None

    return train_synthetic(cfg, steps, lr, device, next_batch, seed, log_every, conv_init_std, init_state)


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


def first_half_shuffled(seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) copy sequences with each first half permuted: the second half is no longer a copy of it."""
    half = seq.shape[1] // 2
    perm = torch.stack([torch.randperm(half, generator=generator) for _ in range(seq.shape[0])]).to(seq.device)
    return torch.cat([seq[:, :half].gather(1, perm), seq[:, half:]], dim=1)


@torch.no_grad()
def copy_accuracy_windows(model: PerceiverAR, context: int, n_seqs: int, device, windows: int = 8, seed: int = 1234,
                          shuffled: bool = False, skip: int = 0) -> tuple[float, list[float]]:
    """Teacher-forced accuracy on fresh sequences at ``context`` over ``windows`` windows of N latents.

    The windows' ends are spread evenly from the start to the end of the second half; each is one forward
    pass over everything before it. Returns the mean and the per-window accuracies. ``shuffled`` permutes
    each first half (the control: a model that copies must drop to chance, 1/256). A context beyond the
    model's ``context_len`` runs the same weights under the longer context (only relative positions are used).
    ``skip`` leaves out the second half's first ``skip`` positions. A look-up by content cannot know them: the
    n-gram before each straddles the two halves and has not occurred yet (only an exact look-back of half the
    context could). Over the whole second half they weigh ``skip / half`` (3 / 32,768 at 65,536), but the first
    window always sits on them, so with few windows they would weigh ``skip / (windows * N)``.
    """
    from benchmarks.long_prompt import with_context

    if context > model.cfg.context_len:
        model = with_context(model.cpu(), context).to(device)
    g = torch.Generator().manual_seed(seed + context)
    N, half = model.cfg.n_latents, context // 2
    seq = copy_batch(n_seqs, context, g, device)
    if shuffled:
        seq = first_half_shuffled(seq, g)
    start = half + skip + N  # the first window's end
    ends = sorted({round(start + (context - start) * i / max(1, windows - 1)) for i in range(windows)})
    per_window = []
    for end in ends:
        logits = model(seq[:, : end - 1])  # (B, N, V): predicts tokens end - N .. end - 1
        n = logits.shape[1]
        per_window.append((logits.argmax(-1) == seq[:, end - n : end]).float().mean().item())
    return sum(per_window) / len(per_window), [round(a, 4) for a in per_window]


def save_copy_checkpoint(path: Path, model: PerceiverAR, context: int | None, training: dict) -> None:
    """Save in bf16, under ``context`` as its context_len if given (trained short, declared long)."""
    from benchmarks.long_prompt import with_context

    if context is not None:
        model = with_context(model.cpu(), context)
    save_checkpoint(path, model, {"task": "copy", "symbols": N_SYMBOLS}, training=training, dtype=torch.bfloat16)
    print(f"  saved {path} (context_len {model.cfg.context_len:,})")


def scale_queries(state: dict[str, torch.Tensor], scale: float) -> None:
    """Multiply the cross-attention's query projection in ``state`` (in place) by ``scale``: a lower softmax
    temperature for the look-up (``--query-scale``)."""
    with torch.no_grad():
        for k in ("cross.wq.weight", "cross.wq.bias"):
            if k in state:
                state[k].mul_(scale)


def evaluate_checkpoint(a, device) -> None:
    """``--eval-from``: score a saved copy checkpoint at ``--eval-contexts`` (with the control), nothing trained."""
    from perceiverar import load_checkpoint

    ck = load_checkpoint(a.eval_from, device=device)
    scale_queries(ck.model.state_dict(), a.query_scale)  # the state dict shares the model's tensors
    weights = {str(t.dtype).removeprefix("torch.") for t in load_file_dtypes(a.eval_from)}
    trained = {k: v for k, v in ck.training.items() if k not in ("evaluated", "loss_history", "accuracy_by_position")}
    records = []
    for E in a.eval_contexts:
        t1 = time.time()
        acc, windows = copy_accuracy_windows(ck.model, E, a.eval_seqs, device, a.eval_windows, seed=a.eval_seed,
                                             skip=a.eval_skip)  # fmt: skip
        s_acc, _ = copy_accuracy_windows(ck.model, E, a.control_seqs or a.eval_seqs, device, 1, seed=a.eval_seed,
                                         shuffled=True)  # fmt: skip
        n_scored = a.eval_seqs * len(windows) * ck.config.n_latents
        print(f"  context {E}: copy accuracy {acc:.4f} over {n_scored} positions (min window {min(windows):.4f}); "
              f"first half shuffled {s_acc:.4f}  ({time.time() - t1:.0f}s)")
        records.append({**trained, "task": "copy", "context": E, "accuracy": round(acc, 5), "accuracy_by_window": windows,
                        "shuffled_first_half_accuracy": round(s_acc, 5), "eval_sequences": a.eval_seqs,
                        "control_sequences": a.control_seqs or a.eval_seqs, "eval_windows": len(windows),
                        "eval_skip": a.eval_skip, "scored_tokens": n_scored, "checkpoint": str(a.eval_from),
                        "weights": "/".join(sorted(weights)), "eval_query_scale": a.query_scale,
                        "eval_seed": a.eval_seed, "eval_seconds": round(time.time() - t1, 1)})  # fmt: skip
        save_result("copy_task", device, {"results": records}, a.out)
    if a.save is not None:  # the scored weights (queries scaled), with these figures in the training record
        training = {**trained, "query_scaled_after_training": a.query_scale, "scaled_from": str(a.eval_from),
                    "evaluated": records}  # fmt: skip
        save_copy_checkpoint(a.save, ck.model, None, training)


def load_file_dtypes(directory: Path) -> list[torch.Tensor]:
    """The stored tensors of a checkpoint (their dtype is the precision it was saved in)."""
    from safetensors.torch import load_file

    return list(load_file(str(Path(directory) / "model.safetensors")).values())


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
    p.add_argument("--conv-kernel", type=int, default=0,
                   help="short causal convolution before the cross-attention (4: keys see the 3 tokens before them, "
                        "so the copy can be found by content, at any distance)")
    p.add_argument("--rope-fraction", type=float, default=1.0,
                   help="share of each head's rotary frequency pairs that turn (the fastest); the rest carry no position")
    p.add_argument("--vary-length", action="store_true",
                   help="train on sequences of random length up to the context, so the copy's distance varies")
    p.add_argument("--alphabet-min", type=int, default=N_SYMBOLS,
                   help="train each sequence on a random subset of k symbols, k uniform in [K, 256]: repeated bigrams "
                        "and trigrams become common even at short contexts, so a look-up by content must weigh "
                        "every token of its n-gram, as it must among the 32,768 distractors of a 65,536 context. "
                        "Scoring always uses all 256")
    p.add_argument("--conv-init-std", type=float, default=0.0,
                   help="start the convolution at random weights of this std (default 0: the model's zero init)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this copy checkpoint's weights (same sizes; a curriculum stage)")
    p.add_argument("--query-scale", type=float, default=1.0,
                   help="multiply the --init-from (or --eval-from) weights' cross-attention queries by this (a lower "
                        "softmax temperature: a sharper look-up among more distractors at long contexts)")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--byte-vocab", action="store_true",
                   help="a 256-id vocabulary (the task's symbols only) instead of the full multimodal one: a smaller, faster model")
    p.add_argument("--eval-contexts", nargs="+", type=int, default=[],
                   help="also score the trained model at these contexts (fresh sequences, --eval-windows windows each, "
                        "with a shuffled-first-half control)")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seed", type=int, default=1234,
                   help="--eval-from: the fresh sequences' seed (choose --query-scale on one seed, report another)")
    p.add_argument("--eval-skip", type=int, default=0,
                   help="leave the second half's first K positions out of the --eval-contexts scores (3 for a look-up "
                        "by trigram: the copy's first tokens follow an n-gram that straddles the halves)")
    p.add_argument("--control-seqs", type=int, default=None,
                   help="sequences for the shuffled-first-half control (default --eval-seqs); it scores one window")
    p.add_argument("--eval-from", type=Path, default=None,
                   help="train nothing: score this copy checkpoint (its stored weights) at --eval-contexts")
    p.add_argument("--declare-context", type=int, default=None,
                   help="save the checkpoint with this context_len (trained short, declared long: it must have been "
                        "evaluated there, see --eval-contexts)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed (runs differ a lot in how long the plateau lasts)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", type=Path, default=None,
                   help="save the checkpoint of the longest context here (with --eval-from: the scored weights, "
                        "queries scaled by --query-scale)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if not 2 <= a.alphabet_min <= N_SYMBOLS:
        p.error(f"--alphabet-min must be in 2..{N_SYMBOLS}, got {a.alphabet_min}")
    device = torch.device(a.device)
    if a.eval_from is not None:
        evaluate_checkpoint(a, device)
        return
    init_state = None
    if a.init_from is not None:
        from perceiverar import load_checkpoint

        init_state = {k: v.float() for k, v in load_checkpoint(a.init_from).model.state_dict().items()}
        scale_queries(init_state, a.query_scale)
    records = []
    for T in a.contexts:
        extra = {"conv_kernel": a.conv_kernel, "rope_fraction": a.rope_fraction}
        if a.byte_vocab:
            extra.update(vocab_size=N_SYMBOLS, feature_sizes=())
        cfg = copy_config(T, a.n_latents, a.width, a.layers, a.rope_base, head_dim=a.head_dim, **extra)
        print(f"copy task, context {T}, N = {cfg.n_latents}, width {cfg.width}, {cfg.n_layers} latent layers, "
              f"conv {cfg.conv_kernel}, rope fraction {cfg.rope_fraction}")
        t0 = time.time()
        model, history = train_copy(cfg, a.steps, a.batch, a.lr, device, seed=a.seed, vary_length=a.vary_length,
                                    conv_init_std=a.conv_init_std, init_state=init_state, alphabet_min=a.alphabet_min)
        train_s = time.time() - t0
        acc, per_bucket = copy_accuracy(model, T, a.eval_seqs, device)
        print(f"  context {T}: copy accuracy {acc:.4f}; by position in the second half: {per_bucket}")
        setup = {
            "trained_context": T, "n_latents": cfg.n_latents, "width": cfg.width, "layers": cfg.n_layers,
            "heads": cfg.n_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "rope_base": cfg.rope_base,
            "rope_fraction": cfg.rope_fraction, "conv_kernel": cfg.conv_kernel, "lr": a.lr, "steps": a.steps,
            "seed": a.seed, "batch": a.batch, "vary_length": a.vary_length,
            "conv_init_std": a.conv_init_std, "init_from": None if a.init_from is None else str(a.init_from),
            "query_scale": a.query_scale, "alphabet_min": a.alphabet_min,
            "train_seconds": round(train_s, 1),
        }
        records.append({"task": "copy", "context": T, "accuracy": round(acc, 5), "accuracy_by_position": per_bucket,
                        **setup, "loss_history": history})
        trained, evaluated = records[-1], []
        if T == max(a.contexts):
            if a.save is not None:
                # bf16 weights, as bundled: the long contexts below are scored on exactly those weights.
                model = model.to(torch.bfloat16).float()
                save_copy_checkpoint(a.save, model, a.declare_context, {**trained, "evaluated": evaluated})
            for E in a.eval_contexts:
                t1 = time.time()
                e_acc, e_windows = copy_accuracy_windows(model, E, a.eval_seqs, device, a.eval_windows, skip=a.eval_skip)
                s_acc, _ = copy_accuracy_windows(model, E, a.control_seqs or a.eval_seqs, device, 1, shuffled=True)
                print(f"  context {E} (trained at {T}): copy accuracy {e_acc:.4f} by window {e_windows}; "
                      f"first half shuffled {s_acc:.4f}  ({time.time() - t1:.0f}s)")
                evaluated.append({"task": "copy", "context": E, "accuracy": round(e_acc, 5), "accuracy_by_window": e_windows,
                                "shuffled_first_half_accuracy": round(s_acc, 5), "eval_sequences": a.eval_seqs,
                                "eval_windows": len(e_windows), "eval_skip": a.eval_skip,
                                "scored_tokens": a.eval_seqs * len(e_windows) * cfg.n_latents,
                                "eval_seconds": round(time.time() - t1, 1),
                                "bf16_weights": a.save is not None, **setup})  # fmt: skip
                records.append(evaluated[-1])
                save_result("copy_task", device, {"results": records}, a.out)
            if a.save is not None and evaluated:  # again, with the long-context figures in its training record
                save_copy_checkpoint(a.save, model, a.declare_context, {**trained, "evaluated": evaluated})
        # Rewritten after every context, so a long sweep that is stopped keeps what it measured.
        save_result("copy_task", device, {"results": records}, a.out)

if __name__ == "__main__":
    main()
