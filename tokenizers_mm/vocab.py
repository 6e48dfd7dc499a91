"""One id space for text, pixels, audio codes and markers, and the one sequence layout every part uses.

Id ranges (half-open)::

    text     0 ..  256   UTF-8 bytes
    image  256 ..  512   sub-pixel value v -> 256 + v
    audio  512 .. 4608   audio codebook index c -> 512 + c   (AUDIO_CODES = 4096 at most)
    num   4608 .. 5632   header number k -> 4608 + k         (image h/w, audio length digits)
    special 5632 ..      PAD BOS EOS TEXT_BEGIN TEXT_END IMAGE_BEGIN IMAGE_END AUDIO_BEGIN AUDIO_END SEP
                         PALETTE_BEGIN (5643..5647 reserved); VOCAB_SIZE = 5696 (5648 used, padded to a multiple of 64
                         so the embedding / output matmuls tile evenly)

Sequence layout (built only by :func:`build_sequence`, parsed only by :func:`split_sequence`)::

    image: [BOS] [TEXT_BEGIN] prompt-bytes [TEXT_END] [SEP] [IMAGE_BEGIN] [NUM h] [NUM w]
           pixels (h*w*3, raster order: row, col, R, G, B) [IMAGE_END] [EOS]
    image, palette mode: the same with [PALETTE_BEGIN] for [IMAGE_BEGIN] and h*w colour ids (raster order,
           one per pixel: id 256 + index into the checkpoint's palette of up to 256 colours)
    audio: [BOS] [TEXT_BEGIN] prompt-bytes [TEXT_END] [SEP] [AUDIO_BEGIN] [NUM n//1024] [NUM n%1024]
           codes (n) [AUDIO_END] [EOS]
    text:  [BOS] [TEXT_BEGIN] text-bytes [TEXT_END] [EOS]      (a continuation: the generation prompt is
           [BOS] [TEXT_BEGIN] prompt-bytes and the model continues the bytes)

The unconditional (classifier-free guidance) sequence is the same with an empty prompt:
``[BOS] [TEXT_BEGIN] [TEXT_END] [SEP] ...``.

Position features (:func:`position_features`, :class:`FeatureTracker`): three small integer slots per token,
value 0 meaning "none", each below ``FEATURE_SIZES``:

    pixel token inside an image section   (row + 1, col + 1, channel + 1)   from the header h, w and the
                                          token's index in the section; 1..256, 1..256, 1..3
    colour token inside a palette section (row + 1, col + 1, 4)             one token per pixel
    audio code inside an audio section    (0, 0, band + 1) where band = index % AUDIO_FREQ_BANDS is the
                                          frequency patch of the code (AUDIO_FREQ_BANDS = 1 today: one code
                                          covers all 80 mel bins of a frame, so every code gets (0, 0, 1))
    everything else                       (0, 0, 0)

The features are causal: a token's features depend only on the tokens at or before it (the section header
comes first), so generation can compute them one token at a time (:class:`FeatureTracker`). A pixel past the
h*w*3 declared by the header, or a section whose header is malformed, gets (0, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
N_SPECIAL = 16  # 5632..5647; 5643..5647 reserved
VOCAB_SIZE = 5696  # 5648 used, padded to a multiple of 64 for efficient matmuls

N_FEATURES = 3
FEATURE_SIZES = (257, 257, 17)
AUDIO_FREQ_BANDS = 1  # audio codes per spectrogram frame (frequency patches); see tokenizers_mm.audio

MAX_IMAGE_SIDE = 256
MAX_AUDIO_TOKENS = NUM_VALUES**2 - 1

SPECIAL_NAMES = {
    PAD: "PAD", BOS: "BOS", EOS: "EOS", TEXT_BEGIN: "TEXT_BEGIN", TEXT_END: "TEXT_END",
    IMAGE_BEGIN: "IMAGE_BEGIN", IMAGE_END: "IMAGE_END", AUDIO_BEGIN: "AUDIO_BEGIN", AUDIO_END: "AUDIO_END",
    SEP: "SEP", PALETTE_BEGIN: "PALETTE_BEGIN",
}  # fmt: skip

_RANGES = {
    "text": (TEXT_OFFSET, TEXT_OFFSET + TEXT_SIZE),
    "image": (PIXEL_OFFSET, PIXEL_OFFSET + PIXEL_SIZE),
    "audio": (AUDIO_OFFSET, AUDIO_OFFSET + AUDIO_CODES),
    "num": (NUM_OFFSET, NUM_OFFSET + NUM_VALUES),
    "special": (SPECIAL_OFFSET, SPECIAL_OFFSET + N_SPECIAL),
}
_BEGIN = {"image": IMAGE_BEGIN, "audio": AUDIO_BEGIN}
_END = {"image": IMAGE_END, "audio": AUDIO_END, "text": TEXT_END}
MODALITIES = ("text", "image", "audio")
# Image section layouts: mode -> (section-begin id, tokens per pixel). Both end with IMAGE_END and use the
# pixel id range: a sub-pixel value v or a palette index c is id 256 + v / 256 + c.
IMAGE_MODES = {"subpixel": (IMAGE_BEGIN, 3), "palette": (PALETTE_BEGIN, 1)}
PALETTE_CHANNEL = 4  # the channel feature of a colour token (sub-pixels use 1..3)


def check_image_mode(mode: str) -> str:
    if mode not in IMAGE_MODES:
        raise TokenizerError(f"unknown image mode {mode!r}; expected one of {sorted(IMAGE_MODES)}")
    return mode


def image_section_begin(mode: str = "subpixel") -> int:
    """The id that opens an image section of this layout."""
    return IMAGE_MODES[check_image_mode(mode)][0]


def image_tokens(height: int, width: int, mode: str = "subpixel") -> int:
    """Content ids of an h x w image section: h*w*3 sub-pixels or h*w colour tokens."""
    return int(height) * int(width) * IMAGE_MODES[check_image_mode(mode)][1]


def allowed_range(modality: str) -> tuple[int, int]:
    """Half-open id range (lo, hi) of a modality's content tokens, for constrained decoding."""
    if modality not in _RANGES:
        raise TokenizerError(f"unknown modality {modality!r}; expected one of {sorted(_RANGES)}")
    return _RANGES[modality]


