"""Colour names of RGB colours, and hue rotation: the words a caption uses for the colours of an image.

One naming serves the trainer's colour tags (:mod:`perceiverar.data.colour_augment`) and the colour-word
measure of generated images (``benchmarks/image_measures.py``), so "red" means one set of colours everywhere.

A colour whose three channels are all >= 240 (``NEAR_WHITE``) is background and has no name (-1). Every other
colour is named by its HSV value (hue H in degrees, saturation S = (max - min) / max, value V = max / 255):

- achromatic (S < 0.2): ``black`` if V < 0.5, ``white`` if V >= 0.7, else ``grey``;
- V < 0.25 (any hue): ``black``;
- brown: H in [0, 45) and (V < 0.6, or V < 0.85 with S < 0.7) (a dark or muted orange-red);
- pink: H in [295, 345), or H in the red range with S < 0.55 (a light red);
- otherwise by hue: red [345, 15), orange [15, 40), yellow [40, 70), green [70, 170), blue [170, 255) (light
  blue and cyan included), purple [255, 295).

The ranges were set on the real emoji whose captions name a colour ("blue heart", "large red circle"), which
all get their named colour at 16x16 and 32x32 (``tests/benchmarks`` checks it).
"""

from __future__ import annotations

import numpy as np

NEAR_WHITE = 240  # every channel >= this: background
COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey")
CHROMATIC = frozenset(COLOUR_NAMES[:8])  # the names a hue rotation can change
HUES = (("red", 345, 15), ("orange", 15, 40), ("yellow", 40, 70), ("green", 70, 170), ("blue", 170, 255),
        ("purple", 255, 295), ("pink", 295, 345))  # fmt: skip


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) RGB in 0..255 -> hue in degrees [0, 360), saturation and value in [0, 1], each (...)."""
    a = np.asarray(rgb, dtype=np.float32)
    mx, mn = a.max(-1), a.min(-1)
    v = mx / 255.0
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    d = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return h % 360.0, s, v


def colour_names(rgb) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) int64 index into COLOUR_NAMES, -1 for near-white (see the module docstring)."""
    a = np.asarray(rgb)
    h, s, v = _hsv(a)
    idx = {n: i for i, n in enumerate(COLOUR_NAMES)}
    out = np.full(a.shape[:-1], -1, dtype=np.int64)
    for name, lo, hi in HUES:  # hue first, then the rules that override it
        out[((h >= lo) & (h < hi)) if lo < hi else ((h >= lo) | (h < hi))] = idx[name]
    reddish = (h >= 345) | (h < 15)
    out[reddish & (s < 0.55)] = idx["pink"]
    out[(h < 45) & ((v < 0.6) | ((v < 0.85) & (s < 0.7)))] = idx["brown"]
    grey = s < 0.2
    out[grey & (v >= 0.7)] = idx["white"]
    out[grey & (v >= 0.5) & (v < 0.7)] = idx["grey"]
    out[(grey & (v < 0.5)) | (v < 0.25)] = idx["black"]
    out[a.min(-1) >= NEAR_WHITE] = -1
    return out


def rotate_hue(rgb, degrees: float) -> np.ndarray:
    """(..., 3) uint8 RGB with the hue turned by ``degrees`` (saturation and value kept) -> (..., 3) uint8."""
    h, s, v = _hsv(rgb)
    h = (h + degrees) % 360.0
    c = v * s  # chroma, then the standard HSV -> RGB sectors
    x = c * (1 - np.abs((h / 60.0) % 2 - 1))
    m = v - c
    z = np.zeros_like(c)
    sector = (h // 60).astype(np.int64) % 6  # (...)
    choices = [np.stack(t, -1) for t in ((c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x))]
    out = np.choose(sector[..., None], choices) + m[..., None]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
