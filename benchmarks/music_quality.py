"""Does generated music sound like a chorale, in the key its caption names? Generated clips beside real ones.

    python -m benchmarks.music_quality --checkpoint checkpoints/bach [--items 16] [--seconds 8] [--tag bach-before]

For the first ``--items`` held-out chorales of ``--data`` (the trainer's validation split, in captions.jsonl
order) it measures four sets of clips, ``--seconds`` long each:

    real        the chorale's MIDI rendered by fluidsynth (the training audio), its first seconds
    round_trip  that clip through the checkpoint's audio tokenizer (encode, decode): the best a model could sound
    generated   ``Pipeline.load(ckpt).generate_audio(caption, seed=i)`` from the chorale's caption
    (and the same measures on white noise, as the floor)

Measures, per clip and averaged over each set:

- **key**: the Krumhansl-Kessler key finder: the clip's mean chroma (librosa ``chroma_cqt``) correlated with the
  24 rotations of the Krumhansl-Kessler major and minor profiles, the best one wins. ``key_accuracy``: the estimated
  key is the caption's; ``mode_accuracy``: its mode (major/minor) is; ``mirex_score``: the MIREX key score (1 for
  the key, 0.5 a fifth away in the same mode, 0.3 relative, 0.2 parallel). Targets (issue 20): generated key
  accuracy >= 60% of real's and mode accuracy >= 80% of real's (``targets`` in the JSON).
- **notes, not noise**: ``chroma_clarity``: the share of each frame's chroma energy in its top three pitch classes,
  energy-weighted over frames (about 0.3 for white noise, 0.8 for a held triad); ``spectral_flatness`` (mean;
  1 for white noise, near 0 for tones); ``onset_strength`` (librosa's mean spectral flux, dB per frame) and
  ``onsets_per_second`` (librosa's onset picker).
- **bits per token** on the held-out chorales through ``perceiverar.evaluate`` (its sliding windows), on the first
  ``--eval-items`` val chorales (16 = what the checkpoint card reports).

Writes benchmarks/results/music_quality[-TAG]-cpu-<date>.json and, beside it, a PNG of constant-Q spectrograms:
real, round trip and generated clips of the same captions side by side. ``--model-card`` writes both into the
checkpoint instead and puts their table and image into its README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import RESULTS, save_result

PITCH_CLASSES = ["C", "C#", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B"]  # music21 spelling, as the captions
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_RE = re.compile(r"\b([A-G])([#b-]*)\s+(major|minor)\b")


# ------------------------------------------------------------------------------------------- keys


def parse_key(text: str) -> tuple[int, str]:
    """(tonic pitch class 0..11, 'major'|'minor') of the first key named in a caption: 'in B- major', 'F# minor'."""
    m = _KEY_RE.search(text)
    if m is None:
        raise ValueError(f"no key such as 'G major' or 'F# minor' in {text!r}")
    letter, accidentals, mode = m.groups()
    shift = accidentals.count("#") - accidentals.count("-") - accidentals.count("b")
    return (_LETTER[letter] + shift) % 12, mode


def key_name(key: tuple[int, str]) -> str:
    return f"{PITCH_CLASSES[key[0]]} {key[1]}"


def chroma(y: np.ndarray, sr: int) -> np.ndarray:
    """(12, T) constant-Q chroma, not normalised per frame (so quiet frames weigh little), C first."""
    import librosa  # noqa: PLC0415  (heavy; only the measurement needs it)

    return librosa.feature.chroma_cqt(y=np.asarray(y, np.float32), sr=sr, norm=None)


def estimate_key(chroma_12xt: np.ndarray) -> tuple[tuple[int, str], float]:
    """The Krumhansl-Kessler key of a chroma: ((tonic, mode), correlation) of the best of the 24 profiles."""
    profile = np.asarray(chroma_12xt, np.float64).mean(1)  # (12,)
    if not np.isfinite(profile).all() or profile.std() == 0:
        return (0, "major"), 0.0  # silence or a flat profile: no key; C major by convention, correlation 0
    best = (-2.0, (0, "major"))
    for mode, prof in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(prof, tonic))[0, 1])
            best = max(best, (r, (tonic, mode)))
    return best[1], best[0]


def mirex_score(est: tuple[int, str], ref: tuple[int, str]) -> float:
    """MIREX key score: 1 same key, 0.5 a perfect fifth away (same mode), 0.3 relative, 0.2 parallel, else 0."""
    (te, me), (tr, mr) = est, ref
    if est == ref:
        return 1.0
    if me == mr and (te - tr) % 12 in (5, 7):
        return 0.5
    if me != mr and (te - tr) % 12 == ((9 if mr == "major" else 3)):  # relative minor / major
        return 0.3
    if me != mr and te == tr:
        return 0.2
    return 0.0


# ------------------------------------------------------------------------------------ notes, not noise


def chroma_clarity(chroma_12xt: np.ndarray, top: int = 3) -> float:
    """Share of chroma energy in each frame's ``top`` pitch classes, energy-weighted over frames (1/4 = flat)."""
    c = np.asarray(chroma_12xt, np.float64)
    total = c.sum()
    return float(np.sort(c, 0)[-top:].sum() / total) if total > 0 else 0.0


