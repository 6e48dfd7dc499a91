"""recipes.transpose_midi: originals kept, training files transposed with their keys, val never gains a copy."""

from __future__ import annotations

import json

import mido

from perceiverar.data.sources import is_val
from recipes import transpose_midi as R


def _names(n=80):
    return [f"bwv{k}.mid" for k in range(n)]


def test_plan_skips_val_originals_and_copies_that_hash_to_val():
    recs = [{"file": f, "text": f"bach chorale {f[:-4]} in F major, 4/4 time", "key": "F major"} for f in _names()]
    shifts = [-5, -3, -1, 2, 4, 6]
    todo = R.plan(recs, shifts)
    val = [r["file"] for r in recs if is_val(r["file"])]
    assert val, "the fixture must hold a val original for the test to mean anything"
    assert not any(rec["file"] in val for rec, _, _ in todo)
    assert not any(is_val(new["file"]) for _, _, new in todo)
    # every copy a training original could have is there unless its own name is val
    expect = [(r["file"], s) for r in recs if not is_val(r["file"]) for s in shifts
              if not is_val(R.transposed_name(r["file"], s))]
    assert len(expect) < (len(recs) - len(val)) * len(shifts), "some copy should hash to val in 80 x 6 names"
    assert [(rec["file"], s) for rec, s, _ in todo] == expect
    rec, s, new = next(t for t in todo if t[1] == 2)
    assert new["file"] == rec["file"][:-4] + "_t+2.mid" and new["key"] == "G major"
    assert new["text"] == rec["text"].replace("F major", "G major")


def test_plan_per_file_picks_that_many_shifts_deterministically():
    recs = [{"file": f, "text": "x in A minor", "key": "A minor"} for f in _names(20)]
    a, b = R.plan(recs, list(range(1, 12)), per_file=2), R.plan(recs, list(range(1, 12)), per_file=2)
    assert a == b
    per = {}
    for rec, s, _ in a:
        per.setdefault(rec["file"], set()).add(s)
    assert all(len(v) <= 2 for v in per.values()) and len(set().union(*per.values())) > 2


def test_build_writes_links_copies_and_captions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    names = _names(40)
    for k, n in enumerate(names):
        mid = mido.MidiFile()
        note = 60 + k % 5
        mid.tracks.append(mido.MidiTrack([mido.Message("note_on", note=note, velocity=64),
                                          mido.Message("note_off", note=note, time=480)]))
        mid.save(str(data / n))
    recs = [{"file": n, "text": f"chorale {n} in D major", "key": "D major"} for n in names]
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    summary = R.build(data, out, [2, -1], log=lambda *_: None)
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert lines[: len(recs)] == recs  # originals unchanged, first
    assert all((out / r["file"]).is_symlink() for r in recs)
    new = lines[len(recs):]
    assert len(new) == summary["transposed"] > 0
    for r in new:
        stem, shift = r["file"][:-4].rsplit("_t", 1)
        k = names.index(stem + ".mid")
        assert r["key"] == {"+2": "E major", "-1": "D- major"}[shift] and r["key"] in r["text"]
        notes = [m.note for m in mido.MidiFile(str(out / r["file"])).tracks[0] if m.type == "note_on"]
        assert notes == [60 + k % 5 + int(shift)]
