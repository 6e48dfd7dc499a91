"""Colour tags and hue rotation (perceiverar/data/colour_augment.py) on hand-made palette items and real emoji."""

from __future__ import annotations

import numpy as np
import pytest

from perceiverar.data.colour_augment import ANGLES, ColourAugment
from tokenizers_mm.colours import COLOUR_NAMES, colour_names, rotate_hue
from tokenizers_mm.vocab import BOS, IMAGE_END, NUM_OFFSET, PALETTE_BEGIN, PIXEL_OFFSET, SEP, TEXT_BEGIN, TEXT_END

# white, red, green, blue, yellow, black: hue turns of red land on the others' hues
PALETTE = np.array([[255, 255, 255], [220, 20, 20], [20, 220, 20], [20, 20, 220], [220, 220, 20], [10, 10, 10]], np.uint8)


def item(caption: str, pixels: list[int]) -> tuple[np.ndarray, int]:
    cap = list(caption.encode())
    ids = [BOS, TEXT_BEGIN, *cap, TEXT_END, SEP, PALETTE_BEGIN, NUM_OFFSET + 4, NUM_OFFSET + 4,
           *(PIXEL_OFFSET + p for p in pixels), IMAGE_END]  # fmt: skip
    return np.array(ids, dtype=np.int64), len(cap)


def caption_of(ids: np.ndarray, plen: int) -> str:
    return ids[2 : 2 + plen].astype(np.uint8).tobytes().decode()


def pixels_of(ids: np.ndarray) -> np.ndarray:
    return ids[-17:-1] - PIXEL_OFFSET


RED_HEART = [0] * 8 + [1] * 8  # half white, half red


def test_rotate_hue_turns_hue_and_keeps_the_rest():
    rgb = np.array([[220, 20, 20], [128, 128, 128], [255, 255, 255]], np.uint8)
    names = [COLOUR_NAMES[i] if i >= 0 else "-" for i in colour_names(rotate_hue(rgb, 120))]
    assert names == ["green", "grey", "-"]  # greys and white have no hue to turn
    assert [COLOUR_NAMES[i] for i in colour_names(rotate_hue(rgb[:1], 240))] == ["blue"]
    assert np.abs(rotate_hue(rgb, 360).astype(int) - rgb).max() <= 1  # a full turn is the identity


def test_tag_names_the_dominant_colour_and_keeps_colour_words():
    aug = ColourAugment(PALETTE, tag_prob=1.0)
    ids, plen = item("heart; symbols", RED_HEART)
    out, n = aug.apply(np.random.default_rng(0), ids, plen)
    assert caption_of(out, n) == "red heart; symbols" and np.array_equal(pixels_of(out), RED_HEART)
    assert np.array_equal(out[2 + n :], ids[2 + plen :])  # everything after the caption is untouched
    ids, plen = item("blue heart; symbols", RED_HEART)  # already names a colour: left as it is
    assert caption_of(*aug.apply(np.random.default_rng(0), ids, plen)) == "blue heart; symbols"
    ids, plen = item("blank", [0] * 16)  # nothing drawn: no dominant colour, no tag
    assert caption_of(*aug.apply(np.random.default_rng(0), ids, plen)) == "blank"
    off = ColourAugment(PALETTE, tag_prob=0.0)
    ids, plen = item("heart; symbols", RED_HEART)
    assert caption_of(*off.apply(np.random.default_rng(0), ids, plen)) == "heart; symbols"


@pytest.mark.parametrize("name", ["red heart", "heart"])
def test_rotation_turns_the_pixels_and_the_caption_says_the_new_colour(name):
    aug = ColourAugment(PALETTE, rotate_prob=1.0)
    seen = set()
    for seed in range(40):
        ids, plen = item(f"{name}; symbols", RED_HEART)
        out, n = aug.apply(np.random.default_rng(seed), ids, plen)
        cap, px = caption_of(out, n), pixels_of(out)
        colour = aug.dominant(px)
        assert (px == 0).sum() == 8  # the white background stays white
        assert cap == f"{colour} heart; symbols"  # the colour word (replaced or put in front) is the new one
        seen.add(colour)
    assert {"red", "green", "blue", "yellow"} <= seen  # several turns were drawn


