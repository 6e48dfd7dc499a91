"""Compile the attention kernels for Hopper (sm_90) without a GPU and report what each config costs.

    python -m kernels.compile_sm90                  # every launch config, bf16/fp16/fp32, D = 64 and 128 -> JSON
    python -m kernels.compile_sm90 --dtypes fp16 --head-dims 128 --out /tmp/t.json   # a subset
    python -m kernels.compile_sm90 --kernels fwd --dtypes bf16 --tiles 128x64x4x3,128x64x8x3   # try candidates

For every kernel launch config (each autotune config of the forward, dq and dk/dv kernels, and the
fixed configs of the decode, combine and preprocess launches), input dtype and head dim, Triton
compiles the kernel for sm_90 as a launch on contiguous tensors would specialise it, and ptxas
reports registers per thread, spill stores/loads and the stack frame; Triton's metadata gives the
shared memory the launch asks for. A config whose shared memory exceeds the 227 KB a Hopper block
may have would fail at launch (OutOfResources); one that spills keeps registers in local memory
(device memory behind the caches): a sign the tile is too large. Neither needs a GPU to see.

Exit code 1 if a config fails to compile or exceeds the shared memory (spills are reported; the
tests reject them). Runs in Triton's compiled mode only: with TRITON_INTERPRET=1 the kernels are
decorated for the interpreter and cannot be compiled (unset it; the tests run this in a subprocess).
Compiling is CPU work: the whole sweep is about 150 configs, a few seconds each (fp32 ones longer).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may have on sm_90 (232,448)
ARCH = 90
DTYPES = ("bf16", "fp16", "fp32")
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIMS = (64, 128)
# Launch-config families: the autotuned kernels (forward and dq also as their split-KV launch, whose
# output is the fp32 partial), the decode launch of kernels.decode and the two fixed-config kernels.
KERNELS = ("fwd", "fwd_split", "dq", "dq_split", "dkdv", "decode", "combine", "preprocess")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compile_sm90.json"


def _import_kernels():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("kernels.compile_sm90 compiles the kernels: run it without TRITON_INTERPRET=1")
    from kernels import cross_attention, decode  # noqa: PLC0415  (after the check: decoration is at import)

    return cross_attention, decode


def compile_for_sm90(fn, types: dict, consts: dict, num_warps: int = 4, num_stages: int = 3):
    """Compile ``fn`` for sm_90 as a launch on contiguous tensors specialises it; returns (kernel, ptxas log).

    Unit feature strides (``stride_*d``) become constants; pointers and the other strides are
    16-divisible. ``types`` maps argument names to Triton types (default i32).
    """
    import triton  # noqa: PLC0415
    from triton import knobs  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            continue
        if name.startswith("stride") and name.endswith("d"):
            sig[name], consts[name] = "constexpr", 1
            continue
        sig[name] = types.get(name, "i32")
        if sig[name].startswith("*") or name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    log = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # printed only when ptxas runs, i.e. not on a cache hit
        kernel = triton.compile(src, target=GPUTarget("cuda", ARCH, 32),
                                options=dict(num_warps=num_warps, num_stages=num_stages))
    return kernel, log.getvalue()


def _ptxas_log(kernel, fresh_log: str) -> str:
    """The ptxas -v log of a compiled kernel, kept beside Triton's cache under the kernel's hash.

    A fresh compile printed it; on a Triton cache hit it comes from that file, or (when missing)
    from running ptxas -v on the kernel's PTX again.
    """
    from triton import knobs  # noqa: PLC0415
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # noqa: PLC0415

    saved = Path(knobs.cache.dir) / "perceiverar_ptxas_logs" / f"{kernel.metadata.hash}.log"
    if "Used" not in fresh_log:  # a cache hit: no ptxas ran
        if saved.exists():
            return saved.read_text()
        fresh_log = _run_ptxas(kernel.asm["ptx"], get_ptxas(ARCH).path, sm_arch_from_capability(ARCH))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(fresh_log)
    return fresh_log


def _run_ptxas(ptx: str, ptxas: str, arch: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True, check=True)
    return proc.stderr + proc.stdout


def parse_ptxas(log: str) -> dict:
    """Registers, spill stores/loads and stack frame (bytes) from a ptxas -v log."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spill:
        raise ValueError(f"no resource usage in the ptxas log: {log[-500:]!r}")
    stack, stores, loads = (int(x) for x in spill.groups())
    return dict(registers=int(regs.group(1)), spill_stores=stores, spill_loads=loads, stack_frame=stack)


