"""kernels.bench bookkeeping on CPU: the timing functions are faked, the plan, JSON and table are real."""

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kernels import bench  # noqa: E402

FIELDS = {"op", "impl", "B", "H", "N", "T", "D", "dtype", "ms", "tflops", "gbps"}


def test_flops_count_the_unmasked_triangle():
    # T == N: half the square plus the diagonal; T >> N: close to the full rectangle.
    assert bench.fwd_flops(1, 1, 4, 4, 1) == 4 * (4 * 5 / 2)
    assert bench.fwd_flops(2, 3, 1, 10, 8) == 4 * 2 * 3 * 8 * 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message; a GPU would run the benchmark")
def test_cpu_exits_with_a_message(capsys):
    assert bench.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_report_and_resume(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_attention(op, impl, B, H, N, T, D, dtype):
        calls.append((op, impl))
        if impl == "flex" and T == 65536:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return dict(ms=1.0, tflops=bench.fwd_flops(B, H, N, T, D) / 1e9, gbps=1.0)

    def fake_decode(impl, B, H, M, L, D, dtype, splits=None):
        calls.append(("decode", impl))
        return dict(ms=0.5, tflops=0.1, gbps=2000.0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(bench, "time_attention", fake_attention)
    monkeypatch.setattr(bench, "time_decode", fake_decode)
    out = tmp_path / "k.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"device", "torch", "triton", "date", "results"} <= set(report)
    assert report["device"] == "NVIDIA H100 80GB HBM3"
    results = report["results"]
    assert all(FIELDS <= set(r) for r in results)
    assert {r["op"] for r in results} == set(bench.OPS) and {r["impl"] for r in results} == set(bench.IMPLS)
    failed = [r for r in results if "error" in r]
    assert failed and all(r["ms"] is None and "OutOfMemoryError" in r["error"] for r in failed)
    table = capsys.readouterr().out
    assert "x sdpa" in table and "% of 3350 GB/s" in table

    # --append reruns only what failed.
    calls.clear()
    assert bench.main(["--quick", "--out", str(out), "--append"]) == 0
    assert len(calls) == len(failed)
    assert len(json.loads(out.read_text())["results"]) == len(results)
