"""Colour words a model can learn: colour tags and hue rotation for palette-mode image items.

The emoji captions name a colour on about 80 of 7,000 images ("blue heart", "large red circle"), each once or
twice: too few for a model to learn what "blue" looks like, and a trained model drew a "blue heart" in the
colours of its style instead. Two augmentations, applied per training row (whole items, caption present),
give every image a chance to teach colour words:

- **Colour tag** (``tag_prob``): the name (the caption's first ``;`` part) gets the image's dominant colour in
  front ("grinning face" -> "yellow grinning face"), read off the pixels with the names of
  :mod:`tokenizers_mm.colours`. A name that already holds a colour word is left alone.
- **Hue rotation** (``rotate_prob``): the image's colours turn by a multiple of 30 degrees (each palette
  colour to the palette colour nearest its rotated self, a table per angle) and the caption says the new
  colour: a colour word in the name is replaced ("red heart" -> "blue heart"), or the tag is put in front.
  Only images whose dominant colour is chromatic and agrees with any colour word of their name are turned,
  so the caption stays true; rows without a caption are never turned, so the unconditional model (the
  guidance baseline) keeps the data's own colours.
- **Recolouring** (``recolour_prob``): the pixels of the image's dominant colour move to another named colour,
  drawn uniformly from :data:`TARGETS` (black, grey, white and brown too, which no hue rotation reaches), and
  the caption says so ("red heart" -> "brown heart"). Each pixel keeps its offset from the dominant colour's
  mean (its shading); towards black, grey and white only the offset's brightness is kept, so no hue is left.
  The other colours (outlines, highlights of another name) stay. A recolouring that does not leave the target
  as the dominant colour is not used. Hue rotation alone taught chromatic words only: the word-slot emoji
  checkpoint drew "brown", "yellow", "black" and "white" squares and hearts in the wrong colour (0/6, 1/6, 5/12,
  3/8). Both maps work per palette colour, so a sketch (sketch mode) turns with its pixels; where two colours
  merge into one, a block's most common colour can differ from the sketch of the new pixels (rarely).

An image is tagged only when its dominant colour is clear: at least ``MIN_DRAWN`` of the pixels drawn (not
near-white) and at least ``MIN_SHARE`` of those under the one name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from tokenizers_mm.colours import CHROMATIC, COLOUR_NAMES, colour_names, rotate_hue
from tokenizers_mm.ids import PIXEL_OFFSET

ANGLES = tuple(range(30, 360, 30))  # the hue turns a rotation draws from (degrees)
MIN_DRAWN = 0.03  # share of drawn pixels below which an image has no dominant colour (blank)
MIN_SHARE = 0.35  # share of the drawn pixels the dominant name must hold
SEPARATOR = ord(";")  # caption parts are joined by "; " (the caption templates write them so)
# Target colours of a recolouring and the RGB the dominant colour's mean moves to (each named so by
# tokenizers_mm.colours.colour_names, which the tests check).
TARGETS = {"red": (215, 40, 45), "orange": (245, 140, 30), "yellow": (250, 205, 45), "green": (70, 175, 70),
           "blue": (50, 110, 220), "purple": (145, 70, 195), "pink": (240, 130, 175), "brown": (135, 80, 45),
           "black": (45, 45, 45), "grey": (150, 150, 150), "white": (222, 222, 222)}  # fmt: skip
ACHROMATIC_TARGETS = frozenset({"black", "grey", "white"})
_WORD = re.compile(r"\b(" + "|".join([*COLOUR_NAMES, "gray"]) + r")\b")


@dataclass
class ColourAugment:
    """Colour tags and hue rotation for the colour tokens of one palette (see the module docstring)."""

    palette: np.ndarray  # (K, 3) uint8: colour id PIXEL_OFFSET + k is palette[k]
    tag_prob: float = 0.0
    rotate_prob: float = 0.0
    recolour_prob: float = 0.0
    names: np.ndarray = field(init=False)  # (K,) index into COLOUR_NAMES, -1 near-white
    turns: np.ndarray = field(init=False)  # (len(ANGLES), K) palette index of each colour turned by each angle

    def __post_init__(self):
        pal = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)  # (K, 3)
        self.palette = pal
        self.names = colour_names(pal)
        turned = np.stack([rotate_hue(pal, a) for a in ANGLES]).astype(np.int32)  # (A, K, 3)
        d = ((turned[:, :, None, :] - pal.astype(np.int32)[None, None]) ** 2).sum(-1)  # (A, K, K)
        self.turns = d.argmin(-1)  # (A, K)

    def dominant(self, colour_ids: np.ndarray) -> str | None:
        """The dominant colour name of an image's palette indices (n,), or None when it is not clear."""
        names = self.names[colour_ids]
        drawn = names[names >= 0]
        if drawn.size < MIN_DRAWN * max(len(names), 1):
            return None
        counts = np.bincount(drawn, minlength=len(COLOUR_NAMES))
        top = int(counts.argmax())
        return COLOUR_NAMES[top] if counts[top] >= MIN_SHARE * drawn.size else None

    def recolour(self, colour_ids: np.ndarray, colour: str, target: str) -> np.ndarray | None:
        """An image's palette indices (n,) with its ``colour`` pixels moved to ``target`` (see the module docstring);
        None when the result's dominant colour is not ``target``."""
        mine = self.names[colour_ids] == COLOUR_NAMES.index(colour)  # (n,)
        rgb = self.palette[colour_ids[mine]].astype(np.float32)  # (m, 3)
        offset = rgb - rgb.mean(0)  # (m, 3): each pixel's shading
        if target in ACHROMATIC_TARGETS:
            offset = offset.mean(1, keepdims=True).repeat(3, 1)
        new = np.clip(np.asarray(TARGETS[target], np.float32) + offset, 0, 255)  # (m, 3)
        d = ((new[:, None, :] - self.palette[None].astype(np.float32)) ** 2).sum(-1)  # (m, K)
        out = colour_ids.copy()
        out[mine] = d.argmin(1)
        return out if self.dominant(out) == target else None

    def apply(self, rng: np.random.Generator, ids: np.ndarray, plen: int) -> tuple[np.ndarray, int]:
        """One training row's item ``ids`` ([BOS] [TEXT_BEGIN] caption (plen) ...) -> (ids, caption length) with
        the tag, rotation or recolouring applied. Draws the same three numbers from ``rng`` whatever it does (five
        with ``recolour_prob`` set)."""
        u_rot, u_angle, u_tag = rng.random(3)
        u_rec, u_target = rng.random(2) if self.recolour_prob > 0 else (1.0, 0.0)
        if not plen:
            return ids, plen
        pix = np.flatnonzero((ids >= PIXEL_OFFSET) & (ids < PIXEL_OFFSET + len(self.palette)))  # (n,) positions
        pix = pix[pix >= 2 + plen]
        colour = self.dominant(ids[pix] - PIXEL_OFFSET)
        if colour is None:
            return ids, plen
        caption = ids[2 : 2 + plen].astype(np.uint8).tobytes()
        cut = caption.find(bytes([SEPARATOR]))
        name, rest = (caption, b"") if cut < 0 else (caption[:cut], caption[cut:])
        text = name.decode("utf-8", "replace")
        word = _WORD.search(text)
        truthful = word is None or word.group(1) == colour
        if u_rec < self.recolour_prob and colour != "white" and truthful:
            others = [t for t in TARGETS if t != colour]
            target = others[int(u_target * len(others))]
            turned = self.recolour(ids[pix] - PIXEL_OFFSET, colour, target)
            if turned is None:
                return ids, plen
            ids = ids.copy()
            ids[pix] = turned + PIXEL_OFFSET
            text = f"{target} {text}" if word is None else text[: word.start()] + target + text[word.end() :]
        elif u_rot < self.rotate_prob and colour in CHROMATIC and truthful:
            ids = ids.copy()
            ids[pix] = self.turns[int(u_angle * len(ANGLES))][ids[pix] - PIXEL_OFFSET] + PIXEL_OFFSET
            colour = self.dominant(ids[pix] - PIXEL_OFFSET)
            if colour is None:  # turned into no clear colour: say nothing new
                return ids, plen
            text = f"{colour} {text}" if word is None else text[: word.start()] + colour + text[word.end() :]
        elif word is None and u_tag < self.tag_prob:
            text = f"{colour} {text}"
        else:
            return ids, plen
        new = np.frombuffer(text.encode() + rest, dtype=np.uint8).astype(ids.dtype)
        return np.concatenate([ids[:2], new, ids[2 + plen :]]), len(new)
