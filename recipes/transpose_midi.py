"""A captioned MIDI folder plus transposed copies of its training files, captions' keys rewritten to match.

    python -m recipes.transpose_midi --data ../shared/data/bach --out /work/data/bach_t --shifts=-5,-3,-1,2,4,6

The output folder holds every original file (a symlink) with its captions.jsonl record unchanged, plus, for each
training file (not in the trainer's val split, ``perceiverar.data.sources.is_val``) and each chosen shift,
``<stem>_t+2.mid`` with a record whose ``key`` field and the key words of its ``text`` are transposed. A copy whose
own name would hash to val is left out, so the val split stays the original held-out chorales and no transposed
copy of a training chorale is ever scored as held-out. ``--per-file N`` keeps N of the shifts per file (picked by a
hash of its name), so more keys are covered for the same number of files to render.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path, PurePosixPath

from perceiverar.data.sources import CAPTIONS, hash_int, is_val
from perceiverar.media_files import write_atomic
from tokenizers_mm.audio_files import MIDI_SUFFIXES
from tokenizers_mm.midi_transpose import transpose_caption, transpose_key, transpose_midi


def transposed_name(rel: str, shift: int) -> str:
    p = PurePosixPath(rel)
    return str(p.with_name(f"{p.stem}_t{shift:+d}{p.suffix}"))


def plan(records: list[dict], shifts: list[int], per_file: int | None = None) -> list[tuple[dict, int, dict]]:
    """(original record, shift, new record) for every transposed copy to write: training files only, and no copy
    whose new name is itself val."""
    out, seen = [], set()
    for rec in records:
        rel = rec["file"]
        if is_val(rel) or PurePosixPath(rel).suffix.lower() not in MIDI_SUFFIXES:
            continue
        chosen = list(shifts)
        if per_file is not None and per_file < len(chosen):
            chosen = sorted(random.Random(hash_int(rel)).sample(chosen, per_file))
        for s in chosen:
            new = dict(rec, file=transposed_name(rel, s), text=transpose_caption(rec["text"], s))
            if "key" in rec:
                new["key"] = transpose_key(rec["key"], s)
            if not is_val(new["file"]) and new["file"] not in seen:  # (a file captioned twice: its first caption)
                seen.add(new["file"])
                out.append((rec, s, new))
    return out


def build(data: Path, out: Path, shifts: list[int], per_file: int | None = None, log=print) -> dict:
    records = [json.loads(line) for line in (data / CAPTIONS).read_text().splitlines() if line.strip()]
    todo = plan(records, shifts, per_file)
    out.mkdir(parents=True, exist_ok=True)
    for rec in records:
        link = out / rec["file"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((data / rec["file"]).resolve(), link)
    for rec, s, new in todo:
        dst = out / new["file"]
        if not dst.exists():  # written whole or not at all, so a file already there is complete
            write_atomic(dst, lambda tmp, rec=rec, s=s: transpose_midi(data / rec["file"], tmp, s))
    lines = [json.dumps(r) for r in records] + [json.dumps(new) for _, _, new in todo]
    write_atomic(out / CAPTIONS, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    summary = {"originals": len(records), "val": sum(is_val(r["file"]) for r in records), "transposed": len(todo)}
    log(f"{out}: {summary['originals']} originals ({summary['val']} val) + {summary['transposed']} transposed copies")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="captioned MIDI folder (captions.jsonl with 'file', "
                    "'text' and optionally 'key')")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (created; files already there are kept)")
    ap.add_argument("--shifts", default="-5,-3,-1,2,4,6", help="semitone shifts, comma-separated (default %(default)s)")
    ap.add_argument("--per-file", type=int, default=None, help="keep this many of the shifts per file (default all)")
    a = ap.parse_args(argv)
    shifts = [int(s) for s in a.shifts.split(",") if s.strip()]
    if 0 in shifts:
        ap.error("--shifts: 0 would duplicate the originals")
    build(a.data, a.out, shifts, a.per_file)


if __name__ == "__main__":
    main()
