"""Preallocated caches for exact strided Perceiver AR decoding.

A window (s, a) (``perceiverar.window``) names the crop generation imitates: the context starts at position s,
the first latent sits at a. The caches below hold everything of that crop that does not
change while the window stays put:

    cross_k, cross_v   (R, H, L_cap, D)  keys/values of context positions s.., index pos - s,
                                          rotary position pos - s (as in the crop)
    cross_out          (R, N_cap, C)     cross-attention outputs of latent positions a.., index P + pos - a;
                                          they depend on s but not on a, so a slide of a alone keeps them
                                          (indices [0, P): the window's P pinned positions s.., if the model
                                          has pinned latents; N_cap then counts them too)
    layers[i]          (R, H, N_cap, D)  self-attention keys/values of latent block i, the same indices
    rope               (L_cap, D/2) x 2  cos, sin of the rotary angles of window positions 0..L_cap-1, computed
                                          once (in fp64, as ``rope_angles`` does) instead of once per token
    context_pos,       (R,) int64        p - s and P + p - a of each row's next position p: the decode step's positions
    latent_pos                            as tensors, so that one compiled graph serves every token

R counts rows: one prompt's samples, or several prompts' (classifier-free guidance decodes its conditional and
unconditional rows in one batched step). ``rows(lo, hi)`` is one prompt's share: the same buffers, its own counts.
"""

from __future__ import annotations

import threading

import torch

from perceiverar.config import PerceiverARConfig
from perceiverar.layers import rope_angles


class DecodeCache:
    """Preallocated K/V buffers for rows that decode together.

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
        self.rope = rope_angles(torch.arange(context_capacity, device=device), D, cfg.rope_base, cfg.rope_fraction)
        self.context_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.latent_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.context_filled = 0  # valid context entries: positions s .. s + context_filled - 1
        self.latents_filled = 0  # valid latent entries (cross_out and every layer): positions a .. a + latents_filled - 1
        self.pinned_filled = 0  # pinned entries before them (config pinned_latents): positions s .. s + P - 1

    def rows(self, lo: int, hi: int) -> DecodeCache:
        """Rows [lo, hi) as a cache of their own: views of the same buffers, with counts of their own."""
        part = object.__new__(DecodeCache)
        part.cross_k, part.cross_v, part.cross_out = self.cross_k[lo:hi], self.cross_v[lo:hi], self.cross_out[lo:hi]
        part.layers = [(k[lo:hi], v[lo:hi]) for k, v in self.layers]
        part.rope = self.rope
        part.context_pos, part.latent_pos = self.context_pos[lo:hi], self.latent_pos[lo:hi]
        part.context_filled = part.latents_filled = part.pinned_filled = 0
        return part

    def clear(self) -> None:
        """Forget every entry: the window's context start moved (rotary positions change)."""
        self.context_filled = self.latents_filled = self.pinned_filled = 0

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor the decode step reads or writes (what CUDA graphs must find at the same address)."""
        return [self.cross_k, self.cross_v, self.cross_out, *(t for kv in self.layers for t in kv), *self.rope,
                self.context_pos, self.latent_pos]  # fmt: skip


class CachePool:
    """Caches kept for reuse between generations, for CUDA graphs: a graph replays at the addresses it was recorded
    with, so a new cache makes it record again (and after 128 re-recordings torch stops using the graph).
    Capacities are rounded up to a power of two so that requests of similar sizes share caches."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._free: dict[tuple, list[DecodeCache]] = {}
        self._lock = threading.Lock()

    def take(self, cfg: PerceiverARConfig, rows: int, context_capacity: int, latent_capacity: int, *, device, dtype,
             on_new=None) -> tuple[tuple, DecodeCache]:  # fmt: skip
        """(key, a cleared cache) of at least these capacities; ``on_new(cache)`` runs on a newly made one."""
        ctx = min(cfg.context_len, 1 << max(8, (context_capacity - 1).bit_length()))
        lat = min(ctx, 1 << max(8, (latent_capacity - 1).bit_length()))
        key = (cfg.n_heads, cfg.head_dim, cfg.width, cfg.n_layers, cfg.rope_base, cfg.rope_fraction, rows, ctx, lat, str(device), dtype)
        with self._lock:
            free = self._free.get(key)
            cache = free.pop() if free else None
        if cache is None:
            cache = DecodeCache(cfg, rows, context_capacity=ctx, latent_capacity=lat, device=device, dtype=dtype)
            if on_new is not None:
                on_new(cache)
        cache.clear()
        return key, cache

    def give(self, key: tuple, cache: DecodeCache) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(cache)
            while sum(len(v) for v in self._free.values()) > self.keep:
                oldest = next(k for k, v in self._free.items() if v)
                self._free[oldest].pop(0)
                if not self._free[oldest]:
                    del self._free[oldest]
