"""Benchmark the Triton attention kernels against SDPA (causal_lower_right) and FlexAttention.

    python -m kernels.bench              # every case of issue 5 (GPU only)
    python -m kernels.bench --quick      # a handful of cases, for a smoke run
    python -m kernels.bench --ops cross_fwd,decode --impls ours,sdpa --out /tmp/k.json
    python -m kernels.bench --append --budget-s 500   # repeat until done: resumes where it stopped
    python -m kernels.bench --quick --impls ours --splits 4 --out /tmp/s4.json  # tune split-KV

Cases: N in {1024, 2048}, T in {8K, 16K, 32K, 64K}, H = 16, D in {64, 128}, bf16, B in {1, 4};
ops cross_fwd, cross_bwd, self_fwd, self_bwd (T = N) and decode (M = 1 query against a cache of
up to 65,536 entries). Every (op, impl, shape) is timed with ``triton.testing.do_bench`` (median,
after warm-up; the first call of each case also triggers autotuning / torch.compile, not timed).
A failing case (OOM, unsupported backend, compile error) is recorded with its error, not fatal.

FLOPs: forward 4*B*H*D*(N*(T-N) + N*(N+1)/2) (the unmasked part of the N x T score matrix, for
QK^T and PV), backward 2.5x that. gbps is the minimal traffic (inputs read once, outputs written
once) over the time; for decode it is the K and V bytes read, which is what matters there.
Results go to benchmarks/results/kernels-<device>-<date>.json, rewritten after every case so
that a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

OPS = ("cross_fwd", "cross_bwd", "self_fwd", "self_bwd", "decode")
IMPLS = ("ours", "sdpa", "flex")
# Peak HBM bandwidth (GB/s) by device-name fragment, to report decode as a fraction of it.
_HBM_GBPS = {"H100 PCIe": 2000.0, "H100": 3350.0, "H200": 4800.0, "A100": 2039.0}


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------


def attention_cases(quick: bool) -> list[dict]:
    """(B, N, T, D) for the cross/self ops; self ops use T = N (deduplicated)."""
    if quick:
        return [dict(B=1, N=1024, T=t, D=128) for t in (8192, 65536)] + [dict(B=4, N=2048, T=16384, D=64)]
    return [dict(B=b, N=n, T=t, D=d) for b in (1, 4) for d in (64, 128) for n in (1024, 2048)
            for t in (8192, 16384, 32768, 65536)]


def decode_cases(quick: bool) -> list[dict]:
    if quick:
        return [dict(B=1, M=1, L=65536, D=128), dict(B=4, M=1, L=65536, D=64)]
    return [dict(B=b, M=1, L=length, D=d) for b in (1, 4) for d in (64, 128) for length in (8192, 16384, 65536)]


def fwd_flops(B: int, H: int, N: int, T: int, D: int) -> float:
    return 4.0 * B * H * D * (N * (T - N) + N * (N + 1) / 2)


# ----------------------------------------------------------------------------------------------
# implementations: each returns f(q, k, v) -> out, bottom-right causal
# ----------------------------------------------------------------------------------------------


def _ours(op: str):
    from kernels import triton_ops  # noqa: PLC0415

    return triton_ops.causal_self_attention_fn if op.startswith("self") else triton_ops.causal_cross_attention_fn


def _sdpa(N: int, T: int):
    from torch.nn.attention.bias import causal_lower_right  # noqa: PLC0415

    mask = causal_lower_right(N, T)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_FLEX = None


def _flex(N: int, T: int, device: torch.device):
    global _FLEX
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: PLC0415

    if _FLEX is None:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        _FLEX = torch.compile(flex_attention)  # dynamic after the first recompile: one compile per op
    offset = T - N

    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=N, KV_LEN=T, device=device)
    return lambda q, k, v: _FLEX(q, k, v, block_mask=block_mask)


def _impl(impl: str, op: str, N: int, T: int, device: torch.device):
    if impl == "ours":
        return _ours(op)
    if impl == "sdpa":
        return _sdpa(N, T)
    return _flex(N, T, device)


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def _bench(fn) -> float:
    import triton.testing  # noqa: PLC0415

    fn()  # autotune / compile outside the timed region
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def time_attention(op: str, impl: str, B: int, H: int, N: int, T: int, D: int, dtype: torch.dtype) -> dict:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g)
    fn = _impl(impl, op, N, T, device)
    el = torch.finfo(dtype).bits // 8
    io_fwd = (2 * B * H * N * D + 2 * B * H * T * D) * el  # q, out + k, v
    if op.endswith("fwd"):
        def run():
            with torch.no_grad():
                return fn(q, k, v)

        ms = _bench(run)
        flops, nbytes = fwd_flops(B, H, N, T, D), io_fwd
    else:
        for t in (q, k, v):
            t.requires_grad_()
        out = fn(q, k, v)
        do = torch.randn_like(out)
        ms = _bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
        flops, nbytes = 2.5 * fwd_flops(B, H, N, T, D), 2 * io_fwd + B * H * N * D * el  # + dO; grads written
    return dict(ms=ms, tflops=flops / ms / 1e9, gbps=nbytes / ms / 1e6)


def time_decode(impl: str, B: int, H: int, M: int, L: int, D: int, dtype: torch.dtype, S: int = 65536,
                splits: int | None = None) -> dict:
    """M new queries against the first L entries of a preallocated (B, H, S, D) cache."""
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, H, M, D, device=device, dtype=dtype, generator=g)
    k_cache = torch.randn(B, H, max(S, L), D, device=device, dtype=dtype, generator=g)
    v_cache = torch.randn_like(k_cache)
    if impl == "ours":
        from kernels import triton_ops  # noqa: PLC0415

        def run():
            return triton_ops.decode_attention_fn(q, k_cache, v_cache, L, num_splits=splits)
    else:
        fn = _impl(impl, "decode", M, L, device)
        k, v = k_cache[:, :, :L], v_cache[:, :, :L]

        def run():
            return fn(q, k, v)

    with torch.no_grad():
        ms = _bench(run)
    el = torch.finfo(dtype).bits // 8
    kv_bytes = 2 * B * H * L * D * el
    return dict(ms=ms, tflops=fwd_flops(B, H, M, L, D) / ms / 1e9, gbps=kv_bytes / ms / 1e6)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def print_table(results: list[dict], device: str) -> None:
    """One line per (op, shape): ms and TFLOP/s (GB/s for decode) of each impl, ours vs sdpa / flex."""
    peak = next((bw for name, bw in _HBM_GBPS.items() if name in device), None)
    rows: dict[tuple, dict] = {}
    for r in results:
        rows.setdefault((r["op"], r["B"], r["H"], r["N"], r["T"], r["D"]), {})[r["impl"]] = r
    print(f"\n{device}")
    print(f"{'op':<10}{'B':>3}{'N':>6}{'T':>7}{'D':>5} | {'ours ms':>9}{'sdpa ms':>9}{'flex ms':>9} | "
          f"{'ours':>8}{'sdpa':>8}{'flex':>8} | {'x sdpa':>7}{'x flex':>7}")
    for (op, B, H, N, T, D), by in rows.items():
        ms = {i: by.get(i, {}).get("ms") for i in IMPLS}
        metric = "gbps" if op == "decode" else "tflops"
        perf = {i: by.get(i, {}).get(metric) for i in IMPLS}
        ratio = {i: (ms[i] / ms["ours"]) if ms["ours"] and ms[i] else None for i in ("sdpa", "flex")}
        line = (f"{op:<10}{B:>3}{N:>6}{T:>7}{D:>5} | " + "".join(f"{_fmt(ms[i], '.3f'):>9}" for i in IMPLS) + " | "
                + "".join(f"{_fmt(perf[i], '.0f'):>8}" for i in IMPLS) + " | "
                + "".join(f"{_fmt(ratio[i], '.2f'):>7}" for i in ("sdpa", "flex")))
        if op == "decode" and peak and perf["ours"]:
            line += f"   ours at {100 * perf['ours'] / peak:.0f}% of {peak:.0f} GB/s"
        print(line)
    print("(perf columns: TFLOP/s, GB/s for decode; 'x sdpa' = sdpa time / ours time, > 1 means ours is faster)")


def _default_out(device: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    results_dir = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    return results_dir / f"kernels-{slug}-{_dt.date.today().isoformat()}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few representative cases only")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/kernels-<device>-<date>.json)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--heads", type=int, default=16, help="number of heads H")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting new cases after this many seconds (the report is still written)")
    parser.add_argument("--splits", type=int, default=None,
                        help="force our number of key splits (split-KV forward, dq pass, decode) instead of the "
                             "SM-count heuristic; recorded as 'splits' in each 'ours' record")
    parser.add_argument("--list", action="store_true", help="print the planned cases and exit (works on CPU)")
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing --out file, skipping the cases it already has (so a run "
                             "cut short by --budget-s is resumed by running the same command again)")
    args = parser.parse_args(argv)

    ops = [o for o in args.ops.split(",") if o]
    impls = [i for i in args.impls.split(",") if i]
    for name, given, allowed in (("op", ops, OPS), ("impl", impls, IMPLS)):
        bad = sorted(set(given) - set(allowed))
        if bad:
            parser.error(f"unknown {name}(s): {', '.join(bad)}")
    dtype, H = torch.bfloat16, args.heads
    plan: list[tuple[str, dict]] = []
    seen_self = set()
    for case in attention_cases(args.quick):
        for op in ops:
            if op.startswith("cross"):
                plan.append((op, case))
            elif op.startswith("self") and (op, case["B"], case["N"], case["D"]) not in seen_self:
                seen_self.add((op, case["B"], case["N"], case["D"]))
                plan.append((op, dict(case, T=case["N"])))
    if "decode" in ops:
        plan += [("decode", c) for c in decode_cases(args.quick)]
    if args.list:
        for op, case in plan:
            print(op, case)
        print(f"{len(plan)} cases x {len(impls)} impls")
        return 0
    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU (the Triton kernels are compiled for it); nothing to do on CPU.",
              file=sys.stderr)
        return 2
    import triton  # noqa: PLC0415

    from kernels import cross_attention  # noqa: PLC0415

    cross_attention.FORCE_NUM_SPLITS = args.splits
    device = torch.cuda.get_device_name()
    out_path = args.out or _default_out(device)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = dict(device=device, torch=torch.__version__, triton=triton.__version__,
                  date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), results=[])
    if args.append and out_path.exists():
        report["results"] = json.loads(out_path.read_text()).get("results", [])

    def key(r):
        return (r["op"], r["impl"], r["B"], r["H"], r["N"], r["T"], r["D"], r["dtype"], r.get("splits"))

    done = {key(r) for r in report["results"] if r.get("ms") is not None}  # --append resumes a cut-short run
    t0 = time.time()
    for op, case in plan:
        if args.budget_s is not None and time.time() - t0 > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s spent; skipping the remaining cases", flush=True)
            break
        for impl in impls:
            B, D = case["B"], case["D"]
            N, T = (case["M"], case["L"]) if op == "decode" else (case["N"], case["T"])
            rec = dict(op=op, impl=impl, B=B, H=H, N=N, T=T, D=D, dtype=str(dtype).replace("torch.", ""),
                       ms=None, tflops=None, gbps=None)
            if impl == "ours" and args.splits is not None:
                rec["splits"] = args.splits
            if key(rec) in done:
                continue
            try:
                if op == "decode":
                    rec.update(time_decode(impl, B, H, N, T, D, dtype, splits=args.splits))
                else:
                    rec.update(time_attention(op, impl, B, H, N, T, D, dtype))
            except Exception as exc:  # noqa: BLE001  (OOM, unsupported backend, compile failure: record, go on)
                rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            report["results"] = [r for r in report["results"] if key(r) != key(rec)] + [rec]
            status = rec.get("error") or f"{rec['ms']:.3f} ms  {rec['tflops']:.1f} TFLOP/s  {rec['gbps']:.0f} GB/s"
            print(f"[{time.time() - t0:6.0f}s] {op:<9} {impl:<4} B={B} N={N} T={T} D={D}: {status}", flush=True)
            out_path.write_text(json.dumps(report, indent=1))
            gc.collect()
            torch.cuda.empty_cache()
    print_table(report["results"], device)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
