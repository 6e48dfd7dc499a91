"""Perceiver AR's two attention blocks. All attention math goes through kernels.dispatch."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
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

    def query_rope(self, rope: Rope, n_keys: torch.Tensor) -> Rope:
        """The queries' rotary angles with the length scale folded in (rotation is linear, so scaling cos and sin
        scales the rotated query): ``rope`` (M, D/2) or (R, 1, 1, D/2), ``n_keys`` (M,) or (R,) the positions each
        query sees. With ``query_len_scale`` n0 > 1, a query that sees n > n0 positions is scaled by log n / log n0,
        so that its softmax over a long prompt is about as sharp as over the n0 keys a short-item model was
        trained on (log-n attention scaling); up to n0 nothing changes. The factor depends only on the query's own
        position in the window, so cached and full passes agree. Off (n0 = 0): ``rope`` itself."""
        n0 = self.cfg.query_len_scale
        if n0 <= 1:
            return rope
        s = (n_keys.float().clamp_min(1.0).log() / math.log(n0)).clamp_min(1.0)  # n_keys' shape
        s = s.reshape(*s.shape, *[1] * (rope[0].dim() - s.dim()))  # broadcast over the angles' trailing dims
        return rope[0] * s, rope[1] * s

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
        written there in the preallocated cache (k, v (B, H, S, D)) and the queries attend entries [0, pos + M).
        ``pos`` is an int, or a tensor (B,) of per-row positions for one latent per row (M = 1)."""
        q, k, v = self._qkv(x, rope)
        write_cache(cache[0], k, pos)
        write_cache(cache[1], v, pos)
        return self._out(x, cached_attention(q, *cache, pos + x.shape[1]))

    def _qkv(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = rearrange(self.wqkv(self.attn_norm(x)), "b m (three h d) -> three b h m d", three=3, h=self.cfg.n_heads)
        return apply_rope(q, *rope), apply_rope(k, *rope), v

    def _out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.wo(rearrange(y, "b h m d -> b m (h d)")))
        return x + self.mlp(self.mlp_norm(x))


def write_cache(buffer: torch.Tensor, new: torch.Tensor, pos) -> None:
    """Write new (B, H, M, D) at entries [pos, pos + M) of a preallocated (B, H, S, D) buffer; a tensor ``pos`` (B,)
    gives each row its own entry (M = 1)."""
    if isinstance(pos, torch.Tensor):
        buffer[torch.arange(buffer.shape[0], device=buffer.device), :, pos] = new[:, :, 0]
    else:
        buffer[:, :, pos : pos + new.shape[2]] = new


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length) -> torch.Tensor:
    """(B, H, M, D) queries of the last M of the first ``length`` entries of preallocated (B, H, S, D) caches,
    bottom-right causal -> (B, H, M, D).

    An int ``length`` slices the caches (``dispatch.decode_attention``: the Triton kernel on CUDA). A tensor (B,)
    gives each row its own length for one query per row (M = 1): attention then reads the whole buffers under a
    mask, so that the shapes never change and one compiled graph serves every token (the decode step).
    """
    if not isinstance(length, torch.Tensor):
        return dispatch.decode_attention(q, k_cache, v_cache, length)
    valid = torch.arange(k_cache.shape[2], device=q.device) < length[:, None]  # (B, S)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=valid[:, None, None, :])
