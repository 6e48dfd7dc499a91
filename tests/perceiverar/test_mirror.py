"""Left-right flips of image items (perceiverar/data/mirror.py): the flipped ids decode to the flipped picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from perceiverar.data.mirror import Mirror, mirror_image_section
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.vocab import build_sequence, split_sequence

PALETTE = np.array([[255, 255, 255], [220, 20, 20], [20, 220, 20], [20, 20, 220], [10, 10, 10]], np.uint8)


def picture(seed: int = 0) -> Image.Image:
    """An 8x12 picture of palette colours with no left-right symmetry."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(PALETTE[rng.integers(len(PALETTE), size=(8, 12))])


@pytest.mark.parametrize("mode", ["subpixel", "palette", "sketch"])
def test_mirrored_ids_decode_to_the_mirrored_picture(mode):
    tok = ImageTokenizer(8, 12, mode=mode, palette=None if mode == "subpixel" else PALETTE)
    img = picture()
    ids = np.array(build_sequence("a face", "image", tok.encode(img), height=8, width=12, image_mode=mode))
    out = mirror_image_section(ids)
    assert not np.array_equal(out, ids)
    # the whole sequence equals the one built from the flipped picture: caption, header, sketch, pixels, end
    want = build_sequence("a face", "image", tok.encode(ImageOps.mirror(img)), height=8, width=12, image_mode=mode)
    assert out.tolist() == want
    assert np.array_equal(mirror_image_section(out), ids)  # twice is the identity
    assert np.array_equal(np.asarray(tok.decode(split_sequence(out).target)), np.asarray(ImageOps.mirror(img)))


def test_partial_or_missing_sections_are_left_alone():
    tok = ImageTokenizer(8, 12, mode="palette", palette=PALETTE)
    ids = np.array(build_sequence("a face", "image", tok.encode(picture()), height=8, width=12, image_mode="palette"))
    assert np.array_equal(mirror_image_section(ids[:40]), ids[:40])  # the pixels cut short
    text = np.array(build_sequence("to be or not", "text"))
    assert np.array_equal(mirror_image_section(text), text)


def test_captions_that_name_a_direction_are_never_flipped():
    tok = ImageTokenizer(8, 12, mode="palette", palette=PALETTE)
    pixels = tok.encode(picture())

    def row(caption):
        ids = np.array(build_sequence(caption, "image", pixels, height=8, width=12, image_mode="palette"))
        return ids, len(caption.encode())

    always = Mirror(1.0)
    for caption in ("person walking facing right", "left arrow", "flag: Japan; flags", "three o’clock",
                    "A button (blood type); symbols", "keycap: 1"):  # fmt: skip
        ids, plen = row(caption)
        assert np.array_equal(always.apply(np.random.default_rng(0), ids, plen), ids), caption
    ids, plen = row("grinning face; smileys & emotion")
    assert not np.array_equal(always.apply(np.random.default_rng(0), ids, plen), ids)
    assert np.array_equal(always.apply(np.random.default_rng(0), ids, 0), ids)  # no caption: never flipped
    never = Mirror(0.0)
    assert np.array_equal(never.apply(np.random.default_rng(0), ids, plen), ids)
    # about half of the rows at 0.5, and the draw count does not depend on the outcome
    half = Mirror(0.5)
    rng = np.random.default_rng(1)
    flips = sum(not np.array_equal(half.apply(rng, ids, plen), ids) for _ in range(400))
    assert 160 < flips < 240
