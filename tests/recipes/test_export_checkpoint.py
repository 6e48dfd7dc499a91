"""recipes.export_checkpoint on a two-stage debug run: stage 1, then a fine-tune with buried captions."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from perceiverar import load_checkpoint
from perceiverar import train as T
from recipes import export_checkpoint as E


def _emoji(shared, dest, n=10):
    lines = [json.loads(x) for x in (shared / "emoji" / "captions.jsonl").read_text().splitlines()[:n]]
    for rec in lines:
        (dest / rec["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "emoji" / rec["file"], dest / rec["file"])
    (dest / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return dest


def test_export_two_stage_run(shared_data, tmp_path):
    img = _emoji(shared_data, tmp_path / "emoji")
    txt = tmp_path / "text"
    txt.mkdir()
    shutil.copy(shared_data / "shakespeare" / "lovers_complaint_gut.txt", txt / "a.txt")
    common = ["--data", str(img), "--preset", "debug", "--image-size", "8", "--cache-dir", str(tmp_path / "cache"),
              "--batch-size", "2", "--val-items", "2", "--sample-every", "0", "--no-progress", "--lr", "3e-3"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.main(["--out", str(tmp_path / "stage1"), *common, "--max-steps", "3", "--val-every", "3"])
        T.main(["--out", str(tmp_path / "stage2"), *common, "--max-steps", "2", "--val-every", "2",
                "--init-from", str(tmp_path / "stage1" / "best"), "--context-len", "1024",
                "--caption-template", "{text}; {style} style", "--filler", f"{txt}:0.5"])  # fmt: skip
        E.main(["--run", str(tmp_path / "stage2"), "--name", "tiny", "--data", str(img), "--recipe", "bash recipes/x.sh",
                "--eval-items", "2", "--out-root", str(tmp_path / "ckpts")])  # fmt: skip
    finally:
        torch.set_num_threads(n)
    ck = load_checkpoint(tmp_path / "ckpts" / "tiny")
    assert ck.config.context_len == 1024 and ck.tokenizer["caption_template"] == "{text}; {style} style"
    tr = ck.training
    assert [st["run"] for st in tr["stages"]] == ["stage1", "stage2"] and tr["steps"] == 5
    assert tr["stages"][1]["filler"].endswith(":0.5") and tr["stages"][0]["init_from"] is None
    assert tr["eval"]["bits_per_dim"] > 0 and tr["recipe"] == "bash recipes/x.sh"
    card = (tmp_path / "ckpts" / "tiny" / "README.md").read_text()
    assert "3 + 2 steps in 2 stages" in card and "`{text}; {style} style`" in card
    assert next(ck.model.parameters()).dtype == torch.float32  # loaded back from the bf16 file as float32
    assert ck.tokenizer["trained_prompt_tokens"] == 1024  # stage 2 buried its captions in up to a context of text
    one = E.trained_prompt_tokens(load_checkpoint(tmp_path / "stage1" / "best"), E._stages(tmp_path / "stage1"), img)
    longest = max(len(json.loads(x)["text"].encode()) for x in (img / "captions.jsonl").read_text().splitlines())
    assert one == longest + len("purple ")  # the first stage's template is "{text}": the caption, and a colour tag
    with pytest.raises(SystemExit, match="train first"):
        E.main(["--run", str(tmp_path / "nothing"), "--name", "x", "--data", str(img), "--recipe", "r",
                "--out-root", str(tmp_path / "ckpts")])  # fmt: skip
