"""benchmarks/image_quality.py and its parts: colour names, blank images, the classifier, whole runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import image_classifier as IC
from benchmarks import image_measures as IM
from benchmarks import image_quality as IQ
from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
from perceiverar.data import caption_from, is_val
from perceiverar.pipeline import make_tokenizer_config
from tokenizers_mm.image import ImageTokenizer

ROOT = Path(__file__).resolve().parents[2]
SOLID = {  # typical emoji colours (Noto / Twemoji fills and a few others) and their names
    "red": (221, 46, 68), "orange": (244, 144, 12), "yellow": (253, 203, 88), "green": (120, 177, 89),
    "blue": (85, 172, 238), "purple": (170, 142, 214), "pink": (247, 152, 184), "brown": (193, 105, 79),
    "black": (41, 47, 51), "white": (225, 232, 237), "grey": (150, 150, 150),
}  # fmt: skip


def canvas(colour=None, frac: float = 0.5, size: int = 16) -> np.ndarray:
    """A white size x size image with a centred square of ``colour`` covering about ``frac`` of it."""
    a = np.full((size, size, 3), 255, np.uint8)
    if colour is not None:
        side = max(1, round(size * frac**0.5))
        o = (size - side) // 2
        a[o : o + side, o : o + side] = colour
    return a


@pytest.mark.parametrize("name", sorted(SOLID))
@pytest.mark.parametrize("frac", [0.3, 1.0])
def test_solid_colours_get_their_name(name, frac):
    img = canvas(SOLID[name], frac)
    assert IM.dominant_colour(img) == name
    assert IM.colour_shares(img) == {name: 1.0}


def test_hue_boundaries_and_lightness_rules():
    name = lambda rgb: IM.dominant_colour(canvas(rgb))  # noqa: E731
    assert name((255, 0, 0)) == "red" and name((0, 255, 0)) == "green" and name((0, 0, 255)) == "blue"
    assert name((255, 255, 0)) == "yellow" and name((255, 128, 0)) == "orange" and name((0, 255, 255)) == "blue"
    assert name((128, 0, 255)) == "purple" and name((255, 0, 200)) == "pink"
    assert name((255, 170, 170)) == "pink"  # a light red
    assert name((120, 60, 30)) == "brown" and name((200, 110, 80)) == "brown"  # dark / muted orange-red
    assert name((10, 10, 50)) == "black" and name((10, 10, 90)) == "blue"  # V < 0.25: too dark to have a colour
    assert name((70, 70, 70)) == "black" and name((210, 210, 210)) == "white"


def test_blank_images():
    assert IM.is_blank(canvas()) and IM.dominant_colour(canvas()) == "none" and IM.colour_shares(canvas()) == {}
    one_dot = canvas()
    one_dot[3, 3] = (255, 0, 0)  # 1 pixel of 256 (0.4%): still blank
    assert IM.is_blank(one_dot)
    rng = np.random.default_rng(0)
    assert IM.is_blank(rng.integers(IM.NEAR_WHITE, 256, (16, 16, 3), dtype=np.uint8))  # faint noise
    assert not IM.is_blank(canvas((0, 0, 0), 0.1)) and not IM.is_blank(canvas(SOLID["white"], 0.1))
    red = canvas((220, 30, 40), 1.0)
    assert not IM.is_blank(red) and IM.is_uniform(red) and IM.is_uniform(canvas())
    noise = rng.integers(0, IM.NEAR_WHITE, (16, 16, 3), dtype=np.uint8)
    assert not IM.is_blank(noise) and not IM.is_uniform(noise) and not IM.is_uniform(canvas((0, 0, 0), 0.5))
    with pytest.raises(ValueError, match="uint8 RGB"):
        IM.is_blank(np.zeros((4, 4), np.uint8))


def test_colour_words_in_captions():
    cw = IM.colour_word
    assert cw("large red circle") == ("red", "circle") and cw("green book") == ("green", "book")
    assert cw("light blue heart") == ("blue", "heart") and cw("black small square") == ("black", "square")
    assert cw("white medium small square") == ("white", "square") and cw("medium white circle") == ("white", "circle")
    for other in ("heavy black heart", "couple with heart", "notebook", "red apple", "large red circle button"):
        assert cw(other) is None


def test_real_colour_word_emoji_get_their_colour(shared_data):
    """The sanity reference: every real colour-word emoji is named its colour at the sizes we train."""
    recs = IQ.pick_colour(IC.read_records(shared_data / "emoji"), 1000)
    assert len(recs) >= 60 and {r["shape"] for r in recs} == {"heart", "circle", "square", "book"}
    assert {r["colour"] for r in recs} == {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
                                           "black", "white"}  # fmt: skip
    for size in (16, 32):
        imgs = IC.load_images(shared_data / "emoji", recs, ImageTokenizer(size, size))
        named = [IM.dominant_colour(a) for a in imgs]
        wrong = [(r["text"], r["style"], n) for r, n in zip(recs, named) if n != r["colour"]]
        assert not wrong, wrong
        assert not any(IM.is_blank(a) for a in imgs)


def test_skin_tones():
    st = IC.skin_tone
    assert st("grinning face; smileys & emotion") == "none"
    assert st("thumbs up: medium-dark skin tone; people") == "medium-dark"
    assert st("thumbs up: medium skin tone; people") == "medium" and st("x: dark skin tone") == "dark"
    assert st("kiss: light skin tone and light skin tone; people") == "light"
    assert st("kiss: light skin tone and medium-light skin tone; people") == "mixed"


def small_folder(src: Path, dst: Path, n_train: int = 24, n_val: int = 6, extra: tuple[str, ...] = ()) -> list[dict]:
    """A copy of a few emoji (train and held-out, several categories) with their captions.jsonl lines."""
    recs = [json.loads(x) for x in (src / "captions.jsonl").read_text().splitlines()]
    val = [r for r in recs if is_val(r["file"])]
    val = [val[i] for i in np.linspace(0, len(val) - 1, n_val).astype(int)]
    train = [r for r in recs if not is_val(r["file"])]
    train = [train[i] for i in np.linspace(0, len(train) - 1, n_train).astype(int)]
    train += [r for r in recs if r["text"].split(";")[0] in extra and r not in train]
    keep = train + val
    for r in keep:
        (dst / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["file"], dst / r["file"])
    (dst / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    return keep


def test_classifier_data_fit_and_cache(shared_data, tmp_path):
    keep = small_folder(shared_data / "emoji", tmp_path / "emoji")
    (tmp_path / "emoji" / "captions.jsonl").write_text(  # a listed file that is missing is left out
        (tmp_path / "emoji" / "captions.jsonl").read_text() + json.dumps({**keep[0], "file": "google/none.png"}) + "\n")
    recs = IC.read_records(tmp_path / "emoji")
    assert [r["file"] for r in recs] == [r["file"] for r in keep]
    assert [r["val"] for r in recs] == [is_val(r["file"]) for r in keep] and sum(r["val"] for r in recs) == 6
    assert all(r["labels"] == {"category": r["category"], "style": r["style"], "tone": IC.skin_tone(r["text"])}
               for r in recs)  # fmt: skip
    tok = ImageTokenizer(8, 8)
    imgs = IC.load_images(tmp_path / "emoji", recs, tok)
    assert imgs.shape == (len(recs), 8, 8, 3) and imgs.dtype == np.uint8
    assert np.array_equal(imgs[3], np.asarray(tok.preprocess(tmp_path / "emoji" / recs[3]["file"])))
    settings = IC.FitSettings(epochs=2)
    clf, info = IC.fit_or_load(tmp_path / "emoji", recs, tok, settings=settings, cache_root=tmp_path / "c",
                               log=lambda m: None)  # fmt: skip
    train = [r for r in recs if not r["val"]]
    assert not info["cached"] and info["train_images"] == len(train) and Path(info["cache"]).is_file()
    assert clf.classes["style"] == sorted({r["style"] for r in train})
    pred = clf.predict(imgs)
    assert {t: len(p) for t, p in pred.items()} == {t: len(recs) for t in IC.TASKS}
    assert all(p in clf.classes[t] for t in IC.TASKS for p in pred[t])
    again, info2 = IC.fit_or_load(tmp_path / "emoji", recs, tok, settings=settings, cache_root=tmp_path / "c")
    assert info2["cached"] and info2["cache"] == info["cache"] and again.predict(imgs) == pred
    assert IC.cache_key(tmp_path / "emoji", train, ImageTokenizer(16, 16), settings) != Path(info["cache"]).stem
    first = tmp_path / "emoji" / train[0]["file"]
    os.utime(first, (1, 1))  # a re-copied folder (new mtimes, same bytes) finds the same fit
    assert IC.cache_key(tmp_path / "emoji", train, tok, settings) == Path(info["cache"]).stem
    first.write_bytes(first.read_bytes() + b"\0")  # changed contents: another fit
    assert IC.cache_key(tmp_path / "emoji", train, tok, settings) != Path(info["cache"]).stem
    acc = IC.accuracy(pred, [r["labels"] for r in recs])
    assert all(0 <= a["correct"] <= a["n"] == len(recs) for a in acc.values())
    with pytest.raises(ValueError, match=r"\(n, 8, 8, 3\)"):
        clf.predict(np.zeros((2, 16, 16, 3), np.uint8))


def test_pick_val_is_round_robin_over_categories(shared_data):
    recs = IC.read_records(shared_data / "emoji")
    picked = IQ.pick_val(recs, 18, seed=0)
    assert len(picked) == 18 and all(r["val"] for r in picked) and len({r["file"] for r in picked}) == 18
    counts = Counter(r["category"] for r in picked)
    assert len(counts) == 9 and set(counts.values()) == {2}  # 9 categories have val images: two each
    assert IQ.pick_val(recs, 18, seed=0) == picked and IQ.pick_val(recs, 18, seed=1) != picked
    assert len(IQ.pick_val(recs, 10_000)) == sum(r["val"] for r in recs)


def tiny_checkpoint(path: Path, size: int = 4) -> Path:
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=512, n_latents=16))
    tok = make_tokenizer_config(["image"], height=size, width=size)
    tok["caption_template"] = "{text}; {style} style"
    return save_checkpoint(path, model, tok)


def test_a_whole_run_on_a_tiny_model(shared_data, tmp_path):
    data = tmp_path / "emoji"
    small_folder(shared_data / "emoji", data, extra=("large blue circle", "green book"))
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "res" / "iq.json"
    res = IQ.main(["--checkpoint", str(ckpt), "--data", str(data), "--n-captions", "3", "--n-colour", "2",
                   "--samples", "2", "--bits-items", "2", "--grid", "2", "--cache-dir", str(tmp_path / "tok"),
                   "--classifier-cache", str(tmp_path / "clf"), "--classifier-epochs", "3", "--out", str(out),
                   "--top-k", "0"])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["settings"] == res["settings"] and saved["device"].startswith("CPU")
    assert res["image"] == {"height": 4, "width": 4, "mode": "subpixel"} and res["generated_images"] == (3 + 2) * 2
    assert res["settings"]["top_k"] == 0 and res["settings"]["top_p"] == 0.95  # set vs the checkpoint's default
    cls = res["classifier"]
    assert cls["fit"]["epochs"] == 3 and not cls["cached"]
    assert cls["generated"]["category"]["n"] == 6 and cls["real_picked"]["category"]["n"] == 3
    assert cls["real_val_all"]["style"]["n"] == 6
    assert len(res["per_caption"]) == 3 and all(len(r["generated_pred"]) == 2 for r in res["per_caption"])
    assert res["per_caption"][0]["prompt"].endswith(" style")
    assert res["blank"]["generated_non_blank"]["n"] == 10
    cw = res["colour_words"]
    assert {r["name"] for r in cw["per_prompt"]} <= {"large blue circle", "green book"} and cw["real"]["share"] == 1.0
    lk = res["likelihood"]
    assert lk["unit"].startswith("bits per sub-pixel") and lk["tokens_scored"] == 2 * 4 * 4 * 3 and lk["items"] == 2
    assert 0 < lk["bits"] < 20
    assert 0 < lk["webp_lossless_bitstream_bits_per_subpixel"] < lk["webp_lossless_bits_per_subpixel"]
    assert set(res["targets"]) == {"category_generated_over_real", "non_blank_share", "colour_matched_share",
                                   "bits_per_subpixel_below_webp",
                                   "bits_per_subpixel_below_webp_bitstream"}  # fmt: skip
    assert all(t["pass"] in (True, False, None) for t in res["targets"].values())
    assert Path(res["grid"]).is_file() and Path(res["grid"]).suffix == ".png"


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        IQ.main(["--checkpoint", "x", "--samples", "0"])
    assert "--samples, --n-captions and --classifier-epochs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="image_quality: error: .*does not exist"):
        IQ.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")])


@pytest.mark.slow
def test_the_bundled_emoji_checkpoint_end_to_end(shared_data, tmp_path):
    """Two held-out captions, one image each, through the shipped checkpoint (32x32 sub-pixel: ~90 s on CPU)."""
    data = tmp_path / "emoji"
    small_folder(shared_data / "emoji", data)
    t0 = time.perf_counter()
    res = IQ.main(["--checkpoint", str(ROOT / "checkpoints" / "emoji"), "--data", str(data), "--n-captions", "2",
                   "--n-colour", "0", "--samples", "1", "--bits-items", "1", "--grid", "2",
                   "--cache-dir", str(tmp_path / "tok"), "--classifier-cache", str(tmp_path / "clf"),
                   "--classifier-epochs", "3", "--out", str(tmp_path / "iq.json")])  # fmt: skip
    assert res["generated_images"] == 2 and res["colour_words"] is None
    assert res["classifier"]["generated"]["category"]["n"] == 2 and res["likelihood"]["items"] == 1
    assert res["targets"]["colour_matched_share"]["pass"] is None
    print(f"bundled checkpoint, 2 images: {time.perf_counter() - t0:.0f} s")


def test_webp_bits_whole_files_and_bitstream():
    """Whole files are the bitstream plus the 25 bytes of RIFF and VP8L headers, per image; a flat image costs
    far less than noise; the count is per sub-pixel."""
    rng = np.random.default_rng(0)
    flat = np.full((16, 16, 3), 200, np.uint8)
    noise = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for img in (flat, noise):
        whole, stream = IQ.webp_bits([img])
        assert whole - stream == pytest.approx(8 * 25 / img.size, abs=8 * 1 / img.size)  # RIFF pads to even sizes
    assert IQ.webp_bits([flat])[1] < 0.2 < 7.5 < IQ.webp_bits([noise])[1]
    both = IQ.webp_bits([flat, noise])[1]
    assert both == pytest.approx((IQ.webp_bits([flat])[1] + IQ.webp_bits([noise])[1]) / 2)


LOSSLESS = ROOT / "checkpoints" / "emoji-lossless"


@pytest.mark.skipif(not (LOSSLESS / "model.safetensors").is_file(), reason="checkpoints/emoji-lossless is missing")
def test_the_bundled_lossless_emoji_checkpoint_beats_webp_on_held_out_emoji(shared_data, tmp_path):
    """The sub-pixel checkpoint: 12 held-out emoji cost fewer bits than lossless WebP's bitstream of the same
    16x16 images (issue 18's sub-pixel target), and it draws a 16x16 picture that is not blank."""
    from perceiverar import Pipeline  # noqa: PLC0415

    data = tmp_path / "emoji"
    keep = small_folder(shared_data / "emoji", data, n_train=2, n_val=12)
    pipe = Pipeline.load(LOSSLESS, device="cpu")
    tok = pipe.image_tokenizer()
    assert tok.mode == "subpixel" and (tok.height, tok.width) == (16, 16)
    lk = IQ.likelihood(pipe, LOSSLESS, data, 12, tmp_path / "tok", "subpixel", tok)
    assert lk["items"] == 12 and lk["tokens_scored"] == 12 * 16 * 16 * 3
    assert lk["bits"] < lk["webp_lossless_bitstream_bits_per_subpixel"] < lk["webp_lossless_bits_per_subpixel"]
    caption = caption_from(keep[-1], pipe.config["caption_template"])  # a held-out caption
    (img,) = pipe.generate_image(caption, num_samples=1, seed=0)
    assert img.size == (16, 16) and not IM.is_blank(np.asarray(img.convert("RGB")))
