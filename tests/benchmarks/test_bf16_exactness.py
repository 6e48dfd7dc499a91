"""benchmarks.bf16_exactness on the CPU: the check that scripts/gpu_check.sh runs on CUDA, in miniature."""

from __future__ import annotations

import json

from benchmarks import bf16_exactness


def test_cpu_run_passes_and_checks_its_window_claim(tmp_path):
    out = tmp_path / "bf16.json"
    assert bf16_exactness.main(["--device", "cpu", "--quick", "--tokens", "12", "--seeds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["attention_backend"] == "reference"
    assert result["config"]["pinned_latents"] == 8  # a quarter of the 32 latents, as the bundled emoji pins some
    (run,) = result["runs"]
    # fp32: cached == uncached at both strides; the forward-pass reproduction of each step holds.
    assert run["fp32_stride1_first_mismatch"] is None and run["fp32_default_stride_first_mismatch"] is None
    assert run["window_claim_violations"] == 0
    assert run["bf16_stride1"]["ok"] and all(t["near_tie"] for t in run["bf16_stride1"]["ties"])


def test_missing_cuda_is_a_clear_exit(capsys, monkeypatch):
    monkeypatch.setattr(bf16_exactness.torch.cuda, "is_available", lambda: False)
    assert bf16_exactness.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
