"""Perceiver AR (Hawthorne et al., 2022).

The last N positions of a T-token context are the latents. One causal cross-attention
lets latent i (position T - N + i) read every input j <= T - N + i; then a stack of causal
self-attention blocks runs over the N latents only, and each latent predicts the next
token. Cost: O(N * T) for the cross-attention plus O(N^2) per latent block, instead of
O(T^2) per block for a decoder-only Transformer. With ``pinned_latents`` P > 0 the context's
first P positions join the stack too, placed just before the latents
(``PerceiverARConfig.pinned_latents``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from perceiverar.attention import CrossAttentionBlock, SelfAttentionBlock
from perceiverar.config import PerceiverARConfig
from perceiverar.layers import ShortConv, TokenEmbedding, rope_angles


class PerceiverAR(nn.Module):
    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.width, cfg.feature_sizes)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.conv = ShortConv(cfg.width, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        self.cross = CrossAttentionBlock(cfg)
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith(".bias"):
                    nn.init.zeros_(p)
                continue  # norm weights keep their ones
            std = 0.02
            if name.endswith(("wo.weight", "mlp.down.weight")):
                std = 0.02 / math.sqrt(2 * (self.cfg.n_layers + 1))  # GPT-2: keep the residual stream's scale
            nn.init.normal_(p, std=std)
        for emb in self.embed.features:
            with torch.no_grad():
                emb.weight[0].zero_()  # padding_idx row: "no feature"
        if self.conv is not None:
            nn.init.zeros_(self.conv.weight)  # starts as the identity
        # Zero output projection: the untrained model predicts uniform logits, so the
        # first loss is log(vocab) and early gradients are not dominated by noise.
        nn.init.zeros_(self.head.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- pieces used by both the full forward pass and cached generation ----

    def embed_tokens(
        self, tokens: torch.Tensor, features: torch.Tensor | None = None, *, history: int = 0, inside: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings (B, T - history, C) of tokens (B, T) after the short convolution.

        The first ``history`` positions only feed the convolution (generation passes the few tokens before
        a chunk); the crop's own start is zero-padded, as in training. ``inside`` (B, T) bool marks the
        positions inside the crop: the others are zeroed, the same padding (the static-shape decode step).
        """
        x = self.embed(tokens, features)  # (B, T, C)
        if inside is not None:
            x = x * inside[..., None].to(x.dtype)
        if self.conv is not None:
            return self.conv(x, history)
        return x[:, history:]

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_angles(positions, self.cfg.head_dim, self.cfg.rope_base, self.cfg.rope_fraction)

    def latent_stack(
        self, h: torch.Tensor, rope, *, caches=None, pos=0, last_only: bool = False, skip: int = 0
    ) -> torch.Tensor:
        """(B, n, C) latents after the cross-attention -> (B, n - skip, vocab) logits ((B, 1, vocab) with
        ``last_only``); the first ``skip`` rows (pinned latents) take part but predict nothing.

        With ``caches`` (one preallocated (k, v) pair (B, H, S, D) per block: generation), the latents are
        positions [pos, pos + n) of the latent window: each block writes its keys/values there and attends
        entries [0, pos + n) (see ``SelfAttentionBlock.forward_cached``).
        """
        for i, block in enumerate(self.blocks):
            if caches is not None:
                h = block.forward_cached(h, rope, caches[i], pos)
            elif self.cfg.activation_checkpointing and self.training:
                h = checkpoint(block, h, rope, use_reentrant=False)
            else:
                h = block(h, rope)
        if last_only:
            h = h[:, -1:]  # generation needs the next token's logits only: skip the (n, C) x (C, vocab) head
        elif skip:
            h = h[:, skip:]
        return self.head(self.norm(h))

    def num_pinned(self, before: int) -> int:
        """How many of the ``before`` positions that precede the latent window are pinned latents."""
        return min(self.cfg.pinned_latents, before)

    def pinned_cross(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Cross-attention outputs (B, P, C) of the pinned positions: embeddings x (B, P, C) of the context's first
        P positions ``pos`` (P,), each reading the positions up to itself (all of them pinned)."""
        rope = self.rope(pos)
        return self.cross(x, self.cross.query_rope(rope, pos + 1), context=x, context_rope=rope)

    def _num_latents(self, T: int, n_latents: int | None) -> int:
        n = self.cfg.n_latents if n_latents is None else int(n_latents)
        if n < 1:
            raise ValueError(f"n_latents must be >= 1, got {n}")
        return min(n, T)  # a sequence shorter than N uses T latents

    # ---- full forward pass ----

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor | None = None, *, n_latents: int | None = None
    ) -> torch.Tensor:
        """tokens: (B, T) int64 with T <= context_len; features: (B, T, F) or None.

        Returns logits (B, n, vocab) for the last n = min(n_latents or N, T) positions;
        logits[:, i] predict the token after position T - n + i.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if T < 1:
            raise ValueError("tokens must hold at least one position")
        if T > self.cfg.context_len:
            raise ValueError(
                f"sequence of {T} tokens exceeds the model's context of {self.cfg.context_len}; crop it or use generate()"
            )
        n = self._num_latents(T, n_latents)
        x = self.embed_dropout(self.embed_tokens(tokens, features))  # (B, T, C)
        pos = torch.arange(T, device=tokens.device)
        ctx, ctx_pos = x, pos
        if self.training and self.cfg.context_dropout > 0 and T > n:
            # Drop a random subset of prefix positions from the keys (the latents' own
            # positions stay). Every kept prefix key precedes every query, so the
            # bottom-right mask over the shorter key list is still exact.
            n_prefix = T - n
            keep = torch.randperm(n_prefix, device=tokens.device)[: max(1, round(n_prefix * (1 - self.cfg.context_dropout)))]
            keep = torch.cat([keep.sort().values, torch.arange(n_prefix, T, device=tokens.device)])
            ctx, ctx_pos = x[:, keep], pos[keep]
        q_rope = self.rope(pos[T - n :])
        cross_rope = self.cross.query_rope(q_rope, pos[T - n :] + 1)  # latent i sees T - n + i + 1 positions
        if self.cfg.activation_checkpointing and self.training:
            # The cross-attention over the whole context holds the largest activations
            # (keys/values of all T positions): recompute them in the backward pass.
            h = checkpoint(
                self.cross, x[:, T - n :], cross_rope, context=ctx, context_rope=self.rope(ctx_pos), use_reentrant=False
            )
        else:
            h = self.cross(x[:, T - n :], cross_rope, context=ctx, context_rope=self.rope(ctx_pos))  # (B, n, C)
        P = self.num_pinned(T - n)
        if P:  # the context's first P positions join the stack, just before the window (their rotary positions)
            h = torch.cat([self.pinned_cross(x[:, :P], pos[:P]), h], dim=1)  # (B, P + n, C)
            q_rope = self.rope(torch.arange(T - n - P, T, device=tokens.device))
        return self.latent_stack(h, q_rope, skip=P)

    def token_nll(
        self, tokens: torch.Tensor, features: torch.Tensor | None = None, *, n_latents: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T + 1). Returns (nll (B, n) in nats, logits (B, n, vocab)) for the latent positions."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        feats = None if features is None else features[:, :-1]
        logits = self(inputs, feats, n_latents=n_latents)  # (B, n, V)
        n = logits.shape[1]
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets[:, -n:], reduction="none")  # (B, n)
        return nll, logits

    def loss(
        self,
        tokens: torch.Tensor,
        features: torch.Tensor | None = None,
        *,
        n_latents: int | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training loss over the latent positions only.

        tokens: (B, T + 1): inputs are tokens[:, :-1], targets tokens[:, 1:].
        loss_mask: optional (B, T + 1) bool/float aligned with ``tokens``; a target whose
        mask is 0 (padding, say) does not count.
        """
        nll, logits = self.token_nll(tokens, features, n_latents=n_latents)
        n = nll.shape[1]
        if loss_mask is None:
            w = torch.ones_like(nll)
        else:
            w = loss_mask[:, 1:][:, -n:].to(nll.dtype)
        denom = w.sum().clamp_min(1.0)
        loss = (nll * w).sum() / denom
        if self.cfg.z_loss > 0:
            z = torch.logsumexp(logits.float(), dim=-1)  # (B, n)
            loss = loss + self.cfg.z_loss * (z.square() * w).sum() / denom
        return loss
