"""Chord labels of audio: the harmonic plan that the "chords" audio layout puts before every CHORD_BLOCK codes.

A chorale's key is decided by its first chords; in a stream of 4,096 spectrogram codes that decision is spread
over many ids, each a small step, and a model that reads the caption's key only weakly drifts to the commonest
keys. A chord label per CHORD_BLOCK codes (0.51 s at 43 codes per second) makes the decision one 25-way choice
that the caption can steer, and gives the codes that follow a local plan to render. This is the audio analogue
of the image sketch (``tokenizers_mm.image``).

Labels (id CHORD_OFFSET + c)::

    c = 0..11    major triad on pitch class c (C, C#, ..., B)
    c = 12..23   minor triad on pitch class c - 12
    c = 24       no chord: a block with (almost) no energy in the chroma band

A block's label is the triad whose template (three pitch classes) best matches the block's chroma: the
short-time Fourier chroma (``librosa.feature.chroma_stft``, n_fft 4,096: 5.4 Hz bins, fine enough for the
fundamentals of a chorale's bass) summed over the block's frames and normalised, scored against each triad's
indicator vector with the root counted a little more (so that a triad and its relative, which share two
notes, are told apart by which root is stronger). The chroma frames use the codec's hop times patch frames,
so frame t is code t.
"""

from __future__ import annotations

import numpy as np

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.ids import CHORD_BLOCK, CHORD_OFFSET, N_CHORDS, check_in_range, is_chord_slot

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
NO_CHORD = N_CHORDS - 1
CHROMA_N_FFT = 4096
SILENT_SHARE = 1e-3  # a block with less chroma energy than this share of the loudest block is "no chord"


def _templates() -> np.ndarray:
    """(24, 12) triad templates: root weighted 1.2, third and fifth 1."""
    t = np.zeros((24, 12))
    for root in range(12):
        for i, third in ((root, 4), (12 + root, 3)):
            t[i, root] = 1.2
            t[i, (root + third) % 12] = 1.0
            t[i, (root + 7) % 12] = 1.0
    return t


TEMPLATES = _templates()


def chord_name(label: int) -> str:
    """'G', 'Em', 'N' (no chord) for a label 0..24."""
    c = int(label)
    if not 0 <= c < N_CHORDS:
        raise TokenizerError(f"chord label {c} is not in 0..{N_CHORDS - 1}")
    if c == NO_CHORD:
        return "N"
    return PITCH_CLASSES[c % 12] + ("m" if c >= 12 else "")


# The diatonic triads of a key as (semitones above the tonic, minor?): major I IV V, ii iii vi; minor i iv v,
# III VI VII and the harmonic minor's major V (the dominant of a Bach cadence in minor).
_DIATONIC = {
    "major": ((0, False), (5, False), (7, False), (2, True), (4, True), (9, True)),
    "minor": ((0, True), (5, True), (7, True), (3, False), (8, False), (10, False), (7, False)),
}


def key_chords(tonic: int, mode: str) -> list[int]:
    """The labels (0..24) a "key lock" allows: the diatonic triads of the key (tonic pitch class 0..11,
    'major'|'minor') and "no chord". G major -> G, C, D, Am, Bm, Em, N."""
    if mode not in _DIATONIC:
        raise TokenizerError(f"unknown mode {mode!r}; expected 'major' or 'minor'")
    return sorted({(int(tonic) + step) % 12 + (12 if minor else 0) for step, minor in _DIATONIC[mode]} | {NO_CHORD})


def block_chroma(
    waveform: np.ndarray, sample_rate: int, n_codes: int, hop: int, block: int = CHORD_BLOCK
) -> np.ndarray:
    """(ceil(n_codes / block), 12) chroma energy of each block of ``block`` codes; code t is the frame at t * hop."""
    import librosa  # noqa: PLC0415  (heavy; only the chords layout needs it)

    y = np.asarray(waveform, np.float32).reshape(-1)
    if y.size < CHROMA_N_FFT // 2 + 1:  # the centred STFT's reflect padding needs more than n_fft / 2 samples
        y = np.pad(y, (0, CHROMA_N_FFT // 2 + 1 - y.size))
    c = librosa.feature.chroma_stft(y=y, sr=int(sample_rate), n_fft=CHROMA_N_FFT, hop_length=int(hop), norm=None)
    n_blocks = -(-int(n_codes) // block)
    c = c[:, : int(n_codes)]
    if c.shape[1] < n_codes:  # (frame counts agree with the codec's; pad defensively by repetition)
        c = np.concatenate([c, np.repeat(c[:, -1:], n_codes - c.shape[1], 1)], 1)
    pad = n_blocks * block - int(n_codes)
    c = np.concatenate([c, np.zeros((12, pad))], 1) if pad else c
    return c.reshape(12, n_blocks, block).sum(2).T  # (n_blocks, 12)


def chord_labels(chroma: np.ndarray) -> np.ndarray:
    """(n_blocks, 12) chroma -> (n_blocks,) labels 0..24 (see the module docstring)."""
    chroma = np.asarray(chroma, np.float64)
    energy = chroma.sum(1)  # (n_blocks,)
    unit = chroma / np.maximum(energy[:, None], 1e-12)
    labels = (unit @ TEMPLATES.T).argmax(1)  # (n_blocks,)
    silent = energy <= SILENT_SHARE * max(float(energy.max(initial=0.0)), 1e-12)
    return np.where(silent, NO_CHORD, labels).astype(np.int64)


def audio_chord_ids(waveform: np.ndarray, sample_rate: int, n_codes: int, hop: int) -> list[int]:
    """The chord ids (CHORD_OFFSET + label) of a clip's blocks of CHORD_BLOCK codes."""
    return (chord_labels(block_chroma(waveform, sample_rate, n_codes, hop)) + CHORD_OFFSET).tolist()


def interleave(chord_ids, codes) -> list[int]:
    """[c0, codes[0:B], c1, codes[B:2B], ...] (B = CHORD_BLOCK): the "chords" layout's content."""
    chord_ids, codes, block = list(chord_ids), list(codes), CHORD_BLOCK
    n_blocks = -(-len(codes) // block)
    if len(chord_ids) != n_blocks:
        raise TokenizerError(f"{len(chord_ids)} chord labels for {len(codes)} codes ({n_blocks} blocks of {block})")
    out: list[int] = []
    for k in range(n_blocks):
        out.append(int(chord_ids[k]))
        out.extend(codes[k * block : (k + 1) * block])
    return out


def split_chords(content) -> tuple[list[int], list[int]]:
    """A (possibly partial) "chords" section's content -> (chord ids, codes), the inverse of :func:`interleave`."""
    arr = np.asarray(content, dtype=np.int64).reshape(-1)
    slot = is_chord_slot(np.arange(arr.size), "chords")
    chords = arr[slot]
    check_in_range(chords, CHORD_OFFSET, CHORD_OFFSET + N_CHORDS, "a chord label where the layout puts one")
    return chords.tolist(), arr[~slot].tolist()
