"""Shared by the benchmark scripts: one way to name the machine and save a result file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_label(device: str | torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' on CUDA; 'CPU (x86_64, 2 cores, 2 threads)' otherwise."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def save_result(benchmark: str, device: str | torch.device, fields: dict, out: Path | None = None, tag: str = "") -> Path:
    """Write {benchmark, device, torch, date, **fields} as JSON to ``out`` or results/<benchmark>[-tag]-<cpu|cuda>-<date>.json."""
    date = dt.date.today().isoformat()
    result = {"benchmark": benchmark, "device": device_label(device), "torch": torch.__version__, "date": date, **fields}
    name = "-".join(x for x in (benchmark, tag, torch.device(device).type, date) if x)
    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")
    return path


def print_result(benchmark: str, device: str | torch.device, fields: dict, out: Path | None) -> Path | None:
    """Print ``fields`` as JSON, and save them with :func:`save_result` only when ``out`` is given (the scripts
    whose results are kept on request)."""
    print(json.dumps(fields, indent=1))
    return save_result(benchmark, device, fields, out=out) if out else None
