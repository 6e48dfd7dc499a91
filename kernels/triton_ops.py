"""The Triton attention kernels behind ``kernels.dispatch`` (imported lazily: this module imports Triton).

Signatures match the references in ``kernels.reference``; every function also takes a keyword
``num_splits`` forcing the number of key splits (None: chosen from the SM count).
"""

from kernels.cross_attention import (
    causal_cross_attention_fn,
    causal_cross_attention_lse,
    causal_self_attention_fn,
)
from kernels.decode import decode_attention_fn

__all__ = [
    "causal_cross_attention_fn",
    "causal_cross_attention_lse",
    "causal_self_attention_fn",
    "decode_attention_fn",
]