def clip_measures(y: np.ndarray, sr: int, ref_key: tuple[int, str] | None = None) -> dict:
    """Key estimate (and its agreement with ``ref_key``) and the notes-not-noise measures of one clip."""
    import librosa  # noqa: PLC0415

    y = np.asarray(y, np.float32)
    c = chroma(y, sr)
    key, r = estimate_key(c)
    onset = librosa.onset.onset_strength(y=y, sr=sr)
    onsets = librosa.onset.onset_detect(onset_envelope=onset, sr=sr)
    out = {
        "key": key_name(key),
        "key_r": round(r, 4),
        "chroma_clarity": round(chroma_clarity(c), 4),
        "spectral_flatness": round(float(librosa.feature.spectral_flatness(y=y).mean()), 4),
        "onset_strength": round(float(onset.mean()), 4),
        "onsets_per_second": round(len(onsets) / max(len(y) / sr, 1e-9), 3),
        "pitch_class_profile": [round(float(v), 3) for v in c.mean(1) / max(c.mean(1).max(), 1e-12)],
    }
    if ref_key is not None:
        out.update(caption_key=key_name(ref_key), key_correct=key == ref_key, mode_correct=key[1] == ref_key[1],
                   mirex=mirex_score(key, ref_key))  # fmt: skip
    return out


def summarize(clips: list[dict]) -> dict:
    """Means over a set of clips of the measures of :func:`clip_measures`."""
    out = {"clips": len(clips)}
    for k, name in (("key_correct", "key_accuracy"), ("mode_correct", "mode_accuracy"), ("mirex", "mirex_score")):
        if clips and k in clips[0]:
            out[name] = round(float(np.mean([c[k] for c in clips])), 4)
    for k in ("chroma_clarity", "spectral_flatness", "onset_strength", "onsets_per_second", "key_r"):
        out[k] = round(float(np.mean([c[k] for c in clips])), 4)
    return out


# -------------------------------------------------------------------------------------------- data


def val_chorales(data: Path, n: int) -> list[dict]:
    """The first ``n`` held-out items (the trainer's validation split) of a captions.jsonl folder, in its order."""
    from perceiverar.data import CAPTIONS, is_val  # noqa: PLC0415

    rows = [json.loads(line) for line in (data / CAPTIONS).read_text().splitlines() if line.strip()]
    val = [r for r in rows if is_val(r["file"]) and (data / r["file"]).is_file()]
    if len(val) < n:
        raise SystemExit(f"music_quality: only {len(val)} held-out items in {data}, asked for {n}")
    return val[:n]


