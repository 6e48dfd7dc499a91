"""Chord labels of audio and the "chords" audio layout (a label before every CHORD_BLOCK codes)."""

import numpy as np
import pytest

from tokenizers_mm.chords import (
    NO_CHORD, PITCH_CLASSES, TEMPLATES, audio_chord_ids, block_chroma, chord_labels, chord_name, interleave, key_chords,
    split_chords,
)  # fmt: skip
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.vocab import (
    AUDIO_END, AUDIO_OFFSET, CHORD_BLOCK, CHORD_OFFSET, CHORDS_BEGIN, FeatureTracker, audio_tokens, build_sequence,
    position_features, split_sequence, token_name,
)  # fmt: skip

SR = 22050
HOP = 512  # the bundled codec: hop 256 x 2 frames per code


def triad(root_midi: int, minor: bool, seconds: float, harmonics: int = 4) -> np.ndarray:
    """A sung-like triad: three notes with a few decaying harmonics each."""
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for m in (root_midi, root_midi + (3 if minor else 4), root_midi + 7):
        f = 440.0 * 2 ** ((m - 69) / 12)
        for h in range(1, harmonics + 1):
            y += np.sin(2 * np.pi * f * h * t) / h
    return (0.1 * y).astype(np.float32)


def label_of(name: str) -> int:
    minor = name.endswith("m")
    return PITCH_CLASSES.index(name.rstrip("m")) + (12 if minor else 0)


@pytest.mark.parametrize("root,minor,name", [(60, False, "C"), (55, False, "G"), (57, True, "Am"), (62, True, "Dm"),
                                             (58, False, "Bb"), (66, True, "F#m")])  # fmt: skip
