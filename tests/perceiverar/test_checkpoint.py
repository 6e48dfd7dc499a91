"""Checkpoint round trips and the errors for broken checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

from perceiverar import CheckpointError, PerceiverAR, PerceiverARConfig, load_checkpoint, save_checkpoint


def _model():
    torch.manual_seed(0)
    m = PerceiverAR(PerceiverARConfig.preset("debug"))
    torch.nn.init.normal_(m.head.weight, std=0.02)
    return m.eval()


def test_round_trip_identical_logits(tmp_path):
    m = _model()
    tok_cfg = {"kind": "image", "height": 8, "width": 8}
    path = save_checkpoint(tmp_path / "ck", m, tok_cfg, training={"step": 7})
    ck = load_checkpoint(path)
    assert ck.tokenizer == tok_cfg and ck.training == {"step": 7} and ck.config == m.cfg
    x = torch.randint(0, m.cfg.vocab_size, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), m(x), atol=0, rtol=0)


def test_bf16_storage_halves_size(tmp_path):
    m = _model()
    a = save_checkpoint(tmp_path / "a", m)
    b = save_checkpoint(tmp_path / "b", m, dtype=torch.bfloat16)
    sa, sb = (os.path.getsize(p / "model.safetensors") for p in (a, b))
    assert sb < 0.55 * sa
    ck = load_checkpoint(b)
    x = torch.randint(0, m.cfg.vocab_size, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), m(x), atol=5e-2, rtol=5e-2)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "ck", m, training={"step": 1})

    def fail(_tmp):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", m, training={"step": 2}, extra_files=fail)
    assert load_checkpoint(tmp_path / "ck").training == {"step": 1}  # the old checkpoint survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no half-written directory left
    save_checkpoint(tmp_path / "ck", m, training={"step": 3})
    assert load_checkpoint(tmp_path / "ck").training == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "empty")


def test_corrupt_weights(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(path)


def test_corrupt_config(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_checkpoint(path)


def test_mismatched_config(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["width"] = 96
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(path)
    meta["model"]["width"] = 64
    meta["model"]["n_layers"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its config.json: missing"):
        load_checkpoint(path)
    meta["model"]["n_layers"] = 2
    meta["model"]["bogus"] = 1
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        load_checkpoint(path)
    meta["format_version"] = 99
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path)


def test_checkpoint_is_readable_by_others(tmp_path):
    # A checkpoint made for sharing (bundled, or served by the app as another user) must not be owner-only.
    path = save_checkpoint(tmp_path / "ck", _model())
    assert path.stat().st_mode & 0o755 == 0o755
    for f in path.iterdir():
        assert f.stat().st_mode & 0o644 == 0o644, f