def bits_per_token(checkpoint: Path, data: Path, rows: list[dict]) -> dict:
    """perceiverar-eval on a folder that holds only ``rows`` (links to their files): the same held-out items, and
    only they are tokenized (the full folder would render all its chorales first)."""
    from perceiverar import evaluate  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "data"
        sub.mkdir()
        for r in rows:
            (sub / r["file"]).parent.mkdir(parents=True, exist_ok=True)
            (sub / r["file"]).symlink_to((data / r["file"]).resolve())
        (sub / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # --split all: a folder of held-out items only would otherwise be given a train part (data's _fix_split)
        res = evaluate.run(["--checkpoint", str(checkpoint), "--data", str(sub), "--split", "all",
                             "--cache-dir", str(Path(tmp) / "cache"), "--no-speed", "--device", "cpu"])  # fmt: skip
    return {k: res[k] for k in ("bits_per_token", "audio_tokens_scored", "eval_seconds") if k in res}


# -------------------------------------------------------------------------------------------- figure


def spectrogram_png(columns: dict[str, list[tuple[np.ndarray, int]]], titles: list[str], path: Path) -> Path:
    """A grid of constant-Q spectrograms (dB, C2..C8): one column per set of clips, one row per caption."""
    import librosa  # noqa: PLC0415
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = len(titles)
    fig, axes = plt.subplots(rows, len(columns), figsize=(4.2 * len(columns), 2.2 * rows), squeeze=False)
    for j, (name, clips) in enumerate(columns.items()):
        for i, (y, sr) in enumerate(clips[:rows]):
            c = np.abs(librosa.cqt(np.asarray(y, np.float32), sr=sr, fmin=librosa.note_to_hz("C2"), n_bins=72))
            db = librosa.amplitude_to_db(c, ref=np.max, top_db=60)  # (72, T)
            ax = axes[i, j]
            ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-60, vmax=0,
                      extent=(0, len(y) / sr, 0, 72))  # fmt: skip
            ax.set_yticks([0, 12, 24, 36, 48, 60], ["C2", "C3", "C4", "C5", "C6", "C7"], fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{name}: {titles[i]}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------- model card

CARD_BEGIN, CARD_END = "<!-- music_quality -->", "<!-- /music_quality -->"


def card_section(fields: dict) -> str:
    """A model-card section: the summary table, the targets, held-out bits/token and the spectrogram PNG."""
    s, t = fields["summary"], fields["targets"]
    cols = [("real", "real (rendered)"), ("round_trip", "tokenizer round trip"), ("generated", "generated"),
            ("white_noise", "white noise")]  # fmt: skip
    rows = [("key_accuracy", "key = caption's"), ("mode_accuracy", "mode = caption's"), ("mirex_score", "MIREX key score"),
            ("chroma_clarity", "chroma clarity (top-3 share)"), ("spectral_flatness", "spectral flatness"),
            ("onsets_per_second", "onsets per second")]  # fmt: skip
    fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
    lines = [CARD_BEGIN, "## Music quality", "",
             f"`python -m benchmarks.music_quality --checkpoint {fields['checkpoint']}` on {fields['items']} held-out "
             f"chorales, {fields['seconds']:g} s each from their start, one generation per caption (seed "
             f"{fields['seed']}, sampling {fields['sampling']}); {fields['device']}, {fields['date']}.", "",
             "| | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    for key, label in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(s[c].get(key)) for c, _ in cols) + " |")
    met = "met" if t["met"] else "not met"
    ratio = lambda v: "n/a (real 0)" if v is None else f"{v:.3g}"  # noqa: E731
    lines += ["", f"Generated vs real: key accuracy {ratio(t['key_accuracy_vs_real'])} of real's (target 0.6), mode "
              f"accuracy {ratio(t['mode_accuracy_vs_real'])} (target 0.8): {met}."]  # fmt: skip
    if fields.get("held_out"):
        h = fields["held_out"]
        lines.append(f"Held-out bits per token: {h['bits_per_token']:.4f} ({h['audio_tokens_scored']} tokens).")
    lines += ["", f"![constant-Q spectrograms: real, round trip and generated clips of the same captions]"
              f"({fields['spectrogram_png']})", CARD_END]  # fmt: skip
    return "\n".join(lines) + "\n"


def update_card(readme: Path, section: str) -> None:
    """Put ``section`` into a model card, replacing an earlier one (between the markers) or appended."""
    text = readme.read_text() if readme.is_file() else ""
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    readme.write_text(text)


# -------------------------------------------------------------------------------------------- main


def default_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "bach"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.music_quality", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/bach"), help="an audio checkpoint")
    ap.add_argument("--data", type=Path, default=default_data(), help="captioned MIDI/audio folder (its val split)")
    ap.add_argument("--items", type=int, default=16, help="held-out captions to generate from and compare with")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of every clip")
    ap.add_argument("--eval-items", type=int, default=16, help="held-out items for bits/token (0: skip)")
    ap.add_argument("--figure-rows", type=int, default=4, help="captions shown in the spectrogram PNG")
    ap.add_argument("--seed", type=int, default=0, help="generation seed of the first caption (then +1 each)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (checkpoint default)")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling (checkpoint default)")
    ap.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (checkpoint default)")
    ap.add_argument("--cfg-scale-codes", type=float, default=None,
                    help="guidance of the codes after chord labels, the labels keeping --cfg-scale (checkpoint default)")
    ap.add_argument("--candidates", type=int, default=None,
                    help="clips drawn per caption, the likeliest given it kept (1: off; checkpoint default)")
    ap.add_argument("--key-lock", choices=("on", "off"), default=None,
                    help="chord labels only from the caption's key (diatonic triads; checkpoint default)")
    ap.add_argument("--tag", default="", help="name part of the result files, e.g. bach-before")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--model-card", action="store_true", help="write music_quality.json and .png into the "
                    "checkpoint and their table into its README.md (a section replaced on every run)")  # fmt: skip
    args = ap.parse_args(argv)
    import torch  # noqa: PLC0415

    from perceiverar import Pipeline  # noqa: PLC0415

    t_start = time.time()
    key_lock = None if args.key_lock is None else args.key_lock == "on"
    rows = val_chorales(args.data, max(args.items, args.eval_items))
    items = rows[: args.items]
    pipe = Pipeline.load(args.checkpoint, device="cpu")
    tok = pipe.audio_tokenizer
    sr = tok.sample_rate
    n = int(round(args.seconds * sr))
    keys = [parse_key(r.get("key") or r["text"]) for r in items]

    sets: dict[str, list[tuple[np.ndarray, int]]] = {"real": [], "round_trip": [], "generated": []}
    gen_seconds = 0.0
    for i, r in enumerate(items):
        y, _ = tok.load_file(args.data / r["file"])  # rendered at the tokenizer's rate
        y = y[:n]
        sets["real"].append((y, sr))
        sets["round_trip"].append(tok.decode(tok.encode(y, sr)))
        t = time.time()
        with torch.no_grad():
            g = pipe.generate_audio(r["text"], seconds=args.seconds, seed=args.seed + i, temperature=args.temperature,
                                    top_p=args.top_p, cfg_scale=args.cfg_scale, cfg_scale_codes=args.cfg_scale_codes,
                                    candidates=args.candidates, key_lock=key_lock,
                                    partial_audio=False)[0]  # fmt: skip
        gen_seconds += time.time() - t
        sets["generated"].append(g)
        print(f"{r['file']}: generated {args.seconds:g} s in {time.time() - t:.0f} s", flush=True)
    noise = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1

    per_clip = {name: [clip_measures(y, s, k) for (y, s), k in zip(clips, keys)] for name, clips in sets.items()}
    per_clip["white_noise"] = [clip_measures(noise, sr)]
    summary = {name: summarize(c) for name, c in per_clip.items()}
    for name in sets:
        for row, r in zip(per_clip[name], items):
            row["file"] = r["file"]
    real, gen = summary["real"], summary["generated"]
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    targets = {
        "key_accuracy_vs_real": ratio(gen["key_accuracy"], real["key_accuracy"]), "key_accuracy_target": 0.6,
        "mode_accuracy_vs_real": ratio(gen["mode_accuracy"], real["mode_accuracy"]), "mode_accuracy_target": 0.8,
    }  # fmt: skip
    targets["met"] = bool((targets["key_accuracy_vs_real"] or 0) >= 0.6 and (targets["mode_accuracy_vs_real"] or 0) >= 0.8)
    eval_res = bits_per_token(args.checkpoint, args.data, rows[: args.eval_items]) if args.eval_items else None

    name = "-".join(x for x in ("music_quality", args.tag) if x)
    out = args.out or (args.checkpoint / "music_quality.json" if args.model_card else
                       RESULTS / f"{name}-cpu-{time.strftime('%Y-%m-%d')}.json")  # fmt: skip
    png = spectrogram_png(sets, [f"{r['file']} ({key_name(k)})" for r, k in zip(items, keys)][: args.figure_rows],
                          out.with_suffix(".png"))  # fmt: skip
    overrides = {"temperature": args.temperature, "top_p": args.top_p, "cfg_scale": args.cfg_scale,
                 "cfg_scale_codes": args.cfg_scale_codes, "candidates": args.candidates, "key_lock": key_lock}
    fields = {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "items": args.items, "seconds": args.seconds,
        "seed": args.seed, "sampling": {k: v for k, v in pipe.defaults.items() if k in (*overrides, "top_k")}
        | {k: v for k, v in overrides.items() if v is not None},
        "tokenizer": {"tokens_per_second": round(tok.tokens_per_second, 3), "codebook_size": tok.codebook_size,
                      "patch_frames": tok.config.patch_frames},
        "summary": summary, "targets": targets, "held_out": eval_res, "spectrogram_png": png.name,
        "generation_seconds": round(gen_seconds, 1), "wall_seconds": round(time.time() - t_start, 1),
        "per_clip": per_clip,
    }  # fmt: skip
    save_result("music_quality", "cpu", fields, out=out)
    if args.model_card:
        saved = json.loads(out.read_text())  # with the device and date save_result adds
        update_card(args.checkpoint / "README.md", card_section(saved))
    print(json.dumps({"summary": summary, "targets": targets, "held_out": eval_res}, indent=2))
    return fields


if __name__ == "__main__":
    main()
