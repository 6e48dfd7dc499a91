"""The copy task's data and the bundled copy-task checkpoint (issues 10 and 19)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.copy_task import copy_accuracy, copy_accuracy_windows, copy_batch, first_half_shuffled
from perceiverar import load_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "copy"


def test_copy_batch_repeats_its_first_half():
    g = torch.Generator().manual_seed(0)
    seq = copy_batch(3, 41, g, "cpu")
    assert seq.shape == (3, 41) and int(seq.max()) < 256
    torch.testing.assert_close(seq[:, 20:40], seq[:, :20])
    assert (seq[:, :20] != seq[:1, :20]).any()  # rows differ


def test_first_half_shuffled_keeps_the_second_half_and_the_symbols():
    g = torch.Generator().manual_seed(1)
    seq = copy_batch(2, 400, g, "cpu")
    sh = first_half_shuffled(seq, g)
    assert torch.equal(sh[:, 200:], seq[:, 200:])
    assert torch.equal(sh[:, :200].sort(1).values, seq[:, :200].sort(1).values)
    assert (sh[:, :200] != seq[:, :200]).float().mean() > 0.9


def test_bundled_copy_checkpoint_copies_unseen_sequences_and_fails_when_the_first_half_is_shuffled():
    """At 8,192 tokens (inside what it was trained at) every second-half position of fresh sequences is scored."""
    ck = load_checkpoint(CHECKPOINT)
    context = 8192
    assert ck.training["context"] >= context
    acc, by_position = copy_accuracy(ck.model, context, n_seqs=2, device="cpu", seed=987)
    assert acc >= 0.99, by_position
    acc, by_window = copy_accuracy_windows(ck.model, context, n_seqs=2, device="cpu", windows=2, seed=5, shuffled=True)
    assert acc < 0.1, by_window


def test_bundled_copy_checkpoint_copies_at_65536_tokens_and_fails_when_the_first_half_is_shuffled():
    """The bundled checkpoint at a 65,536-token context (beyond what it was trained at) on fresh sequences: it
    finds each copy 32,768 positions back, and with the first half shuffled (the copy gone) it fails."""
    ck = load_checkpoint(CHECKPOINT)
    assert ck.config.context_len >= 65536
    acc, by_window = copy_accuracy_windows(ck.model, 65536, n_seqs=2, device="cpu", windows=3, seed=11, skip=3)
    assert acc >= 0.97, by_window  # 192 positions; the model card reports 4,096 (about 99%)
    acc, by_window = copy_accuracy_windows(ck.model, 65536, n_seqs=2, device="cpu", windows=1, seed=11, shuffled=True)
    assert acc < 0.1, by_window


def test_eval_from_scores_a_saved_checkpoint_without_training(tmp_path):
    from benchmarks.copy_task import main

    out = tmp_path / "r.json"
    main(["--eval-from", str(CHECKPOINT), "--eval-contexts", "8192", "--eval-seqs", "1", "--eval-windows", "2",
          "--eval-skip", "3", "--control-seqs", "1", "--out", str(out)])
    (rec,) = json.loads(out.read_text())["results"]
    assert rec["context"] == 8192 and rec["eval_skip"] == 3 and rec["scored_tokens"] == 2 * 32
    assert rec["accuracy"] >= 0.99 and rec["shuffled_first_half_accuracy"] < 0.1, rec
    assert rec["weights"] == "bfloat16"
    # --query-scale with --save: the scored weights are saved, queries scaled, the rest unchanged
    main(["--eval-from", str(CHECKPOINT), "--eval-contexts", "1024", "--eval-seqs", "1", "--eval-windows", "1",
          "--query-scale", "2", "--save", str(tmp_path / "scaled"), "--out", str(tmp_path / "s.json")])
    before = load_checkpoint(CHECKPOINT).model.state_dict()
    after = load_checkpoint(tmp_path / "scaled").model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], 2 * v if k.startswith("cross.wq.") else v, rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "scaled").training["query_scaled_after_training"] == 2.0


def test_copy_batch_small_alphabets_keep_the_copy_and_vary_by_row():
    """--alphabet-min: each row draws from its own random subset of symbols (at least the minimum), still copied."""
    g = torch.Generator().manual_seed(2)
    seq = copy_batch(16, 2000, g, "cpu", alphabet_min=8)
    torch.testing.assert_close(seq[:, 1000:], seq[:, :1000])
    sizes = [len(torch.unique(r)) for r in seq]
    assert min(sizes) >= 8 and max(sizes) <= 256 and len(set(sizes)) > 4, sizes
    assert len(torch.unique(seq)) > max(sizes)  # the subsets differ between rows
