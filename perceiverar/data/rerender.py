"""Re-rendered images: more true pictures of every caption, drawn again from the source files.

A small image set runs out of pictures long before a model runs out of capacity. The emoji set has about 7,000
images, nearly every caption on two of them; a model trained for hours fits the training images (0.86 bits per
pixel token) far better than unseen ones (1.70), and a deeper model fits them better still without drawing better
(``checkpoints/emoji/README.md``). Mirrors (:mod:`perceiverar.data.mirror`) and recolouring add pictures in token
space; this module adds pictures in pixel space, where token-space edits cannot reach: each source image (64x64
for the emoji) is moved by a fraction of a *target* pixel, scaled by a few percent and (optionally) turned by a few
degrees about its centre before it is resized to the training size (16x16) and tokenized again. Every variant is
the same drawing, anti-aliased differently: the outlines fall on other pixels, the quantised colours of the edges
change, the sketch's blocks hold other majorities. What stays is what the caption describes.

Variants are fixed per (file, k), so they are tokenized once into the token cache beside their source
(``<cache_root>/rerender-<key>/``: ``ids.bin``, (n_items, K, n_content) int16, and ``manifest.json``) and drawn per
training row (:class:`Rerender`): with probability ``prob`` a captioned image row gets variant ``k`` (uniform in
K) in place of its pixels, before the mirror and the colour augmentation, which then act on it as on any image.
Rows trained without their caption keep the data's own pictures (as the mirror does). Validation items are never
re-rendered: the mixture only draws training items, and held-out metrics read the source cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from perceiverar.data.cache import PreparedSource, writing_dir
from perceiverar.data.sources import CACHE_FORMAT, DatasetError
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.image import WHITE, ImageTokenizer, to_rgb


@dataclass(frozen=True)
class RerenderSpec:
    """How variants are drawn: ``variants`` per image, each shifted by up to ``max_shift`` target pixels in x and y,
    scaled by a factor in ``[min_scale, 1]`` and turned by up to ``max_rotate`` degrees either way about the image
    centre (the space uncovered is white)."""

    variants: int = 8
    max_shift: float = 0.5
    min_scale: float = 0.9
    max_rotate: float = 0.0

    def __post_init__(self):
        if not 1 <= self.variants <= 64:
            raise DatasetError(f"re-render variants must be in 1..64, got {self.variants}")
        if not 0 <= self.max_shift <= 4:
            raise DatasetError(f"re-render shift must be in 0..4 target pixels, got {self.max_shift}")
        if not 0.5 <= self.min_scale <= 1:
            raise DatasetError(f"re-render scale must be in 0.5..1, got {self.min_scale}")
        if not 0 <= self.max_rotate <= 45:
            raise DatasetError(f"re-render rotation must be in 0..45 degrees, got {self.max_rotate}")

    def key(self) -> list:
        """What the cache key holds of the spec (a spec without rotation keeps the key it had before rotations)."""
        return [self.variants, self.max_shift, self.min_scale] + ([self.max_rotate] if self.max_rotate else [])


def variant_params(rel: str, k: int, spec: RerenderSpec) -> tuple[float, float, float, float]:
    """(dx, dy, scale, degrees) of variant ``k`` of file ``rel``: shifts in target pixels, a pure function of its
    arguments (the first three are those drawn before rotations existed)."""
    seed = int(hashlib.sha1(f"{rel}\0{k}".encode()).hexdigest()[:12], 16)
    u = np.random.default_rng(seed).random(4)
    return (float((2 * u[0] - 1) * spec.max_shift), float((2 * u[1] - 1) * spec.max_shift),
            float(spec.min_scale + (1 - spec.min_scale) * u[2]), float((2 * u[3] - 1) * spec.max_rotate))  # fmt: skip


def rerender(img: Image.Image, tok: ImageTokenizer, dx: float, dy: float, scale: float,
             degrees: float = 0.0) -> Image.Image:  # fmt: skip
    """``img`` (any mode, its transparency on white) moved by (dx, dy) *target* pixels, scaled by ``scale`` and
    turned by ``degrees`` (counter-clockwise as seen) about its centre, at its own resolution, white where nothing is
    drawn: what ``tok`` then resizes and tokenizes."""
    rgb = to_rgb(img)
    w0, h0 = rgb.size
    fx, fy = w0 / tok.width, h0 / tok.height  # source pixels per target pixel ('fit' keeps them equal for squares)
    cx, cy = w0 / 2, h0 / 2
    sx, sy = dx * fx, dy * fy
    # output p reads input M (p - c - shift) + c, M = R(-degrees) / scale (y points down: R(-a) turns by +a as seen)
    cos, sin = math.cos(math.radians(degrees)) / scale, math.sin(math.radians(degrees)) / scale
    a, b, d, e = cos, -sin, sin, cos
    ox, oy = cx + sx, cy + sy
    data = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    return rgb.transform((w0, h0), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC, fillcolor=WHITE)


class Rerenders:
    """The K variants of every item of one image source, memory-mapped: ``content(i, k)`` is what replaces item
    i's content ids (its target range)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        n, k, c = self.manifest["shape"]
        self.ids = np.memmap(self.dir / "ids.bin", dtype="<i2", mode="r", shape=(n, k, c))

    @property
    def variants(self) -> int:
        return int(self.ids.shape[1])

    def content(self, i: int, k: int) -> np.ndarray:
        return np.asarray(self.ids[i, k], dtype=np.int64)


