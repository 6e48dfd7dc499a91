"""Sliding-window scoring and the perceiverar-eval CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
from perceiverar import evaluate as E
from perceiverar.pipeline import make_tokenizer_config
from test_data import make_image_folder, make_text_folder


@pytest.mark.parametrize("a,b,L,N", [(1, 500, 256, 32), (7, 200, 256, 32), (2, 40, 64, 64), (5, 6, 16, 3), (3, 3000, 100, 7)])
def test_windows_score_each_target_once_with_full_context(a, b, L, N):
    seen = []
    for s, e, first in E.windows(a, b, context_len=L, n_latents=N):
        n = min(N, e - s - 1)
        assert e - s - 1 <= L and first >= e - n  # the window fits the context; its latents reach back to `first`
        assert s == max(0, e - L - 1)  # as much context as the model reads
        seen += range(first, e)
    assert seen == list(range(a, b))


def _model(seed=0, zero_head=True) -> PerceiverAR:
    torch.manual_seed(seed)
    m = PerceiverAR(PerceiverARConfig.preset("debug"))
    if not zero_head:
        torch.nn.init.normal_(m.head.weight, std=0.05)
    return m.eval()


def test_score_item_matches_direct_forward():
    m = _model(zero_head=False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, 700)
    feats = np.zeros((700, len(m.cfg.feature_sizes)), dtype=np.int64)
    total, count = E.score_item(m, ids, feats, (2, 700), batch_windows=3)
    ref = 0.0
    with torch.no_grad():
        for s, e, first in E.windows(2, 700, context_len=256, n_latents=32):
            nll, _ = m.token_nll(torch.from_numpy(ids[s:e])[None], torch.from_numpy(feats[s:e])[None])
            ref += float(nll[0, first - e :].double().sum())  # nll[:, j] is the target at position e - n + j
    assert count == 698 and total == pytest.approx(ref, rel=1e-6)
    sub_total, sub_count = E.score_item(m, ids, feats, (2, 700), max_windows=4)
    assert sub_count <= 4 * 32 and sub_count > 0


def test_eval_cli_keys(shared_data, tmp_path, capsys):
    img = make_image_folder(shared_data, tmp_path / "emoji")
    txt = make_text_folder(shared_data, tmp_path / "text")
    ck = tmp_path / "ck"
    save_checkpoint(ck, _model(), make_tokenizer_config(["image", "text"], height=4, width=4))
    out = tmp_path / "eval.json"
    res = E.run(["--checkpoint", str(ck), "--data", str(img), "--data", str(txt), "--max-items", "2", "--max-windows", "3",
                  "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert json.loads(out.read_text()) == res and json.loads(capsys.readouterr().out) == res
    assert {"bits_per_dim", "image_height", "image_width", "bits_per_byte"} <= set(res)
    assert res["image_height"] == 4 and res["image_width"] == 4 and res["image_tokens_scored"] % 48 == 0
    # the untrained model (zero output layer) predicts uniformly over the whole vocabulary
    assert res["bits_per_dim"] == pytest.approx(math.log2(5696), abs=1e-4)
    assert res["bits_per_byte"] == pytest.approx(math.log2(5696), abs=1e-4)
    assert "generation" in res and res["generation"]["tokens_per_s"] > 0
    with pytest.raises(SystemExit) as info:
        E.main(["--checkpoint", str(tmp_path / "nope"), "--data", str(img)])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err
