"""One place that chooses how attention runs.

Model code calls these three functions and never imports Triton. On CUDA tensors
the fused Triton kernels run; everywhere else the PyTorch reference does.
``PERCEIVERAR_ATTENTION=triton|reference`` forces either (with ``TRITON_INTERPRET=1``
the Triton path runs on CPU tensors in Triton's interpreter, for tests).
"""

from __future__ import annotations

import functools
import os

import torch

from kernels import reference

_ENV = "PERCEIVERAR_ATTENTION"


@functools.lru_cache(maxsize=1)
def _triton_ops():
    """Import the Triton kernels lazily, so CPU-only installs never touch Triton."""
    from kernels import triton_ops  # noqa: PLC0415  (deliberately lazy)

    return triton_ops


def backend_for(t: torch.Tensor) -> str:
    """'triton' or 'reference' for a tensor, honouring PERCEIVERAR_ATTENTION."""
    forced = os.environ.get(_ENV, "").strip().lower()
    if forced not in ("", "auto", "triton", "reference"):
        raise ValueError(f"{_ENV}={forced!r} is not one of: triton, reference, auto")
    if forced == "reference":
        return "reference"
    if forced == "triton":
        return "triton"
    if t.is_cuda:
        try:
            _triton_ops()
        except ImportError:
            return "reference"
        return "triton"
    return "reference"


def causal_cross_attention(q, k, v, scale: float | None = None):
    """(B, H, N, D) queries of the last N positions into (B, H, T, D) keys/values, bottom-right causal."""
    if backend_for(q) == "triton":
        return _triton_ops().causal_cross_attention_fn(q, k, v, scale)
    return reference.causal_cross_attention_ref(q, k, v, scale)


def causal_self_attention(q, k, v, scale: float | None = None):
    """Causal self-attention over (B, H, N, D)."""
    if backend_for(q) == "triton":
        return _triton_ops().causal_self_attention_fn(q, k, v, scale)
    return reference.causal_self_attention_ref(q, k, v, scale)


def decode_attention(q, k_cache, v_cache, cache_len: int, scale: float | None = None):
    """(B, H, M, D) new queries against the first ``cache_len`` entries of a preallocated (B, H, S, D) cache."""
    if backend_for(q) == "triton":
        return _triton_ops().decode_attention_fn(q, k_cache, v_cache, cache_len, scale)
    return reference.decode_attention_ref(q, k_cache, v_cache, cache_len, scale)
