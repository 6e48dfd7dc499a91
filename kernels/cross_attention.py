"""Fused bottom-right causal cross-attention in Triton (Perceiver AR), forward and backward.

Shapes: q (B, H, N, D) for the last N positions, k/v (B, H, T, D), T >= N; query i may see
key j <= T - N + i (``diag = T - N``). Self-attention is the same kernel with T == N.

Layout of this file (reference -> configs -> kernels -> launchers -> autograd -> public):
  * reference: ``kernels.reference.causal_cross_attention_ref`` / ``attention_lse_ref``.
  * ``attn_fwd_kernel``: one program per (query block, batch*head, key split). Online softmax in
    base 2; writes the output and the natural-log log-sum-exp (fp32), or, when the key range is
    split (split-KV, for small B*H*ceil(N/BLOCK_M) next to the SM count), a normalised fp32
    partial output and its lse that ``combine_kernel`` merges. Key blocks wholly visible to the
    whole query block run without a mask; blocks above the diagonal are never loaded.
  * backward: ``bwd_preprocess_kernel`` (delta = rowsum(dO * O)), ``bwd_dkdv_kernel`` (one program
    per key block, loops over the query blocks that see it) and ``bwd_dq_kernel`` (one program per
    query block and key split; splits summed in a fixed order, so the backward is deterministic).
  * ``causal_cross_attention_fn`` / ``causal_self_attention_fn``: autograd-aware public entries.

Head dims 64 and 128 run natively; smaller ones are zero-padded to the next of those (zero
columns change neither q.k nor the kept output columns); larger ones raise ValueError.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.reference import _check

# Triton decides at decoration time whether @triton.jit runs compiled or interpreted.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_HEAD_DIMS = (64, 128)
# Test/debug knob: force this many key splits in the forward and the dq pass (None: heuristic).
FORCE_NUM_SPLITS: int | None = None

_LOG2E = 1.4426950408889634  # the kernels spell out log2(e) and ln(2) as literals (globals must be constexpr)
# Split boundaries are multiples of this many keys, so any BLOCK_N in the configs divides them.
SPLIT_ALIGN = 16 if INTERPRET else 128
# BLOCK_M of the two kernels that are not autotuned (launched with Triton's default warps/stages).
COMBINE_BLOCK_M = 16 if INTERPRET else 32
PREPROCESS_BLOCK_M = 16 if INTERPRET else 64
# Don't split the keys finer than this (the combine step then costs more than it buys).
_MIN_KEYS_PER_SPLIT = 1024


def _fix_interpreter_scalar_index() -> None:
    """Make ``range(lo, hi)`` over runtime scalars work in the interpreter with numpy >= 2.4.

    The interpreter keeps scalars as shape-(1,) arrays and its ``__index__`` calls ``int()`` on
    them, which numpy 2.4 rejects (triton-lang/triton#9171, fixed upstream by #9172 after 3.6).
    We wrap the patch it applies per launch and install the upstream fix.
    """
    from triton.runtime import interpreter  # noqa: PLC0415

    original = interpreter._patch_lang_tensor
    if getattr(original, "_perceiverar_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._perceiverar_fixed = True
    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _fix_interpreter_scalar_index()


# ----------------------------------------------------------------------------------------------
# autotune configs: under the interpreter a single small config (autotuning there is slow and
# pointless); on the GPU a handful per input width and head dim, keyed on the head dim and
# power-of-two buckets of N and T so that a prefill with a new length does not retune.
# ----------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per autotuned kernel, input width and head dim; BLOCK_M
# <= 128 and BLOCK_N <= SPLIT_ALIGN. For dk/dv BLOCK_N is the key block a program owns and BLOCK_M
# the query block it loops over. Every one compiles for sm_90 within the 227 KB of shared memory a
# block may have and without spilling registers: ``python -m kernels.compile_sm90`` measures them
# (benchmarks/results/compile_sm90.json; tests/kernels/test_compile_sm90.py checks). Pruned as
# measured (Triton 3.6): 16-bit tiles that spilled, at D = 128 the 4-warp 128-row forward and dq
# tiles (120-616 B of spill stores), 64x128 and 128x128 dq (4-96 B) and the dk/dv tiles of 64 rows
# or 4 warps (64-2,252 B), at D = 64 the 128x64x4 dq and 32x128x4 dk/dv tiles (28-120 B). fp32
# inputs use ieee products on CUDA cores: the 16-bit tiles kept 0.8-32 KB stack frames of spills
# there and four forward tiles at D = 128 asked for 240-384 KB of shared memory; only 8-warp tiles
# of at most 32 x 64 (and 32x32x4 for dq) compile without spilling.
GPU_TILES: dict[str, dict[tuple[str, int], list[tuple[int, int, int, int]]]] = {
    "fwd": {
        ("16bit", 64): [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 4),
                        (128, 64, 4, 4)],
        ("16bit", 128): [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 4)],
        ("fp32", 64): [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 64, 8, 2)],
        ("fp32", 128): [(32, 64, 8, 2), (16, 64, 8, 2), (16, 32, 8, 2)],
    },
    "dq": {
        ("16bit", 64): [(128, 64, 8, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 128, 8, 2)],
        ("16bit", 128): [(128, 64, 8, 2), (128, 64, 8, 4), (64, 64, 4, 3), (64, 64, 8, 3), (32, 128, 8, 2)],
        ("fp32", 64): [(32, 64, 8, 2), (32, 32, 4, 2)],
        ("fp32", 128): [(32, 64, 8, 2), (32, 32, 4, 2)],
    },
    "dkdv": {
        ("16bit", 64): [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 4)],
        ("16bit", 128): [(32, 128, 8, 2), (32, 128, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3), (32, 64, 4, 4)],
        ("fp32", 64): [(32, 32, 8, 2), (16, 32, 8, 2), (16, 64, 8, 2), (32, 32, 8, 1)],
        ("fp32", 128): [(16, 32, 8, 2)],
    },
}


def tile_key(dtype: torch.dtype, head_dim: int) -> tuple[str, int]:
    """The GPU_TILES key of inputs of this dtype and (padded) head dim."""
    return ("fp32" if dtype == torch.float32 else "16bit", int(head_dim))


_KEY = ["HEAD_DIM", "N_BUCKET", "T_BUCKET"]


def _autotune(family: str):
    """triton.autotune over every tile of ``family``; each launch benchmarks only its own (width, D) list."""
    if INTERPRET:
        return triton.autotune(configs=[triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)],
                               key=_KEY)
    configs = {}
    for tiles in GPU_TILES[family].values():
        for m, n, w, s in tiles:
            configs.setdefault((m, n, w, s), triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s))

    def prune(all_configs, named_args, **kwargs):
        return [configs[t] for t in GPU_TILES[family][tile_key(named_args["Q"].dtype, kwargs["HEAD_DIM"])]]

    # The autotuner's cache key includes the argument dtypes, so fp32 and 16-bit inputs tune apart.
    return triton.autotune(configs=list(configs.values()), key=_KEY, prune_configs_by={"early_config_prune": prune})


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi, rows, cols, diag, T, qk_scale,
               MASK: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """Online softmax over key blocks [lo, hi); scores in base 2 (qk_scale includes log2 e)."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + cols
        if MASK:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=keys[:, None] < T, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=keys[:, None] < T, other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASK:
            # keys >= T are masked too: for a real row i, diag + i <= T - 1.
            qk = tl.where(keys[None, :] <= diag + rows[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite, so a fully masked row stays NaN-free
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_range(pid_s, m0, N, T, split_size, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               SPLIT_ALIGN: tl.constexpr):
    """Keys [lo, hi) that split ``pid_s`` gives the query block of rows [m0, m0 + BLOCK_M), and mid.

    Keys at or past ``diag + m0 + BLOCK_M`` (diag = T - N) are invisible to every row of the block,
    so hi stops there: blocks above the diagonal are never loaded. Keys < ``diag + m0 + 1`` are
    visible to every row, so whole BLOCK_N blocks in [lo, mid) run without a mask and [mid, hi)
    with it. mid stays BLOCK_N-aligned from lo: if hi < diag + m0 + 1 then hi = lo + split_size,
    which the launcher makes a multiple of SPLIT_ALIGN, itself a multiple of BLOCK_N.
    """
    tl.static_assert(SPLIT_ALIGN % BLOCK_N == 0, "split boundaries must be multiples of BLOCK_N")
    diag = T - N
    kv_end = tl.minimum(T, diag + m0 + BLOCK_M)
    lo = pid_s * split_size
    hi = tl.minimum(lo + split_size, kv_end)
    full_end = diag + m0 + 1
    mid = tl.maximum(lo, tl.minimum(hi, lo + (full_end - lo) // BLOCK_N * BLOCK_N))
    return lo, mid, hi


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O, LSE, qk_scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od, stride_os,  # stride_os: per key split (0 if unsplit)
    stride_lb, stride_lh, stride_ln, stride_ls,
    H, N, T, split_size, N_BUCKET, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
    SPLIT_ALIGN: tl.constexpr,  # split_size is a multiple of this
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)

    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
                mask=rows[:, None] < N, other=0.0)
    k_ptrs = K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + dims[None, :] * stride_vd

    diag = T - N
    lo, mid, hi = _key_range(pid_s, m0, N, T, split_size, BLOCK_M, BLOCK_N, SPLIT_ALIGN)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, mid, rows, cols, diag, T,
                               qk_scale, MASK=False, BLOCK_N=BLOCK_N, PREC=PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, mid, hi, rows, cols, diag, T,
                               qk_scale, MASK=True, BLOCK_N=BLOCK_N, PREC=PREC)

    # A split can hold no visible key for some rows (l = 0): output 0, lse -inf, ignored by the combine.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    o_ptrs = (O + pid_s * stride_os + b * stride_ob + h * stride_oh
              + rows[:, None] * stride_on + dims[None, :] * stride_od)
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=rows[:, None] < N)
    tl.store(LSE + pid_s * stride_ls + b * stride_lb + h * stride_lh + rows * stride_ln, lse, mask=rows < N)


