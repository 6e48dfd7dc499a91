"""perceiverar-generate is as fast as the app for the same request (it was ~5x slower: two OpenMP threads
spin-waiting on a busy CPU, where the app's worker thread never paid that). A whole bundled image: slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

PROMPT = "red apple; food & drink; food fruit; google style"


def test_cli_is_as_fast_as_the_app_and_writes_the_same_record(bundled, tmp_path):
    from app.service import Service

    svc = Service([bundled / "emoji"], device="cpu", demo=False, output_dir=tmp_path / "app")
    d = svc.capabilities("emoji").defaults  # what the page offers, and what the CLI uses when not told
    req, errors = svc.check("image", dict(prompt=PROMPT, checkpoint="emoji", size=None, num_samples=1, seed=1,
                                          temperature=d["temperature"], top_k=d["top_k"] or 0, top_p=d["top_p"],
                                          cfg_scale=d["cfg_scale"], n_latents=0, candidates=d["candidates"]))  # fmt: skip
    assert not errors
    t0 = time.perf_counter()
    *_, (kind, images, files, record) = svc.run(req)
    app_s = time.perf_counter() - t0

    out = tmp_path / "cli.png"
    cmd = [str(Path(sys.executable).parent / "perceiverar-generate"), "--checkpoint", str(bundled / "emoji"),
           "--prompt", PROMPT, "--modality", "image", "--out", str(out), "--seed", "1", "--device", "cpu"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    cli_s = time.perf_counter() - t0  # includes starting Python and loading the checkpoint
    print(f"one {record['height']}x{record['width']} image: app {app_s:.1f} s, CLI {cli_s:.1f} s (CPU)")
    assert cli_s < 1.5 * app_s + 20, (app_s, cli_s)

    cli = json.loads(Image.open(out).text["parameters"])
    app = json.loads(Image.open(files[0]).text["parameters"])
    same = ("prompt", "modality", "height", "width", "seed", "temperature", "top_k", "top_p", "cfg_scale", "n_latents", "candidates")
    assert {k: cli[k] for k in same} == {k: app[k] for k in same}
    svc.close()
