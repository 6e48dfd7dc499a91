"""Triton cross/self attention vs kernels.reference: outputs, lse and gradients.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (fp32/fp16 only: the
interpreter's bf16 tl.dot is wrong), so TRITON_INTERPRET must be set before the kernel module is
decorated. With CUDA the same small cases run compiled on the GPU, plus the bf16/fp16 GPU tests.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from kernels import cross_attention as ca  # noqa: E402
from kernels.reference import (  # noqa: E402
    attention_lse_ref,
    causal_cross_attention_ref,
    causal_self_attention_ref,
)

DEVICE = "cpu" if ca.INTERPRET else "cuda"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() or ca.INTERPRET, reason="needs CUDA (compiled Triton)")
# Absolute floor added to the error-ratio bound (relative to the reference's magnitude).
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _inputs(B, H, N, T, D, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (N, T, T))
    do = torch.randn(B, H, N, D, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]


def _run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of fn, with fresh leaves."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), grads


def _assert_close(name, got, ref32, ref_lowp, dtype):
    """Error-ratio tolerance of STYLE.md: |got - ref32| <= 2 |ref_lowp - ref32| + floor."""
    err = (got.float() - ref32).abs().max().item()
    base = (ref_lowp.float() - ref32).abs().max().item()
    bound = 2 * base + FLOOR[dtype] * max(1.0, ref32.abs().max().item())
    assert err <= bound, f"{name}: max err {err:.3g} > bound {bound:.3g} (torch low-precision err {base:.3g})"


def _check_against_reference(q, k, v, do, ref_fn=causal_cross_attention_ref, **kw):
    out, grads = _run(ca.causal_cross_attention_fn, q, k, v, do, **kw)
    out32, grads32 = _run(ref_fn, *(t.float() for t in (q, k, v, do)))
    outl, gradsl = _run(ref_fn, q, k, v, do)
    _assert_close("out", out, out32, outl, q.dtype)
    for name, g, g32, gl in zip(("dq", "dk", "dv"), grads, grads32, gradsl):
        assert g.shape == g32.shape and g.dtype == q.dtype
        _assert_close(name, g, g32, gl, q.dtype)


def _shape_id(s):
    return "B{}H{}N{}T{}".format(*s)


# (B, H, N, T): N and T not multiples of the block (16 in the interpreter), N = 1, B*H = 1, T == N.
SHAPES = [(1, 1, 1, 40), (1, 2, 17, 40), (2, 1, 17, 130), (1, 1, 40, 77), (1, 2, 40, 40)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_matches_reference(shape, D, dtype):
    _check_against_reference(*_inputs(*shape, D, dtype), num_splits=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("shape", [(1, 1, 1, 77), (2, 1, 17, 130), (1, 1, 40, 40)], ids=_shape_id)
def test_split_kv_matches_reference(shape, splits, dtype):
    # Forced splits: some are wholly above the diagonal for early query blocks (empty, lse = -inf).
    _check_against_reference(*_inputs(*shape, 64, dtype, seed=1), num_splits=splits)


@pytest.mark.parametrize("splits", [1, 3])
def test_module_knob_forces_split(monkeypatch, splits):
    monkeypatch.setattr(ca, "FORCE_NUM_SPLITS", splits)
    assert ca._split_plan(1, 1, 130, torch.device(DEVICE), None)[0] == splits
    _check_against_reference(*_inputs(1, 1, 17, 130, 64, torch.float32, seed=2))


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1, 40), (2, 1, 17, 130), (1, 2, 40, 40)], ids=_shape_id)
def test_lse_matches_reference(shape, splits):
    q, k, v, _ = _inputs(*shape, 64, torch.float32, seed=3)
    out, lse = ca.causal_cross_attention_lse(q, k, v, num_splits=splits)
    assert lse.dtype == torch.float32 and lse.shape == shape[:3]
    torch.testing.assert_close(lse, attention_lse_ref(q, k), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, causal_cross_attention_ref(q, k, v), atol=1e-5, rtol=1e-5)


def test_self_attention_matches_reference():
    q, k, v, do = _inputs(1, 2, 33, 33, 64, torch.float32, seed=4)
    out, grads = _run(ca.causal_self_attention_fn, q, k, v, do)
    ref, grads_ref = _run(causal_self_attention_ref, q, k, v, do)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="as many keys"):
        ca.causal_self_attention_fn(q, k[:, :, :-1], v[:, :, :-1])


def test_custom_scale():
    q, k, v, do = _inputs(1, 1, 17, 40, 64, torch.float32, seed=5)
    out, grads = _run(ca.causal_cross_attention_fn, q, k, v, do, scale=0.3)
    ref, grads_ref = _run(causal_cross_attention_ref, q, k, v, do, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, atol=1e-4, rtol=1e-4)


def test_unsupported_head_dim_is_padded():
    # D = 40 runs zero-padded to 64, with the default scale of the true D.
    _check_against_reference(*_inputs(1, 1, 17, 40, 40, torch.float32, seed=6))
    assert ca.padded_head_dim(40) == 64 and ca.padded_head_dim(100) == 128 and ca.padded_head_dim(128) == 128


def test_too_large_head_dim_raises():
    q, k, v, _ = _inputs(1, 1, 3, 5, 192, torch.float32)
    with pytest.raises(ValueError, match="head dim 192"):
        ca.causal_cross_attention_fn(q, k, v)


def test_bad_shapes_raise():
    q, k, v, _ = _inputs(1, 1, 17, 9, 64, torch.float32)  # T < N has no bottom-right meaning here
    with pytest.raises(ValueError, match="at least as many keys"):
        ca.causal_cross_attention_fn(q, k, v)
    q, k, v, _ = _inputs(1, 1, 5, 9, 64, torch.float32)
    with pytest.raises(ValueError, match="dtypes differ"):
        ca.attention_forward(q, k.half(), v.half())


def test_non_contiguous_inputs():
    # (B, T, H, D) storage viewed as (B, H, T, D), the layout a fused QKV projection gives.
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, n, 2, 64, generator=g).to(DEVICE).transpose(1, 2) for n in (17, 40, 40))
    do = torch.randn(2, 17, 2, 64, generator=g).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    out, grads = _run(ca.causal_cross_attention_fn, q, k, v, do)
    ref, grads_ref = _run(causal_cross_attention_ref, q, k, v, do)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g_, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g_, gr, atol=1e-4, rtol=1e-4)


def test_inference_builds_no_graph():
    q, k, v, _ = _inputs(1, 1, 17, 40, 64, torch.float32)
    assert ca.causal_cross_attention_fn(q, k, v).grad_fn is None
    q.requires_grad_()
    with torch.no_grad():
        assert ca.causal_cross_attention_fn(q, k, v).grad_fn is None
    assert ca.causal_cross_attention_fn(q, k, v).grad_fn is not None


def test_backward_is_deterministic():
    q, k, v, do = _inputs(1, 1, 17, 130, 64, torch.float32, seed=8)
    _, g1 = _run(ca.causal_cross_attention_fn, q, k, v, do, num_splits=3)
    _, g2 = _run(ca.causal_cross_attention_fn, q, k, v, do, num_splits=3)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_misaligned_splits_are_rejected():
    # Split boundaries not on BLOCK_N would let mid fall off the block grid: the launcher refuses a
    # split_size off its alignment, and the kernel refuses an alignment that BLOCK_N does not divide.
    q, k, v, _ = _inputs(1, 1, 16, 40, 64, torch.float32)
    raw = dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    with pytest.raises(ValueError, match="not a multiple of split_align"):
        ca.launch_forward(q, k, v, 0.1, 2, 24, 16, ca.attn_fwd_kernel, lambda meta: 1, **raw)
    with pytest.raises(Exception, match="multiples of BLOCK_N"):
        ca.launch_forward(q, k, v, 0.1, 5, 8, 8, ca.attn_fwd_kernel, lambda meta: 1, **raw)
    out, _ = ca.launch_forward(q, k, v, 0.1, 3, 16, 16, ca.attn_fwd_kernel, lambda meta: 1, **raw)
    torch.testing.assert_close(out, causal_cross_attention_ref(q, k, v, 0.1), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# GPU: bf16/fp16 at larger shapes, split-KV on (heuristic at B*H = 2) and off, error-ratio tolerance
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("splits", [None, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("shape", [(1, 2, 256, 4100), (2, 3, 333, 1000), (1, 2, 1, 3000), (2, 2, 500, 500)],
                         ids=_shape_id)
def test_gpu_matches_reference(shape, D, dtype, splits):
    _check_against_reference(*_inputs(*shape, D, dtype, device="cuda"), num_splits=splits)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_lse(dtype):
    q, k, v, _ = _inputs(2, 4, 300, 2000, 128, dtype, device="cuda")
    for splits in (1, 4):
        _, lse = ca.causal_cross_attention_lse(q, k, v, num_splits=splits)
        torch.testing.assert_close(lse, attention_lse_ref(q, k), atol=2e-2, rtol=1e-3)
