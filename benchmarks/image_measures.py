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
Every pixel that is not near-white is named by its HSV value (hue H in degrees, saturation S = (max - min) /
max, value V = max / 255):

- achromatic (S < 0.2): ``black`` if V < 0.5, ``white`` if V >= 0.7, else ``grey``;
- V < 0.25 (any hue): ``black``;
- brown: H in [0, 45) and (V < 0.6, or V < 0.85 with S < 0.7) (a dark or muted orange-red);
- pink: H in [295, 345), or H in the red range with S < 0.55 (a light red);
- otherwise by hue: red [345, 15), orange [15, 40), yellow [40, 70), green [70, 170), blue [170, 255) (light
  blue and cyan included), purple [255, 295).

The image's **dominant colour** is the most common name among those pixels ("none" for a blank image, so a
blank image never matches, not even "white"). The ranges were set on the real emoji of the colour-word
captions (:func:`colour_word`), which all get their named colour at 16x16 and 32x32 (the test checks it).
"""

from __future__ import annotations

import re

import numpy as np

NEAR_WHITE = 240  # every channel >= this: background
BLANK_SHARE = 0.03  # fewer drawn pixels than this share: blank
UNIFORM_TOL = 32  # channel distance to the most common colour that still counts as that colour
COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey")
HUES = (("red", 345, 15), ("orange", 15, 40), ("yellow", 40, 70), ("green", 70, 170), ("blue", 170, 255),
        ("purple", 255, 295), ("pink", 295, 345))  # fmt: skip
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
    """(H, W) array of indices into COLOUR_NAMES (-1 for near-white background); see the module docstring."""
    a = _rgb(img).astype(np.float32)
    mx, mn = a.max(2), a.min(2)  # (H, W)
    v = mx / 255.0
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    d = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0  # [0, 360)
    idx = {n: i for i, n in enumerate(COLOUR_NAMES)}
    out = np.full(a.shape[:2], -1, dtype=np.int64)
    for name, lo, hi in HUES:  # hue first, then the rules that override it
        out[((h >= lo) & (h < hi)) if lo < hi else ((h >= lo) | (h < hi))] = idx[name]
    reddish = (h >= 345) | (h < 15)
    out[reddish & (s < 0.55)] = idx["pink"]
    out[(h < 45) & ((v < 0.6) | ((v < 0.85) & (s < 0.7)))] = idx["brown"]
    grey = s < 0.2
    out[grey & (v >= 0.7)] = idx["white"]
    out[grey & (v >= 0.5) & (v < 0.7)] = idx["grey"]
    out[(grey & (v < 0.5)) | (v < 0.25)] = idx["black"]
    out[mn >= NEAR_WHITE] = -1
    return out


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
