"""Position features: where each content token sits in its section of the sequence layout (``tokenizers_mm.vocab``),
and which word a text byte ends.

:func:`position_features` and :class:`FeatureTracker` give five small integer slots per token, value 0 meaning
"none", each below ``FEATURE_SIZES``. The first three:

    pixel token inside an image section   (row + 1, col + 1, channel + 1)   from the header h, w and the
                                          token's index in the section; 1..256, 1..256, 1..3
    colour token inside a palette section (row + 1, col + 1, 4)             one token per pixel
    sketch token of a sketch section      (r + 1, c + 1, 5)                 r, c: the image row and column at
                                          the centre of the token's 4x4 block; the section's pixels after
                                          the sketch get (row + 1, col + 1, 4) as in a palette section
    audio code inside an audio section    (0, 0, band + 1) where band = index % AUDIO_FREQ_BANDS is the
                                          frequency patch of the code (AUDIO_FREQ_BANDS = 1 today: one code
                                          covers all 80 mel bins of a frame, so every code gets (0, 0, 1))
    chord label of a chords section       (0, 0, 2); its codes as above. Which ids are labels is decided by
                                          their index in the section (every CHORD_BLOCK + 1), and any id of the
                                          chord or audio range continues the section
    everything else                       (0, 0, 0)

The fourth (``WORD_SLOT``, :func:`word_features`): a text byte that is part of a word (ASCII letters and digits,
and UTF-8 bytes >= 0x80) gets ``1 +`` a hash of the word so far (its last ``MAX_WORD`` bytes, ASCII letters
folded to lower case) modulo ``WORD_BUCKETS - 1``; every other id gets 0. A caption read as bytes is otherwise
a bag of bytes whose short convolution cannot tell "red" from the end of "tired" or "hundred"; at a word's
last byte this slot names the whole word, and the convolution carries it to the next position. It depends only
on the ids at and before a position, back to the word's start, so it is as causal as the others.

The fifth (``PARAGRAPH_SLOT``, :func:`paragraph_features`): a text byte of a text section (the bytes after a
[TEXT_BEGIN], up to the first id that is not a text byte) gets the number of its paragraph in that section,
1, 2, ... capped at ``PARAGRAPH_BUCKETS - 1``; a paragraph starts at the first byte that is not a newline after
a blank line (two or more newline bytes in a row), and the newlines belong to the paragraph before them. Every
other id, and text bytes with no [TEXT_BEGIN] before them (a crop from inside a document), get 0. A long prompt's
first paragraph, where a user puts what the picture shows, keeps a mark of its own however far back it lies,
one a cross-attention query can match by content alone (issue 19).

The features are causal: a token's features depend only on the tokens at or before it (the section header
comes first), so generation can compute them one token at a time (:class:`FeatureTracker`). A pixel past the
h*w*3 declared by the header, or a section whose header is malformed, gets (0, 0, 0).
"""

from __future__ import annotations

import numpy as np

from tokenizers_mm.ids import (
    AUDIO_FREQ_BANDS, AUDIO_MODE_OF_BEGIN, IMAGE_MODE_OF_BEGIN, IMAGE_MODES, MAX_IMAGE_SIDE, N_FEATURES, NUM_OFFSET,
    NUM_VALUES, PARAGRAPH_BUCKETS, PARAGRAPH_SLOT, TEXT_BEGIN, TEXT_OFFSET, TEXT_SIZE, WORD_BUCKETS, WORD_SLOT,
    allowed_range, audio_codes, chord_block, is_chord_slot, sketch_block, sketch_shape,
)  # fmt: skip

PALETTE_CHANNEL = 4  # the channel feature of a colour token (sub-pixels use 1..3)
SKETCH_CHANNEL = 5  # the channel feature of a sketch token
CHORD_CHANNEL = 2  # the channel feature of an audio section's chord label (codes use band + 1 = 1)

MAX_WORD = 16  # a longer word is hashed by its last MAX_WORD bytes
_HASH_BASE, _HASH_MOD = 257, (1 << 31) - 1
_b = np.arange(TEXT_SIZE)
_WORD_BYTE = ((_b >= 48) & (_b < 58)) | ((_b >= 65) & (_b < 91)) | ((_b >= 97) & (_b < 123)) | (_b >= 128)  # (256,)
_FOLDED = np.where((_b >= 65) & (_b < 91), _b + 32, _b).astype(np.int64) + 1  # (256,) 1..256, A-Z as a-z
_POWERS = np.array([pow(_HASH_BASE, d, _HASH_MOD) for d in range(MAX_WORD)], dtype=np.int64)  # (MAX_WORD,)


