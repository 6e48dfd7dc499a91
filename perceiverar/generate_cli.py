"""perceiverar-generate: one image, audio clip or text from a prompt, with a progress bar.

    perceiverar-generate --checkpoint checkpoints/small-image --prompt "a red square" --modality image --out sq.png
    perceiverar-generate --preset debug --random-init --prompt "hi" --modality text --out hi.txt   # no checkpoint
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from perceiverar.checkpoint import CheckpointError
from perceiverar.config import PRESETS, PerceiverARConfig
from perceiverar.model import PerceiverAR
from perceiverar.pipeline import Pipeline, make_tokenizer_config, resolve_device

SUFFIX = {"image": ".png", "audio": ".wav", "text": ".txt"}


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
    ap.add_argument("--out", required=True, type=Path, help="output file: PNG for image, WAV for audio, TXT for text")
    ap.add_argument("--seed", type=int, default=None, help="random seed (same seed, same output)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy); default: checkpoint's")
    ap.add_argument("--top-k", type=int, default=None, help="keep the k likeliest ids (0 disables); default: checkpoint's")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (1 disables); default: checkpoint's")
    ap.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--n-latents", type=int, default=None, help="latents per window: fewer is faster and coarser")
    ap.add_argument("--height", type=int, default=None, help="image height in pixels (default: checkpoint's)")
    ap.add_argument("--width", type=int, default=None, help="image width in pixels (default: checkpoint's)")
    ap.add_argument("--seconds", type=float, default=None, help="audio length in seconds (default: checkpoint's)")
    ap.add_argument("--max-new-bytes", type=int, default=256, help="most bytes of text to generate (default 256)")
    ap.add_argument("--overflow", choices=["error", "truncate"], default="error",
                    help="prompt + output longer than the context: fail, or drop the oldest prompt bytes")  # fmt: skip
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    return ap


def random_pipeline(preset: str, device: str) -> Pipeline:
    model = PerceiverAR(PerceiverARConfig.preset(preset)).to(resolve_device(device))
    torch.nn.init.normal_(model.head.weight, std=0.02)  # the zero-initialised head would only give uniform noise
    side = 8 if model.cfg.context_len < 1024 else 32
    cfg = make_tokenizer_config(["image", "text"], height=side, width=side)
    return Pipeline(model, cfg)


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_wav(path: str, wave_f32: np.ndarray, sr: int) -> None:
    pcm = (np.clip(wave_f32, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sr))
        w.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prompt = args.prompt if args.prompt is not None else args.prompt_file.read_text(encoding="utf-8")
    try:
        if args.random_init:
            print(f"notice: --random-init: a randomly initialised '{args.preset}' model; the output is noise", file=sys.stderr)
            pipe = random_pipeline(args.preset, args.device)
        else:
            pipe = Pipeline.load(args.checkpoint, device=args.device)
        sampling = dict(seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        cfg_scale=args.cfg_scale, n_latents=args.n_latents, overflow=args.overflow)  # fmt: skip
        with tqdm(total=100, unit="%", desc=f"generating {args.modality}", file=sys.stderr) as bar:

            def on_progress(fraction: float, _partial) -> None:
                bar.update(round(100 * fraction) - bar.n)

            if args.modality == "image":
                img = pipe.generate_image(prompt, height=args.height, width=args.width, on_progress=on_progress, **sampling)[0]
                _write_atomic(args.out, lambda p: img.save(p, format="PNG"))
            elif args.modality == "audio":
                y, sr = pipe.generate_audio(
                    prompt, seconds=args.seconds, on_progress=on_progress, partial_audio=False, **sampling
                )[0]
                _write_atomic(args.out, lambda p: _write_wav(p, y, sr))
            else:
                txt = pipe.generate_text(prompt, max_new_bytes=args.max_new_bytes, on_progress=on_progress, **sampling)[0]
                _write_atomic(args.out, lambda p: Path(p).write_text(txt, encoding="utf-8"))
            bar.update(100 - bar.n)
    except (ValueError, CheckpointError) as e:  # bad requests and bad checkpoints: messages written for users
        print(f"perceiverar-generate: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
