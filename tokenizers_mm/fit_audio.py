"""Fit and save an audio codebook on a folder of audio / MIDI files.

    python -m tokenizers_mm.fit_audio --data ../shared/data/bach --out checkpoints/audio_tokenizer \
        [--codebook-size 4096] [--max-files 150] [--n-mels 128 --patch-frames 2]

MIDI files are rendered with fluidsynth first (in parallel threads: the work is in the fluidsynth processes).
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from tokenizers_mm.audio import AudioTokenizer
from tokenizers_mm.audio_files import AUDIO_SUFFIXES, MIDI_SUFFIXES, load_audio
from tokenizers_mm.errors import TokenizerError


def find_files(data: Path) -> list[Path]:
    suffixes = AUDIO_SUFFIXES + MIDI_SUFFIXES
    return sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def load_all(files: list[Path], sample_rate: int, jobs: int) -> list[tuple]:
    """(waveform, sample_rate) per file, MIDI rendered; unreadable files are reported and skipped."""
    def one(p):
        try:
            return load_audio(p, sample_rate)
        except TokenizerError as e:
            tqdm.write(f"skipping: {e}")
            return None

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        out = list(tqdm(pool.map(one, files), total=len(files), desc="load/render", unit="file"))
    return [o for o in out if o is not None and o[0].size > 0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tokenizers_mm.fit_audio", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder searched recursively for audio/MIDI files")
    ap.add_argument("--out", type=Path, required=True, help="output folder (codebook.safetensors + JSON config)")
    ap.add_argument("--codebook-size", type=int, default=4096, help="number of codes (<= 4096)")
    ap.add_argument("--max-files", type=int, default=None, help="use at most this many files (after --skip)")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N files (sorted), e.g. for evaluation")
    ap.add_argument("--max-frames", type=int, default=250_000, help="spectrogram frames sampled for k-means")
    ap.add_argument("--iters", type=int, default=15, help="Lloyd iterations")
    ap.add_argument("--sample-rate", type=int, default=22050)
    ap.add_argument("--n-mels", type=int, default=80, help="mel bins per frame (128 keeps pitch; see audio.py)")
    ap.add_argument("--patch-frames", type=int, default=1, help="spectrogram frames per token (2 halves the tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shuffle", action="store_true", help="pick --max-files at random (seeded) instead of in order")
    ap.add_argument("--jobs", type=int, default=2, help="parallel MIDI renders")
    args = ap.parse_args(argv)

    files = find_files(args.data)[args.skip :]
    if args.shuffle:
        random.Random(args.seed).shuffle(files)
    files = files[: args.max_files]
    if not files:
        raise SystemExit(f"no audio or MIDI files under {args.data}")
    t0 = time.time()
    clips = load_all(files, args.sample_rate, args.jobs)
    tok = AudioTokenizer.fit(
        clips, sample_rate=args.sample_rate, codebook_size=args.codebook_size, seed=args.seed,
        max_frames=args.max_frames, iters=args.iters, progress=True, n_mels=args.n_mels, patch_frames=args.patch_frames,
    )  # fmt: skip
    tok.save(args.out)
    (args.out / "fitted_on.txt").write_text("".join(f"{p}\n" for p in files))
    print(
        f"fitted {tok.codebook_size} codes on {len(clips)} files in {time.time() - t0:.0f} s -> {args.out} "
        f"({tok.tokens_per_second:.2f} tokens/s, {tok.seconds_per_context(65536):.0f} s per 65,536 tokens)"
    )


if __name__ == "__main__":
    main()
