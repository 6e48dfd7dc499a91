"""Text as UTF-8 bytes: ids 0..255, so any Unicode string round-trips and any prompt length is first-class."""

from __future__ import annotations

import numpy as np

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.ids import TEXT_OFFSET, TEXT_SIZE, check_in_range


class TextTokenizer:
    """UTF-8 byte tokenizer. ``encode`` is exact; ``decode`` never fails on bytes (invalid UTF-8 -> U+FFFD)."""

    n_ids = TEXT_SIZE

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"TextTokenizer.encode expects str, got {type(text).__name__}")
        # surrogatepass: lone surrogates (possible in Python str) still encode instead of raising
        return [TEXT_OFFSET + b for b in text.encode("utf-8", errors="surrogatepass")]

    def decode(self, ids, *, strict: bool = True) -> str:
        """Bytes -> str with errors='replace'. An id outside 0..255 raises (naming it and its position), or is
        skipped when strict=False (e.g. decoding the text part of a generated sequence that has markers)."""
        if strict:
            arr = check_in_range(ids, TEXT_OFFSET, TEXT_OFFSET + TEXT_SIZE, "a text byte id") - TEXT_OFFSET
        else:
            arr = np.asarray(ids, dtype=np.int64).reshape(-1) - TEXT_OFFSET
            arr = arr[(arr >= 0) & (arr < TEXT_SIZE)]
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
