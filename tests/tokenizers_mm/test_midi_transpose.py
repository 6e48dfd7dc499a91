"""tokenizers_mm.midi_transpose: key-name arithmetic in music21 spelling and a MIDI round trip through mido."""

from __future__ import annotations

import mido
import pytest

from tokenizers_mm.midi_transpose import (
    find_key, key_name, parse_key, transpose_caption, transpose_key, transpose_midi,
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "shift", "want"),
    [
        ("F major", 2, "G major"),
        ("F major", -5, "C major"),
        ("E minor", -1, "E- minor"),
        ("B- major", 3, "D- major"),  # flats for major keys on the black keys
        ("A minor", -1, "G# minor"),  # G# minor (5 sharps), not A- minor (7 flats)
        ("F# minor", 6, "C minor"),
        ("A- major", 11, "G major"),
        ("C major", 6, "F# major"),
        ("G minor", 12, "G minor"),
    ],
)
def test_transpose_key(name, shift, want):
    assert transpose_key(name, shift) == want


def test_every_key_round_trips_through_its_name():
    for mode in ("major", "minor"):
        for tonic in range(12):
            assert parse_key(key_name(tonic, mode)) == (tonic, mode)
            for shift in range(-11, 12):
                assert parse_key(transpose_key(key_name(tonic, mode), shift)) == ((tonic + shift) % 12, mode)


def test_parse_key_rejects_non_keys():
    with pytest.raises(ValueError):
        parse_key("H major")
    with pytest.raises(ValueError):
        parse_key("F dorian")


def test_find_key_reads_the_first_key_a_text_names():
    assert find_key("bach chorale bwv1.6 in B- major, 4/4 time") == (10, "major")
    assert find_key("a chorale in F# minor, then in G major") == (6, "minor")
    assert find_key("a chorale in a major key") is None
    assert find_key("") is None


def test_transpose_caption_rewrites_only_the_key():
    text = "bach chorale bwv1.6 in F major, 4/4 time"
    assert transpose_caption(text, 2) == "bach chorale bwv1.6 in G major, 4/4 time"
    assert transpose_caption("chorale bwv10.7 in B- minor, 3/4 time", 1) == "chorale bwv10.7 in B minor, 3/4 time"
    assert transpose_caption("no key here", 3) == "no key here"


def _write_midi(path):
    mid = mido.MidiFile()
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000))
    track.append(mido.Message("program_change", program=19, channel=0))
    for ch, note in [(0, 60), (1, 67), (9, 36), (0, 126)]:  # channel 9 = drums: must not move
        track.append(mido.Message("note_on", note=note, velocity=80, channel=ch, time=0))
        track.append(mido.Message("note_off", note=note, velocity=0, channel=ch, time=240))
    mid.save(str(path))


def _notes(path):
    return [(m.type, m.channel, m.note, m.time) for t in mido.MidiFile(str(path)).tracks for m in t
            if m.type in ("note_on", "note_off")]


def test_transpose_midi_shifts_pitched_notes_not_drums(tmp_path):
    src, dst = tmp_path / "a.mid", tmp_path / "a_t+3.mid"
    _write_midi(src)
    assert transpose_midi(src, dst, 3) == 6  # 3 pitched notes, on and off each
    before, after = _notes(src), _notes(dst)
    want = [(ty, ch, n if ch == 9 else (n + 3 if n + 3 <= 127 else n + 3 - 12), t) for ty, ch, n, t in before]
    assert after == want  # 126 + 3 = 129 leaves the range: one octave down, 117
    assert [m.type for m in mido.MidiFile(str(dst)).tracks[0]][:2] == ["set_tempo", "program_change"]


def test_transpose_midi_down_and_back_is_the_original(tmp_path):
    src = tmp_path / "a.mid"
    _write_midi(src)
    transpose_midi(src, tmp_path / "down.mid", -5)
    transpose_midi(tmp_path / "down.mid", tmp_path / "back.mid", 5)
    assert _notes(tmp_path / "back.mid") == _notes(src)
    assert _notes(tmp_path / "down.mid") != _notes(src)