def launch_configs(kernels=KERNELS, dtypes=DTYPES, head_dims=HEAD_DIMS, tiles=None) -> list[dict]:
    """One dict per compile: kernel, dtype, D, the launch config and the argument types.

    ``tiles`` ((BLOCK_M, BLOCK_N, num_warps, num_stages), ...) replaces the autotuned kernels' own
    candidates, to try new ones.
    """
    ca, dec = _import_kernels()
    jobs = []
    for dtype in dtypes:
        width = "fp32" if dtype == "fp32" else "16bit"
        io_types = {n: "*" + dtype for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}
        types = io_types | {n: "*fp32" for n in ("LSE", "DELTA", "OP", "LSEP")}
        types |= {"qk_scale": "fp32", "sm_scale": "fp32"}
        prec = "ieee" if dtype == "fp32" else "tf32"
        for D in head_dims:
            base = dict(dtype=dtype, D=D, consts={"HEAD_DIM": D, "PREC": prec, "SPLIT_ALIGN": ca.SPLIT_ALIGN})
            for kernel in kernels:
                family = kernel.removesuffix("_split")
                if kernel.endswith("_split") and dtype == "fp32":
                    continue  # fp32 inputs write fp32 outputs: the split launch is the same kernel
                fp32_out = {"O": "*fp32"} if family == "fwd" else {"DQ": "*fp32"}
                arg_types = types | (fp32_out if kernel.endswith("_split") else {})
                if family in ("fwd", "dq", "dkdv"):
                    fn = {"fwd": ca.attn_fwd_kernel, "dq": ca.bwd_dq_kernel, "dkdv": ca.bwd_dkdv_kernel}[family]
                    for m, n, w, s in tiles or ca.GPU_TILES[family][(width, D)]:
                        jobs.append(dict(base, kernel=kernel, fn=fn, types=arg_types, BLOCK_M=m, BLOCK_N=n,
                                         num_warps=w, num_stages=s))
                elif kernel == "decode":
                    for m in (1, 32, 64):  # BLOCK_M 16, 32, 64: one token up to the largest decode step
                        cfg = dec.decode_config(m, D, TORCH_DTYPES[dtype])
                        jobs.append(dict(base, kernel=kernel, fn=ca.attn_fwd_kernel, types=types | {"O": "*fp32"},
                                         consts=dict(base["consts"], SPLIT_ALIGN=cfg["BLOCK_N"]),  # as decode.py
                                         BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
                                         num_stages=cfg["num_stages"]))
                else:
                    fn = ca.combine_kernel if kernel == "combine" else ca.bwd_preprocess_kernel
                    block_m = ca.COMBINE_BLOCK_M if kernel == "combine" else ca.PREPROCESS_BLOCK_M
                    jobs.append(dict(base, kernel=kernel, fn=fn, types=types, BLOCK_M=block_m, BLOCK_N=None,
                                     num_warps=4, num_stages=3))  # Triton's launch defaults
    unique = {}
    for job in jobs:  # decode M = 1 and 16 share BLOCK_M 16
        unique.setdefault((job["kernel"], job["dtype"], job["D"], job["BLOCK_M"], job["BLOCK_N"], job["num_warps"],
                           job["num_stages"]), job)
    return list(unique.values())


