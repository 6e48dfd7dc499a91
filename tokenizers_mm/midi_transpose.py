"""Transposing MIDI files and the key names of their captions, for transposition augmentation.

A captioned chorale appears once in its own key, so a text->music model can learn the key from the BWV number and
never read "in F major". Rendering each chorale in several keys, with the caption's key rewritten to match, makes
the key words the only place that says which key to play in.

Key names follow music21's spelling, as in ``../shared/data/bach/captions.jsonl``: ``C``, ``F#``, ``B-`` (flat
written ``-``), then `` major`` or `` minor``. A transposed key is spelled with the fewer accidentals (the usual
key signature): D- major rather than C# major, G# minor rather than A- minor; at six (F#/G- major, D#/E- minor)
the spelling the captions already use wins (F# major, E- minor).
"""

from __future__ import annotations

import re
from pathlib import Path

DRUM_CHANNEL = 9  # General MIDI percussion (0-based): its note numbers pick drums, not pitches
_LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
MAJOR_NAMES = ["C", "D-", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B"]  # by tonic pitch class
MINOR_NAMES = ["C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B"]
KEY_RE = re.compile(r"\b([A-G])([#b-]*) (major|minor)\b")


def parse_key(name: str) -> tuple[int, str]:
    """(tonic pitch class 0..11, 'major'|'minor') of a key name such as 'B- major' or 'F# minor'."""
    m = KEY_RE.fullmatch(name.strip())
    if m is None:
        raise ValueError(f"not a key name such as 'G major' or 'B- minor': {name!r}")
    letter, accidentals, mode = m.groups()
    shift = accidentals.count("#") - accidentals.count("-") - accidentals.count("b")
    return (_LETTER[letter] + shift) % 12, mode


def find_key(text: str) -> tuple[int, str] | None:
    """The first key named anywhere in ``text`` ("bach chorale in B- major" -> (10, 'major')), or None."""
    m = KEY_RE.search(text)
    return None if m is None else parse_key(m.group(0))


def key_name(tonic: int, mode: str) -> str:
    names = MAJOR_NAMES if mode == "major" else MINOR_NAMES
    return f"{names[tonic % 12]} {mode}"


def transpose_key(name: str, semitones: int) -> str:
    """'F major' moved by +2 semitones is 'G major'; 'E minor' by -1 is 'E- minor'."""
    tonic, mode = parse_key(name)
    return key_name(tonic + semitones, mode)


def transpose_caption(text: str, semitones: int) -> str:
    """Every key name in a caption moved by ``semitones`` ('... in F major, 4/4 time' +2 -> '... in G major, ...')."""
    return KEY_RE.sub(lambda m: transpose_key(m.group(0), semitones), text)


def transpose_midi(src: Path | str, dst: Path | str, semitones: int) -> int:
    """Write ``src`` moved by ``semitones`` to ``dst``; returns how many notes moved.

    Every note_on/note_off on every channel but the drums (channel 9) moves; the rest (tempo, programs,
    controllers, timing) is kept as is. A note that would leave 0..127 moves by whole octaves back into range
    rather than vanish (chorales never get there, a piano roll's extremes might).
    """
    import mido  # noqa: PLC0415  (only data preparation needs it)

    mid = mido.MidiFile(str(src))
    moved = 0
    for track in mid.tracks:
        for i, msg in enumerate(track):
            if msg.type in ("note_on", "note_off") and msg.channel != DRUM_CHANNEL:
                track[i] = msg.copy(note=_in_range(msg.note + semitones))
                moved += 1
    mid.save(str(dst))
    return moved


def _in_range(note: int) -> int:
    while note < 0:
        note += 12
    while note > 127:
        note -= 12
    return note
