"""Compile every Triton kernel for an H100 (sm_90) without a GPU.

The interpreter tests check the numerics but never run Triton's compiler; this catches what only
compiled mode rejects (loop-carried type changes, bad constexpr use) and checks that the attention
forward is lowered to Hopper wgmma with pipelined (async-copy) loads. It runs the compiler in a
subprocess because this test process may have decorated the kernels for the interpreter.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import cross_attention as ca

TARGET = GPUTarget("cuda", 90, 32)


def compile_(fn, types, consts, **opts):
    # What a launch on contiguous tensors specialises: unit feature strides, 16-divisible pointers/strides.
    sig, attrs = {}, {}
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            continue
        if name.startswith("stride") and name.endswith("d"):
            sig[name], consts[name] = "constexpr", 1
            continue
        sig[name] = types.get(name, "i32")
        if sig[name].startswith("*") or name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=TARGET, options=opts)


dt, D = "bf16", 128
io = {n: "*" + dt for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}
f32 = {n: "*fp32" for n in ("LSE", "DELTA", "OP", "LSEP")} | {"qk_scale": "fp32", "sm_scale": "fp32"}
blocks = {"HEAD_DIM": D, "BLOCK_M": 128, "BLOCK_N": 64, "PREC": "tf32", "SPLIT_ALIGN": 128}
fwd = compile_(ca.attn_fwd_kernel, io | f32, dict(blocks), num_warps=8, num_stages=3)
ttgir, ptx = fwd.asm["ttgir"], fwd.asm["ptx"]
assert "wgmma.mma_async" in ptx, "forward not lowered to wgmma"
assert "async_copy_global_to_local" in ttgir, "forward K/V loads not pipelined"
compile_(ca.attn_fwd_kernel, io | f32 | {"O": "*fp32"}, dict(blocks, BLOCK_M=16), num_warps=4, num_stages=3)
compile_(ca.combine_kernel, io | f32, {"HEAD_DIM": D, "BLOCK_M": 32})
compile_(ca.bwd_preprocess_kernel, io | f32, {"HEAD_DIM": D, "BLOCK_M": 64})
compile_(ca.bwd_dkdv_kernel, io | f32, dict(blocks, BLOCK_M=64, BLOCK_N=128), num_warps=8, num_stages=2)
compile_(ca.bwd_dq_kernel, io | f32 | {"DQ": "*fp32"}, dict(blocks), num_warps=8, num_stages=2)
print("ok")
"""


def test_kernels_compile_for_sm90():
    try:
        import triton.backends.nvidia  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