def modality_of(token: int) -> str:
    """'text', 'image', 'audio', 'num' or 'special' (ids past the used range count as 'special')."""
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
    return SPECIAL_NAMES.get(t, f"reserved:{t}" if 0 <= t < VOCAB_SIZE else f"invalid:{t}")


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
        v = cls(**known)
        v.feature_sizes = tuple(v.feature_sizes)
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


def _check_range(ids: list[int], modality: str) -> None:
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
) -> list[int]:
    """The one function that lays out a sequence (see the module docstring for the layout).

    prompt: str (UTF-8 encoded here), raw bytes, or text ids 0..255; None or "" is the unconditional prompt.
    target: the modality's content ids (pixel ids 256..511, audio ids 512..4607, text byte ids 0..255).
    image_mode: "subpixel" (h*w*3 sub-pixel ids after [IMAGE_BEGIN]) or "palette" (h*w colour ids after
    [PALETTE_BEGIN]).
    complete=False returns the generation prefix: everything up to and including the header, then the given
    (possibly partial) target, with no end markers. For audio, n_audio_tokens defaults to len(target) when
    complete; for text, the target bytes simply follow the prompt bytes.
    """
    if modality not in MODALITIES:
        raise TokenizerError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    p = _prompt_ids(prompt)
    tgt = [] if target is None else [int(t) for t in target]
    _check_range(tgt, modality)
    if modality == "text":
        seq = [BOS, TEXT_BEGIN, *p, *tgt]
        return seq + [TEXT_END, EOS] if complete else seq

    begin = _BEGIN.get(modality)
    if modality == "image":
        header = image_header(height, width)
        expected = image_tokens(height, width, image_mode)
        begin = image_section_begin(image_mode)
    else:
        if n_audio_tokens is None:
            if not complete:
                raise TokenizerError("an audio generation prefix needs n_audio_tokens (the planned length)")
            n_audio_tokens = len(tgt)
        header = audio_header(n_audio_tokens)
        expected = int(n_audio_tokens)
    if complete and len(tgt) != expected:
        what = f"{height}x{width}x{IMAGE_MODES[image_mode][1]}" if modality == "image" else "n_audio_tokens"
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
    image_mode: str | None = None  # "subpixel" | "palette" for an image section
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
    if i >= n or ids[i] not in (IMAGE_BEGIN, PALETTE_BEGIN, AUDIO_BEGIN):
        return out
    modality = "audio" if ids[i] == AUDIO_BEGIN else "image"
    out.modality = modality
    a, b = _num(ids, i + 1), _num(ids, i + 2)
    if modality == "image":
        out.height, out.width = a, b
        out.image_mode = "palette" if ids[i] == PALETTE_BEGIN else "subpixel"
    elif a is not None and b is not None:
        out.n_audio_tokens = a * NUM_VALUES + b
    i += 1 + (a is not None) + (a is not None and b is not None)
    lo, hi = allowed_range(modality)
    j = i
    while j < n and lo <= ids[j] < hi:
        j += 1
    out.target = ids[i:j]
    out.complete = j < n and ids[j] == _END[modality]
    return out


