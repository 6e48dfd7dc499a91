"""Audio tokenizer quality and speed on rendered Bach chorales the codebook was not fitted on.

    python -m benchmarks.audio_tokenizer [--tokenizer DIR | --n-fit 150 [--fit-option patch_frames=2 ...]]
        [--n-test 20] [--decoder NAME[:field=value,...] ...] [--tag NAME]

Split (deterministic): the chorales sorted by name; the first --n-test are the test set, the next --n-fit fit the
codebook (the same split as ``python -m tokenizers_mm.fit_audio --skip 20 --max-files 150``). ``--fit-option``
sets AudioConfig fields of the fitted tokenizer (``n_mels=128``, ``n_fft=2048``, ``hop_length=512``,
``patch_frames=2``); ``--codebook-size`` its size.

Spectrogram metric: RMS difference, in dB, between two 80-mel power spectrograms of the REFERENCE analysis
(n_fft 1024, hop 256, 22,050 Hz, Slaney mel, 10 log10 power; the default AudioConfig, whatever the tokenizer's
own analysis) after flooring BOTH at (max of the original clip's spectrogram) - 50 dB; pooled over all frames and
bins of all test clips ("pooled") and also averaged per clip ("per_clip_mean").

- quantised:  original vs the codebook centroids of its codes, in the tokenizer's OWN analysis (the same as the
              reference one unless --fit-option changed it)
- round_trip: original vs the spectrogram re-analysed from the decoded waveform
- inversion_only: original vs the waveform decoded (by the first --decoder) from the unquantised, floored spectrogram
- bin_mean: original vs each mel bin's mean over the clip (a trivial baseline)

Pitch metrics (a mel spectrogram blurs pitch below ~1 kHz, so its RMSE can look fine while notes smear): constant-Q
chroma (``benchmarks.music_quality.chroma``) of original and decoded audio; ``chroma_similarity`` = cosine of the
two per frame, weighted by the original frame's chroma energy; ``key_agreement`` = the Krumhansl-Kessler key of the
decoded clip is that of the original (``inversion_only_pitch``: the same for the unquantised inversion); ``key_accuracy`` = it is the caption's key (the original's own is reported as
``original_key_accuracy``); ``chroma_clarity`` as in music_quality.

``--decoder`` (repeatable) decodes the same codes with other decoder settings of AudioConfig
(``griffin_lim_iters``, ``griffin_lim_momentum``, ``griffin_lim_init``, ``nnls_iters``), side by side, each with
its decode CPU time per second of audio (process time; use ``--threads 1`` so it is one core's work).

Prints the figures and writes benchmarks/results/audio_tokenizer[-TAG]-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks import music_quality as MQ
from tokenizers_mm.audio import AudioConfig, AudioTokenizer
from tokenizers_mm.audio_files import load_audio, render_midi

ROOT = Path(__file__).resolve().parents[1]
DECODER_FIELDS = ("griffin_lim_iters", "griffin_lim_momentum", "griffin_lim_init", "nnls_iters")
FIT_FIELDS = ("n_mels", "n_fft", "hop_length", "patch_frames", "sample_rate")


def default_data() -> Path:
    for p in (ROOT.parent / "shared" / "data" / "bach", Path("/work/shared/data/bach")):
        if p.is_dir():
            return p
    return ROOT.parent / "shared" / "data" / "bach"


def render_cached(mids: list[Path], cache: Path, jobs: int) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)

    def one(m: Path) -> Path:
        wav = cache / (m.stem + ".wav")
        if not wav.is_file() or wav.stat().st_size <= 44:
            render_midi(m, wav)
        return wav

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, mids))


def floored_sq_err(ref: torch.Tensor, other: torch.Tensor) -> tuple[float, int]:
    """Sum of squared dB differences and element count; both floored at max(ref) - 50 dB. (n_mels, T) each."""
    floor = ref.max() - 50.0
    t = min(ref.shape[1], other.shape[1])
    d = ref[:, :t].clamp_min(floor) - other[:, :t].clamp_min(floor)
    return float((d * d).sum()), d.numel()


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_options(items: list[str], allowed: tuple[str, ...], what: str) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}, only fields in ``allowed``."""
    out = {}
    for item in items:
        for kv in filter(None, item.split(",")):
            k, sep, v = kv.partition("=")
            if not sep or k not in allowed:
                raise SystemExit(f"{what}: expected FIELD=VALUE with FIELD one of {', '.join(allowed)}, got {kv!r}")
            out[k] = _value(v)
    return out


