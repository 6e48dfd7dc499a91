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

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        cache_len: int | None = None,
        *,
        context: torch.Tensor | None = None,
        context_rope: Rope | None = None,
    ) -> torch.Tensor:
        """x: (B, M, C) embeddings of the query positions, the last M of the keys' positions.

        Either ``context`` (B, T, C) with its ``context_rope`` is given and the keys/values
        are computed here (the training path: one module call, so FSDP and activation
        checkpointing see it), or precomputed k, v (B, H, T, D) are: exactly the keys when
        ``cache_len`` is None, else preallocated caches whose first ``cache_len`` entries are valid.
        """
        if context is not None:
            k, v = self.kv(context, context_rope)
        elif k is None or v is None:
            raise ValueError("pass either context= or precomputed k and v")
        q = rearrange(self.wq(self.q_norm(x)), "b m (h d) -> b h m d", h=self.cfg.n_heads)
        q = apply_rope(q, *rope)
        if cache_len is None:
            y = dispatch.causal_cross_attention(q, k, v)  # (B, H, M, D)
        else:
            y = dispatch.decode_attention(q, k, v, cache_len)
        x = x + self.dropout(self.wo(rearrange(y, "b h m d -> b m (h d)")))
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

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_pos: int = 0,
    ) -> torch.Tensor:
        """x: (B, M, C) latents at rotary angles ``rope`` (M, D/2).

        With a ``cache`` (k, v preallocated (B, H, S, D)), this block's keys/values are
        written at [cache_pos, cache_pos + M) and the queries attend entries [0, cache_pos + M).
        """
        q, k, v = rearrange(self.wqkv(self.attn_norm(x)), "b m (three h d) -> three b h m d", three=3, h=self.cfg.n_heads)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            y = dispatch.causal_self_attention(q, k, v)  # (B, H, M, D)
        else:
            k_cache, v_cache = cache
            m = x.shape[1]
            k_cache[:, :, cache_pos : cache_pos + m] = k
            v_cache[:, :, cache_pos : cache_pos + m] = v
            y = dispatch.decode_attention(q, k_cache, v_cache, cache_pos + m)
        x = x + self.dropout(self.wo(rearrange(y, "b h m d -> b m (h d)")))
        return x + self.mlp(self.mlp_norm(x))
