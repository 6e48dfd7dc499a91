"""benchmarks/recall_task.py: the recall sequences, the distance sampler and the accuracy it reports."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmarks import recall_task as R
from perceiverar import PerceiverAR
from benchmarks.copy_task import copy_config


def test_recall_batch_layout():
    g = torch.Generator().manual_seed(0)
    tokens, mask = R.recall_batch(4, 50, g, "cpu")
    S = R.SLOTS
    assert tokens.shape == mask.shape == (4, 2 * S + 50 + 1)
    caption = tokens[:, :S]
    torch.testing.assert_close(tokens[:, -S:], caption)  # the recall repeats the caption
    # slot i draws from its own alphabet; the filler from a disjoint one; then the marker
    assert ((caption // R.ALPHABET) == torch.arange(S)).all()
    filler = tokens[:, S : S + 50]
    assert (filler >= R.FILLER_LO).all() and (filler < R.MARKER).all()
    assert (tokens[:, S + 50] == R.MARKER).all()
    assert mask[:, -S:].all() and not mask[:, :-S].any()  # the loss is on the recall only
    assert (caption != caption[:1]).any()  # rows differ


def test_distances_cover_every_scale():
    g = torch.Generator().manual_seed(0)
    ds = [R.sample_distance(4096, g) for _ in range(2000)]
    hi = 4096 - 2 * R.SLOTS - 1
    assert min(ds) >= 0 and max(ds) <= hi
    # log-uniform: about as many below 64 as between 64 and the top
    assert 0.3 < sum(d < 64 for d in ds) / len(ds) < 0.7
    assert sum(d > 1024 for d in ds) > 100


def test_recall_accuracy_matches_a_direct_computation():
    torch.manual_seed(0)
    model = PerceiverAR(copy_config(256, 32, 64, 1)).eval()
    with torch.no_grad():  # the output head starts at zero: give it some size
        model.head.weight.normal_(0, 0.5)
    acc, bits = R.recall_accuracy(model, 100, 6, "cpu", seed=7)
    tokens, _ = R.recall_batch(6, 100, torch.Generator().manual_seed(7 + 100), "cpu")
    with torch.no_grad():
        logits = model(tokens[:, :-1])[:, -R.SLOTS :].float()
    target = tokens[:, -R.SLOTS :]
    assert math.isclose(acc, (logits.argmax(-1) == target).float().mean().item())
    want = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target).item() / math.log(2)
    assert math.isclose(bits, want, rel_tol=1e-5)
    with pytest.raises(ValueError, match="raise --eval-context"):
        R.recall_accuracy(model, 300, 2, "cpu")


CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "recall"


def test_bundled_recall_checkpoint_recalls_a_caption_from_60000_tokens_away():
    from perceiverar import load_checkpoint

    model = load_checkpoint(CHECKPOINT).model.float().eval()
    assert model.cfg.context_len == 65536
    distance = 60000
    acc, bits = R.recall_accuracy(model, distance, 3, "cpu", seed=99)
    assert acc >= 0.95 and bits < 0.5, (acc, bits)
    # And it is the caption that does it: replace it with another one and the recall follows the new caption,
    # so it no longer matches the original one.
    tokens, _ = R.recall_batch(3, distance, torch.Generator().manual_seed(99 + distance), "cpu")
    other = torch.roll(tokens[:, : R.SLOTS], 1, dims=0)  # another row's caption
    swapped = torch.cat([other, tokens[:, R.SLOTS :]], 1)
    with torch.no_grad():
        pred = model(swapped[:, :-1])[:, -R.SLOTS :].argmax(-1)
    assert (pred == tokens[:, -R.SLOTS :]).float().mean() < 0.5
    assert (pred == other).float().mean() > 0.9


def test_cli_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        R.main(["--checkpoint", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="not a recall-task checkpoint"):
        R.main(["--checkpoint", str(CHECKPOINT.parent / "copy")])
    with pytest.raises(SystemExit, match=r"distances \[70000\] are outside 0..65,519"):
        R.main(["--checkpoint", str(CHECKPOINT), "--distances", "70000", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()  # nothing written for a refused run