def parse_decoder(spec: str) -> tuple[str, dict]:
    """'peaks16:griffin_lim_init=peaks,griffin_lim_iters=16' -> ('peaks16', {...}); a bare name keeps the config."""
    name, _, opts = spec.partition(":")
    return name, parse_options([opts], DECODER_FIELDS, f"--decoder {spec!r}")


def chroma_similarity(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(sum over frames of ref energy x cosine(ref, other), sum of ref energy); chroma (12, T) each."""
    t = min(ref.shape[1], other.shape[1])
    a, b = ref[:, :t].astype(np.float64), other[:, :t].astype(np.float64)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    cos = (a * b).sum(0) / np.maximum(na * nb, 1e-12)
    w = a.sum(0)
    return float((w * cos).sum()), float(w.sum())


def caption_keys(data: Path) -> dict[str, tuple[int, str]]:
    path = data / "captions.jsonl"
    if not path.is_file():
        return {}
    keys = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            try:
                keys[Path(r["file"]).stem] = MQ.parse_key(r.get("key") or r["text"])
            except ValueError:
                pass
    return keys


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data(), help="folder of chorale .mid files")
    ap.add_argument("--tokenizer", type=Path, default=None, help="saved tokenizer to evaluate (else fit one)")
    ap.add_argument("--n-fit", type=int, default=150, help="chorales to fit on when --tokenizer is not given")
    ap.add_argument("--n-test", type=int, default=20, help="held-out chorales to evaluate on")
    ap.add_argument("--codebook-size", type=int, default=4096)
    ap.add_argument("--fit-option", action="append", default=[], help=f"FIELD=VALUE of the fitted tokenizer's "
                    f"AudioConfig, FIELD in {', '.join(FIT_FIELDS)} (repeatable)")  # fmt: skip
    ap.add_argument("--max-frames", type=int, default=250_000, help="k-means sample size (patches)")
    ap.add_argument("--iters", type=int, default=15, help="k-means Lloyd iterations")
    ap.add_argument("--decoder", action="append", default=[], help="NAME[:FIELD=VALUE,...] decoder variant to "
                    f"compare, FIELD in {', '.join(DECODER_FIELDS)} (repeatable; default: the tokenizer's own)")  # fmt: skip
    ap.add_argument("--save-tokenizer", type=Path, default=None, help="where to save a fitted tokenizer "
                    "(default .cache/audio_tokenizer[-TAG])")  # fmt: skip
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bach-wav", help="rendered WAV cache")
    ap.add_argument("--jobs", type=int, default=2, help="parallel fluidsynth renders")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--tag", default="", help="name part of the result file")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fit_options = parse_options(args.fit_option, FIT_FIELDS, "--fit-option")
    decoders = [parse_decoder(d) for d in args.decoder] or [("as_configured", {})]

    mids = sorted(args.data.glob("*.mid"))
    test_mids, fit_mids = mids[: args.n_test], mids[args.n_test : args.n_test + args.n_fit]
    t0 = time.time()
    test_wavs = render_cached(test_mids, args.cache_dir, args.jobs)
    fit_seconds = None
    if args.tokenizer is not None:
        tok = AudioTokenizer.load(args.tokenizer)
        fitted_on = args.tokenizer / "fitted_on.txt"
        if fitted_on.is_file():
            names = {Path(line).stem for line in fitted_on.read_text().split()}
            overlap = names & {m.stem for m in test_mids}
            if overlap:
                raise SystemExit(f"tokenizer was fitted on test chorales: {sorted(overlap)[:5]}")
    else:
        fit_wavs = render_cached(fit_mids, args.cache_dir, args.jobs)
        print(f"rendered {len(test_wavs) + len(fit_wavs)} chorales in {time.time() - t0:.0f} s")
        t1 = time.time()
        tok = AudioTokenizer.fit(fit_wavs, codebook_size=args.codebook_size, max_frames=args.max_frames,
                                 iters=args.iters, progress=True, **fit_options)  # fmt: skip
        fit_seconds = time.time() - t1
        save = args.save_tokenizer or ROOT / ".cache" / "-".join(x for x in ("audio_tokenizer", args.tag) if x)
        tok.save(save)
        (save / "fitted_on.txt").write_text("".join(f"{m}\n" for m in fit_mids))
        print(f"fitted in {fit_seconds:.0f} s -> {save}")

    reference = AudioTokenizer(AudioConfig(), torch.zeros(AudioConfig().codebook_size, AudioConfig().patch_dim))
    variants = {name: AudioTokenizer(dataclasses.replace(tok.config, **opts), tok.codebook) for name, opts in decoders}
    first = next(iter(variants))
    keys = caption_keys(args.data)

    fixed = ("quantised", "inversion_only", "bin_mean")
    sums = {k: [0.0, 0] for k in fixed + tuple(variants)}
    per_clip = {k: [] for k in sums}
    pitch = {k: {"sim": [0.0, 0.0], "agree": [], "correct": [], "clarity": [], "decode_cpu": 0.0} for k in variants}
    orig_correct, orig_clarity = [], []
    inv = {"sim": [0.0, 0.0], "agree": []}  # pitch of the unquantised inversion: what the features themselves keep
    total_seconds = 0.0
    for wav in test_wavs:
        x, sr = load_audio(wav)
        total_seconds += len(x) / sr
        ref = reference.log_mel(x, sr)  # (80, T): the fixed reference analysis
        own = tok.log_mel(x, sr)
        ids = tok.encode(x, sr)
        floored = own.clamp_min(tok.config.db_floor)
        y_inv = variants[first].db_to_waveform(floored)  # with the first decoder, so runs stay comparable
        errs = {
            "quantised": floored_sq_err(own, tok.codes_to_db(ids)),
            "inversion_only": floored_sq_err(ref, reference.log_mel(y_inv, tok.sample_rate)),
            "bin_mean": floored_sq_err(ref, ref.clamp_min(ref.max() - 50).mean(1, keepdim=True).expand_as(ref)),
        }
        c_orig = MQ.chroma(x, sr)
        k_orig, _ = MQ.estimate_key(c_orig)
        k_cap = keys.get(wav.stem)
        orig_correct.append(k_orig == k_cap)
        orig_clarity.append(MQ.chroma_clarity(c_orig))
        c_inv = MQ.chroma(y_inv, tok.sample_rate)
        inv["sim"][0] += (sw := chroma_similarity(c_orig, c_inv))[0]
        inv["sim"][1] += sw[1]
        inv["agree"].append(MQ.estimate_key(c_inv)[0] == k_orig)
        for name, vt in variants.items():
            c0 = time.process_time()
            y, _ = vt.decode(ids)
            pitch[name]["decode_cpu"] += time.process_time() - c0
            errs[name] = floored_sq_err(ref, reference.log_mel(y, vt.sample_rate))
            c_dec = MQ.chroma(y, vt.sample_rate)
            s, w = chroma_similarity(c_orig, c_dec)
            k_dec, _ = MQ.estimate_key(c_dec)
            p = pitch[name]
            p["sim"][0] += s
            p["sim"][1] += w
            p["agree"].append(k_dec == k_orig)
            p["correct"].append(k_dec == k_cap)
            p["clarity"].append(MQ.chroma_clarity(c_dec))
        for k, (s, n) in errs.items():
            sums[k][0] += s
            sums[k][1] += n
            per_clip[k].append((s / n) ** 0.5)
        print(f"{wav.stem:>16}: " + "  ".join(f"{k} {per_clip[k][-1]:.2f}" for k in sums), flush=True)

    # speed: encode + decode (the tokenizer's own decoder) of 10 s of audio (median of 3)
    x, sr = load_audio(test_wavs[0])
    x10 = x[: 10 * sr]
    enc, dec, cpu = [], [], []
    for _ in range(3):
        c = time.process_time()
        t = time.perf_counter()
        ids = tok.encode(x10, sr)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        tok.decode(ids)
        dec.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)

    rms = lambda k: round((sums[k][0] / sums[k][1]) ** 0.5, 3)  # noqa: E731
    decoder_results = {
        name: {
            "config": {f: getattr(vt.config, f) for f in DECODER_FIELDS},
            "round_trip_db_pooled": rms(name),
            "round_trip_db_per_clip_mean": round(float(np.mean(per_clip[name])), 3),
            "decode_cpu_seconds_per_audio_second": round(pitch[name]["decode_cpu"] / total_seconds, 4),
            "chroma_similarity": round(pitch[name]["sim"][0] / max(pitch[name]["sim"][1], 1e-12), 4),
            "key_agreement": round(float(np.mean(pitch[name]["agree"])), 4),
            "key_accuracy": round(float(np.mean(pitch[name]["correct"])), 4),
            "chroma_clarity": round(float(np.mean(pitch[name]["clarity"])), 4),
        }
        for name, vt in variants.items()
    }
    result = {
        "benchmark": "audio_tokenizer",
        "date": dt.date.today().isoformat(),
        "machine": "CPU",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": tok.to_dict(),
        "test_files": [m.name for m in test_mids],
        "test_seconds": round(total_seconds, 1),
        "fit_files": None if args.tokenizer else len(fit_mids),
        "fit_seconds": None if fit_seconds is None else round(fit_seconds, 1),
        "fit_kmeans": None if args.tokenizer else {"max_frames": args.max_frames, "iters": args.iters},
        "db_rms_pooled": {**{k: rms(k) for k in fixed}, "round_trip": rms(first)},
        "db_rms_per_clip_mean": {k: round(float(np.mean(per_clip[k])), 3) for k in fixed}
        | {"round_trip": round(float(np.mean(per_clip[first])), 3)},
        "decoders": decoder_results,
        "inversion_only_pitch": {"chroma_similarity": round(inv["sim"][0] / max(inv["sim"][1], 1e-12), 4),
                                 "key_agreement": round(float(np.mean(inv["agree"])), 4)},  # fmt: skip
        "original": {"key_accuracy": round(float(np.mean(orig_correct)), 4),
                     "chroma_clarity": round(float(np.mean(orig_clarity)), 4)},  # fmt: skip
        "tokens_per_second": round(tok.tokens_per_second, 3),
        "codebook_size": tok.codebook_size,
        "seconds_per_65536_tokens": round(tok.seconds_per_context(65536), 1),
        "encode_10s_seconds": round(float(np.median(enc)), 3),
        "decode_10s_seconds": round(float(np.median(dec)), 3),
        "encode_decode_10s_seconds": round(float(np.median(enc) + np.median(dec)), 3),
        "encode_decode_10s_cpu_seconds": round(float(np.median(cpu)), 3),  # process time, all threads
        "load_average_1min": round(os.getloadavg()[0], 2),  # the machine is shared: context for the timings
        "bars": {"quantised_db": 2.9, "round_trip_db": 4.0, "tokens_per_second": 90, "encode_decode_10s": 2.0},
    }
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "-".join(x for x in ("audio_tokenizer", args.tag, "cpu", result["date"]) if x)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
