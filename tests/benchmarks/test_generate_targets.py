"""benchmarks/generate.py --targets and its worker benchmarks/decode_speed.py, on a tiny checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import decode_speed  # noqa: E402

from benchmarks import generate as bench  # noqa: E402
from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint  # noqa: E402
from perceiverar.pipeline import make_tokenizer_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", conv_kernel=3))
    torch.nn.init.normal_(model.head.weight, std=0.02)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, make_tokenizer_config(["image", "text"], height=3, width=4))
    return path


def run(capsys, *argv) -> dict:
    assert decode_speed.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_worker_measures_image_text_and_context(tiny_checkpoint, capsys):
    ck = str(tiny_checkpoint)
    img = run(capsys, "image", "--checkpoint", ck, "--repeats", "2")
    assert img["image"] == "3x4" and img["tokens_per_image"] == 3 * 4 * 3 + 2  # sub-pixels, IMAGE_END, EOS
    assert len(img["runs"]) == 2 and all(r["wall_s"] > 0 and r["cpu_s"] > 0 for r in img["runs"])
    assert img["runs"][0]["n_tokens"] == img["tokens_per_image"]
    txt = run(capsys, "text", "--checkpoint", ck, "--bytes", "20", "--repeats", "1")
    r = txt["runs"][0]
    assert 1 <= r["bytes"] <= 20 and r["bytes_per_s"] == pytest.approx(r["bytes"] / r["wall_s"])
    ctx = run(capsys, "context", "--checkpoint", ck, "--context", "200", "--cached-tokens", "40", "--uncached-tokens", "2")
    assert ctx["context"] == 200 and ctx["cached"]["n_tokens"] == 40
    per = ctx["cached"]["s_per_token_after_first"]
    assert [p["n_latents"] for p in ctx["uncached_passes"]] == [17, 24, 32]  # debug: N = 32, stride 16
    assert ctx["speedup_per_token"] == pytest.approx(ctx["uncached_mean_s_per_token"] / per)
    assert ctx["speedup_vs_cheapest_uncached"] == pytest.approx(ctx["uncached_s_per_token"] / per)


def test_export_revision_holds_the_packages(tmp_path):
    bench.export_revision("HEAD", tmp_path)
    for pkg in ("perceiverar", "tokenizers_mm", "kernels"):
        assert (tmp_path / pkg / "__init__.py").is_file()
    assert (tmp_path / "perceiverar" / "generation.py").read_text() == (
        __import__("subprocess").run(["git", "-C", str(ROOT), "show", "HEAD:perceiverar/generation.py"],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip


def test_verdict_against_the_targets():
    assert bench._le(4.0, bench.TARGETS["image_wall_s"]) and not bench._le(6.0, bench.TARGETS["image_wall_s"])
    assert bench._ge(250.0, bench.TARGETS["text_bytes_per_s"]) and bench._ge(None, 1.0) is None
    out = {"image": {"v": [{"runs": [{"wall_s": 9.0, "cpu_s": 3.0}, {"wall_s": 6.0, "cpu_s": 2.0}]},
                           {"runs": [{"wall_s": 8.0, "cpu_s": 2.5}, {"wall_s": 4.5, "cpu_s": 2.2}]}]}}
    best = bench._best(out, "v")
    assert best["image_wall_s"] == 4.5 and best["image_cpu_s"] == 2.0 and best["meets_wall"]["image_wall_s"]
    assert best["text_bytes_per_s"] is None and best["meets_wall"]["text_bytes_per_s"] is None
