"""benchmarks/caption_probe: the edited captions, and the probe on the bundled emoji checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import caption_probe as CP

ROOT = Path(__file__).resolve().parents[2]
RECORD = {"file": "google/1f499.png", "text": "blue heart; smileys & emotion; heart", "style": "google",
          "category": "Smileys & Emotion", "val": False}  # fmt: skip


def test_each_edit_changes_one_part_of_the_caption():
    e = CP.edits(RECORD, "{text}; {style} style", "grinning face")
    assert e["name"] == ["grinning face; smileys & emotion; heart; google style"]
    assert e["style"] == ["blue heart; smileys & emotion; heart; twitter style"]
    assert e["rest"] == ["blue heart"] and e["empty"] == [""]
    assert len(e["colour"]) == len(CP.COLOURS) - 1 and "red heart; smileys & emotion; heart; google style" in e["colour"]
    assert "blue heart; smileys & emotion; heart; google style" not in e["colour"]
    assert "colour" not in CP.edits({**RECORD, "text": "grinning face; smileys & emotion"}, "{text}", "x")
    assert "style" not in CP.edits({**RECORD, "style": "apple"}, "{text}", "x")


def test_summary_counts_where_the_true_caption_is_likelier():
    s = CP.summarize([3.0, -1.0, 2.0, 4.0])
    assert s == {"n": 4, "mean_bits": 2.0, "se_bits": round(float(np.std([3, -1, 2, 4], ddof=1) / 2), 2),
                 "true_likelier_share": 0.75}  # fmt: skip


def test_probe_runs_on_the_bundled_emoji_checkpoint(shared_data):
    from perceiverar import Pipeline

    ckpt = ROOT / "checkpoints" / "emoji"
    if not (ckpt / "model.safetensors").is_file():
        pytest.skip("bundled emoji checkpoint missing")
    pipe = Pipeline.load(ckpt, device="cpu")
    folder = shared_data / "emoji"
    out = CP.probe(pipe.model, pipe.image_tokenizer(), folder, [RECORD], pipe.config["caption_template"],
                   [("Smileys & Emotion", "blue heart"), ("Food & Drink", "red apple")], log=None)  # fmt: skip
    (row,) = out["items"]
    assert row["tokens"] == pipe.image_tokenizer().n_tokens
    assert row["caption"] == "blue heart; smileys & emotion; heart; google style"
    assert set(out["edits"]) == {"name", "empty", "rest", "style", "colour"}
    assert all(np.isfinite(row[k]) for k in out["edits"]) and row["true_bits"] > 0
