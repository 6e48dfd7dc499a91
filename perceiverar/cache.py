"""Preallocated caches for exact strided Perceiver AR decoding.

A *window* (s, a) is the crop generation currently imitates: the context starts at
sequence position s and the first latent sits at position a (s <= a). Training takes the
loss on every latent of random crops, so the latent at position p of window (s, a)
computes exactly what the full forward pass computes for ``tokens[s : p + 1]`` with
``n_latents = p - a + 1``. The caches below hold everything of that crop that does not
change while the window stays put:

    cross_k, cross_v   (B, H, L_cap, D)  keys/values of context positions s.., index pos - s,
                                          rotary position pos - s (as in the crop)
    cross_out          (B, N_cap, C)     cross-attention outputs of latent positions a.., index pos - a;
                                          they depend on s but not on a, so a slide of a alone keeps them
    layers[i]          (B, H, N_cap, D)  self-attention keys/values of latent block i, index pos - a
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perceiverar.config import PerceiverARConfig


@dataclass(frozen=True)
class Window:
    start: int  # s: first position of the crop
    first_latent: int  # a: position of the first latent, start <= first_latent

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.first_latent:
            raise ValueError(f"a window needs 0 <= start <= first_latent, got {self}")


class DecodeCache:
    """Preallocated K/V buffers for one group of rows that share positions (same prompt length).

    The window the entries belong to is the stream's (``perceiverar.generation.Stream.window``): the cache only
    counts how many entries of that window are valid.
    """

    def __init__(
        self,
        cfg: PerceiverARConfig,
        batch: int,
        *,
        context_capacity: int,
        latent_capacity: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        H, D, C = cfg.n_heads, cfg.head_dim, cfg.width
        kw = dict(device=device, dtype=dtype)
        self.cross_k = torch.zeros(batch, H, context_capacity, D, **kw)
        self.cross_v = torch.zeros(batch, H, context_capacity, D, **kw)
        self.cross_out = torch.zeros(batch, latent_capacity, C, **kw)
        self.layers = [
            (torch.zeros(batch, H, latent_capacity, D, **kw), torch.zeros(batch, H, latent_capacity, D, **kw))
            for _ in range(cfg.n_layers)
        ]
        self.context_filled = 0  # valid context entries: positions s .. s + context_filled - 1
        self.latents_filled = 0  # valid latent entries (cross_out and every layer): positions a .. a + latents_filled - 1

    def clear(self) -> None:
        """Forget every entry: the window's context start moved (rotary positions change)."""
        self.context_filled = self.latents_filled = 0