def _word_bytes(ids: np.ndarray) -> np.ndarray:
    """(T,) bool: the ids that are text bytes inside a word."""
    text = (ids >= TEXT_OFFSET) & (ids < TEXT_OFFSET + TEXT_SIZE)
    return text & _WORD_BYTE[np.where(text, ids - TEXT_OFFSET, 0)]


def word_features(ids) -> np.ndarray:
    """(T,) int64 word slot of each id (see the module docstring): the hash bucket of the word so far, or 0."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    inside = _word_bytes(ids)  # (T,)
    code = np.where(inside, _FOLDED[np.where(inside, ids - TEXT_OFFSET, 0)], 0)  # (T,)
    # run[i]: how many word bytes end at i (0 outside words), capped at MAX_WORD
    start = np.maximum.accumulate(np.where(inside, -1, np.arange(len(ids))))  # last non-word index at or before i
    run = np.minimum(np.arange(len(ids)) - start, MAX_WORD)  # (T,)
    h = np.zeros(len(ids), dtype=np.int64)
    for d in range(MAX_WORD):  # h[i] = sum over the run's last bytes of code[i - d] * base^d (mod p)
        if d >= len(ids):
            break
        lag = np.concatenate([np.zeros(d, np.int64), code[: len(ids) - d]])  # code[i - d]
        h = (h + np.where(d < run, lag * _POWERS[d], 0)) % _HASH_MOD
    return np.where(inside, 1 + h % (WORD_BUCKETS - 1), 0)


NEWLINE = TEXT_OFFSET + 10  # the "\n" byte


def paragraph_features(ids, paragraph: int = 0, newlines: int = 0) -> tuple[np.ndarray, int, int]:
    """(T,) int64 paragraph slot of each id (see the module docstring), continuing from a state: ``paragraph``,
    the paragraph number at the end of the ids before these (uncapped; 0: not inside a text section), and
    ``newlines``, how many newline bytes those ended with (0..2). Returns the slot and the state after ``ids``."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64), paragraph, newlines
    pos = np.arange(n)
    text = (ids >= TEXT_OFFSET) & (ids < TEXT_OFFSET + TEXT_SIZE)  # (T,)
    nl = ids == NEWLINE
    prev1 = np.concatenate([[newlines >= 1], nl[:-1]])  # nl[i - 1], the state's run before the first id
    prev2 = np.concatenate([[newlines >= 2, newlines >= 1], nl[:-2]])[:n]  # nl[i - 2]
    starts = np.cumsum(text & ~nl & prev1 & prev2)  # (T,) paragraph starts at or before i
    origin = np.maximum.accumulate(np.where(~text, pos, -1))  # the last id at or before i that is not text
    at = np.maximum(origin, 0)
    # inside a section: the last non-text id is a [TEXT_BEGIN] (paragraph 1 from there), or there is none in
    # these ids and the state was inside one (its paragraph from the start)
    opened = (origin >= 0) & (ids[at] == TEXT_BEGIN)
    para = np.where(opened, 1 + starts - starts[at], paragraph + starts)
    inside = text & (opened | ((origin < 0) & (paragraph > 0)))
    out = np.where(inside, np.minimum(para, PARAGRAPH_BUCKETS - 1), 0)
    state = 1 if ids[-1] == TEXT_BEGIN else int(para[-1]) if inside[-1] else 0
    run = int(nl[-1]) * (1 + int(prev1[-1]))  # trailing newlines, capped at 2
    return out, state, run