# -------------------------------------------------------------------------------------- position features


class FeatureTracker:
    """Incremental, causal position features for generation: ``extend(prefix)`` then ``push(id)`` per token.

    State machine: IMAGE_BEGIN/PALETTE_BEGIN/AUDIO_BEGIN open a header; two NUM ids complete it (a non-NUM id aborts it);
    then each id of the section's modality advances an index; any other id closes the section.
    """

    def __init__(self, audio_freq_bands: int = AUDIO_FREQ_BANDS):
        self.audio_freq_bands = int(audio_freq_bands)
        self._section: str | None = None  # None | 'image' | 'audio'
        self._header: list[int] = []  # NUM values read so far for the open section
        self._ready = False  # header complete
        self._h = self._w = 0
        self._index = 0  # content tokens seen in the section
        self._channels = 3  # tokens per pixel of the open image section

    def _start(self, modality: str, channels: int = 3) -> None:
        self._section, self._header, self._ready, self._index = modality, [], False, 0
        self._channels = channels

    def _close(self) -> None:
        self._section, self._header, self._ready = None, [], False

    def push(self, token: int) -> np.ndarray:
        return self.extend([token])[0]

    def extend(self, ids) -> np.ndarray:
        """Features (T, 3) int64 of the given ids, continuing from the state left by earlier calls."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        feats = np.zeros((ids.shape[0], N_FEATURES), dtype=np.int64)  # (T, 3)
        t, n = 0, ids.shape[0]
        while t < n:
            tok = int(ids[t])
            if self._section is not None and self._ready:
                lo, hi = _RANGES[self._section]
                # Vectorised over the run of content ids starting here (the common, long case).
                run = np.flatnonzero((ids[t:] < lo) | (ids[t:] >= hi))
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
            if tok == IMAGE_BEGIN:
                self._start("image")
            elif tok == PALETTE_BEGIN:
                self._start("image", channels=1)
            elif tok == AUDIO_BEGIN:
                self._start("audio")
            t += 1
        return feats

    def _fill(self, out: np.ndarray, idx: np.ndarray) -> None:
        if self._section == "image":
            h, w = self._h, self._w
            if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
                return  # malformed header: no features
            c = self._channels
            ok = idx < h * w * c
            row, col = idx // (w * c), (idx // c) % w
            ch = idx % 3 + 1 if c == 3 else np.full_like(idx, PALETTE_CHANNEL)
            out[:, 0] = np.where(ok, row + 1, 0)
            out[:, 1] = np.where(ok, col + 1, 0)
            out[:, 2] = np.where(ok, ch, 0)
        else:
            out[:, 2] = idx % self.audio_freq_bands + 1


def position_features(ids) -> np.ndarray:
    """(T, 3) int64 position features of a whole sequence (see the module docstring); causal."""
    return FeatureTracker().extend(ids)
