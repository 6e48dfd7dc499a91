"""One id space for text, pixels, audio codes and markers, and the one sequence layout every part uses.

The id ranges, marker ids and their names are ``tokenizers_mm.ids``; the position features of a sequence are
``tokenizers_mm.features``. This module holds the layout (:func:`build_sequence`, :func:`split_sequence`) and the
:class:`Vocabulary` record, and re-exports both of those modules' names, so ``tokenizers_mm.vocab`` stays the one
place to import the layout from.

Sequence layout (built only by :func:`build_sequence`, parsed only by :func:`split_sequence`)::

    image: [BOS] [TEXT_BEGIN] prompt-bytes [TEXT_END] [SEP] [IMAGE_BEGIN] [NUM h] [NUM w]
           pixels (h*w*3, raster order: row, col, R, G, B) [IMAGE_END] [EOS]
    image, palette mode: the same with [PALETTE_BEGIN] for [IMAGE_BEGIN] and h*w colour ids (raster order,
           one per pixel: id 256 + index into the checkpoint's palette of up to 256 colours)
    image, sketch mode: [SKETCH_BEGIN] [NUM h] [NUM w], a coarse sketch of ceil(h/4)*ceil(w/4) colour ids (the
           most common colour of each 4x4 block, raster order), then the h*w colour ids as in palette mode
    audio: [BOS] [TEXT_BEGIN] prompt-bytes [TEXT_END] [SEP] [AUDIO_BEGIN] [NUM n//1024] [NUM n%1024]
           codes (n) [AUDIO_END] [EOS]
    audio, chords mode: [CHORDS_BEGIN] [NUM n//1024] [NUM n%1024], then a chord label before every 22 codes
           (c0, codes 0..21, c1, codes 22..43, ...: n + ceil(n/22) ids; tokenizers_mm.chords), [AUDIO_END] [EOS]
    text:  [BOS] [TEXT_BEGIN] text-bytes [TEXT_END] [EOS]      (a continuation: the generation prompt is
           [BOS] [TEXT_BEGIN] prompt-bytes and the model continues the bytes)

The unconditional (classifier-free guidance) sequence is the same with an empty prompt:
``[BOS] [TEXT_BEGIN] [TEXT_END] [SEP] ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.features import FeatureTracker, position_features  # noqa: F401  (re-exported)
from tokenizers_mm.ids import (  # noqa: F401  (re-exported: the id space is imported from here)
    AUDIO_BEGIN, AUDIO_CODES, AUDIO_END, AUDIO_FREQ_BANDS, AUDIO_MODES, AUDIO_MODE_OF_BEGIN, AUDIO_OFFSET, BOS,
    CHORDS_BEGIN, CHORD_BLOCK, CHORD_OFFSET, EOS, FEATURE_SIZES, IMAGE_BEGIN, IMAGE_END, IMAGE_MODES,
    IMAGE_MODE_OF_BEGIN, MAX_AUDIO_TOKENS, MAX_IMAGE_SIDE, NUM_OFFSET, NUM_VALUES, N_CHORDS, N_FEATURES, N_SPECIAL,
    PAD, PALETTE_BEGIN, PIXEL_OFFSET, PIXEL_SIZE, SEP, SKETCH_BEGIN, SKETCH_BLOCK, SPECIAL_NAMES, SPECIAL_OFFSET,
    TEXT_BEGIN, TEXT_END, TEXT_OFFSET, TEXT_SIZE, VOCAB_SIZE, allowed_range, audio_codes, audio_section_begin,
    audio_tokens, check_audio_mode, check_image_mode, check_in_range, chord_block, image_section_begin,
    image_tokens, is_chord_slot, modality_of, sketch_block, sketch_shape, token_name,
)  # fmt: skip

_BEGIN = {"image": IMAGE_BEGIN, "audio": AUDIO_BEGIN}
_END = {"image": IMAGE_END, "audio": AUDIO_END, "text": TEXT_END}
MODALITIES = ("text", "image", "audio")


@dataclass
class Vocabulary:
    """The id layout as one object (stored in checkpoints so a model knows which layout it was trained on)."""

    text_offset: int = TEXT_OFFSET
    pixel_offset: int = PIXEL_OFFSET
    audio_offset: int = AUDIO_OFFSET
    audio_codes: int = AUDIO_CODES
    num_offset: int = NUM_OFFSET
    num_values: int = NUM_VALUES
    special_offset: int = SPECIAL_OFFSET
    size: int = VOCAB_SIZE
    n_features: int = N_FEATURES
    feature_sizes: tuple[int, ...] = FEATURE_SIZES
    audio_freq_bands: int = AUDIO_FREQ_BANDS
    PAD: int = PAD
    BOS: int = BOS
    EOS: int = EOS
    TEXT_BEGIN: int = TEXT_BEGIN
    TEXT_END: int = TEXT_END
    IMAGE_BEGIN: int = IMAGE_BEGIN
    IMAGE_END: int = IMAGE_END
    AUDIO_BEGIN: int = AUDIO_BEGIN
    AUDIO_END: int = AUDIO_END
    SEP: int = SEP
    PALETTE_BEGIN: int = PALETTE_BEGIN
    SKETCH_BEGIN: int = SKETCH_BEGIN
    CHORDS_BEGIN: int = CHORDS_BEGIN
    chord_offset: int = CHORD_OFFSET
    n_chords: int = N_CHORDS

    def range(self, modality: str) -> tuple[int, int]:
        return allowed_range(modality)

    def modality_of(self, token: int) -> str:
        return modality_of(token)

    def name(self, token: int) -> str:
        return token_name(token)

    def names(self, ids) -> list[str]:
        return [token_name(t) for t in ids]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["feature_sizes"] = list(self.feature_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        feats = tuple(known.pop("feature_sizes", FEATURE_SIZES))
        known.pop("n_features", None)
        if feats != FEATURE_SIZES[: len(feats)]:  # older checkpoints have a prefix of today's feature slots
            raise TokenizerError(f"checkpoint feature slots {list(feats)} are not a prefix of this code's {list(FEATURE_SIZES)}")
        v = cls(**known)
        if v != cls():
            raise TokenizerError(
                f"checkpoint vocabulary {v.to_dict()} differs from this code's layout {cls().to_dict()}"
            )
        return v


# ----------------------------------------------------------------------------------------------- building


def _prompt_ids(prompt) -> list[int]:
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return list(prompt.encode("utf-8"))
    if isinstance(prompt, (bytes, bytearray)):
        return list(prompt)
    ids = [int(t) for t in prompt]
    for i, t in enumerate(ids):
        if not 0 <= t < TEXT_SIZE:
            raise TokenizerError(f"prompt id {t} at position {i} is not a text byte id (0..255)")
    return ids


def _check_range(ids: list[int], modality: str, audio_mode: str = "codes") -> None:
    if modality == "audio" and chord_block(audio_mode):
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        slot = is_chord_slot(np.arange(arr.size), audio_mode)
        check_in_range(arr[slot], *allowed_range("chord"), "a chord label (the chords layout puts one every "
                       f"{chord_block(audio_mode) + 1} ids)")  # fmt: skip
        check_in_range(arr[~slot], *allowed_range("audio"), "an audio code")
        return
    check_in_range(ids, *allowed_range(modality), f"a {modality} target id")


def audio_header(n_audio_tokens: int) -> list[int]:
    n = int(n_audio_tokens)
    if not 1 <= n <= MAX_AUDIO_TOKENS:
        raise TokenizerError(f"n_audio_tokens={n} must be in 1..{MAX_AUDIO_TOKENS}")
    return [NUM_OFFSET + n // NUM_VALUES, NUM_OFFSET + n % NUM_VALUES]


def image_header(height: int, width: int) -> list[int]:
    for name, v in (("height", height), ("width", width)):
        if v is None or not 1 <= int(v) <= MAX_IMAGE_SIDE:
            raise TokenizerError(f"image {name}={v} must be in 1..{MAX_IMAGE_SIDE}")
    return [NUM_OFFSET + int(height), NUM_OFFSET + int(width)]


def build_sequence(
    prompt: str | bytes | list[int] | None,
    modality: str,
    target: list[int] | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    n_audio_tokens: int | None = None,
    complete: bool = True,
    image_mode: str = "subpixel",
    audio_mode: str = "codes",
) -> list[int]:
    """The one function that lays out a sequence (see the module docstring for the layout).

    prompt: str (UTF-8 encoded here), raw bytes, or text ids 0..255; None or "" is the unconditional prompt.
    target: the modality's content ids (pixel ids 256..511, audio ids 512..4607, text byte ids 0..255).
    image_mode: "subpixel" (h*w*3 sub-pixel ids after [IMAGE_BEGIN]), "palette" (h*w colour ids after
    [PALETTE_BEGIN]) or "sketch" (the sketch's colour ids, then h*w colour ids, after [SKETCH_BEGIN]).
    audio_mode: "codes" (n codes after [AUDIO_BEGIN]) or "chords" (a chord label before every CHORD_BLOCK codes,
    after [CHORDS_BEGIN]; the target is then the interleaved ids, ``tokenizers_mm.chords.interleave``, and
    n_audio_tokens still counts the codes only).
    complete=False returns the generation prefix: everything up to and including the header, then the given
    (possibly partial) target, with no end markers. For audio, n_audio_tokens defaults to len(target) when
    complete; for text, the target bytes simply follow the prompt bytes.
    """
    if modality not in MODALITIES:
        raise TokenizerError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    p = _prompt_ids(prompt)
    tgt = [] if target is None else [int(t) for t in target]
    _check_range(tgt, modality, audio_mode)
    if modality == "text":
        seq = [BOS, TEXT_BEGIN, *p, *tgt]
        return seq + [TEXT_END, EOS] if complete else seq

    begin = _BEGIN.get(modality)
    if modality == "image":
        header = image_header(height, width)
        expected = image_tokens(height, width, image_mode)
        begin = image_section_begin(image_mode)
    else:
        begin = audio_section_begin(audio_mode)
        if n_audio_tokens is None:
            if not complete:
                raise TokenizerError("an audio generation prefix needs n_audio_tokens (the planned length)")
            n_audio_tokens = audio_codes(len(tgt), audio_mode)
        header = audio_header(n_audio_tokens)
        expected = audio_tokens(n_audio_tokens, audio_mode)
    if complete and len(tgt) != expected:
        what = "n_audio_tokens"
        if modality == "audio" and audio_mode != "codes":
            what += " codes with their chord labels"
        if modality == "image":
            sh, sw = sketch_shape(height, width, image_mode)
            what = f"{height}x{width}x{IMAGE_MODES[image_mode][1]}" + (f" after a {sh}x{sw} sketch" if sh else "")
        raise TokenizerError(f"{modality} target has {len(tgt)} ids but the header says {expected} ({what})")
    if not complete and len(tgt) > expected:
        raise TokenizerError(f"partial {modality} target has {len(tgt)} ids, more than the {expected} declared")
    seq = [BOS, TEXT_BEGIN, *p, TEXT_END, SEP, begin, *header, *tgt]
    return seq + [_END[modality], EOS] if complete else seq


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class ParsedSequence:
    """What :func:`split_sequence` found. For a text sequence the prompt and its continuation cannot be told
    apart, so ``prompt``/``prompt_ids`` and ``target`` all hold the whole text."""

    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    modality: str | None = None
    height: int | None = None
    width: int | None = None
    n_audio_tokens: int | None = None
    image_mode: str | None = None  # "subpixel" | "palette" | "sketch" for an image section
    audio_mode: str | None = None  # "codes" | "chords" for an audio section (target: the interleaved ids)
    target: list[int] = field(default_factory=list)
    complete: bool = False


def _num(ids: list[int], i: int) -> int | None:
    if i < len(ids) and NUM_OFFSET <= ids[i] < NUM_OFFSET + NUM_VALUES:
        return ids[i] - NUM_OFFSET
    return None


def split_sequence(ids) -> ParsedSequence:
    """Best-effort inverse of :func:`build_sequence`; never raises on arbitrary ids.

    Leading BOS/PAD are skipped; the prompt is the run of text bytes after TEXT_BEGIN; the target is the run of
    the modality's ids after the header, stopping at the first id that is not one (normally the end marker).
    ``complete`` is True when the section's end marker was found right after the target.
    """
    ids = [int(t) for t in np.asarray(ids, dtype=np.int64).reshape(-1)]
    out = ParsedSequence()
    i, n = 0, len(ids)
    while i < n and ids[i] in (BOS, PAD):
        i += 1
    if i < n and ids[i] == TEXT_BEGIN:
        i += 1
        j = i
        while j < n and ids[j] < TEXT_SIZE and ids[j] >= 0:
            j += 1
        out.prompt_ids = ids[i:j]
        out.prompt = bytes(out.prompt_ids).decode("utf-8", errors="replace")
        i = j
        if i >= n or ids[i] != TEXT_END:  # a text continuation still running (or garbage after the bytes)
            out.modality, out.target = "text", list(out.prompt_ids)
            return out
        i += 1
        if i >= n or ids[i] != SEP:  # [TEXT_END] then EOS / nothing: a finished text sequence
            out.modality, out.target, out.complete = "text", list(out.prompt_ids), True
            return out
        i += 1
    # Else no TEXT_BEGIN: still look for a media section so a bare "[IMAGE_BEGIN] h w pixels" parses.
    if i >= n or (ids[i] not in IMAGE_MODE_OF_BEGIN and ids[i] not in AUDIO_MODE_OF_BEGIN):
        return out
    modality = "audio" if ids[i] in AUDIO_MODE_OF_BEGIN else "image"
    out.modality = modality
    a, b = _num(ids, i + 1), _num(ids, i + 2)
    if modality == "image":
        out.height, out.width = a, b
        out.image_mode = IMAGE_MODE_OF_BEGIN[ids[i]]
    else:
        out.audio_mode = AUDIO_MODE_OF_BEGIN[ids[i]]
        if a is not None and b is not None:
            out.n_audio_tokens = a * NUM_VALUES + b
    i += 1 + (a is not None) + (a is not None and b is not None)
    lo, hi = allowed_range(modality)
    clo, chi = allowed_range("chord")
    block = chord_block(out.audio_mode) if modality == "audio" else 0
    j = i
    while j < n and (lo <= ids[j] < hi if not (block and (j - i) % (block + 1) == 0) else clo <= ids[j] < chi):
        j += 1
    out.target = ids[i:j]
    out.complete = j < n and ids[j] == _END[modality]
    return out
