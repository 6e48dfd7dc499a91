"""Audio tokenizer quality and speed on rendered Bach chorales the codebook was not fitted on.

    python -m benchmarks.audio_tokenizer [--tokenizer DIR | --n-fit 150] [--n-test 20]

Split (deterministic): the chorales sorted by name; the first --n-test are the test set, the next --n-fit fit the
codebook (the same split as ``python -m tokenizers_mm.fit_audio --skip 20 --max-files 150``).

Metric: RMS difference, in dB, between two 80-mel power spectrograms (n_fft 1024, hop 256, 22,050 Hz, Slaney
mel, 10 log10 power) after flooring BOTH at (max of the original clip's spectrogram) - 50 dB; pooled over all
frames and bins of all test clips ("pooled") and also averaged per clip ("per_clip_mean").

- quantised:  original vs the codebook centroids of its codes
- round_trip: original vs the spectrogram re-analysed from the decoded waveform
- inversion_only: original vs re-analysed waveform decoded from the unquantised (floored) spectrogram
- bin_mean: original vs each mel bin's mean over the clip (a trivial baseline)

Prints the figures and writes benchmarks/results/audio_tokenizer-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tokenizers_mm.audio import AudioTokenizer, load_audio, render_midi

ROOT = Path(__file__).resolve().parents[1]


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data(), help="folder of chorale .mid files")
    ap.add_argument("--tokenizer", type=Path, default=None, help="saved tokenizer to evaluate (else fit one)")
    ap.add_argument("--n-fit", type=int, default=150, help="chorales to fit on when --tokenizer is not given")
    ap.add_argument("--n-test", type=int, default=20, help="held-out chorales to evaluate on")
    ap.add_argument("--codebook-size", type=int, default=4096)
    ap.add_argument("--max-frames", type=int, default=250_000, help="k-means sample size")
    ap.add_argument("--save-tokenizer", type=Path, default=ROOT / ".cache" / "audio_tokenizer")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bach-wav", help="rendered WAV cache")
    ap.add_argument("--jobs", type=int, default=2, help="parallel fluidsynth renders")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
                                 progress=True)  # fmt: skip
        fit_seconds = time.time() - t1
        tok.save(args.save_tokenizer)
        (args.save_tokenizer / "fitted_on.txt").write_text("".join(f"{m}\n" for m in fit_mids))
        print(f"fitted in {fit_seconds:.0f} s -> {args.save_tokenizer}")

    sums = {k: [0.0, 0] for k in ("quantised", "round_trip", "inversion_only", "bin_mean")}
    per_clip = {k: [] for k in sums}
    total_seconds = 0.0
    for wav in test_wavs:
        x, sr = load_audio(wav)
        total_seconds += len(x) / sr
        ref = tok.log_mel(x, sr)  # (80, T)
        ids = tok.encode(x, sr)
        floored = ref.clamp_min(tok.config.db_floor)
        outs = {
            "quantised": tok.codes_to_db(ids),
            "round_trip": tok.log_mel(tok.decode(ids)[0], tok.sample_rate),
            "inversion_only": tok.log_mel(tok.db_to_waveform(floored), tok.sample_rate),
            "bin_mean": floored.mean(1, keepdim=True).expand_as(ref),
        }
        for k, v in outs.items():
            s, n = floored_sq_err(ref, v)
            sums[k][0] += s
            sums[k][1] += n
            per_clip[k].append((s / n) ** 0.5)
        print(f"{wav.stem:>16}: " + "  ".join(f"{k} {per_clip[k][-1]:.2f}" for k in sums), flush=True)

    # speed: encode + decode of 10 s of audio (median of 3)
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
        "db_rms_pooled": {k: round((s / n) ** 0.5, 3) for k, (s, n) in sums.items()},
        "db_rms_per_clip_mean": {k: round(float(np.mean(v)), 3) for k, v in per_clip.items()},
        "db_rms_per_clip_max": {k: round(float(np.max(v)), 3) for k, v in per_clip.items()},
        "tokens_per_second": round(tok.tokens_per_second, 3),
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
    path = args.out / f"audio_tokenizer-cpu-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
