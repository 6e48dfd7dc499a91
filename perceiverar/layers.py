"""Small building blocks: rotary positions, MLP, embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope_angles(
    positions: torch.Tensor, head_dim: int, base: float, fraction: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of rotary angles for integer positions (T,) -> two (T, head_dim // 2) fp32 tensors.

    Rotary positions rather than a learned table: they are relative (a crop that starts
    anywhere in a long sequence looks the same to the model, which is what random-crop
    training and the strided generation cache rely on) and they cost no parameters,
    where a learned table over 65,536 positions would be larger than the `small` model.

    ``fraction`` < 1 rotates only the fastest ``round(fraction * head_dim / 2)`` frequency pairs and leaves
    the slow ones unrotated (angle 0: cos 1, sin 0), as in partial rotary / p-RoPE. A slow pair turns only a
    little over a training crop, so at distances never trained it shows phases the model never saw; the
    fast pairs have turned through every phase already, and unrotated pairs carry content independent of
    distance (matching by content keeps working at any context length).
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim))
    if fraction < 1.0:
        inv_freq[round(fraction * (head_dim // 2)) :] = 0.0  # (D/2,): the slowest pairs stop turning
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2), fp64 so 65K positions stay exact
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by angles (T, D/2), or per row (B, 1, T, D/2), using the split-halves convention."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, D/2) each
    if cos.dim() == 2:
        cos, sin = cos[None, None], sin[None, None]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class MLP(nn.Module):
    """Squared-ReLU MLP (Primer): as good as GELU/SwiGLU at this scale and one matmul cheaper than SwiGLU."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.dropout(self.down(F.relu(self.up(x)).square()))


class TokenEmbedding(nn.Module):
    """Token embedding plus the tokenizers' per-token position features.

    features: (B, T, F) int64, one column per slot of ``feature_sizes`` (e.g. image row,
    column and channel); 0 means "no feature" and is embedded as a zero vector. Columns past the model's
    slots are ignored: a model trained before a slot was added reads the slots it knows.
    """

    def __init__(self, vocab_size: int, width: int, feature_sizes: tuple[int, ...]):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.features = nn.ModuleList(nn.Embedding(n, width, padding_idx=0) for n in feature_sizes)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(tokens)  # (B, T, C)
        if features is not None:
            if features.shape[:-1] != tokens.shape or features.shape[-1] < len(self.features):
                raise ValueError(
                    f"features must have shape {(*tokens.shape, len(self.features))} (or more slots, the first ones "
                    f"read), got {tuple(features.shape)}"
                )
            for slot, emb in enumerate(self.features):
                x = x + emb(features[..., slot])
        return x


class ShortConv(nn.Module):
    """x + a causal depthwise convolution over the last ``kernel`` positions (H3 / Hyena / Mamba's short conv).

    Placed on the token embeddings before the cross-attention, it lets a key know its neighbourhood (a byte
    its word, a pixel the pixels before it) and a latent's query its last few tokens, where attention values
    alone carry no position: "red" and "der" stop being the same bag of bytes. Zero-initialised, so a model
    starts as if it were absent. Positions before the crop are zero padding: the window's first positions see
    only what is inside it, which is what keeps cached generation exact (see ``perceiverar.generation``).
    """

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.kernel = int(kernel)
        self.weight = nn.Parameter(torch.zeros(self.kernel, width))  # (K, C): weight[i] scales x[t - i]

    def forward(self, x: torch.Tensor, history: int = 0) -> torch.Tensor:
        """x: (B, T, C) -> (B, T - history, C); the first ``history`` positions only feed the convolution."""
        T = x.shape[1]
        pad = max(0, self.kernel - 1 - history)
        xp = F.pad(x, (0, 0, pad, 0))  # (B, pad + T, C): zeros stand for positions before the crop
        n = T - history
        out = x[:, history:]
        for i in range(self.kernel):
            start = pad + history - i  # xp index of x[t - i] for the first output t = history
            out = out + self.weight[i] * xp[:, start : start + n]
        return out
