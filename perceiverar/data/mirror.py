"""Mirrored images: left-right flips of image items whose caption does not depend on which way they face.

The emoji set has about 7,000 images, nearly every caption on exactly two of them (one per style). After a few
thousand steps a 10 M-parameter model has seen each image many times and its held-out loss turns up (train loss
~0.7 nats against 1.2 held out): more epochs of the same pixels teach the images, not the words. A mirrored
emoji is another true picture of most captions ("grinning face", "red heart", "person raising hand"), so a flip
drawn per training row doubles the pictures a caption is seen with.

Not every caption survives a mirror: "person walking facing right", "left arrow", flags, clock faces, keycaps
and lettered buttons ("A button", "squared katakana") would be drawn wrong. Items whose caption names any of
:data:`ORIENTED` are never flipped; neither are items trained without their caption (the guidance baseline then
keeps the data's own pictures, as the colour augmentation does).

The flip works on the token ids, so it needs no image decoding: the section's header gives its height, width and
layout (``tokenizers_mm.ids.IMAGE_MODES``); sub-pixel rows flip in steps of three ids, colour-token rows one id
at a time, and a sketch (each token the most common colour of a 4x4 block) flips as its own small image, which
equals the sketch of the flipped image (a block's mirror holds the same colours, and ties go to the lowest id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tokenizers_mm.ids import IMAGE_MODE_OF_BEGIN, IMAGE_MODES, NUM_OFFSET, NUM_VALUES, sketch_shape

# Caption words (any case, prefixes of words) under which a mirrored image would contradict its caption.
ORIENTED = ("left", "right", "flag", "clock", "o’clock", "o'clock", "arrow", "keycap", "button", "letter",
            "squared", "latin", "input", "circled", "ideograph", "symbols")  # fmt: skip
_ORIENTED = re.compile(r"\b(" + "|".join(re.escape(w) for w in ORIENTED) + ")", re.IGNORECASE)


def mirror_image_section(ids: np.ndarray) -> np.ndarray:
    """A token sequence ``ids`` (n,) with its first image section mirrored left-right (a copy); ``ids`` itself
    when it holds no image section, or a partial one."""
    begins = np.flatnonzero(np.isin(ids, list(IMAGE_MODE_OF_BEGIN)))
    if not len(begins):
        return ids
    b = int(begins[0])
    if b + 3 > len(ids):
        return ids
    h, w = (int(t) - NUM_OFFSET for t in ids[b + 1 : b + 3])
    if not (0 < h < NUM_VALUES and 0 < w < NUM_VALUES):
        return ids
    mode = IMAGE_MODE_OF_BEGIN[int(ids[b])]
    sh, sw = sketch_shape(h, w, mode)
    channels = IMAGE_MODES[mode][1]
    start = b + 3
    if start + sh * sw + h * w * channels > len(ids):
        return ids
    out = ids.copy()
    if sh * sw:
        sketch = out[start : start + sh * sw].reshape(sh, sw)
        out[start : start + sh * sw] = sketch[:, ::-1].reshape(-1)
        start += sh * sw
    pixels = out[start : start + h * w * channels].reshape(h, w, channels)
    out[start : start + h * w * channels] = pixels[:, ::-1, :].reshape(-1)
    return out


@dataclass
class Mirror:
    """Flip a captioned image item left-right with probability ``prob`` unless its caption names a direction
    (see the module docstring)."""

    prob: float = 0.0

    def apply(self, rng: np.random.Generator, ids: np.ndarray, plen: int) -> np.ndarray:
        """One training row's item ``ids`` ([BOS] [TEXT_BEGIN] caption (plen) ...) -> ids, maybe mirrored.
        Draws one number from ``rng`` whatever it does; ``ids`` itself when it is not flipped (``Mixture.augment_tags``
        relies on that)."""
        u = rng.random()
        if u >= self.prob or not plen:
            return ids
        caption = ids[2 : 2 + plen].astype(np.uint8).tobytes().decode("utf-8", "replace")
        if _ORIENTED.search(caption):
            return ids
        return mirror_image_section(ids)