def prepare_rerenders(src: PreparedSource, spec: RerenderSpec, cache_root, *, progress: bool = True,
                      log=print) -> Rerenders:  # fmt: skip
    """Tokenize ``spec.variants`` re-renders of every item of the image source ``src`` once (or reuse them)."""
    if src.modality != "image":
        raise DatasetError(f"re-renders are for image folders; {src.manifest['folder']} holds {src.modality}")
    relevant = {"format": CACHE_FORMAT, "source": src.manifest["key"],
                "spec": spec.key()}
    key = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]
    final = Path(cache_root) / f"rerender-{key}"
    if (final / "manifest.json").is_file():
        return Rerenders(final)
    tok = ImageTokenizer.from_dict(src.manifest["tokenizer"])
    folder = Path(src.manifest["folder"])
    n_content = int(src.index[0, 5] - src.index[0, 4]) if len(src) else 0
    if any(int(b - a) != n_content for a, b in src.index[:, 4:6]):
        raise DatasetError(f"re-renders need images of one size; {folder} holds several")
    kept = 0
    out = np.empty((len(src), spec.variants, n_content), dtype="<i2")
    for i in tqdm(range(len(src)), desc=f"re-rendering {folder.name} (x{spec.variants})", unit="file",
                  disable=not progress):  # fmt: skip
        rel = src.file(i)
        a, b = src.target_range(i)
        try:
            img = tok.open_image(folder / rel)
            for k in range(spec.variants):
                out[i, k] = tok.encode(rerender(img, tok, *variant_params(rel, k, spec)))
        except (TokenizerError, OSError, ValueError) as err:  # changed since it was cached: keep its pixels
            out[i] = src.item(i)[a:b]
            kept += 1
            log(f"re-render of {rel} failed ({type(err).__name__}: {err}); its cached pixels are used")
    with writing_dir(final) as tmp:
        out.tofile(tmp / "ids.bin")
        manifest = {"format_version": CACHE_FORMAT, "key": key, "source": str(src.dir), "spec": relevant["spec"],
                    "shape": list(out.shape), "failed": kept}  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Rerenders(final)


@dataclass
class Rerender:
    """Swap a captioned image row's pixels for one of its re-renders with probability ``prob``; ``renders`` holds
    one :class:`Rerenders` per source of the mixture (None for sources that are not images)."""

    prob: float
    renders: list

    def apply(self, rng: np.random.Generator, s: int, i: int, ids: np.ndarray, plen: int, start: int) -> np.ndarray:
        """Row ids of item i of source s (its content from ``start``) -> ids, maybe re-rendered (a copy; ``ids``
        itself when it is left as it is, which ``Mixture.augment_tags`` relies on). Draws two numbers from ``rng``
        whatever it does."""
        u, k = rng.random(), int(rng.integers(1 << 30))
        r = self.renders[s] if s < len(self.renders) else None
        if u >= self.prob or not plen or r is None:
            return ids
        content = r.content(i, k % r.variants)
        out = ids.copy()
        out[start : start + len(content)] = content
        return out
