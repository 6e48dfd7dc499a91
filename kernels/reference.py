"""Pure PyTorch reference attention for Perceiver AR.

No Triton import here: this module is what CPU code, tests and the dispatcher's
fallback use, and what every Triton kernel is checked against.

Mask convention (bottom-right aligned): with N queries and T keys, query i sits
at absolute position T - N + i and may attend every key j <= T - N + i. For
T == N this is the ordinary causal mask. PyTorch SDPA's ``is_causal=True`` is
*top-left* aligned when N != T, so the cross-attention uses
``torch.nn.attention.bias.causal_lower_right``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

# Above this many score entries per (batch, head) the reference processes queries in
# chunks so that a 65,536-token context does not materialise an N x T matrix at once
# (CPU SDPA falls back to the math kernel for a lower-right mask).
_CHUNK_SCORES = 1 << 24


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects (B, H, len, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} differ in shape")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries {tuple(q.shape)} do not match keys {tuple(k.shape)} in batch, heads or head dim")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"cross-attention needs at least as many keys as queries (N={q.shape[2]} > T={k.shape[2]})")


def causal_cross_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Bottom-right-aligned causal attention.

    q: (B, H, N, D) queries of the last N positions; k, v: (B, H, T, D) with T >= N.
    Returns (B, H, N, D).
    """
    _check(q, k, v)
    B, H, N, D = q.shape
    T = k.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    if N == 1:  # the one query is the last position: it sees every key, so no mask (1.7x faster at 65K keys on CPU)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if N * T <= _CHUNK_SCORES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_lower_right(N, T, q.device), scale=scale)
    return _chunked_cross_attention(q, k, v, scale)


def _lower_right(N: int, T: int, device: torch.device):
    """The bottom-right causal mask: ``causal_lower_right`` eagerly; inside torch.compile an (N, T) bool tensor
    (j <= T - N + i), because constructing that tensor subclass breaks the graph (torch 2.11), and the frames after
    the break carry sizes with no traceable source: once the lengths vary (``--filler``), building their guards
    failed ("sources must not be empty for symbol ...")."""
    if torch.compiler.is_compiling():
        return torch.ones(N, T, dtype=torch.bool, device=device).tril(T - N)
    return causal_lower_right(N, T)


# Eager even inside a compiled model: the loop over a symbolic length's chunks would be unrolled per length, and
# the chunks are SDPA calls, no faster compiled.
@torch.compiler.disable
def _chunked_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """causal_cross_attention_ref above _CHUNK_SCORES: chunk rows [i0, i1) see keys [0, T - N + i1), bottom-right
    aligned again, so a 65,536-token context never materialises its whole N x T score matrix."""
    N, T = q.shape[2], k.shape[2]
    rows = max(1, _CHUNK_SCORES // T)
    out = torch.empty_like(q)
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        t1 = T - N + i1
        out[:, :, i0:i1] = F.scaled_dot_product_attention(
            q[:, :, i0:i1], k[:, :, :t1], v[:, :, :t1], attn_mask=causal_lower_right(i1 - i0, t1), scale=scale
        )
    return out


def causal_self_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Ordinary causal self-attention over the latents. q, k, v: (B, H, N, D)."""
    _check(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"self-attention needs as many keys as queries, got N={q.shape[2]}, T={k.shape[2]}")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_len: int, scale: float | None = None
) -> torch.Tensor:
    """A few new queries against a preallocated cache.

    q: (B, H, M, D), the queries of the last M positions; k_cache, v_cache: (B, H, S, D)
    preallocated with S >= cache_len; the first ``cache_len`` entries are valid and the
    last M of them belong to the queries' own positions (bottom-right causal).
    Returns (B, H, M, D).
    """
    if not 0 < cache_len <= k_cache.shape[2]:
        raise ValueError(f"cache_len={cache_len} outside the cache of {k_cache.shape[2]} entries")
    return causal_cross_attention_ref(q, k_cache[:, :, :cache_len], v_cache[:, :, :cache_len], scale)


def attention_lse_ref(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Log-sum-exp of the bottom-right-masked scores, (B, H, N), fp32; what the kernels save for backward."""
    B, H, N, D = q.shape
    T = k.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    s = torch.einsum("bhnd,bhtd->bhnt", q.float(), k.float()) * scale
    i = torch.arange(N, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    s = s.masked_fill(j > i + (T - N), float("-inf"))
    return torch.logsumexp(s, dim=-1)
