"""Images as tokens in raster order, in one of three modes (``tokenizers_mm.vocab.IMAGE_MODES``):

- ``"subpixel"`` (default): raw RGB sub-pixels, ids 256 + value (row, column, then R, G, B). Lossless: a 32x32
  image is 3,072 tokens.
- ``"palette"``: one colour token per pixel, id 256 + index of the nearest colour of a palette of up to 256
  colours (Image GPT's colour tokens). A third of the tokens, so three times the images per unit of compute,
  and the model predicts a colour instead of doing colour arithmetic across three tokens; the palette's own
  error is the price (PSNR of the quantised image, see ``benchmarks/palette.py``). The palette is fitted by
  k-means on the training images (:func:`fit_palette`) and saved with the checkpoint's tokenizer config.
- ``"sketch"``: palette mode with a coarse plan first: a ceil(h/4) x ceil(w/4) sketch, each token the most
  common colour of its 4x4 block (ties: the lowest id), then the h*w colour tokens. A caption decides an
  image's colour and layout at the first few tokens it draws, and in raster order those are a few pixels of
  one edge (a 16x16 heart's first red pixel comes after three rows of white), each worth a few bits against
  hundreds for the whole image: a model learns little from them. In the sketch that decision is 16 tokens
  right after the caption (a training run can weight them, ``--opening-weight``), and the pixels copy
  their block's colour. A 16x16 image is 16 + 256 tokens. Decoding drops the sketch; a partial image shows
  the sketch, scaled up, where its pixels are not drawn yet.

Inputs are normalised before tokenizing:

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
from tokenizers_mm.ids import (
    IMAGE_MODES, MAX_IMAGE_SIDE, PIXEL_OFFSET, PIXEL_SIZE, check_image_mode, check_in_range, image_section_begin,
    sketch_block, sketch_shape,
)  # fmt: skip

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


def check_palette(palette) -> np.ndarray:
    """A palette as a (K, 3) uint8 array, 1 <= K <= 256, or a TokenizerError saying what is wrong."""
    try:
        a = np.asarray(palette)
    except (TypeError, ValueError) as e:
        raise TokenizerError(f"palette is not an array of RGB colours: {e}") from None
    if a.ndim != 2 or a.shape[1] != 3 or not 1 <= a.shape[0] <= PIXEL_SIZE:
        raise TokenizerError(f"palette must be K x 3 RGB colours with 1 <= K <= {PIXEL_SIZE}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 255:
        raise TokenizerError("palette colours must be integers in 0..255")
    return a.astype(np.uint8)


def cube_palette() -> np.ndarray:
    """A fixed 256-colour palette: the 6x6x6 RGB cube plus 40 greys (no fitting, no data needed)."""
    lv = np.round(np.linspace(0, 255, 6)).astype(np.uint8)
    cube = np.stack(np.meshgrid(lv, lv, lv, indexing="ij"), -1).reshape(-1, 3)  # (216, 3)
    greys = np.round(np.linspace(0, 255, 42)[1:-1]).astype(np.uint8)  # 40 greys between black and white
    return np.concatenate([cube, np.repeat(greys[:, None], 3, 1)])


def fit_palette(images, k: int = PIXEL_SIZE, *, max_pixels: int = 400_000, seed: int = 0) -> np.ndarray:
    """k-means palette (k, 3) uint8 of an iterable of (H, W, 3) uint8 arrays (pixels subsampled to ``max_pixels``).

    Sorted by luminance so that nearby ids are similar colours (it only eases reading a dump of ids)."""
    import torch

    from tokenizers_mm.kmeans import kmeans

    px = np.concatenate([np.asarray(a, dtype=np.uint8).reshape(-1, 3) for a in images])  # (P, 3)
    if px.shape[0] < k:
        raise TokenizerError(f"a {k}-colour palette needs at least {k} pixels, got {px.shape[0]}")
    rng = np.random.default_rng(seed)
    if px.shape[0] > max_pixels:
        px = px[rng.choice(px.shape[0], max_pixels, replace=False)]
    c = kmeans(torch.from_numpy(px.astype(np.float32)), k, iters=20, seed=seed).numpy()
    c = np.clip(np.round(c), 0, 255).astype(np.uint8)
    return c[np.argsort(c.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32), kind="stable")]


class ImageTokenizer:
    MAX_SIDE = MAX_IMAGE_SIDE

    def __init__(self, height: int = 32, width: int = 32, resize: str = "fit", *, mode: str = "subpixel", palette=None):
        for name, v in (("height", height), ("width", width)):
            if not 1 <= int(v) <= self.MAX_SIDE:
                raise TokenizerError(f"image {name}={v} must be in 1..{self.MAX_SIDE}")
        if resize not in RESIZE_POLICIES:
            raise TokenizerError(f"resize={resize!r}; expected one of {RESIZE_POLICIES}")
        self.height, self.width, self.resize = int(height), int(width), resize
        self.mode = check_image_mode(mode)
        self.palette: np.ndarray | None = None  # (K, 3) uint8 in palette and sketch mode
        if self.mode != "subpixel":
            if palette is None:
                raise TokenizerError(f"{self.mode} mode needs a palette (fit_palette(...) or cube_palette())")
            self.palette = check_palette(palette)
        elif palette is not None:
            raise TokenizerError("a palette is only used with colour tokens (mode='palette' or 'sketch')")

    @property
    def channels(self) -> int:
        """Tokens per pixel: 3 sub-pixels, or 1 colour token."""
        return IMAGE_MODES[self.mode][1]

    @property
    def sketch_shape(self) -> tuple[int, int]:
        """(rows, cols) of the coarse sketch before the pixels; (0, 0) outside sketch mode."""
        return sketch_shape(self.height, self.width, self.mode)

    @property
    def n_sketch(self) -> int:
        sh, sw = self.sketch_shape
        return sh * sw

    @property
    def n_tokens(self) -> int:
        """Content ids of one image: the sketch (if any), then the pixels."""
        return self.n_sketch + self.height * self.width * self.channels

    @property
    def section_begin(self) -> int:
        """The id that opens this layout's image section (IMAGE_BEGIN or PALETTE_BEGIN)."""
        return image_section_begin(self.mode)

    def check_fits(self, context_len: int, prompt_len: int = 0) -> None:
        """Raise if a full image sequence (markers + header + pixels + ``prompt_len`` bytes) exceeds context."""
        need = self.n_tokens + _MARKERS + int(prompt_len)
        if need > int(context_len):
            raise TokenizerError(
                f"a {self.height}x{self.width} image needs {need} tokens ({self.n_tokens} pixels + "
                f"{_MARKERS} markers + {prompt_len} prompt bytes) but the context holds {context_len}"
            )

    def to_dict(self) -> dict:
        d = {"height": self.height, "width": self.width, "resize": self.resize, "mode": self.mode}
        if self.palette is not None:
            d["palette"] = self.palette.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTokenizer":
        if not isinstance(d, dict) or "height" not in d or "width" not in d:
            raise TokenizerError(f"an image tokenizer config needs height and width, got {d!r:.200}")
        return cls(d["height"], d["width"], d.get("resize", "fit"), mode=d.get("mode", "subpixel"), palette=d.get("palette"))

    # ------------------------------------------------------------------------------------------- encoding

    def open_image(self, src) -> Image.Image:
        """A PIL image, file path or uint8 array -> a PIL image as it is (no resize, no colour conversion); an
        unreadable file raises TokenizerError naming it."""
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
            # (DecompressionBombError: a tiny file whose header claims, say, 30000 x 30000 pixels)
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
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
        return self._resize(to_rgb(self.open_image(src)))

    def quantize(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 colours -> (...) int64 index of the nearest palette colour (squared RGB distance)."""
        x = np.asarray(rgb, dtype=np.int32)[..., None, :]  # (..., 1, 3)
        d = ((x - self.palette.astype(np.int32)) ** 2).sum(-1)  # (..., K)
        return d.argmin(-1).astype(np.int64)

    def sketch(self, colours: np.ndarray) -> np.ndarray:
        """(H, W) palette indices -> (sh, sw) sketch: each block's most common index (ties: the lowest)."""
        sh, sw = self.sketch_shape
        block = sketch_block(self.mode)
        k = len(self.palette)
        out = np.empty((sh, sw), dtype=np.int64)
        for r in range(sh):
            for c in range(sw):
                cell = colours[r * block : (r + 1) * block, c * block : (c + 1) * block].reshape(-1)
                out[r, c] = np.bincount(cell, minlength=k).argmax()
        return out

    def encode(self, src) -> list[int]:
        """PIL image, file path or uint8 array -> pixel ids: h*w*3 sub-pixels (256 + value), h*w colours, or the
        sketch's colours then h*w colours."""
        a = np.asarray(self.preprocess(src), dtype=np.uint8)  # (H, W, 3)
        if self.mode == "subpixel":
            return (a.reshape(-1).astype(np.int64) + PIXEL_OFFSET).tolist()
        colours = self.quantize(a)  # (H, W)
        parts = [self.sketch(colours).reshape(-1)] if self.mode == "sketch" else []
        return (np.concatenate([*parts, colours.reshape(-1)]) + PIXEL_OFFSET).tolist()

    # ------------------------------------------------------------------------------------------- decoding

    def decode(self, ids, partial_ok: bool = True, background=WHITE) -> Image.Image:
        """Pixel ids -> RGB image. A partial sequence gives the pixels so far; the rest is ``background``, or in
        sketch mode the sketch (scaled up) where it is known."""
        size = PIXEL_SIZE if self.palette is None else len(self.palette)
        arr = check_in_range(ids, PIXEL_OFFSET, PIXEL_OFFSET + size, "a pixel id" if self.palette is None else "a colour id")
        n = self.n_tokens
        shape = f"{self.height}x{self.width}x{self.channels}" + (" with its sketch" if self.n_sketch else "")
        if arr.size > n:
            raise TokenizerError(f"{arr.size} pixel ids is more than a {shape} image ({n})")
        if arr.size < n and not partial_ok:
            raise TokenizerError(f"{arr.size} pixel ids, expected {n} for {shape}")
        if self.palette is not None:
            H, W = self.height, self.width
            rgb = np.empty((H * W, 3), dtype=np.uint8)
            rgb[:] = np.asarray(background, dtype=np.uint8)
            if self.n_sketch:
                sh, sw = self.sketch_shape
                block = sketch_block(self.mode)
                known = np.full(sh * sw, -1, dtype=np.int64)
                known[: min(arr.size, sh * sw)] = arr[: sh * sw] - PIXEL_OFFSET
                up = known.reshape(sh, sw).repeat(block, 0).repeat(block, 1)[:H, :W].reshape(-1)  # (H*W,)
                rgb[up >= 0] = self.palette[up[up >= 0]]
                arr = arr[sh * sw :]
            rgb[: arr.size] = self.palette[arr - PIXEL_OFFSET]
            return Image.fromarray(rgb.reshape(H, W, 3), "RGB")
        flat = np.empty(n, dtype=np.uint8)
        flat[:] = np.tile(np.asarray(background, dtype=np.uint8), n // 3)
        flat[: arr.size] = arr - PIXEL_OFFSET
        return Image.fromarray(flat.reshape(self.height, self.width, 3), "RGB")
