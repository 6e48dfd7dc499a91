"""Forward-pass time and peak memory of the model presets against context length.

With N fixed, Perceiver AR's cost is O(N * T) for the one cross-attention plus a
T-independent latent stack, so time should grow about linearly in T. Each case runs in
its own subprocess so that peak memory (max RSS on CPU, max allocated on CUDA) is its own.

    python -m benchmarks.forward                # debug and small, T = 4K, 16K, 64K
    python -m benchmarks.forward --quick        # T = 4K and 16K only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.results_io import save_result


def run_case(preset: str, T: int, n_latents: int | None, device: str, repeats: int) -> dict:
    from perceiverar import PerceiverAR, PerceiverARConfig

    overrides = {"context_len": max(T, 256)}
    if n_latents is not None:
        overrides["n_latents"] = n_latents
    cfg = PerceiverARConfig.preset(preset, **overrides)
    torch.manual_seed(0)
    model = PerceiverAR(cfg).to(device).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, T), device=device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        model(tokens)  # warm-up
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    )
    return {
        "preset": preset,
        "T": T,
        "N": cfg.n_latents,
        "params_m": round(model.num_params() / 1e6, 3),
        "seconds": round(min(times), 4),
        "peak_gib": round(peak, 3),
        "rss_before_gib": round(base_rss / 2**20, 3),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["debug", "small"])
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 16384, 65536])
    p.add_argument("--n-latents", type=int, default=None, help="override N (default: the preset's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="T = 4K and 16K only, one repeat")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--case", nargs=2, metavar=("PRESET", "T"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(run_case(a.case[0], int(a.case[1]), a.n_latents, a.device, a.repeats)))
        return
    if a.quick:
        a.lengths, a.repeats = [t for t in a.lengths if t <= 16384], 1
    records = []
    print(f"{'preset':>7} {'T':>7} {'N':>5} {'seconds':>9} {'peak GiB':>9}")
    for preset in a.presets:
        for T in a.lengths:
            cmd = [sys.executable, "-m", "benchmarks.forward", "--case", preset, str(T), "--device", a.device,
                   "--repeats", str(a.repeats)]
            if a.n_latents:
                cmd += ["--n-latents", str(a.n_latents)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                rec = {"preset": preset, "T": T, "error": out.stderr.strip().splitlines()[-1:]}
                print(f"{preset:>7} {T:>7}  failed: {rec['error']}")
            else:
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{preset:>7} {T:>7} {rec['N']:>5} {rec['seconds']:>9.3f} {rec['peak_gib']:>9.2f}")
            records.append(rec)
    ratios = {}
    for preset in a.presets:
        by_t = {r["T"]: r["seconds"] for r in records if r.get("preset") == preset and "seconds" in r}
        if 16384 in by_t and 65536 in by_t:
            ratios[preset] = round(by_t[65536] / by_t[16384], 2)
            print(f"{preset}: time(65,536) / time(16,384) = {ratios[preset]} (linear would be 4.0)")
    save_result("forward", a.device, {"results": records, "ratio_65536_over_16384": ratios}, a.out)

if __name__ == "__main__":
    main()
