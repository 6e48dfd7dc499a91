"""The colour-token palette of a training run: k-means on the training images, fitted once and cached.

``perceiverar-train --image-mode palette`` fits it on the training split of every image folder (after the
tokenizer's own preprocessing: alpha onto white, resize), so the palette is the colours the model will draw;
the checkpoint then carries it in its tokenizer config (``ImageTokenizer.to_dict``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from perceiverar.data.sources import DatasetError, SourceSpec, TokenizerSettings, is_val, list_entries, listing_hash
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.image import ImageTokenizer, check_palette, fit_palette


def fit_source_palette(
    specs: list[SourceSpec], settings: TokenizerSettings, cache_root: str | os.PathLike, *, colours: int = 256, log=print
) -> tuple[tuple[int, int, int], ...]:
    """A ``colours``-entry palette of the training images of the image folders in ``specs`` (cached by listing)."""
    folders = [s.path for s in specs if s.modality == "image"]
    if not folders:
        raise DatasetError("--image-mode palette needs at least one image folder to fit the palette on")
    listed = [(f, list_entries(f, "image", settings.caption_template)[0]) for f in folders]
    key = hashlib.sha256(json.dumps([settings.image_height, settings.image_width, settings.image_resize, colours]).encode())
    for f, entries in listed:
        key.update(f"{f}\0{listing_hash(f, entries)}".encode())
    path = Path(cache_root) / f"palette-{key.hexdigest()[:20]}.json"
    if path.is_file():
        return tuple(map(tuple, check_palette(json.loads(path.read_text())).tolist()))
    tok = ImageTokenizer(settings.image_height, settings.image_width, settings.image_resize)
    images = []
    for f, entries in listed:
        for e in entries:
            if is_val(e.file):
                continue
            try:
                images.append(np.asarray(tok.preprocess(f / e.file)))
            except (TokenizerError, OSError, ValueError):
                continue  # the tokenizing pass lists unreadable files in the manifest
    log(f"fitting a {colours}-colour palette on {len(images)} training images")
    pal = fit_palette(images, colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(pal.tolist()))
    os.replace(tmp, path)
    return tuple(map(tuple, pal.tolist()))
