"""The id space of every modality: ranges, marker ids, section tables, names and range checks.

Id ranges (half-open)::

    text     0 ..  256   UTF-8 bytes
    image  256 ..  512   sub-pixel value v -> 256 + v
    audio  512 .. 4608   audio codebook index c -> 512 + c   (AUDIO_CODES = 4096 at most)
    num   4608 .. 5632   header number k -> 4608 + k         (image h/w, audio length digits)
    special 5632 ..      PAD BOS EOS TEXT_BEGIN TEXT_END IMAGE_BEGIN IMAGE_END AUDIO_BEGIN AUDIO_END SEP
                         PALETTE_BEGIN SKETCH_BEGIN CHORDS_BEGIN (5645..5647 reserved)
    chord 5648 .. 5673   chord label c -> 5648 + c: 12 major triads, 12 minor, "no chord" (tokenizers_mm.chords)
    VOCAB_SIZE = 5696 (5673 used, padded to a multiple of 64 so the embedding / output matmuls tile evenly)

The sequence layout that puts these ids in order is ``tokenizers_mm.vocab``, which re-exports every name here
(import them from there, or from ``tokenizers_mm``); the position features of each id are ``tokenizers_mm.features``.
"""

from __future__ import annotations

import numpy as np

from tokenizers_mm.errors import TokenizerError

TEXT_OFFSET = 0
TEXT_SIZE = 256
PIXEL_OFFSET = 256
PIXEL_SIZE = 256
AUDIO_OFFSET = 512
AUDIO_CODES = 4096
NUM_OFFSET = 4608
NUM_VALUES = 1024
SPECIAL_OFFSET = 5632
PAD = 5632
BOS = 5633
EOS = 5634
TEXT_BEGIN = 5635
TEXT_END = 5636
IMAGE_BEGIN = 5637
IMAGE_END = 5638
AUDIO_BEGIN = 5639
AUDIO_END = 5640
SEP = 5641
PALETTE_BEGIN = 5642  # an image section of colour tokens (one per pixel) instead of sub-pixels
SKETCH_BEGIN = 5643  # colour tokens after a coarse sketch of the image (one colour per SKETCH_BLOCK^2 block)
CHORDS_BEGIN = 5644  # audio codes with a chord label before every CHORD_BLOCK of them
N_SPECIAL = 16  # 5632..5647; 5645..5647 reserved
CHORD_OFFSET = 5648
N_CHORDS = 25  # 12 major triads (C..B), 12 minor triads (c..b), "no chord"
VOCAB_SIZE = 5696  # 5673 used, padded to a multiple of 64 for efficient matmuls

# Position features (tokenizers_mm.features): image row, image column, channel, the word a text byte ends
# (a hash bucket of the word so far; WORD_SLOT) and the paragraph of its text section it sits in (PARAGRAPH_SLOT).
# Checkpoints trained before a slot was added have the earlier slots only, and their models read only those (a
# checkpoint's slots must be a prefix of these).
N_FEATURES = 5
WORD_SLOT = 3
WORD_BUCKETS = 8192  # 0 = "not in a word", 1..8191 hash buckets
PARAGRAPH_SLOT = 4
PARAGRAPH_BUCKETS = 8  # 0 = "not in a text section", 1..6 = paragraph 1..6, 7 = the seventh or a later one
FEATURE_SIZES = (257, 257, 17, WORD_BUCKETS, PARAGRAPH_BUCKETS)
AUDIO_FREQ_BANDS = 1  # audio codes per spectrogram frame (frequency patches); see tokenizers_mm.audio

MAX_IMAGE_SIDE = 256
MAX_AUDIO_TOKENS = NUM_VALUES**2 - 1

SPECIAL_NAMES = {
    PAD: "PAD", BOS: "BOS", EOS: "EOS", TEXT_BEGIN: "TEXT_BEGIN", TEXT_END: "TEXT_END",
    IMAGE_BEGIN: "IMAGE_BEGIN", IMAGE_END: "IMAGE_END", AUDIO_BEGIN: "AUDIO_BEGIN", AUDIO_END: "AUDIO_END",
    SEP: "SEP", PALETTE_BEGIN: "PALETTE_BEGIN", SKETCH_BEGIN: "SKETCH_BEGIN", CHORDS_BEGIN: "CHORDS_BEGIN",
}  # fmt: skip

_RANGES = {
    "text": (TEXT_OFFSET, TEXT_OFFSET + TEXT_SIZE),
    "image": (PIXEL_OFFSET, PIXEL_OFFSET + PIXEL_SIZE),
    "audio": (AUDIO_OFFSET, AUDIO_OFFSET + AUDIO_CODES),
    "num": (NUM_OFFSET, NUM_OFFSET + NUM_VALUES),
    "special": (SPECIAL_OFFSET, SPECIAL_OFFSET + N_SPECIAL),
    "chord": (CHORD_OFFSET, CHORD_OFFSET + N_CHORDS),
}
# Image section layouts: mode -> (section-begin id, tokens per pixel, sketch block side or 0). All end with
# IMAGE_END and use the pixel id range: a sub-pixel value v or a palette index c is id 256 + v / 256 + c.
# "sketch" is the palette layout with a coarse plan first: ceil(h/B) x ceil(w/B) colour ids (each the most
# common colour of its B x B block, raster order), then the h*w colour ids. The plan is where the caption
# decides colour and layout; the pixels then mostly copy it (tokenizers_mm.image).
SKETCH_BLOCK = 4
IMAGE_MODES = {"subpixel": (IMAGE_BEGIN, 3, 0), "palette": (PALETTE_BEGIN, 1, 0), "sketch": (SKETCH_BEGIN, 1, SKETCH_BLOCK)}
IMAGE_MODE_OF_BEGIN = {v[0]: k for k, v in IMAGE_MODES.items()}


