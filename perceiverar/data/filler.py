"""Long prompts (``perceiverar-train --filler DIR``): captions buried in long runs of unrelated text.

So that a caption still steers the output from far away, a fraction of the media batches get their caption
buried in a long run of unrelated text (another folder's training documents, e.g. Shakespeare): the prompt
becomes ``caption + blank line + filler``, ``filler + blank line + caption`` or the caption in the middle of
the filler (a third of the time each; a dropped caption leaves the filler alone). How such a batch is cropped
is in ``perceiverar.data.batches``.

How long a buried batch is (:meth:`Filler.length`): ``uniform`` over every length from the longest row's need
to the context, or ``log``-uniform, as many batches per octave of caption-to-target distance (the short ones,
where most of a long prompt's text sits, as often as the 32K-65K ones, and a mean batch several times
shorter: what a CPU can afford at a 65K context). ``max_tokens`` caps a buried batch's rows x length: a long
batch keeps its first ``max_tokens // length`` rows (at least one per data-parallel rank), so a 65K-token batch costs about what a
short one of many rows does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from perceiverar.data.sources import DatasetError
from tokenizers_mm.features import position_features, text_features
from tokenizers_mm.vocab import BOS, TEXT_BEGIN

if TYPE_CHECKING:
    from perceiverar.data.cache import PreparedSource

CAPTION_SEP = b"\n\n"  # a blank line between a caption and the filler text around it


def bury_caption(caption: np.ndarray, filler: np.ndarray, where: float) -> np.ndarray:
    """Prompt ids: ``caption`` placed at fraction ``where`` of ``filler`` (0: before it, 1: after it).

    The caption is set off by a blank line on each side that touches filler; an empty caption gives the
    filler alone. Both arrays hold text-byte ids (0..255).
    """
    caption, filler = np.asarray(caption, np.int64), np.asarray(filler, np.int64)
    if caption.size == 0:
        return filler
    sep = np.frombuffer(CAPTION_SEP, np.uint8).astype(np.int64)
    cut = int(round(min(max(where, 0.0), 1.0) * len(filler)))
    head, tail = filler[:cut], filler[cut:]
    parts = [head, sep] if head.size else []
    parts.append(caption)
    if tail.size:
        parts += [sep, tail]
    return np.concatenate(parts)


def prompted_sequence(prompt: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ids (T,) and position features (T, 5) of ``[BOS][TEXT_BEGIN] prompt rest``, ``rest`` starting at [TEXT_END].

    Text has only its word and paragraph slots (vectorised); the media section's restart at its header, inside
    ``rest``, so a prompt of any length costs little to featurize. Equal to ``position_features(ids)``.
    """
    ids = np.concatenate([[BOS, TEXT_BEGIN], prompt, rest]).astype(np.int64)
    head = 2 + len(prompt)
    feats = np.concatenate([text_features(ids[:head]), position_features(rest)])
    return ids, feats


class Filler:
    """Unrelated text to bury captions in: the training documents of a prepared text source, concatenated."""

    PLACES = ("start", "end", "any")

    def __init__(self, source: PreparedSource, prob: float = 0.5, split: str = "train", lengths: str = "uniform",
                 max_tokens: int = 0, places: str | tuple[str, ...] = PLACES):
        if source.modality != "text":
            raise DatasetError(f"--filler needs a folder of .txt documents, got a {source.modality} folder")
        if not 0 < prob <= 1:
            raise DatasetError(f"--filler probability must be in (0, 1], got {prob}")
        if lengths not in ("uniform", "log"):
            raise DatasetError(f"--filler-lengths must be 'uniform' or 'log', got {lengths!r}")
        if max_tokens < 0:
            raise DatasetError(f"--filler-tokens must be >= 0 (0: no cap), got {max_tokens}")
        if isinstance(places, str):
            places = tuple(p.strip() for p in places.split(",") if p.strip())
        if not places or any(p not in self.PLACES for p in places) or len(set(places)) != len(places):
            raise DatasetError(f"--filler-places must be a comma-separated subset of {','.join(self.PLACES)}, got "
                               f"{','.join(places) or 'nothing'}")
        self.places = tuple(p for p in self.PLACES if p in places)  # in the canonical order
        docs = []
        for i in source.train_items if split == "train" else source.val_items:  # 'val': unseen text, for evaluation
            off = int(source.index[i, 0])
            a, b = source.target_range(int(i))
            docs.append(np.asarray(source.ids[off + a : off + b], dtype=np.int16))
        self.text = np.concatenate(docs) if docs else np.zeros(0, np.int16)  # (n_bytes,) text-byte ids
        if self.text.size < 1024:
            raise DatasetError(f"filler folder {source.manifest['folder']!r} has too little text ({self.text.size} bytes)")
        self.prob = float(prob)
        self.lengths, self.max_tokens = lengths, int(max_tokens)

    def length(self, rng: np.random.Generator, need: int, context_len: int) -> int:
        """A buried batch's sequence length in ``[need, max(need, context_len + 1)]`` (see the module docstring)."""
        hi = max(need, context_len + 1)
        if self.lengths == "log":
            return min(hi, int(need * (hi / need) ** float(rng.random())))
        return int(rng.integers(need, hi + 1))

    def rows(self, length: int, n_rows: int, multiple: int = 1) -> int:
        """How many of a buried batch's ``n_rows`` rows to keep at ``length`` tokens (``max_tokens``, if set): a
        multiple of ``multiple`` (the data-parallel world, so every rank gets the same number), at least one."""
        if self.max_tokens <= 0:
            return n_rows
        keep = min(n_rows, self.max_tokens // length) // multiple * multiple
        return max(multiple, keep)

    def where(self, rng: np.random.Generator) -> float:
        """Where a buried caption stands (``bury_caption``'s fraction): one of the places, drawn evenly."""
        u = rng.random()  # drawn even when "any" is not a place, so the other draws stay as they were
        return float(rng.choice([{"start": 0.0, "end": 1.0, "any": u}[p] for p in self.places]))

    def window(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` consecutive filler bytes from a random place (wrapping round the end)."""
        start = int(rng.integers(len(self.text)))
        return self.text[(start + np.arange(n)) % len(self.text)].astype(np.int64)

    def prompt(self, rng: np.random.Generator, caption: np.ndarray, where: float, length: int) -> np.ndarray:
        """A prompt of exactly ``length`` ids (>= len(caption)): the caption buried at ``where`` in filler."""
        c = len(caption)
        if c == 0:
            return self.window(rng, length)
        f = max(0, length - c - 2 * len(CAPTION_SEP))
        p = bury_caption(caption, self.window(rng, f), where)
        extra = self.window(rng, length - len(p))  # separators not needed at an edge: more filler, away from it
        return np.concatenate([p, extra] if where < 0.5 else [extra, p])
