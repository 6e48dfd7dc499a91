"""Turning logits into ids: temperature / top-k / top-p sampling and classifier-free guidance.

The modality constraints (which ids may come next) are in ``perceiverar.constraints``.
"""

from __future__ import annotations

import torch


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature is None or not 0 <= temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and int(top_k) < 0:
        raise ValueError(f"top_k must be >= 1 (or None / 0 to disable), got {top_k}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p}")


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> ids (B,). temperature 0 or top_k 1 is greedy (argmax, no randomness)."""
    logits = logits.float()
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens strictly more likely already hold top_p of the mass
        # (so the most likely token always stays).
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    # torch.multinomial's own one-sample path (argmax of p / q, q ~ Exp(1): the Gumbel-max trick), so the same
    # generator draws the same ids, without multinomial's host synchronisation (its validity checks) per token.
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 is the conditional model."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + scale * (cond - uncond)