def measure(job: dict) -> dict:
    """Compile one launch config; its record (without the function and types) plus resources or an error."""
    record = {k: v for k, v in job.items() if k not in ("fn", "types", "consts")}
    consts = dict(job["consts"], BLOCK_M=job["BLOCK_M"])
    if job["BLOCK_N"] is not None:
        consts["BLOCK_N"] = job["BLOCK_N"]
    t0 = time.perf_counter()
    try:
        kernel, log = compile_for_sm90(job["fn"], job["types"], consts, job["num_warps"], job["num_stages"])
        usage = parse_ptxas(_ptxas_log(kernel, log))
    except Exception as exc:  # noqa: BLE001  (a config that does not compile is a finding, recorded)
        record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
        return record
    record.update(usage, shared=int(kernel.metadata.shared), compile_s=round(time.perf_counter() - t0, 2))
    record["smem_ok"] = record["shared"] <= SMEM_LIMIT
    return record


def _parse_tiles(text: str) -> list[tuple[int, int, int, int]]:
    try:
        tiles = [tuple(int(x) for x in t.split("x")) for t in text.split(",") if t]
    except ValueError:
        tiles = []
    if not tiles or any(len(t) != 4 for t in tiles):
        raise argparse.ArgumentTypeError(f"--tiles wants BLOCK_MxBLOCK_NxWARPSxSTAGES,..., got {text!r}")
    return tiles


def _csv(allowed, cast=str):
    def parse(text):
        values = [cast(x) for x in text.split(",") if x]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(map(str, allowed))}")
        return values
    return parse


HEADER = (f"{'kernel':<11}{'dtype':>6}{'D':>5}{'BM':>5}{'BN':>5}{'warps':>6}{'stages':>7} | {'regs':>5}"
          f"{'spill st':>9}{'spill ld':>9}{'stack':>7}{'smem KB':>9}{'s':>6}")


def format_row(r: dict) -> str:
    head = (f"{r['kernel']:<11}{r['dtype']:>6}{r['D']:>5}{r['BLOCK_M']:>5}{r['BLOCK_N'] or '-':>5}"
            f"{r['num_warps']:>6}{r['num_stages']:>7} | ")
    if "error" in r:
        return head + r["error"]
    flag = "" if r["smem_ok"] else "  OVER 227 KB"
    return head + (f"{r['registers']:>5}{r['spill_stores']:>9}{r['spill_loads']:>9}{r['stack_frame']:>7}"
                   f"{r['shared'] / 1024:>9.1f}{r['compile_s']:>6.1f}{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_sm90", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=_csv(KERNELS), default=list(KERNELS), help=f"subset of {','.join(KERNELS)}")
    parser.add_argument("--dtypes", type=_csv(DTYPES), default=list(DTYPES), help="subset of bf16,fp16,fp32")
    parser.add_argument("--head-dims", type=_csv(HEAD_DIMS, int), default=list(HEAD_DIMS), help="subset of 64,128")
    parser.add_argument("--tiles", type=_parse_tiles, default=None,
                        help="candidate configs BMxBNxWARPSxSTAGES,... for fwd/dq/dkdv instead of the kernels' own")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON path (default {DEFAULT_OUT}; none with --tiles)")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: PLC0415
        import triton.backends.nvidia  # noqa: F401, PLC0415

        jobs = launch_configs(args.kernels, args.dtypes, args.head_dims, args.tiles)
    except (ImportError, RuntimeError) as exc:
        print(f"kernels.compile_sm90: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    records = []
    print(f"{len(jobs)} launch configs for sm_{ARCH}\n{HEADER}", flush=True)
    for job in jobs:  # a row as each compiles: a long fp32 sweep shows progress
        records.append(measure(job))
        print(format_row(records[-1]), flush=True)
    out = args.out or (None if args.tiles else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(target=f"sm_{ARCH}", triton=triton.__version__, torch=torch.__version__,
                                       date=time.strftime("%Y-%m-%d"), smem_limit=SMEM_LIMIT,
                                       wall_s=round(time.perf_counter() - t0, 1), configs=records), indent=1))
        print(f"wrote {out}")
    bad = [r for r in records if "error" in r or not r["smem_ok"]]
    if bad:
        print(f"{len(bad)} config(s) failed to compile or exceed {SMEM_LIMIT} bytes of shared memory", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
