"""The copy task's data and the bundled copy-task checkpoint (issue 10)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.copy_task import copy_accuracy, copy_batch
from perceiverar import load_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "copy"


def test_copy_batch_repeats_its_first_half():
    g = torch.Generator().manual_seed(0)
    seq = copy_batch(3, 41, g, "cpu")
    assert seq.shape == (3, 41) and int(seq.max()) < 256
    torch.testing.assert_close(seq[:, 20:40], seq[:, :20])
    assert (seq[:, :20] != seq[:1, :20]).any()  # rows differ


def test_bundled_copy_checkpoint_copies_unseen_sequences():
    ck = load_checkpoint(CHECKPOINT)
    context = ck.training["context"]
    acc, by_position = copy_accuracy(ck.model, context, n_seqs=4, device="cpu", seed=987)
    assert acc >= 0.99, by_position
    # And it is the context that does it: with the first half shuffled the copy fails.
    g = torch.Generator().manual_seed(5)
    seq = copy_batch(2, context, g, "cpu")
    half = context // 2
    scrambled = torch.cat([seq[:, :half][:, torch.randperm(half, generator=g)], seq[:, half:]], 1)
    with torch.no_grad():
        pred = ck.model(scrambled[:, :-1]).argmax(-1)
    n = pred.shape[1]
    assert (pred == scrambled[:, -n:]).float().mean() < 0.5