def test_a_triad_is_labelled_with_its_root_and_quality(root, minor, name):
    y = triad(root, minor, 2.0)
    n_codes = 1 + len(y) // HOP
    labels = chord_labels(block_chroma(y, SR, n_codes, HOP))
    assert len(labels) == -(-n_codes // CHORD_BLOCK)
    assert chord_name(labels[1]) == name and labels[1] == label_of(name)
    # most blocks agree (the last, partial block and the edges may be weaker)
    assert np.mean(labels == label_of(name)) >= 0.75, [chord_name(c) for c in labels]


def test_a_progression_and_silence_are_labelled_block_by_block():
    """C major, then silence, then A minor: one label per CHORD_BLOCK codes, following the audio."""
    block_s = CHORD_BLOCK * HOP / SR
    y = np.concatenate([triad(60, False, 4 * block_s), np.zeros(int(4 * block_s * SR), np.float32),
                        triad(57, True, 4 * block_s)])  # fmt: skip
    n_codes = 1 + len(y) // HOP
    ids = audio_chord_ids(y, SR, n_codes, HOP)
    names = [chord_name(i - CHORD_OFFSET) for i in ids]
    assert names[:3] == ["C"] * 3 and names[5:7] == ["N"] * 2 and names[9:11] == ["Am"] * 2, names
    assert chord_name(NO_CHORD) == "N" and token_name(CHORD_OFFSET + 12) == "chord:12"
    with pytest.raises(TokenizerError, match="chord label 25"):
        chord_name(25)


def test_interleave_and_split_are_inverse_and_check_the_slots():
    codes = list(range(AUDIO_OFFSET, AUDIO_OFFSET + 50))
    chords = [CHORD_OFFSET + 7, CHORD_OFFSET + 21, CHORD_OFFSET + NO_CHORD]
    content = interleave(chords, codes)
    assert len(content) == audio_tokens(50, "chords") == 53
    assert content[0] == chords[0] and content[CHORD_BLOCK + 1] == chords[1] and content[1] == codes[0]
    assert split_chords(content) == (chords, codes)
    assert split_chords(content[:30]) == (chords[:2], codes[:28])  # a partial section
    with pytest.raises(TokenizerError, match="2 chord labels for 50 codes"):
        interleave(chords[:2], codes)
    with pytest.raises(TokenizerError, match="chord label"):
        split_chords(codes)


def test_chords_sequence_layout_features_parse_and_range_checks():
    codes = [AUDIO_OFFSET + (i * 7) % 100 for i in range(45)]
    content = interleave([CHORD_OFFSET + 2, CHORD_OFFSET + 14, CHORD_OFFSET + 9], codes)
    seq = build_sequence("bach in D major", "audio", content, audio_mode="chords")
    i = seq.index(CHORDS_BEGIN)
    assert seq[i + 3 :] == [*content, AUDIO_END, seq[-1]]
    p = split_sequence(seq)
    assert (p.modality, p.audio_mode, p.n_audio_tokens, p.complete, p.target) == ("audio", "chords", 45, True, content)
    part = split_sequence(seq[: i + 3 + 30])
    assert part.target == content[:30] and not part.complete
    f = position_features(seq)
    assert f[i + 3 :: CHORD_BLOCK + 1][:3, 2].tolist() == [2, 2, 2]  # the labels
    assert (f[i + 4 : i + 3 + CHORD_BLOCK + 1, 2] == 1).all() and (f[:, :2] == 0).all()
    tr = FeatureTracker()
    assert np.array_equal(np.stack([tr.push(t) for t in seq]), f)  # token by token, as generation computes them
    with pytest.raises(TokenizerError, match="chord label"):
        build_sequence("x", "audio", codes, audio_mode="chords")  # a code where a label goes
    with pytest.raises(TokenizerError, match="an audio code"):
        build_sequence("x", "audio", [CHORD_OFFSET, CHORD_OFFSET], audio_mode="chords")  # a label where a code goes
    with pytest.raises(TokenizerError, match="unknown audio mode"):
        build_sequence("x", "audio", codes, audio_mode="notes")
    with pytest.raises(TokenizerError, match="chord"):
        build_sequence("x", "audio", [CHORD_OFFSET, *codes[:3]])  # a label in a codes section
    prefix = build_sequence("x", "audio", content[:5], complete=False, n_audio_tokens=45, audio_mode="chords")
    assert prefix[-8:-5] == [CHORDS_BEGIN, seq[i + 1], seq[i + 2]]


@pytest.mark.parametrize("tonic,mode,names", [
    (0, "major", {"C", "F", "G", "Dm", "Em", "Am"}),
    (7, "major", {"G", "C", "D", "Am", "Bm", "Em"}),
    (9, "minor", {"Am", "Dm", "Em", "C", "F", "G", "E"}),  # natural minor and the harmonic minor's major V
    (3, "minor", {"Ebm", "Abm", "Bbm", "F#", "B", "C#", "Bb"}),
])  # fmt: skip
def test_key_chords_are_the_diatonic_triads_and_no_chord(tonic, mode, names):
    labels = key_chords(tonic, mode)
    assert {chord_name(c) for c in labels} == names | {"N"}
    assert labels == sorted(labels) and NO_CHORD in labels


def test_every_key_lock_holds_only_triads_built_from_its_scale():
    """Every allowed triad's three notes lie in the key's scale (harmonic minor for minor keys): 12 x 2 keys."""
    for mode, steps in (("major", (0, 2, 4, 5, 7, 9, 11)), ("minor", (0, 2, 3, 5, 7, 8, 10, 11))):
        for tonic in range(12):
            scale = {(tonic + s) % 12 for s in steps}
            triads = [c for c in key_chords(tonic, mode) if c != NO_CHORD]
            assert len(triads) == (6 if mode == "major" else 7)
            assert all(set(np.flatnonzero(TEMPLATES[c])) <= scale for c in triads)
            assert tonic + (12 if mode == "minor" else 0) in triads  # the tonic triad
    with pytest.raises(TokenizerError, match="mode"):
        key_chords(0, "dorian")
