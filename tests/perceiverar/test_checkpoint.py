"""Checkpoint round trips and the errors for broken checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from perceiverar import CheckpointError, PerceiverAR, PerceiverARConfig, load_checkpoint, save_checkpoint
from perceiverar import checkpoint as C


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


# ------------------------------------------------------------------------------ interrupted saves


def _saved_step(path: Path) -> int:
    return load_checkpoint(path).training["step"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_crash_at_any_stage_of_a_save_leaves_a_checkpoint(tmp_path, monkeypatch, exchange):
    """Stop a replacing save at each stage (as a kill would), then recover: the old or the new checkpoint is in
    place, whole, and no temp folder is left."""
    m = _model()
    if not exchange:  # where renameat2(RENAME_EXCHANGE) is missing (not Linux, NFS): the two-rename fallback
        monkeypatch.setattr(C, "_exchange", lambda a, b: False)
    stages = ["written", "swapped"] if exchange else ["written", "staged", "detached", "swapped"]
    for stage in stages:
        final = tmp_path / stage / "best"
        save_checkpoint(final, m, training={"step": 1})

        def crash(at, path, stage=stage):
            if at == stage:
                raise KeyboardInterrupt  # BaseException: nothing below it runs, like a kill (no cleanup is reached)

        monkeypatch.setattr(C, "_save_hook", crash)
        monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # a kill cleans nothing up
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(final, m, training={"step": 2})
        monkeypatch.undo()
        if not exchange:
            monkeypatch.setattr(C, "_exchange", lambda a, b: False)
        leftovers = [p.name for p in final.parent.iterdir() if p.name != "best"]
        assert leftovers, stage  # the crash left something to clean up
        if stage == "detached":
            assert not final.exists()  # the dangerous moment: between the two renames there is no 'best'
        done = C.recover_checkpoint_dir(final)
        assert done and [p.name for p in final.parent.iterdir()] == ["best"], (stage, done)
        assert _saved_step(final) == (1 if stage in ("written", "staged") else 2), stage


def test_exchange_swaps_directories_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not C._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# ------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("bad, match", [
    (dict(head_dim=-2), "head_dim must be in"),
    (dict(mlp_ratio=-1.0), "mlp_ratio must be a number"),
    (dict(feature_sizes=[-1, 4, 4]), "feature_sizes must be a list of integers"),
    (dict(feature_sizes="abc"), "feature_sizes must be a list of integers"),
    (dict(width=64.5), "width must be an integer"),
    (dict(n_layers="2"), "n_layers must be an integer"),
    (dict(n_layers=10**9), "n_layers must be in"),
    (dict(width=10**7), "width must be in"),
    (dict(width=1 << 16), "B parameters"),
    (dict(dropout=float("nan")), "dropout must be a number"),
    (dict(attn_bias="yes"), "attn_bias must be true or false"),
])  # fmt: skip
def test_config_rejects_bad_types_and_absurd_sizes(bad, match):
    with pytest.raises(ValueError, match=match):
        PerceiverARConfig.preset("debug", **bad)


def _edit_config(path: Path, edit) -> None:
    meta = json.loads((path / "config.json").read_text())
    edit(meta)
    (path / "config.json").write_text(json.dumps(meta))


def test_config_checked_against_the_weights_before_the_model_is_built(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    # 1,000 layers of width 4,096 would take ~800 GB to build: the header says otherwise, and nothing is allocated
    _edit_config(path, lambda m: m["model"].update(n_layers=1000, width=4096))
    with pytest.raises(CheckpointError, match="invalid model config.*B parameters"):
        load_checkpoint(path)
    _edit_config(path, lambda m: m["model"].update(n_layers=500, width=64))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not match its config.json: missing"):
        load_checkpoint(path)
    assert time.perf_counter() - t0 < 10
    _edit_config(path, lambda m: m["model"].update(n_layers=2, head_dim=-32))
    with pytest.raises(CheckpointError, match="head_dim must be in"):
        load_checkpoint(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(tokenizer="image"), "'tokenizer' section must be a JSON object, got str"),
    (lambda m: m.update(training=[1]), "'training' section must be a JSON object"),
    (lambda m: m.update(model="debug"), "'model' section must be a JSON object"),
    (lambda m: m["tokenizer"].update(image="32x32"), "tokenizer.image must be a JSON object"),
    (lambda m: m["tokenizer"].update(modalities="image"), "tokenizer.modalities must be a list"),
    (lambda m: m["tokenizer"].update(audio={"dir": "../../elsewhere"}), "points outside the checkpoint folder"),
    (lambda m: m["tokenizer"].update(audio={"dir": "/etc"}), "points outside the checkpoint folder"),
])  # fmt: skip
def test_tokenizer_section_is_validated(tmp_path, edit, match):
    path = save_checkpoint(tmp_path / "ck", _model(), {"modalities": ["text"]})
    _edit_config(path, edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
