"""benchmarks/rerank.py: the selection rules, and a whole run on a tiny palette model."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import rerank as RR
from tests.benchmarks.test_image_quality import small_folder
from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
from perceiverar.pipeline import make_tokenizer_config
from tokenizers_mm.image import cube_palette


def test_choose_keeps_the_first_or_the_highest_of_each_group():
    scores = np.array([0.1, 0.9, 0.5, -3.0, -1.0, -2.0])
    assert RR.choose(scores, 3, "first").tolist() == [0, 3]
    assert RR.choose(scores, 3, "likeliest").tolist() == [1, 4]


def test_a_whole_run_on_a_tiny_palette_model(shared_data, tmp_path):
    data = tmp_path / "emoji"
    small_folder(shared_data / "emoji", data)
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=512, n_latents=128))
    tok = make_tokenizer_config(["image"], height=4, width=4, image_mode="palette", palette=cube_palette())
    tok["caption_template"] = "{text}; {style} style"
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tok)
    res = RR.main(["--checkpoint", str(ckpt), "--data", str(data), "--n-captions", "2", "--groups", "2", "--k", "3",
                   "--classifier-cache", str(tmp_path / "clf"), "--classifier-epochs", "2", "--temperature", "1.5",
                   "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert res["all_draws"]["category"]["n"] == 2 * 2 * 3 and res["real_picked"]["category"]["n"] == 2
    assert all(res["rules"][r]["category"]["n"] == 2 * 2 for r in RR.RULES)
    # the scores summed while sampling are the teacher-forced log-likelihoods of the same draws
    assert res["max_abs_diff_generation_vs_teacher_forced"] < 1e-3
    assert res["sampling"]["temperature"] == 1.5 and (tmp_path / "r.json").is_file()
