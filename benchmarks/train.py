"""Training throughput and peak memory per preset: tokens/s and peak RSS (CPU) or peak allocated memory (CUDA).

    python -m benchmarks.train                 # debug, small @ 4,096 and small @ 65,536, batch 1, on this machine
    python -m benchmarks.train --device cuda   # the same on a GPU, plus base @ 65,536
    python -m benchmarks.train --steps 3 --config small:65536:1:ac

Each configuration runs in a fresh child process (so its peak RSS is its own): one warm-up step, then
``--steps`` timed AdamW steps of ``model.loss`` on random text ids (speed does not depend on the data) at
sequence length T (the context, T + 1 ids with the target). "tokens/s" counts the T context positions per
sequence (the tokens a training run consumes); latent tokens/s = tokens/s * N / T. Peak RSS is the process's
high-water mark (``ru_maxrss``), which includes the Python interpreter and torch (~0.4 GiB).

Writes benchmarks/results/train-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIGS = ["debug:256:8", "small:4096:1", "small:65536:1", "small:65536:1:ac"]
CUDA_CONFIGS = ["debug:256:8", "small:65536:8", "base:65536:1", "base:65536:1:ac"]


def one(preset: str, T: int, batch: int, ac: bool, steps: int, device: str) -> dict:
    """Runs in the child: time ``steps`` optimizer steps and report memory."""
    import torch  # noqa: PLC0415

    from perceiverar import PerceiverAR, PerceiverARConfig  # noqa: PLC0415
    from tokenizers_mm.ids import N_FEATURES  # noqa: PLC0415

    cfg = PerceiverARConfig.preset(preset, context_len=max(T, PerceiverARConfig.preset(preset).n_latents),
                                   activation_checkpointing=ac)  # fmt: skip
    torch.manual_seed(0)
    model = PerceiverAR(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (batch, T + 1), generator=g).to(device)
    feats = torch.zeros(batch, T + 1, N_FEATURES, dtype=torch.long, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None

    def step() -> float:
        if amp is not None:
            with amp:
                loss = model.loss(tokens, feats)
        else:
            loss = model.loss(tokens, feats)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up (allocator, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    rec = {
        "preset": preset, "seq_len": T, "n_latents": cfg.n_latents, "batch": batch, "activation_checkpointing": ac,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "steps": steps,
        "step_s_median": round(step_s, 3), "step_s_all": [round(t, 3) for t in times],
        "tokens_per_s": round(batch * T / step_s, 1), "latent_tokens_per_s": round(batch * cfg.n_latents / step_s, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }  # fmt: skip
    if device.startswith("cuda"):
        rec["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return rec


def parse_config(s: str) -> tuple[str, int, int, bool]:
    parts = s.split(":")
    return parts[0], int(parts[1]), int(parts[2]), len(parts) > 3 and parts[3] == "ac"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--config", action="append", default=None, metavar="PRESET:T:BATCH[:ac]",
                   help="configurations to run (default: a set per device; ':ac' = activation checkpointing)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up step)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the children (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train-<device>-<date>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch  # noqa: PLC0415

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(one(*parse_config(args.child), args.steps, args.device)))
        return {}

    import torch  # noqa: PLC0415

    configs = args.config or (CUDA_CONFIGS if args.device.startswith("cuda") else CPU_CONFIGS)
    records = []
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for c in configs:
        cmd = [sys.executable, "-m", "benchmarks.train", "--child", c, "--steps", str(args.steps), "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            rec = {"config": c, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            rec = json.loads(r.stdout.strip().splitlines()[-1])
        records.append(rec)
        if "error" in rec:
            print(f"{c:>20}: FAILED {rec['error']}", flush=True)
        else:
            print(f"{c:>20}: {rec['tokens_per_s']:>10,.0f} tokens/s  ({rec['step_s_median']:.2f} s/step)  "
                  f"peak RSS {rec['peak_rss_gib']:.2f} GiB" + (f", CUDA {rec['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in rec else ""),
                  flush=True)  # fmt: skip
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    dev_name = platform.processor() or platform.machine()
    if args.device.startswith("cuda"):
        dev_name = torch.cuda.get_device_name()
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    dev_name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    result = {
        "benchmark": "train", "date": now.isoformat(), "device": args.device, "device_name": dev_name,
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "torch": torch.__version__, "python": platform.python_version(), "wall_s": round(time.perf_counter() - t0, 1),
        "notes": ["AdamW steps of model.loss on random text ids, fp32 on CPU (bf16 autocast on CUDA); median of the timed steps",
                  "tokens/s counts the T context positions per sequence; peak_rss_gib is the child's ru_maxrss",
                  "the machine was shared with other jobs: compare load_average before trusting speed differences"],
        "records": records,
    }  # fmt: skip
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train-{args.device.split(':')[0]}-{now.date()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
