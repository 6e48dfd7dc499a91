"""Flash-decoding: a few new queries against a long preallocated K/V cache, split over the cache.

q (B, H, M, D) holds the queries of the last M positions (M = 1..16 in generation); k_cache/v_cache
(B, H, S, D) are preallocated and their first ``cache_len`` entries are valid, the last M of those
being the queries' own positions (bottom-right causal, as ``kernels.reference.decode_attention_ref``).

With M tiny, one program per (batch, head) would leave the GPU idle and read the cache at a
fraction of HBM bandwidth, so the cache is split into chunks, one program per (chunk, batch*head)
handles all M queries at once (every cached byte is read exactly once), each writes a partial
(out, lse), and the combine kernel of ``kernels.cross_attention`` merges them. The per-chunk kernel
is the cross-attention forward kernel run with a small query block: the mask logic is identical.
"""

from __future__ import annotations

import math

import torch
import triton

from kernels import cross_attention as ca

# Below this many keys per chunk the partial outputs cost more than the extra parallelism buys.
_MIN_KEYS_PER_SPLIT = 512
_MAX_DECODE_QUERIES = 64


def decode_config(M: int, D: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Fixed launch config: the kernel is memory bound and cache_len changes every step (no autotune).

    fp32 inputs take ieee products on CUDA cores, whose 4-warp tiles and 64-row tiles spill registers
    on sm_90 at D = 128; 8-warp tiles of at most 32 x 64 do not (``python -m kernels.compile_sm90``
    measures every one of these configs). M > 32 then takes several query blocks.
    """
    block_m = max(16, triton.next_power_of_2(M))  # tl.dot needs at least 16 rows
    if ca.INTERPRET:
        return {"BLOCK_M": block_m, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}
    if dtype == torch.float32:
        return {"BLOCK_M": min(block_m, 32), "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": block_m, "BLOCK_N": 64 if D == 128 else 128, "num_warps": 4, "num_stages": 3}


def _decode_plan(bh: int, cache_len: int, block_n: int, device: torch.device, num_splits: int | None):
    """(splits, split_size): enough chunks for ~4 programs per SM, none shorter than _MIN_KEYS_PER_SPLIT."""
    if num_splits is not None:
        splits = max(1, int(num_splits))
    elif device.type != "cuda":
        splits = 1
    else:
        sms = ca.num_sms(device.index if device.index is not None else torch.cuda.current_device())
        splits = max(1, min(triton.cdiv(4 * sms, bh), triton.cdiv(cache_len, _MIN_KEYS_PER_SPLIT)))
    split_size = triton.cdiv(triton.cdiv(cache_len, splits), block_n) * block_n
    return triton.cdiv(cache_len, split_size), split_size


def decode_attention_fn(q, k_cache, v_cache, cache_len: int, scale: float | None = None, *,
                        num_splits: int | None = None):
    """Attention of q (B, H, M, D) into the first ``cache_len`` entries of (B, H, S, D) caches; (B, H, M, D).

    Inference kernel; if a gradient is needed (or M > 64, or D is not 64/128) it runs the
    differentiable cross-attention on the valid slice of the cache instead.
    """
    cache_len = int(cache_len)
    if not 0 < cache_len <= k_cache.shape[2]:
        raise ValueError(f"cache_len={cache_len} outside the cache of {k_cache.shape[2]} entries")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    k, v = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]  # views: the kernels take strides
    B, H, M, D = q.shape
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad or M > _MAX_DECODE_QUERIES or D not in ca.SUPPORTED_HEAD_DIMS:
        return ca.causal_cross_attention_fn(q, k, v, scale)
    ca.check_supported(q, k, v)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    cfg = decode_config(M, D, q.dtype)
    splits, split_size = _decode_plan(B * H, cache_len, cfg["BLOCK_N"], q.device, num_splits)
    # split_size is a multiple of the config's BLOCK_N (_decode_plan), so that is its alignment.
    out, _ = ca.launch_forward(q, k, v, scale, splits, split_size, cfg["BLOCK_N"], ca.attn_fwd_kernel,
                               lambda META: triton.cdiv(M, cfg["BLOCK_M"]), **cfg)
    return out
