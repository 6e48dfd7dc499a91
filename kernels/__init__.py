"""Attention kernels for Perceiver AR: a PyTorch reference and fused Triton kernels behind one dispatcher."""

from kernels.dispatch import causal_cross_attention, causal_self_attention, decode_attention

__all__ = ["causal_cross_attention", "causal_self_attention", "decode_attention"]
