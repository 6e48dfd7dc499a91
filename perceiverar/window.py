"""Windows: which crop of the sequence each generated token imitates, and when the crop slides.

A *window* (s, a) is the crop generation currently imitates: the context starts at
sequence position s and the first latent sits at position a (s <= a). Training takes the
loss on every latent of random crops, so the latent at position p of window (s, a)
computes exactly what the full forward pass computes for ``tokens[s : p + 1]`` with
``n_latents = p - a + 1``: the logits for the token after position p are that pass's last row
(``perceiverar.cache`` holds what of the crop stays put while the window does).

The window schedule
-------------------
For a prompt of length P:

* first window: the one a slide would have produced, so the first ``stride`` tokens run
  without another prefill (no second prefill right after the first token) and the first
  prefill computes about half the latents: the prompt's last N' - stride + 1 positions are
  latents, a = max(s, P - (N' - stride + 1)); the context is the whole prompt when it fits
  (s = 0 for P <= L), else its last L - stride + 1 positions, s = P - (L - stride + 1).
  (N' = ``n_latents`` or the trained N.) Any choice is exact; this one is the steady state;
* each new token appends one latent (p grows, the window stays);
* when p - a + 1 would exceed N', a advances by ``stride`` (default N'/2): the latent stack
  is recomputed for positions a..p, reusing the cross-attention outputs (they depend on s,
  not on a);
* when p - s + 1 would exceed L, s advances by ``stride`` too (never past a) and the
  cross-attention K/V of the new window are recomputed (their rotary positions are pos - s).

So a slide costs one latent prefill every ``stride`` tokens (plus one context refill per
``stride`` tokens once the sequence is longer than L), and every token's logits equal a full
forward pass over its crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perceiverar.model import PerceiverAR


@dataclass(frozen=True)
class Window:
    start: int  # s: first position of the crop
    first_latent: int  # a: position of the first latent, start <= first_latent

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.first_latent:
            raise ValueError(f"a window needs 0 <= start <= first_latent, got {self}")


@dataclass(frozen=True)
class Schedule:
    context_len: int  # L
    n_latents: int  # N': latents per window at most
    stride: int  # how far a (and s) move on a slide

    def window(self, prev: Window | None, length: int) -> Window:
        """The window that predicts the token after position ``length - 1``."""
        p = length - 1
        if prev is None:  # as if a slide had just happened: see the module docstring
            s = 0 if length <= self.context_len else length - (self.context_len - self.stride + 1)
            return Window(s, max(s, length - (self.n_latents - self.stride + 1)))
        s, a = prev.start, prev.first_latent
        if p - a + 1 > self.n_latents:
            a += self.stride * math.ceil((p - a + 1 - self.n_latents) / self.stride)
        if p - s + 1 > self.context_len:
            s += self.stride * math.ceil((p - s + 1 - self.context_len) / self.stride)
            a = max(a, s)
        return Window(s, a)


def make_schedule(model: PerceiverAR, n_latents: int | None = None, stride: int | None = None) -> Schedule:
    L = model.cfg.context_len
    n = model.cfg.n_latents if n_latents is None else int(n_latents)
    if not 1 <= n <= L:
        raise ValueError(f"n_latents must be in 1..{L} (the context), got {n}")
    st = max(1, n // 2) if stride is None else int(stride)
    if not 1 <= st <= n:
        raise ValueError(f"stride must be in 1..n_latents={n}, got {st}")
    return Schedule(L, n, st)
