"""Pixel-level measures of a generated image: is it blank, and what colour is the thing drawn on it?

Both work on (H, W, 3) uint8 RGB arrays at the model's size, with white as the background (the tokenizer
composites every emoji onto white).

Blank
-----
A pixel is *near-white* when all three channels are >= 240. An image is **blank** when fewer than 3% of its
pixels are not near-white: nothing was drawn. (The smallest real emoji drawing, "white small square", covers
6% of a 32x32 image.) A solid colour that fills the frame is not blank: Twemoji's large squares do exactly
that. :func:`is_uniform` (fewer than 3% of pixels more than 32 levels from the image's most common colour)
is reported beside it as a diagnostic, not a target.

Colour names
------------
Every pixel that is not near-white is named by ``tokenizers_mm.colours.colour_names`` (HSV rules, the
same names the trainer's colour tags use).

The image's **dominant colour** is the most common name among those pixels ("none" for a blank image, so a
blank image never matches, not even "white"). The ranges were set on the real emoji of the colour-word
captions (:func:`colour_word`), which all get their named colour at 16x16 and 32x32 (the test checks it).
"""

from __future__ import annotations

import re

import numpy as np

from tokenizers_mm.colours import COLOUR_NAMES, HUES, NEAR_WHITE, colour_names  # noqa: F401  (re-exported)

BLANK_SHARE = 0.03  # fewer drawn pixels than this share: blank
UNIFORM_TOL = 32  # channel distance to the most common colour that still counts as that colour
# a caption's name field: [size words] colour [size words] shape, e.g. "large red circle", "black small square".
# "heavy black heart" (U+2764, drawn red) is left out on purpose: its name does not say its colour.
_SIZE = r"(?:large|medium|small)"
_COLOUR_CAPTION = re.compile(
    rf"^(?:{_SIZE} )*(light blue|red|orange|yellow|green|blue|purple|pink|brown|black|white)(?: {_SIZE})* "
    r"(heart|circle|square|book)$"
)


def _rgb(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {a.dtype} {a.shape}")
    return a


def drawn_mask(img) -> np.ndarray:
    """(H, W) bool: the pixels that are not near-white background."""
    return _rgb(img).min(axis=2) < NEAR_WHITE


def is_blank(img) -> bool:
    return float(drawn_mask(img).mean()) < BLANK_SHARE


def is_uniform(img) -> bool:
    """Fewer than 3% of the pixels differ (by > 32 in a channel) from the image's most common colour."""
    px = _rgb(img).reshape(-1, 3).astype(np.int16)
    colours, counts = np.unique(px // 16, axis=0, return_counts=True)  # the most common 16-level bin ...
    in_bin = (px // 16 == colours[counts.argmax()]).all(1)
    mode = np.median(px[in_bin], axis=0)  # ... and the median colour inside it
    return float((np.abs(px - mode).max(1) > UNIFORM_TOL).mean()) < BLANK_SHARE


def pixel_names(img) -> np.ndarray:
    """(H, W) array of indices into COLOUR_NAMES (-1 for near-white background); see tokenizers_mm.colours."""
    return colour_names(_rgb(img))


def colour_shares(img) -> dict[str, float]:
    """Share of the drawn (not near-white) pixels under each colour name; empty for a blank image."""
    names = pixel_names(img)
    drawn = names[names >= 0]
    if is_blank(img) or drawn.size == 0:
        return {}
    counts = np.bincount(drawn, minlength=len(COLOUR_NAMES))
    return {n: float(c) / drawn.size for n, c in zip(COLOUR_NAMES, counts) if c}


def dominant_colour(img) -> str:
    """The most common colour name of the drawn pixels; "none" for a blank image."""
    shares = colour_shares(img)
    return max(shares, key=shares.get) if shares else "none"


def colour_word(caption_name: str) -> tuple[str, str] | None:
    """(colour name, shape) of a colour-word caption name ("large blue circle" -> ("blue", "circle")), else None.

    "light blue" is named blue: the hue ranges do not split blues by lightness.
    """
    m = _COLOUR_CAPTION.match(caption_name.strip())
    if not m:
        return None
    colour = "blue" if m.group(1) == "light blue" else m.group(1)
    return colour, m.group(2)