def _check_mode(kind: str, mode: str, modes: dict) -> str:
    if mode not in modes:
        raise TokenizerError(f"unknown {kind} mode {mode!r}; expected one of {sorted(modes)}")
    return mode


def check_image_mode(mode: str) -> str:
    return _check_mode("image", mode, IMAGE_MODES)


def image_section_begin(mode: str = "subpixel") -> int:
    """The id that opens an image section of this layout."""
    return IMAGE_MODES[check_image_mode(mode)][0]


def sketch_block(mode: str = "subpixel") -> int:
    """Side of the pixel blocks one sketch token stands for in this layout; 0 when it has no sketch."""
    return IMAGE_MODES[check_image_mode(mode)][2]


def sketch_shape(height: int, width: int, mode: str = "subpixel") -> tuple[int, int]:
    """(rows, cols) of the coarse sketch an h x w image section of this layout opens with; (0, 0) if none."""
    block = sketch_block(mode)
    if not block:
        return 0, 0
    return -(-int(height) // block), -(-int(width) // block)


def image_tokens(height: int, width: int, mode: str = "subpixel") -> int:
    """Content ids of an h x w image section: h*w*3 sub-pixels, h*w colour tokens, or a sketch and h*w colours."""
    sh, sw = sketch_shape(height, width, mode)
    return sh * sw + int(height) * int(width) * IMAGE_MODES[check_image_mode(mode)][1]


# Audio section layouts: mode -> (section-begin id, codes per chord label or 0). "chords" puts a chord label
# (the triad that best fits the chroma of the next CHORD_BLOCK codes' audio) before every CHORD_BLOCK codes:
# the caption decides the harmony in a 25-way choice, and the codes that follow render it. CHORD_BLOCK = 22
# codes is 0.51 s at the bundled codec's 43 codes per second, about a chorale's beat.
CHORD_BLOCK = 22
AUDIO_MODES = {"codes": (AUDIO_BEGIN, 0), "chords": (CHORDS_BEGIN, CHORD_BLOCK)}
AUDIO_MODE_OF_BEGIN = {v[0]: k for k, v in AUDIO_MODES.items()}


def check_audio_mode(mode: str) -> str:
    return _check_mode("audio", mode, AUDIO_MODES)


def audio_section_begin(mode: str = "codes") -> int:
    return AUDIO_MODES[check_audio_mode(mode)][0]


def chord_block(mode: str = "codes") -> int:
    """Codes per chord label in this audio layout; 0 when it has none."""
    return AUDIO_MODES[check_audio_mode(mode)][1]


def audio_tokens(n_codes: int, mode: str = "codes") -> int:
    """Content ids of an audio section of n codes: the codes, and in "chords" mode ceil(n / CHORD_BLOCK) labels."""
    block = chord_block(mode)
    return int(n_codes) + (-(-int(n_codes) // block) if block else 0)


def audio_codes(n_content, mode: str = "codes"):
    """Codes among the first n content ids of an audio section (the inverse of :func:`audio_tokens`); n may be an
    array. In "chords" mode the ids at 0, CHORD_BLOCK + 1, ... are labels: n - ceil(n / (CHORD_BLOCK + 1))."""
    block = chord_block(mode)
    n = np.asarray(n_content) if not isinstance(n_content, int) else n_content
    return n - (-(-n // (block + 1))) if block else n


def is_chord_slot(index, mode: str = "codes"):
    """Whether content index i (0 = first id after the header) of an audio section holds a chord label."""
    block = chord_block(mode)
    if not block:
        return np.zeros_like(np.asarray(index), dtype=bool)
    return np.asarray(index) % (block + 1) == 0


def allowed_range(modality: str) -> tuple[int, int]:
    """Half-open id range (lo, hi) of a modality's content tokens, for constrained decoding."""
    if modality not in _RANGES:
        raise TokenizerError(f"unknown modality {modality!r}; expected one of {sorted(_RANGES)}")
    return _RANGES[modality]


def modality_of(token: int) -> str:
    """'text', 'image', 'audio', 'num', 'chord' or 'special' (ids past the used range count as 'special')."""
    t = int(token)
    for name, (lo, hi) in _RANGES.items():
        if lo <= t < hi:
            return name
    return "special"


def token_name(token: int) -> str:
    """A readable name for debugging: 'byte:0x41', 'px:17', 'audio:3', 'num:32', 'BOS', 'reserved:5645'."""
    t = int(token)
    kind = modality_of(t)
    if kind == "text":
        return f"byte:{t:#04x}"
    if kind == "image":
        return f"px:{t - PIXEL_OFFSET}"
    if kind == "audio":
        return f"audio:{t - AUDIO_OFFSET}"
    if kind == "num":
        return f"num:{t - NUM_OFFSET}"
    if kind == "chord":
        return f"chord:{t - CHORD_OFFSET}"
    return SPECIAL_NAMES.get(t, f"reserved:{t}" if 0 <= t < VOCAB_SIZE else f"invalid:{t}")


def check_in_range(ids, lo: int, hi: int, what: str) -> np.ndarray:
    """``ids`` as a flat int64 array, or a TokenizerError naming the first id outside [lo, hi), its position and
    what was expected: the one check behind every decoder's "wrong modality" error."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((arr < lo) | (arr >= hi))
    if bad.size:
        i = int(bad[0])
        v = int(arr[i])
        raise TokenizerError(f"id {v} ({token_name(v)}) at position {i} is not {what} ({lo}..{hi - 1})")
    return arr
