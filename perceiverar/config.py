"""Model configuration and named presets."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from tokenizers_mm.vocab import FEATURE_SIZES, VOCAB_SIZE


@dataclass(kw_only=True)
class PerceiverARConfig:
    """Sizes of a Perceiver AR model.

    The model reads up to ``context_len`` (L) tokens; the last ``n_latents`` (N) of them
    become latents that cross-attend into the whole context and then run through
    ``n_layers`` causal self-attention blocks. Cost grows with N * L for the single
    cross-attention and with N^2 * n_layers for the stack, so L can be large.
    """

    vocab_size: int = VOCAB_SIZE
    width: int = 256  # residual stream width (C)
    n_heads: int = 4
    head_dim: int = 64
    n_layers: int = 6  # latent self-attention blocks after the cross-attention
    context_len: int = 65_536  # L: longest input the model reads
    n_latents: int = 1_024  # N: trained number of latents (can be changed at inference)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Fraction of the prefix (non-latent) positions dropped from the cross-attention's
    # keys during training, as in the paper: cheaper steps and a regulariser.
    context_dropout: float = 0.0
    # RoPE base: the classic 10,000 wraps its slowest frequency after ~63K positions;
    # 500,000 (as long-context LLMs use) keeps every position of a 65K context distinct.
    rope_base: float = 500_000.0
    # Share of each head's frequency pairs that rotate (the fastest ones; see layers.rope_angles). 1 is
    # classic rotary. Below 1 the slow pairs carry no position, so attention by content (the copy task's
    # look-up of the previous occurrence) works unchanged at distances far beyond the training crops.
    rope_fraction: float = 1.0
    feature_sizes: tuple[int, ...] = field(default_factory=lambda: tuple(FEATURE_SIZES))
    z_loss: float = 0.0  # weight of the mean squared log-partition (PaLM's z-loss); 0 disables
    norm_eps: float = 1e-5
    # Biases on the q/k/v projections. With rotary positions, a query bias and a key bias
    # give every head a content-independent, purely relative-position attention pattern
    # (look back exactly d tokens), which the copy task and image rows (look one row up)
    # need and which weights alone only learn after a long plateau.
    attn_bias: bool = True
    # Width of the short causal depthwise convolution over the token embeddings before the cross-attention
    # (perceiverar.layers.ShortConv); 0 disables it (checkpoints trained before it existed).
    conv_kernel: int = 0
    # Length-scaled cross-attention (0: off). A latent that sees n > this many keys gets its query scaled by
    # log(n) / log(this), so that softmax over 60K keys is as sharp as over the few hundred a short-item model
    # was trained on (the dilution of "scalable softmax" / log-n attention scaling); at or below it the model is
    # unchanged. It depends only on a query's own position, so the exact cache stays exact. See
    # ``CrossAttentionBlock.query_rope``.
    query_len_scale: int = 0
    # Pinned latents (0: off): the first P positions of the context (a long prompt's opening: the caption) also
    # join the latent self-attention stack, as global tokens do in Longformer and BigBird. In the stack they sit
    # just before the latent window (their rotary positions are moved there), so the stack reads them the same
    # way at any distance; the cross-attention still sees them where they are. Their own outputs are not
    # predictions (they see only each other), and the exact cache stays exact: they depend on the window's start
    # only. See ``PerceiverAR.forward`` and ``perceiverar.generation.prefill``.
    pinned_latents: int = 0
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Types and bounds first: a config comes from JSON files people edit, and an absurd size would hang or
        # exhaust memory while the model is built instead of failing with a message.
        for name, (lo, hi) in _INT_BOUNDS.items():
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi:,}], got {v:,}")
            setattr(self, name, int(v))
        for name, (lo, hi) in _REAL_BOUNDS.items():
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v < hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}), got {v!r}")
            setattr(self, name, float(v))
        if self.rope_fraction > 1.0:
            raise ValueError(f"rope_fraction must be in [0, 1], got {self.rope_fraction!r}")
        for name in ("attn_bias", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        fs = self.feature_sizes
        if isinstance(fs, (str, bytes)) or not hasattr(fs, "__iter__") or not all(
                isinstance(x, numbers.Integral) and not isinstance(x, bool) and 1 <= x <= 1 << 20 for x in fs):  # fmt: skip
            raise ValueError(f"feature_sizes must be a list of integers in [1, {1 << 20:,}], got {fs!r}")
        self.feature_sizes = tuple(int(x) for x in fs)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 1 <= self.n_latents <= self.context_len:
            raise ValueError(f"need 1 <= n_latents <= context_len, got N={self.n_latents}, L={self.context_len}")
        if not 0 < self.mlp_ratio or self.mlp_dim < 1:
            raise ValueError(f"mlp_ratio must be positive (mlp_ratio x width >= 1), got {self.mlp_ratio}")
        if self.n_params() > MAX_PARAMS:
            raise ValueError(f"this config has ~{self.n_params() / 1e9:,.1f} B parameters, more than the {MAX_PARAMS / 1e9:g} B "
                             "this code builds; check width, n_layers, n_heads, head_dim and mlp_ratio")  # fmt: skip

    def n_params(self) -> int:
        """The parameter count, estimated from the sizes alone (embeddings, head, cross-attention, latent blocks)."""
        c, a, m = self.width, self.attn_dim, self.mlp_dim
        block = c * 3 * a + a * c + 2 * c * m  # q/k/v, output, MLP
        return 2 * self.vocab_size * c + sum(self.feature_sizes) * c + (self.n_layers + 1) * block

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_ratio * self.width)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["feature_sizes"] = list(self.feature_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PerceiverARConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "PerceiverARConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


MAX_PARAMS = 20e9  # ~80 GB of fp32 weights: beyond it a config is a typo, not a model
# Inclusive bounds of the integer sizes and [lo, hi) bounds of the real-valued ones: far above any sane model.
_INT_BOUNDS = {
    "vocab_size": (1, 1 << 20), "width": (1, 1 << 16), "n_heads": (1, 1024), "head_dim": (2, 1024),
    "n_layers": (1, 1024), "context_len": (1, 1 << 24), "n_latents": (1, 1 << 24), "conv_kernel": (0, 64),
    "query_len_scale": (0, 1 << 24), "pinned_latents": (0, 1 << 16),
}  # fmt: skip
_REAL_BOUNDS = {
    "mlp_ratio": (0.0, 64.0), "dropout": (0.0, 1.0), "context_dropout": (0.0, 1.0), "rope_base": (1.0, 1e12),
    "rope_fraction": (0.0, 2.0),
    "z_loss": (0.0, 1e3), "norm_eps": (0.0, 1.0),
}  # fmt: skip

PRESETS: dict[str, dict] = {
    # Runs on a CPU in seconds: for tests and CI.
    "debug": dict(width=64, n_heads=2, head_dim=32, n_layers=2, context_len=256, n_latents=32),
    # The demo checkpoints: ~8.4 M parameters (17 MB in bf16), 65,536-token context, trainable on a CPU.
    "small": dict(width=256, n_heads=4, head_dim=64, n_layers=6, context_len=65_536, n_latents=1_024, conv_kernel=4),
    # A GPU model: ~217 M parameters, L = 65,536, N = 2,048.
    "base": dict(width=1_024, n_heads=16, head_dim=64, n_layers=16, context_len=65_536, n_latents=2_048, conv_kernel=4),
}
