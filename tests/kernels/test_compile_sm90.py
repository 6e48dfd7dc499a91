"""Compile the Triton kernels for an H100/H200 (sm_90) without a GPU: lowering, shared memory, spills.

The interpreter tests check the numerics but never run Triton's compiler; these catch what only
compiled mode rejects (loop-carried type changes, bad constexpr use), check that the forward is
lowered to Hopper wgmma with pipelined (async-copy) loads, and that the autotune configs fit in
the 227 KB of shared memory of a block and do not spill registers (``kernels.compile_sm90``).
The compiler runs in a subprocess because this test process may have decorated the kernels for
the interpreter. The default suite compiles a representative subset (fp16 at D = 128, where every
spill seen so far was); ``-m slow`` compiles every config in every dtype at both head dims.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels import cross_attention as ca  # noqa: E402
from kernels.compile_sm90 import SMEM_LIMIT  # noqa: E402  (imports no kernel)

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "benchmarks" / "results" / "compile_sm90.json"


def _python(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    try:
        import triton.backends.nvidia  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _sweep(tmp_path, *args: str) -> tuple[int, list[dict]]:
    out = tmp_path / "table.json"
    proc = _python(["-m", "kernels.compile_sm90", *args, "--out", str(out)])
    assert out.exists(), proc.stderr[-4000:]
    return proc.returncode, json.loads(out.read_text())["configs"]


def _assert_fit_without_spills(records: list[dict]) -> None:
    assert records
    errors = [r for r in records if "error" in r]
    assert not errors, errors
    over = [r for r in records if r["shared"] > SMEM_LIMIT]
    assert not over, f"over the 227 KB of shared memory: {over}"
    spills = [r for r in records if r["spill_stores"] or r["spill_loads"]]
    assert not spills, f"configs that spill registers: {spills}"


_LOWERING = r"""
from kernels import cross_attention as ca
from kernels.compile_sm90 import compile_for_sm90

D = 128
io = {n: "*bf16" for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}
f32 = {n: "*fp32" for n in ("LSE", "DELTA", "OP", "LSEP")} | {"qk_scale": "fp32", "sm_scale": "fp32"}
blocks = {"HEAD_DIM": D, "BLOCK_M": 128, "BLOCK_N": 64, "PREC": "tf32", "SPLIT_ALIGN": ca.SPLIT_ALIGN}
fwd, _ = compile_for_sm90(ca.attn_fwd_kernel, io | f32, dict(blocks), num_warps=8, num_stages=3)
assert "wgmma.mma_async" in fwd.asm["ptx"], "forward not lowered to wgmma"
assert "async_copy_global_to_local" in fwd.asm["ttgir"], "forward K/V loads not pipelined"
try:  # the split alignment must be a multiple of BLOCK_N: refused at compile time
    compile_for_sm90(ca.attn_fwd_kernel, io | f32, dict(blocks, SPLIT_ALIGN=32), num_warps=8, num_stages=3)
except Exception as exc:
    assert "multiples of BLOCK_N" in repr(exc) or "multiples of BLOCK_N" in str(exc.__cause__), repr(exc)
else:
    raise AssertionError("a split alignment of 32 with BLOCK_N = 64 compiled")
print("ok")
"""


def test_forward_lowers_to_wgmma_and_checks_split_alignment():
    proc = _python(["-c", _LOWERING], timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]


def test_representative_configs_fit_without_spills(tmp_path):
    # Every autotune config of the forward, dq and dk/dv kernels in fp16 at D = 128 (bf16 compiles to
    # the same registers and shared memory), plus the decode, combine and preprocess launches.
    rc, records = _sweep(tmp_path, "--dtypes", "fp16", "--head-dims", "128",
                         "--kernels", "fwd,dq,dkdv,decode,combine,preprocess")
    assert rc == 0
    expected = sum(len(ca.GPU_TILES[f][("16bit", 128)]) for f in ("fwd", "dq", "dkdv"))
    assert len([r for r in records if r["kernel"] in ("fwd", "dq", "dkdv")]) == expected
    _assert_fit_without_spills(records)


def test_shared_memory_limit_is_enforced(tmp_path):
    # A dq tile of 128 x 128 with 3 stages at D = 128 asks for 256 KB: reported and a failing exit code.
    rc, records = _sweep(tmp_path, "--dtypes", "bf16", "--head-dims", "128", "--kernels", "dq",
                         "--tiles", "128x128x8x3")
    assert rc == 1 and len(records) == 1
    assert records[0]["shared"] > SMEM_LIMIT and records[0]["smem_ok"] is False


def test_autotuner_offers_each_launch_its_own_tiles(monkeypatch):
    # Without a GPU the autotuner is built for the interpreter; build the GPU one and ask its pruner.
    monkeypatch.setattr(ca, "INTERPRET", False)
    kernels = {"fwd": ca.attn_fwd_kernel, "dq": ca.bwd_dq_kernel, "dkdv": ca.bwd_dkdv_kernel}
    for family, kernel in kernels.items():
        tuner = ca._autotune(family)(kernel)
        for (width, D), tiles in ca.GPU_TILES[family].items():
            for dtype in ((torch.float32,) if width == "fp32" else (torch.bfloat16, torch.float16)):
                chosen = tuner.early_config_prune(tuner.configs, {"Q": torch.empty(0, dtype=dtype)}, HEAD_DIM=D)
                got = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in chosen]
                assert got == tiles, (family, dtype, D)


def test_recorded_table_covers_the_configs():
    # benchmarks/results/compile_sm90.json is the measured table of the configs in the code: a tile
    # added without re-running `python -m kernels.compile_sm90 --dtypes bf16,fp16,fp32` fails here.
    table = json.loads(TABLE.read_text())
    recorded = {(r["kernel"], "fp32" if r["dtype"] == "fp32" else "16bit", r["D"],
                 (r["BLOCK_M"], r["BLOCK_N"], r["num_warps"], r["num_stages"])) for r in table["configs"]}
    for family, by_key in ca.GPU_TILES.items():
        for (width, D), tiles in by_key.items():
            for tile in tiles:
                assert (family, width, D, tile) in recorded, f"{family} {width} D={D} {tile} not in {TABLE.name}"
    assert {r["dtype"] for r in table["configs"]} == {"bf16", "fp16", "fp32"}
    _assert_fit_without_spills(table["configs"])


@pytest.mark.slow
def test_every_config_fits_without_spills(tmp_path):
    rc, records = _sweep(tmp_path, "--dtypes", "bf16,fp16,fp32")
    assert rc == 0
    _assert_fit_without_spills(records)
