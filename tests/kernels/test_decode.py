"""Flash-decoding kernel vs kernels.reference.decode_attention_ref (interpreter on CPU, compiled on CUDA)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from kernels import cross_attention as ca  # noqa: E402
from kernels.decode import _decode_plan, decode_attention_fn  # noqa: E402
from kernels.reference import decode_attention_ref  # noqa: E402

DEVICE = "cpu" if ca.INTERPRET else "cuda"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() or ca.INTERPRET, reason="needs CUDA (compiled Triton)")


def _inputs(B, H, M, S, D, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, M, D, generator=g)
    k_cache, v_cache = (torch.randn(B, H, S, D, generator=g) for _ in range(2))
    return [t.to(device=device, dtype=dtype) for t in (q, k_cache, v_cache)]


def _assert_close(got, q, k_cache, v_cache, cache_len, floor):
    """Error-ratio tolerance against an fp32 reference, as in STYLE.md."""
    ref32 = decode_attention_ref(q.float(), k_cache.float(), v_cache.float(), cache_len)
    ref_lowp = decode_attention_ref(q, k_cache, v_cache, cache_len)
    err = (got.float() - ref32).abs().max().item()
    bound = 2 * (ref_lowp.float() - ref32).abs().max().item() + floor
    assert err <= bound, f"max err {err:.3g} > bound {bound:.3g}"


# cache_len < S (garbage past it must be ignored), not a multiple of the block; M = 1..16.
@pytest.mark.parametrize("splits", [None, 3])
@pytest.mark.parametrize("M,cache_len", [(1, 37), (5, 80), (16, 61), (1, 1)])
def test_decode_matches_reference(M, cache_len, splits):
    q, k_cache, v_cache = _inputs(2, 1, M, 80, 64, torch.float32)
    out = decode_attention_fn(q, k_cache, v_cache, cache_len, num_splits=splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    _assert_close(out, q, k_cache, v_cache, cache_len, 2e-5)


@pytest.mark.parametrize("D", [64, 128])
def test_decode_fp16(D):
    q, k_cache, v_cache = _inputs(1, 2, 4, 96, D, torch.float16, seed=1)
    _assert_close(decode_attention_fn(q, k_cache, v_cache, 70, num_splits=2), q, k_cache, v_cache, 70, 2e-3)


def test_decode_ignores_stale_cache_entries():
    q, k_cache, v_cache = _inputs(1, 1, 2, 64, 64, torch.float32, seed=2)
    out = decode_attention_fn(q, k_cache, v_cache, 33, num_splits=2)
    k_cache[:, :, 33:] = float("nan")
    v_cache[:, :, 33:] = float("nan")
    torch.testing.assert_close(decode_attention_fn(q, k_cache, v_cache, 33, num_splits=2), out)


def test_decode_with_grad_falls_back_to_differentiable_path():
    q, k_cache, v_cache = _inputs(1, 1, 3, 48, 64, torch.float32, seed=3)
    q.requires_grad_()
    out = decode_attention_fn(q, k_cache, v_cache, 40)
    (g,) = torch.autograd.grad(out.sum(), q)
    qr = q.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(decode_attention_ref(qr, k_cache, v_cache, 40).sum(), qr)
    torch.testing.assert_close(g, gr, atol=1e-5, rtol=1e-5)


def test_decode_bad_cache_len_raises():
    q, k_cache, v_cache = _inputs(1, 1, 1, 16, 64, torch.float32)
    for bad in (0, 17):
        with pytest.raises(ValueError, match="cache_len"):
            decode_attention_fn(q, k_cache, v_cache, bad)


def test_decode_plan_covers_cache():
    for cache_len in (1, 37, 65536):
        splits, size = _decode_plan(16, cache_len, 64, torch.device("cpu"), 7)
        assert size % 64 == 0 and (splits - 1) * size < cache_len <= splits * size


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("M,cache_len", [(1, 8191), (4, 5000), (16, 12345)])
def test_gpu_decode(M, cache_len, D, dtype):
    q, k_cache, v_cache = _inputs(2, 4, M, 16384, D, dtype, device="cuda")
    out = decode_attention_fn(q, k_cache, v_cache, cache_len)
    _assert_close(out, q, k_cache, v_cache, cache_len, 1e-3)
