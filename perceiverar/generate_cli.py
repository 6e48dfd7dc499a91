"""perceiverar-generate: one image, audio clip or text from a prompt, with a progress bar.

    perceiverar-generate --checkpoint checkpoints/emoji --prompt "red apple; food & drink" --modality image --out a.png
    perceiverar-generate --preset debug --random-init --prompt "hi" --modality text --out hi.txt   # no checkpoint

Writes the same files as the app: a PNG with the prompt and settings in iTXt chunks, or a WAV / TXT with a
sidecar JSON (``perceiverar.media_files``). Exit status: 0 written, 2 bad arguments or input (nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from perceiverar.checkpoint import CheckpointError
from perceiverar.config import PRESETS
from perceiverar.decode_step import COMPILE_CHOICES, set_compile_default
from perceiverar.media_files import SUFFIX, generation_record, save_result, sidecar_path
from perceiverar.pipeline import Pipeline, resolve_device
from perceiverar.sampling_options import SamplingOptions
from perceiverar.untrained import random_pipeline

WHAT = {"image": "an image", "audio": "audio", "text": "text"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="perceiverar-generate", description="Generate an image, audio or text with Perceiver AR.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint directory (model.safetensors + config.json)")
    src.add_argument("--random-init", action="store_true", help="no checkpoint: a randomly initialised --preset model (noise; for trying the tool)")
    ap.add_argument("--preset", default="debug", choices=sorted(PRESETS), help="model preset for --random-init (default: debug)")
    text = ap.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="the prompt text ('' for unconditional image / audio)")
    text.add_argument("--prompt-file", type=Path, help="read the prompt from this UTF-8 file")
    ap.add_argument("--modality", required=True, choices=["image", "audio", "text"], help="what to generate")
    ap.add_argument("--out", required=True, type=Path,
                    help="output file: .png for image, .wav for audio, .txt for text (audio and text also get a .json "
                         "with the prompt and settings beside them)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=None, help="random seed (same seed, same output); default: a random one, recorded")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy); default: checkpoint's")
    ap.add_argument("--top-k", type=int, default=None, help="keep the k likeliest ids (0 disables); default: checkpoint's")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (1 disables); default: checkpoint's")
    ap.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--cfg-scale-codes", type=float, default=None,
                    help="music with chord labels: guidance of the audio codes, the labels keeping --cfg-scale; "
                         "default: checkpoint's")  # fmt: skip
    ap.add_argument("--n-latents", type=int, default=None, help="latents per window: fewer is faster and coarser")
    ap.add_argument("--candidates", type=int, default=None,
                    help="draw this many and keep the one the model finds likeliest given the prompt (1 = off; k "
                         "times the work); default: checkpoint's")  # fmt: skip
    ap.add_argument("--key-lock", choices=("on", "off"), default=None,
                    help="music with chord labels: chords only from the key the prompt names ('... in G minor'), "
                         "opening on its tonic; default: checkpoint's")  # fmt: skip
    ap.add_argument("--height", type=int, default=None, help="image height in pixels (default: checkpoint's)")
    ap.add_argument("--width", type=int, default=None, help="image width in pixels (default: checkpoint's)")
    ap.add_argument("--seconds", type=float, default=None, help="audio length in seconds (default: checkpoint's)")
    ap.add_argument("--max-new-bytes", type=int, default=256, help="most bytes of text to generate (default 256)")
    ap.add_argument("--overflow", choices=["error", "truncate"], default="error",
                    help="prompt + output longer than the context: fail, or drop the oldest prompt bytes")  # fmt: skip
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    ap.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default="auto",
                    help="compile the decode step with torch.compile: auto (default) on CUDA only; on also on the CPU, "
                         "where a token is ~1.5x cheaper but compiling first takes 15-50 s, worth it for long outputs")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default 1 on the CPU: each token's matrices are too small to share, and an idle "
                         "second thread spin-waits; on a busy 2-core machine two threads made generation ~5x slower)")
    return ap  # fmt: skip


def read_prompt(args) -> str:
    """The prompt text; a missing, unreadable or non-UTF-8 --prompt-file is a ValueError that says which."""
    if args.prompt is not None:
        return args.prompt
    f = args.prompt_file
    if not f.exists():
        raise ValueError(f"--prompt-file {f}: no such file")
    if not f.is_file():
        raise ValueError(f"--prompt-file {f}: not a regular file (a directory?); give a UTF-8 text file")
    try:
        return f.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt-file {f}: not UTF-8 text (undecodable byte at offset {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ValueError(f"--prompt-file {f}: cannot read it ({e.strerror or e})") from None


def check_out(out: Path, modality: str) -> None:
    """Refuse, before any generation, an --out that could not be written or is not a regular file or a new path."""
    suffix = SUFFIX[modality]
    if out.suffix.lower() != suffix:
        raise ValueError(f"--out {out}: {WHAT[modality]} is written as {suffix[1:].upper()}; name the file *{suffix}")
    for p in [out] + ([sidecar_path(out)] if modality != "image" else []):
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise ValueError(f"--out: {p} exists and is not a regular file (a directory, device or link); not replacing it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)  # read-only filesystems fail here
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {out.parent} ({e.strerror or e})") from None


def sampling_options(args) -> SamplingOptions:
    return SamplingOptions(seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           cfg_scale=args.cfg_scale, cfg_scale_codes=args.cfg_scale_codes, n_latents=args.n_latents,
                           candidates=args.candidates,
                           key_lock=None if args.key_lock is None else args.key_lock == "on")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:  # everything a user typed is checked before any model is loaded
        options = sampling_options(args)
        prompt = read_prompt(args)
        check_out(args.out, args.modality)
        device = resolve_device(args.device)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
    except ValueError as e:
        ap.error(str(e))  # exits 2 with the usage line
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    set_compile_default(args.compile)
    size = {"image": {"height": args.height, "width": args.width}, "audio": {"seconds": args.seconds},
            "text": {"max_new_bytes": args.max_new_bytes}}[args.modality]  # fmt: skip
    try:
        if args.random_init:
            print(f"notice: --random-init: a randomly initialised '{args.preset}' model; the output is noise", file=sys.stderr)
            side = 8 if PRESETS[args.preset].get("context_len", 4096) < 1024 else 32
            pipe = random_pipeline(args.preset, device=device, image_size=(side, side))
        else:
            pipe = Pipeline.load(args.checkpoint, device=device)
        note = pipe.prompt_note(prompt)
        if note:
            print(f"notice: {note}", file=sys.stderr)
        options = pipe.sampling(options, pick_seed=True)  # the values used, recorded with the result
        if args.modality == "image":  # record the size made, not None for "the checkpoint's"
            tok = pipe.image_tokenizer(args.height, args.width)
            size = {"height": tok.height, "width": tok.width}
        elif args.modality == "audio" and args.seconds is None:
            size = {"seconds": float(pipe.config.get("audio", {}).get("seconds", 10.0))}
        with tqdm(total=100, unit="%", desc=f"generating {args.modality}", file=sys.stderr) as bar:

            def on_progress(fraction: float, _partial) -> None:
                bar.update(round(100 * fraction) - bar.n)

            generate = {"image": pipe.generate_image, "audio": pipe.generate_audio, "text": pipe.generate_text}
            extra = {"partial_audio": False} if args.modality == "audio" else {}
            result = generate[args.modality](prompt, **{k: v for k, v in size.items() if v is not None},
                                             sampling=options, overflow=args.overflow, on_progress=on_progress,
                                             **extra)[0]  # fmt: skip
            bar.update(100 - bar.n)
    except (ValueError, CheckpointError) as e:  # bad requests and bad checkpoints: messages written for users
        print(f"perceiverar-generate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perceiverar-generate: interrupted; nothing written", file=sys.stderr)
        return 130
    checkpoint = f"random-init {args.preset}" if args.random_init else str(args.checkpoint)
    notes = {"locked_key": pipe.locked_key(prompt)} if args.modality == "audio" and options.key_lock else {}
    record = generation_record(prompt=prompt, modality=args.modality, checkpoint=checkpoint, sampling=options,
                               size=size, generator="perceiverar-generate", **notes)  # fmt: skip
    written = save_result(args.modality, args.out, result, record)
    print(f"wrote {', '.join(str(p) for p in written)} (seed {options.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
