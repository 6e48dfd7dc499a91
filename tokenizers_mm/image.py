"""Images as raw RGB sub-pixels: ids 256 + value in raster order (row, column, then R, G, B).

Lossless by construction: a 32x32 image is 3,072 tokens, a 64x64 image 12,288. Inputs are normalised before
tokenizing:

- mode: RGBA / LA / P-with-transparency are alpha-composited onto white; L, P, CMYK, I, F, ... are converted
  to RGB by Pillow.
- size: images not already height x width are resized per ``resize``:
  ``"fit"`` (default) scales to fit inside the target keeping the aspect ratio and pads with white (centred);
  ``"crop"`` scales to cover the target and centre-crops; ``"stretch"`` ignores the aspect ratio.
  Down-scaling uses Pillow's ``reducing_gap`` Lanczos (box pre-reduction, then Lanczos: sharp and alias-free);
  up-scaling uses Lanczos too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.vocab import MAX_IMAGE_SIDE, PIXEL_OFFSET, PIXEL_SIZE, check_in_range

RESIZE_POLICIES = ("fit", "crop", "stretch")
WHITE = (255, 255, 255)
# Tokens outside the pixels of an image sequence: BOS TEXT_BEGIN TEXT_END SEP IMAGE_BEGIN h w IMAGE_END EOS
_MARKERS = 9


def to_rgb(img: Image.Image, background=WHITE) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited onto ``background``."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping (Pillow's convert clips at 255)
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


class ImageTokenizer:
    MAX_SIDE = MAX_IMAGE_SIDE

    def __init__(self, height: int = 32, width: int = 32, resize: str = "fit"):
        for name, v in (("height", height), ("width", width)):
            if not 1 <= int(v) <= self.MAX_SIDE:
                raise TokenizerError(f"image {name}={v} must be in 1..{self.MAX_SIDE}")
        if resize not in RESIZE_POLICIES:
            raise TokenizerError(f"resize={resize!r}; expected one of {RESIZE_POLICIES}")
        self.height, self.width, self.resize = int(height), int(width), resize

    @property
    def n_tokens(self) -> int:
        return self.height * self.width * 3

    def check_fits(self, context_len: int, prompt_len: int = 0) -> None:
        """Raise if a full image sequence (markers + header + pixels + ``prompt_len`` bytes) exceeds context."""
        need = self.n_tokens + _MARKERS + int(prompt_len)
        if need > int(context_len):
            raise TokenizerError(
                f"a {self.height}x{self.width} image needs {need} tokens ({self.n_tokens} pixels + "
                f"{_MARKERS} markers + {prompt_len} prompt bytes) but the context holds {context_len}"
            )

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTokenizer":
        return cls(d["height"], d["width"], d.get("resize", "fit"))

    # ------------------------------------------------------------------------------------------- encoding

    def _open(self, src) -> Image.Image:
        if isinstance(src, Image.Image):
            return src
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if not path.is_file():
                raise TokenizerError(f"image file {str(path)!r} does not exist")
            try:
                with Image.open(path) as im:
                    im.load()  # decode now so a truncated file fails here, naming the file
                    return im.copy()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise TokenizerError(f"cannot read image file {str(path)!r}: {e}") from None
        if isinstance(src, np.ndarray):
            a = src
            if a.dtype != np.uint8:
                raise TokenizerError(f"image array must be uint8, got {a.dtype}")
            if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)):
                return Image.fromarray(a)
            raise TokenizerError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
        raise TokenizerError(f"cannot tokenize an image of type {type(src).__name__}")

    def _resize(self, img: Image.Image) -> Image.Image:
        H, W = self.height, self.width
        if img.size == (W, H):
            return img
        w0, h0 = img.size
        if w0 < 1 or h0 < 1:
            raise TokenizerError(f"image has an empty size {w0}x{h0}")
        lanczos = dict(resample=Image.Resampling.LANCZOS, reducing_gap=3.0)
        if self.resize == "stretch":
            return img.resize((W, H), **lanczos)
        scale = min(W / w0, H / h0) if self.resize == "fit" else max(W / w0, H / h0)
        w1, h1 = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        img = img.resize((w1, h1), **lanczos)
        if self.resize == "fit":
            canvas = Image.new("RGB", (W, H), WHITE)
            canvas.paste(img, ((W - w1) // 2, (H - h1) // 2))
            return canvas
        left, top = (w1 - W) // 2, (h1 - H) // 2
        return img.crop((left, top, left + W, top + H))

    def preprocess(self, src) -> Image.Image:
        """The RGB height x width image that ``encode`` tokenizes (what a lossless round trip returns)."""
        return self._resize(to_rgb(self._open(src)))

    def encode(self, src) -> list[int]:
        """PIL image, file path or uint8 array -> height*width*3 pixel ids (256 + value)."""
        a = np.asarray(self.preprocess(src), dtype=np.int64)  # (H, W, 3)
        return (a.reshape(-1) + PIXEL_OFFSET).tolist()

    # ------------------------------------------------------------------------------------------- decoding

    def decode(self, ids, partial_ok: bool = True, background=WHITE) -> Image.Image:
        """Pixel ids -> RGB image. A partial sequence gives the sub-pixels so far; the rest is ``background``."""
        arr = check_in_range(ids, PIXEL_OFFSET, PIXEL_OFFSET + PIXEL_SIZE, "a pixel id")
        n = self.n_tokens
        if arr.size > n:
            raise TokenizerError(f"{arr.size} pixel ids is more than a {self.height}x{self.width}x3 image ({n})")
        if arr.size < n and not partial_ok:
            raise TokenizerError(f"{arr.size} pixel ids, expected {n} for {self.height}x{self.width}x3")
        flat = np.empty(n, dtype=np.uint8)
        flat[:] = np.tile(np.asarray(background, dtype=np.uint8), n // 3)
        flat[: arr.size] = arr - PIXEL_OFFSET
        return Image.fromarray(flat.reshape(self.height, self.width, 3), "RGB")
