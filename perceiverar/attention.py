"""Perceiver AR's two attention blocks. All attention math goes through kernels.dispatch."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from kernels import dispatch
from perceiverar.config import PerceiverARConfig
from perceiverar.layers import MLP, apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin: (T, D/2) each


class CrossAttentionBlock(nn.Module):
    """Latents (the last N positions) attend the whole context, bottom-right causal.

    Pre-norm on queries and on keys/values (separate norms), query residual, then MLP.
    Keys/values are produced by ``kv`` so that generation can compute them once per
    window and reuse them.
    """

    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.cfg = cfg
        self.q_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.kv_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.wq = nn.Linear(cfg.width, cfg.attn_dim, bias=cfg.attn_bias)
        self.wkv = nn.Linear(cfg.width, 2 * cfg.attn_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.attn_dim, cfg.width, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def kv(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Context embeddings (B, T, C) at rotary angles for their positions -> k, v (B, H, T, D)."""
        k, v = rearrange(self.wkv(self.kv_norm(x)), "b t (two h d) -> two b h t d", two=2, h=self.cfg.n_heads)
        return apply_rope(k, *rope), v

    def forward(self, x: torch.Tensor, rope: Rope, context: torch.Tensor, context_rope: Rope) -> torch.Tensor:
        """The training path: x (B, M, C) embeddings of the query positions, the last M of ``context`` (B, T, C).

        The keys/values are computed here, in the one module call, so that FSDP and activation checkpointing
        see them. Returns (B, M, C).
        """
        k, v = self.kv(context, context_rope)  # (B, H, T, D)
        q = self._queries(x, rope)
        return self._out(x, dispatch.causal_cross_attention(q, k, v))

    def forward_cached(self, x: torch.Tensor, rope: Rope, k_cache: torch.Tensor, v_cache: torch.Tensor, length) -> torch.Tensor:
        """The generation path: x (B, M, C) are the last M of ``length`` context positions whose keys/values
        are already in the preallocated caches (B, H, S, D); see ``cached_attention`` for ``length``."""
        q = self._queries(x, rope)
        return self._out(x, cached_attention(q, k_cache, v_cache, length))

    def _queries(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        q = rearrange(self.wq(self.q_norm(x)), "b m (h d) -> b h m d", h=self.cfg.n_heads)
        return apply_rope(q, *rope)

    def _out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.wo(rearrange(y, "b h m d -> b m (h d)")))  # y: (B, H, M, D)
        return x + self.mlp(self.mlp_norm(x))


class SelfAttentionBlock(nn.Module):
    """Pre-norm causal self-attention over the latents, then MLP."""

    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.wqkv = nn.Linear(cfg.width, 3 * cfg.attn_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.attn_dim, cfg.width, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        """The training path: x (B, M, C) latents at rotary angles ``rope`` (M, D/2) -> (B, M, C)."""
        q, k, v = self._qkv(x, rope)
        return self._out(x, dispatch.causal_self_attention(q, k, v))  # (B, H, M, D) attention

    def forward_cached(self, x: torch.Tensor, rope: Rope, cache: tuple[torch.Tensor, torch.Tensor], pos) -> torch.Tensor:
        """The generation path: x (B, M, C) are latents [pos, pos + M) of the window; their keys/values are
        written there in the preallocated cache (k, v (B, H, S, D)) and the queries attend entries [0, pos + M)."""
        q, k, v = self._qkv(x, rope)
        k_cache, v_cache = cache
        m = x.shape[1]
        k_cache[:, :, pos : pos + m] = k
        v_cache[:, :, pos : pos + m] = v
        return self._out(x, cached_attention(q, k_cache, v_cache, pos + m))

    def _qkv(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = rearrange(self.wqkv(self.attn_norm(x)), "b m (three h d) -> three b h m d", three=3, h=self.cfg.n_heads)
        return apply_rope(q, *rope), apply_rope(k, *rope), v

    def _out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.wo(rearrange(y, "b h m d -> b m (h d)")))
        return x + self.mlp(self.mlp_norm(x))


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length) -> torch.Tensor:
    """(B, H, M, D) queries of the last M of the first ``length`` entries of preallocated (B, H, S, D) caches,
    bottom-right causal -> (B, H, M, D)."""
    return dispatch.decode_attention(q, k_cache, v_cache, length)