def test_rotation_skips_captions_it_would_make_false_and_rows_without_caption():
    aug = ColourAugment(PALETTE, rotate_prob=1.0)
    ids, plen = item("heavy black heart", RED_HEART)  # the name's colour is not the image's: never turned
    for seed in range(10):
        out, n = aug.apply(np.random.default_rng(seed), ids, plen)
        assert np.array_equal(out, ids) and n == plen
    ids, _ = item("", RED_HEART)
    out, n = aug.apply(np.random.default_rng(0), ids, 0)
    assert np.array_equal(out, ids) and n == 0


def test_same_draws_whatever_it_does():
    """Three draws per call, so the rest of a batch is the same whichever branch a row takes."""
    aug = ColourAugment(PALETTE, tag_prob=0.5, rotate_prob=0.5)
    for caption, px in (("heart", RED_HEART), ("blank", [0] * 16), ("", RED_HEART)):
        ids, plen = item(caption, px)
        rng = np.random.default_rng(1)
        aug.apply(rng, ids, plen)
        assert rng.random() == np.random.default_rng(1).random(4)[3]


def test_turn_tables_map_palette_to_palette():
    aug = ColourAugment(PALETTE, rotate_prob=1.0)
    assert aug.turns.shape == (len(ANGLES), len(PALETTE)) and (aug.turns[:, 0] == 0).all() and (aug.turns[:, 5] == 5).all()
    assert aug.turns[ANGLES.index(120), 1] == 2 and aug.turns[ANGLES.index(240), 1] == 3  # red -> green -> blue


def test_recolour_targets_are_named_as_they_say():
    from perceiverar.data.colour_augment import TARGETS

    rgb = np.array(list(TARGETS.values()), np.uint8)
    assert [COLOUR_NAMES[i] for i in colour_names(rgb)] == list(TARGETS)


@pytest.mark.parametrize("file", ["google/1f499.png", "twitter/1f499.png", "twitter/1f7e5.png"])
def test_recolour_moves_real_emoji_to_every_named_colour(shared_data, file):
    """A real blue heart (and a red square) recoloured with the bundled checkpoint's palette: the caption names
    the new colour, which the pixels' dominant colour agrees with; the background is untouched."""
    import json
    from pathlib import Path

    from perceiverar.data.colour_augment import TARGETS
    from tokenizers_mm.image import ImageTokenizer
    from tokenizers_mm.vocab import build_sequence, split_sequence

    root = Path(__file__).resolve().parents[2]
    tok = ImageTokenizer.from_dict(json.loads((root / "checkpoints/emoji/config.json").read_text())["tokenizer"]["image"])
    name = {"1f499": "blue heart", "1f7e5": "large red square"}[file.split("/")[1][:5]]
    ids = np.array(build_sequence(f"{name}; symbols", "image", tok.encode(shared_data / "emoji" / file), height=16,
                                  width=16, image_mode=tok.mode))  # fmt: skip
    plen = len(f"{name}; symbols")
    aug = ColourAugment(tok.palette, recolour_prob=1.0)
    background = ids == PIXEL_OFFSET + int(np.flatnonzero(aug.names < 0)[0])  # one near-white palette colour
    made = set()
    for seed in range(60):
        out, n = aug.apply(np.random.default_rng(seed), ids, plen)
        if n == plen:
            continue  # a recolouring that did not come out as its target: left alone
        cap = caption_of(out, n)
        target = cap.split(" ")[0] if not cap.startswith("large ") else cap.split(" ")[1]
        assert target in TARGETS and cap.replace(target, "", 1) == f"{name}; symbols".replace(name.split()[-2], "", 1)
        px = np.array(split_sequence(out).target[-16 * 16 :]) - PIXEL_OFFSET  # the pixels (after the sketch)
        assert aug.dominant(px) == target
        assert np.array_equal(out[2 + n :][background[2 + plen :]], ids[2 + plen :][background[2 + plen :]])
        made.add(target)
    assert len(made) >= 8, made  # most of the 10 other colours, black, grey, white and brown among them
    assert {"black", "brown"} <= made


def test_recolour_draws_five_numbers_whatever_it_does():
    aug = ColourAugment(PALETTE, tag_prob=0.5, rotate_prob=0.5, recolour_prob=0.5)
    for caption, px in (("heart", RED_HEART), ("blank", [0] * 16), ("", RED_HEART)):
        ids, plen = item(caption, px)
        rng = np.random.default_rng(1)
        aug.apply(rng, ids, plen)
        assert rng.random() == np.random.default_rng(1).random(6)[5]