_attn_fwd_tuned = _autotune("fwd")(attn_fwd_kernel)


@triton.jit
def combine_kernel(
    OP, LSEP, O, LSE, num_splits, stride_ps, stride_pls,  # split strides of OP and LSEP
    stride_ob, stride_oh, stride_on, stride_od,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Merge per-split (out, lse): out = sum_s exp(lse_s - lse) out_s, lse = logsumexp_s lse_s.

    OP: (S, B*H, N, D) fp32 contiguous, LSEP: (S, B*H, N) fp32; LSE: (B*H, N) fp32.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < N
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for s in range(0, num_splits):
        lse_s = tl.load(LSEP + s * stride_pls + pid_bh * N + rows, mask=row_ok, other=float("-inf"))
        o_s = tl.load(OP + s * stride_ps + pid_bh * N * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :],
                      mask=row_ok[:, None], other=0.0)
        m_new = tl.maximum(m, lse_s)
        alpha = tl.exp(m - m_new)
        w = tl.exp(lse_s - m_new)
        acc = acc * alpha[:, None] + w[:, None] * o_s
        l = l * alpha + w
        m = m_new
    l_safe = tl.where(l == 0.0, 1.0, l)
    out = acc / l_safe[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + dims[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + pid_bh * N + rows, m + tl.log(l_safe), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_db, stride_dh, stride_dn, stride_dd,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[i] = sum_d dO[i, d] * O[i, d] in fp32, (B*H, N)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    mask = rows[:, None] < N
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + dims[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn + dims[None, :] * stride_dd,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * N + rows, delta, mask=rows < N)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, stride_qn, stride_don, LSE_row, DELTA_row, lo, hi, rows0, keys,
                diag, N, qk_scale, MASK: tl.constexpr, BLOCK_M: tl.constexpr, PREC: tl.constexpr):
    """Accumulate dk, dv of one key block over query blocks [lo, hi). Works transposed: (BLOCK_N, BLOCK_M).

    Padded rows (>= N) load q = dO = lse = delta = 0, so they add exactly nothing.
    """
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + rows0
        row_ok = rows < N
        q = tl.load(q_ptrs + start_m * stride_qn, mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptrs + start_m * stride_don, mask=row_ok[:, None], other=0.0)
        lse2 = tl.load(LSE_row + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA_row + rows, mask=row_ok, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
        pT = tl.exp2(qkT - lse2[None, :])
        if MASK:
            pT = tl.where(keys[:, None] <= diag + rows[None, :], pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)
    return dk, dv


@triton.jit
def bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, N, T, N_BUCKET, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    n0 = pid_n * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    rows0 = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    key_ok = keys[:, None] < T
    k = tl.load(K + b * stride_kb + h * stride_kh + keys[:, None] * stride_kn + dims[None, :] * stride_kd,
                mask=key_ok, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                mask=key_ok, other=0.0)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows0[:, None] * stride_qn + dims[None, :] * stride_qd
    do_ptrs = DO + b * stride_dob + h * stride_doh + rows0[:, None] * stride_don + dims[None, :] * stride_dod
    LSE_row = LSE + pid_bh.to(tl.int64) * N
    DELTA_row = DELTA + pid_bh.to(tl.int64) * N

    diag = T - N
    # Row i sees key j iff j <= diag + i: the first query block that sees any key here, and the
    # first from which every row sees the whole key block (no mask needed from there on).
    q_lo = tl.maximum(0, n0 - diag) // BLOCK_M * BLOCK_M
    q_full = (tl.maximum(0, n0 + BLOCK_N - 1 - diag) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    q_mid = tl.minimum(q_full, N)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, stride_qn, stride_don, LSE_row, DELTA_row, q_lo, q_mid,
                         rows0, keys, diag, N, qk_scale, MASK=True, BLOCK_M=BLOCK_M, PREC=PREC)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, stride_qn, stride_don, LSE_row, DELTA_row, q_full, N,
                         rows0, keys, diag, N, qk_scale, MASK=False, BLOCK_M=BLOCK_M, PREC=PREC)
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + keys[:, None] * stride_dkn + dims[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + b * stride_dvb + h * stride_dvh + keys[:, None] * stride_dvn + dims[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=key_ok)


_bwd_dkdv_tuned = _autotune("dkdv")(bwd_dkdv_kernel)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi, rows, cols, diag, T, qk_scale,
              MASK: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + cols
        if MASK:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=keys[:, None] < T, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=keys[:, None] < T, other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.exp2(qk - lse2[:, None])
        if MASK:
            p = tl.where(keys[None, :] <= diag + rows[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq


@triton.jit
def bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd, stride_dqs,  # stride_dqs: per key split (0 if unsplit)
    H, N, T, split_size, N_BUCKET, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
    SPLIT_ALIGN: tl.constexpr,  # split_size is a multiple of this
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < N
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don + dims[None, :] * stride_dod,
                 mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * N + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + rows, mask=row_ok, other=0.0)
    k_ptrs = K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + dims[None, :] * stride_vd

    diag = T - N
    lo, mid, hi = _key_range(pid_s, m0, N, T, split_size, BLOCK_M, BLOCK_N, SPLIT_ALIGN)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dq = _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, mid, rows, cols, diag, T,
                   qk_scale, MASK=False, BLOCK_N=BLOCK_N, PREC=PREC)
    dq = _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, mid, hi, rows, cols, diag, T,
                   qk_scale, MASK=True, BLOCK_N=BLOCK_N, PREC=PREC)
    dq = dq * sm_scale
    tl.store(DQ + pid_s * stride_dqs + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqn
             + dims[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


_bwd_dq_tuned = _autotune("dq")(bwd_dq_kernel)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (as torch.matmul does by default), not tf32.
    return "ieee" if dtype == torch.float32 else "tf32"


def check_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    _check(q, k, v)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"unsupported dtype {q.dtype}; use float16, bfloat16 or float32")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} not in {SUPPORTED_HEAD_DIMS} (the public functions pad)")
    if not q.is_cuda and not INTERPRET:
        raise RuntimeError("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def _split_plan(bh: int, n_query_blocks: int, T: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """(splits, split_size): how many programs share one query block's key range, and keys per split.

    Split only when the plain grid would not fill the GPU: B*H*ceil(N/128) programs next to the SM
    count. Forced by ``num_splits`` or the module knob ``FORCE_NUM_SPLITS`` (tests, ``bench --splits``).
    The thresholds are a first guess, to be tuned on the GPU with ``python -m kernels.bench --splits``.
    """
    forced = num_splits if num_splits is not None else FORCE_NUM_SPLITS
    if forced is not None:
        splits = max(1, int(forced))
    elif device.type != "cuda":
        splits = 1
    else:
        sms = num_sms(device.index if device.index is not None else torch.cuda.current_device())
        programs = bh * n_query_blocks
        # A 128-row program holds one SM's shared memory (the FA2 regime), so ~one program per SM is a
        # full GPU; below that, split the keys to get back to about one wave.
        if programs >= 0.75 * sms:
            splits = 1
        else:
            splits = min(max(1, round(sms / programs)), max(1, T // _MIN_KEYS_PER_SPLIT))
    split_size = triton.cdiv(triton.cdiv(T, splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(T, split_size), split_size


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def launch_forward(q, k, v, scale, splits, split_size, split_align, kernel, grid_m, **meta):
    """Run ``kernel`` (tuned or raw) over (query blocks, B*H, splits) and combine if split.

    ``split_size`` must be a multiple of ``split_align``, and that of every BLOCK_N the kernel may
    use (the kernel asserts the latter at compile time). ``grid_m(META)`` gives the number of query
    blocks; ``meta`` holds explicit constexprs for a raw kernel (the decode launcher).
    Returns out (B, H, N, D) in q's dtype and lse (B, H, N) fp32.
    """
    if split_size % split_align:
        raise ValueError(f"split_size {split_size} is not a multiple of split_align {split_align}")
    B, H, N, D = q.shape
    T = k.shape[2]
    out = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    if splits == 1:
        o_buf, l_buf = out, lse
        o_strides = (*_strides4(out), 0)
        l_strides = (*lse.stride(), 0)
    else:
        o_buf = torch.empty((splits, B, H, N, D), device=q.device, dtype=torch.float32)
        l_buf = torch.empty((splits, B, H, N), device=q.device, dtype=torch.float32)
        o_strides = (*o_buf.stride()[1:], o_buf.stride(0))
        l_strides = (*l_buf.stride()[1:], l_buf.stride(0))
    kernel[lambda META: (grid_m(META), B * H, splits)](
        q, k, v, o_buf, l_buf, scale * _LOG2E,
        *_strides4(q), *_strides4(k), *_strides4(v), *o_strides, *l_strides,
        H, N, T, split_size, _bucket(N), _bucket(T),
        HEAD_DIM=D, PREC=_precision(q.dtype), SPLIT_ALIGN=split_align, **meta,
    )
    if splits > 1:
        combine_kernel[(triton.cdiv(N, COMBINE_BLOCK_M), B * H)](
            o_buf, l_buf, out, lse, splits, o_buf.stride(0), l_buf.stride(0), *_strides4(out), H, N,
            HEAD_DIM=D, BLOCK_M=COMBINE_BLOCK_M,
        )
    return out, lse


def attention_forward(q, k, v, scale: float | None = None, *, num_splits: int | None = None):
    """Forward pass: out (B, H, N, D) and the natural-log lse (B, H, N) fp32. D must be 64 or 128."""
    check_supported(q, k, v)
    B, H, N, D = q.shape
    T = k.shape[2]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    splits, split_size = _split_plan(B * H, triton.cdiv(N, 128), T, q.device, num_splits)
    return launch_forward(q, k, v, scale, splits, split_size, SPLIT_ALIGN, _attn_fwd_tuned,
                          lambda META: triton.cdiv(N, META["BLOCK_M"]))


def attention_backward(do, q, k, v, out, lse, scale: float | None = None, *, num_splits: int | None = None):
    """Gradients (dq, dk, dv) given dO, the inputs, the forward output and its lse."""
    B, H, N, D = q.shape
    T = k.shape[2]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    prec = _precision(q.dtype)
    delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    bwd_preprocess_kernel[(triton.cdiv(N, PREPROCESS_BLOCK_M), B * H)](
        out, do, delta, *_strides4(out), *_strides4(do), H, N, HEAD_DIM=D, BLOCK_M=PREPROCESS_BLOCK_M,
    )
    lse = lse.contiguous()
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    _bwd_dkdv_tuned[lambda META: (triton.cdiv(T, META["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, scale * _LOG2E, scale,
        *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do), *_strides4(dk), *_strides4(dv),
        H, N, T, _bucket(N), _bucket(T), HEAD_DIM=D, PREC=prec,
    )
    splits, split_size = _split_plan(B * H, triton.cdiv(N, 128), T, q.device, num_splits)
    if splits == 1:
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        dq_buf, dq_strides = dq, (*_strides4(dq), 0)
    else:
        dq_buf = torch.empty((splits, B, H, N, D), device=q.device, dtype=torch.float32)
        dq_strides = (*dq_buf.stride()[1:], dq_buf.stride(0))
    _bwd_dq_tuned[lambda META: (triton.cdiv(N, META["BLOCK_M"]), B * H, splits)](
        q, k, v, do, lse, delta, dq_buf, scale * _LOG2E, scale,
        *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do), *dq_strides,
        H, N, T, split_size, _bucket(N), _bucket(T), HEAD_DIM=D, PREC=prec, SPLIT_ALIGN=SPLIT_ALIGN,
    )
    if splits > 1:
        dq = dq_buf.sum(0).to(q.dtype)  # fixed-order reduction: deterministic
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# autograd and public entries
# ----------------------------------------------------------------------------------------------


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, num_splits):
        out, lse = attention_forward(q, k, v, scale, num_splits=num_splits)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.num_splits = num_splits
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, out, lse, ctx.scale, num_splits=ctx.num_splits)
        return dq, dk, dv, None, None


def padded_head_dim(d: int) -> int:
    """The supported head dim a D is zero-padded to; ValueError above the largest."""
    for supported in SUPPORTED_HEAD_DIMS:
        if d <= supported:
            return supported
    raise ValueError(f"head dim {d} is not supported by the Triton kernels (at most {SUPPORTED_HEAD_DIMS[-1]})")


def causal_cross_attention_fn(q, k, v, scale: float | None = None, *, num_splits: int | None = None):
    """Bottom-right causal attention of q (B, H, N, D) into k, v (B, H, T, D), T >= N; returns (B, H, N, D).

    Differentiable in q, k, v. ``num_splits`` forces the number of key splits (None: heuristic).
    Inputs may be non-contiguous (strides are passed to the kernels).
    """
    _check(q, k, v)
    D = q.shape[-1]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)  # of the true D, before padding
    Dp = padded_head_dim(D)
    if Dp != D:
        q, k, v = (F.pad(t, (0, Dp - D)) for t in (q, k, v))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _CausalAttention.apply(q, k, v, scale, num_splits)
    else:  # inference: nothing saved
        out, _ = attention_forward(q, k, v, scale, num_splits=num_splits)
    return out[..., :D] if Dp != D else out


def causal_self_attention_fn(q, k, v, scale: float | None = None, *, num_splits: int | None = None):
    """Causal self-attention over (B, H, N, D): the cross-attention kernel with T == N."""
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"self-attention needs as many keys as queries, got N={q.shape[2]}, T={k.shape[2]}")
    return causal_cross_attention_fn(q, k, v, scale, num_splits=num_splits)


def causal_cross_attention_lse(q, k, v, scale: float | None = None, *, num_splits: int | None = None):
    """(out, lse) without autograd; lse (B, H, N) fp32 natural log, as attention_lse_ref. For tests/debugging."""
    _check(q, k, v)
    D = q.shape[-1]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    Dp = padded_head_dim(D)
    if Dp != D:
        q, k, v = (F.pad(t, (0, Dp - D)) for t in (q, k, v))
    with torch.no_grad():
        out, lse = attention_forward(q, k, v, scale, num_splits=num_splits)
    return (out[..., :D] if Dp != D else out), lse
