"""Does a music checkpoint read the key its caption names? Bits of real chorale openings under edited keys.

For held-out chorales of ``--data`` (rendered and tokenized with the checkpoint's own audio codebook), the bits of
the first ``--seconds`` of audio tokens (teacher-forced, the caption right before them, as training lays an item
out) under the true caption and under captions with the key changed:

- ``tritone``: the tonic moved 6 semitones ("G major" -> "C# major"), the mode kept;
- ``fifth``: the tonic moved 7 semitones (a neighbouring key: most pitch classes shared);
- ``mode``: major and minor swapped, the tonic kept;
- ``empty``: no caption at all.

Reported per edit as mean +- standard error of ``bits(edited) - bits(true)`` per clip, over the whole opening
and over its first second, and the share of clips whose true caption is the likelier. A chorale's key is
evident from its own audio a second in, so the caption can only help the opening: averaged over whole clips the
same edits cost almost nothing, which is why this probe scores the opening only.

    python -m benchmarks.key_probe --checkpoint checkpoints/bach --items 24 --seconds 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.caption_probe import summarize
from benchmarks.long_prompt import item_sequence
from benchmarks.music_quality import _KEY_RE, default_data, key_name, parse_key, val_chorales
from benchmarks.results_io import save_result

EDITS = ("tritone", "fifth", "mode", "empty")


def edited(caption: str, kind: str) -> str:
    """``caption`` with its key changed as ``kind`` says (see the module docstring)."""
    if kind == "empty":
        return ""
    m = _KEY_RE.search(caption)
    tonic, mode = parse_key(caption)
    if kind == "mode":
        new = (tonic, "minor" if mode == "major" else "major")
    else:
        new = ((tonic + (6 if kind == "tritone" else 7)) % 12, mode)
    return caption[: m.start()] + key_name(new) + caption[m.end() :]


def opening_bits(model, caption: str, rest: np.ndarray, n: int) -> np.ndarray:
    """Bits of each of the first ``n`` audio tokens (``rest``: from [TEXT_END] on) under ``caption``."""
    from perceiverar.evaluate import item_nll  # noqa: PLC0415

    prompt = np.frombuffer(caption.encode(), np.uint8).astype(np.int64)
    ids, feats, target = item_sequence(prompt, rest, n_target=n)
    return item_nll(model, ids, feats, target) / np.log(2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/bach"), help="an audio checkpoint")
    ap.add_argument("--data", type=Path, default=default_data(), help="captioned MIDI/audio folder (its val split)")
    ap.add_argument("--items", type=int, default=24, help="held-out chorales")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of the scored opening")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="name part of the result file")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from perceiverar.data.codec import audio_ids, load_audio_codec  # noqa: PLC0415
    from perceiverar.pipeline import Pipeline  # noqa: PLC0415
    from tokenizers_mm.vocab import audio_tokens, build_sequence  # noqa: PLC0415

    t0 = time.time()
    pipe = Pipeline.load(a.checkpoint)
    model = pipe.model.eval()
    codec = load_audio_codec(Path(a.checkpoint) / (pipe.config.get("audio") or {}).get("dir", "audio_tokenizer"))
    tps = codec.tokenizer.tokens_per_second
    mode = pipe.audio_mode  # "chords": the scored opening holds its chord labels too
    n, first = audio_tokens(round(a.seconds * tps), mode), audio_tokens(round(tps), mode)
    deltas = {k: [] for k in EDITS}
    first_second = {k: [] for k in EDITS}
    rows = []
    for r in val_chorales(a.data, a.items):
        target = audio_ids(codec, a.data / r["file"], mode)
        full = np.asarray(build_sequence("", "audio", target, audio_mode=mode), np.int64)
        rest = full[2:]  # from [TEXT_END] on
        with torch.no_grad():
            true = opening_bits(model, r["text"], rest, n)
            row = {"file": r["file"], "caption": r["text"], "true_bits": round(float(true.sum()), 2)}
            for kind in EDITS:
                d = opening_bits(model, edited(r["text"], kind), rest, n) - true
                deltas[kind].append(float(d.sum()))
                first_second[kind].append(float(d[:first].sum()))
                row[kind] = round(float(d.sum()), 2)
        rows.append(row)
        print(f"{r['file']}: {row}", flush=True)
    res = {
        "checkpoint": str(a.checkpoint), "data": str(a.data), "audio_mode": mode, "items": len(rows), "seconds": a.seconds,
        "tokens_scored_per_clip": n, "tokens_per_second": tps,
        "edits": {k: summarize(v) for k, v in deltas.items()},
        "edits_first_second": {k: summarize(v) for k, v in first_second.items()},
        "per_item": rows, "wall_seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    for k in EDITS:
        e, f = res["edits"][k], res["edits_first_second"][k]
        print(f"{k:8s} {e['mean_bits']:+.2f} +- {e['se_bits']} bits per clip over {a.seconds:g} s "
              f"(first second {f['mean_bits']:+.2f}); true caption likelier for {e['true_likelier_share']:.0%}")
    save_result("key_probe", "cpu", res, a.out, tag=a.tag)
    return res


if __name__ == "__main__":
    main()