class FeatureTracker:
    """Incremental, causal position features for generation: ``extend(prefix)`` then ``push(id)`` per token.

    State machine: an image section's begin id (IMAGE_BEGIN/PALETTE_BEGIN/SKETCH_BEGIN) or an audio one
    (AUDIO_BEGIN/CHORDS_BEGIN) opens a header; two NUM ids complete it (a non-NUM id aborts it); then each id of
    the section's modality (for a chords section: also a chord label) advances an index; any other id closes it.
    """

    def __init__(self, audio_freq_bands: int = AUDIO_FREQ_BANDS):
        self.audio_freq_bands = int(audio_freq_bands)
        self._section: str | None = None  # None | 'image' | 'audio'
        self._header: list[int] = []  # NUM values read so far for the open section
        self._ready = False  # header complete
        self._h = self._w = 0
        self._index = 0  # content tokens seen in the section
        self._channels = 3  # tokens per pixel of the open image section
        self._mode = "subpixel"  # the open section's layout (an image or audio mode)
        self._word_tail = np.zeros(0, dtype=np.int64)  # the last ids (< MAX_WORD) if they are a word's bytes
        self._paragraph, self._newlines = 0, 0  # paragraph_features' state

    def _start(self, modality: str, mode: str = "subpixel") -> None:
        self._section, self._header, self._ready, self._index = modality, [], False, 0
        self._mode = mode
        self._channels = IMAGE_MODES[mode][1] if modality == "image" else 1

    def _close(self) -> None:
        self._section, self._header, self._ready = None, [], False

    def push(self, token: int) -> np.ndarray:
        return self.extend([token])[0]

    def extend(self, ids) -> np.ndarray:
        """Features (T, 5) int64 of the given ids, continuing from the state left by earlier calls."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        feats = np.zeros((ids.shape[0], N_FEATURES), dtype=np.int64)  # (T, 5)
        feats[:, WORD_SLOT] = self._words(ids)
        para, self._paragraph, self._newlines = paragraph_features(ids, self._paragraph, self._newlines)
        feats[:, PARAGRAPH_SLOT] = para
        t, n = 0, ids.shape[0]
        while t < n:
            tok = int(ids[t])
            if self._section is not None and self._ready:
                lo, hi = allowed_range(self._section)
                # Vectorised over the run of content ids starting here (the common, long case).
                outside = (ids[t:] < lo) | (ids[t:] >= hi)
                if self._section == "audio" and chord_block(self._mode):
                    clo, chi = allowed_range("chord")
                    outside &= (ids[t:] < clo) | (ids[t:] >= chi)
                run = np.flatnonzero(outside)
                end = t + (int(run[0]) if run.size else n - t)
                if end > t:
                    idx = self._index + np.arange(end - t)  # (L,)
                    self._fill(feats[t:end], idx)
                    self._index += end - t
                    t = end
                    continue
                self._close()  # a non-content id ends the section; it is handled below as a fresh id
            if self._section is not None and not self._ready:
                if NUM_OFFSET <= tok < NUM_OFFSET + NUM_VALUES:
                    self._header.append(tok - NUM_OFFSET)
                    if len(self._header) == 2:
                        self._ready = True
                        self._h, self._w = self._header
                    t += 1
                    continue
                self._close()
            if tok in IMAGE_MODE_OF_BEGIN:
                self._start("image", IMAGE_MODE_OF_BEGIN[tok])
            elif tok in AUDIO_MODE_OF_BEGIN:
                self._start("audio", AUDIO_MODE_OF_BEGIN[tok])
            t += 1
        return feats

    def _words(self, ids: np.ndarray) -> np.ndarray:
        """Word slot of ``ids`` after the ids already seen (the word in progress is carried over)."""
        ext = np.concatenate([self._word_tail, ids])
        out = word_features(ext)[len(self._word_tail) :]
        inside = _word_bytes(ext)
        breaks = np.flatnonzero(~inside)
        tail = ext[breaks[-1] + 1 :] if breaks.size else ext
        self._word_tail = tail[-(MAX_WORD - 1) :] if len(tail) else tail
        return out

    def _fill(self, out: np.ndarray, idx: np.ndarray) -> None:
        if self._section == "image":
            h, w = self._h, self._w
            if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
                return  # malformed header: no features
            c = self._channels
            sh, sw = sketch_shape(h, w, self._mode)
            n_sketch = sh * sw
            if n_sketch:  # the sketch's tokens: the centre pixel of their block, channel SKETCH_CHANNEL
                block = sketch_block(self._mode)
                sk = idx < n_sketch
                srow = np.minimum((idx // sw) * block + block // 2, h - 1)
                scol = np.minimum((idx % sw) * block + block // 2, w - 1)
                out[sk, 0], out[sk, 1], out[sk, 2] = srow[sk] + 1, scol[sk] + 1, SKETCH_CHANNEL
                idx = idx - n_sketch
            ok = (idx >= 0) & (idx < h * w * c)
            row, col = idx // (w * c), (idx // c) % w
            ch = idx % 3 + 1 if c == 3 else np.full_like(idx, PALETTE_CHANNEL)
            px = idx >= 0
            out[px, 0] = np.where(ok, row + 1, 0)[px]
            out[px, 1] = np.where(ok, col + 1, 0)[px]
            out[px, 2] = np.where(ok, ch, 0)[px]
        else:
            code_idx = audio_codes(idx, self._mode)  # codes before this one in the section
            out[:, 2] = np.where(is_chord_slot(idx, self._mode), CHORD_CHANNEL, code_idx % self.audio_freq_bands + 1)


def position_features(ids) -> np.ndarray:
    """(T, 5) int64 position features of a whole sequence (see the module docstring); causal."""
    return FeatureTracker().extend(ids)


def text_features(ids) -> np.ndarray:
    """(T, 5) position features of ids that hold no media section (a text document or a crop of one): only the
    word and paragraph slots are set, as :func:`position_features` would set them, without running the tracker's
    state machine."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out = np.zeros((len(ids), N_FEATURES), dtype=np.int64)
    out[:, WORD_SLOT] = word_features(ids)
    out[:, PARAGRAPH_SLOT] = paragraph_features(ids)[0]
    return out
