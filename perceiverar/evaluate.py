"""Held-out likelihood of a checkpoint: bits per dim (images), bits per token (audio), bits per byte (text).

    perceiverar-eval --checkpoint runs/emoji/best --data ../shared/data/emoji --max-items 64 --out eval.json

Every item is scored with sliding windows of the model's context: a window ends every N tokens (N = the number
of latents), reads up to L tokens before its end, and scores only its latent positions, so each target token is
predicted exactly once, with as much context as the model has (stride N). Only the target counts: the pixels of
an image (not the caption or header), the codes of a clip, the bytes of a document.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from perceiverar.data import (
    DatasetError, PreparedSource, SourceSpec, TokenizerSettings, default_cache_dir, load_audio_codec, parse_data_arg,
    prepare_sources,
)  # fmt: skip
from tokenizers_mm.vocab import chord_block, image_tokens, sketch_shape

METRIC = {"image": "bits_per_dim", "audio": "bits_per_token", "text": "bits_per_byte"}


def windows(a: int, b: int, *, context_len: int, n_latents: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) windows covering target positions [a, b) of an item, stride N.

    A window is ids[start:end] (inputs ids[start:end-1], targets ids[start+1:end]); its latents score
    positions [end - n, end) with n = min(N, end - start - 1); ``first_scored`` drops the overlap with the
    previous window.
    """
    a = max(a, 1)  # position 0 (BOS) has nothing before it
    if b <= a:
        return []
    ends = list(range(a + n_latents, b, n_latents)) + [b]
    out, prev = [], a
    for e in ends:
        s = max(0, e - context_len - 1)
        out.append((s, e, prev))
        prev = e
    return out


@torch.no_grad()
def item_nll(
    model,
    ids: np.ndarray,
    feats: np.ndarray,
    target: tuple[int, int],
    *,
    n_latents: int | None = None,
    max_windows: int | None = None,
    batch_windows: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """NLL (nats, float64) of each target position of one item, [a, b) of ``target`` (see :func:`windows`).

    ``max_windows`` scores an evenly spaced subset of the windows (an estimate, for long documents); the
    positions of skipped windows are NaN.
    """
    cfg = model.cfg
    N = n_latents or cfg.n_latents
    a, b = target
    out = np.full(max(0, b - a), np.nan)
    ws = windows(a, b, context_len=cfg.context_len, n_latents=N)
    if max_windows is not None and len(ws) > max_windows:
        ws = [ws[i] for i in np.linspace(0, len(ws) - 1, max_windows).round().astype(int)]
    by_len: dict[int, list] = {}
    for w in ws:
        by_len.setdefault(w[1] - w[0], []).append(w)
    for length, group in by_len.items():
        for k in range(0, len(group), batch_windows):
            chunk = group[k : k + batch_windows]
            tok = torch.from_numpy(np.stack([ids[s:e] for s, e, _ in chunk])).to(device)  # (B, T+1)
            ft = torch.from_numpy(np.stack([feats[s:e] for s, e, _ in chunk])).to(device)  # (B, T+1, 3)
            nll, _ = model.token_nll(tok, ft, n_latents=N)  # (B, n): targets e - n .. e - 1
            n = nll.shape[1]
            for row, (s, e, first) in zip(nll, chunk):
                keep = row[max(0, first - (e - n)) :].double().cpu().numpy()  # targets first .. e - 1
                out[e - len(keep) - a : e - a] = keep
    return out


def score_item(model, ids: np.ndarray, feats: np.ndarray, target: tuple[int, int], **kw) -> tuple[float, int]:
    """Sum of NLL (nats) and count over the scored target positions of one item (see :func:`item_nll`)."""
    nll = item_nll(model, ids, feats, target, **kw)
    scored = nll[~np.isnan(nll)]
    return float(scored.sum()), int(scored.size)


def evaluate_sources(
    model,
    sources: list[PreparedSource],
    *,
    split: str = "val",
    max_items: int | None = None,
    max_windows: int | None = None,
    n_latents: int | None = None,
    device="cpu",
    rank: int = 0,
    world: int = 1,
) -> dict[str, list[float]]:
    """{modality: [nats_sum, count]} over each source's ``split`` items ('val', 'train' or 'all').

    Items are dealt out over ``world`` ranks (this rank scores items ``rank::world``); sum the lists over ranks.
    """
    out: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    try:
        for src in sources:
            items = {"val": src.val_items, "train": src.train_items, "all": np.arange(len(src))}[split]
            if max_items is not None:
                items = items[:max_items]
            acc = out.setdefault(src.modality, [0.0, 0])
            for i in items[rank::world]:
                ids = src.item(int(i))
                nats, n = score_item(model, ids, src.features(ids), src.target_range(int(i)), n_latents=n_latents,
                                     max_windows=max_windows, device=device)  # fmt: skip
                acc[0] += nats
                acc[1] += n
    finally:
        model.train(was_training)
    return out


def data_settings(tokenizer: dict, checkpoint_dir) -> tuple[TokenizerSettings, object]:
    """How a checkpoint's training data was tokenized (image size, caption template) and its audio codebook."""
    img = tokenizer.get("image", {})
    palette = img.get("palette")
    settings = TokenizerSettings(image_height=img.get("height", 32), image_width=img.get("width", 32),
                                 image_mode=img.get("mode", "subpixel"),
                                 image_palette=tuple(map(tuple, palette)) if palette is not None else None,
                                 audio_mode=(tokenizer.get("audio") or {}).get("mode", "codes"),
                                 caption_template=tokenizer.get("caption_template", "{text}"))  # fmt: skip
    codec = None
    if "audio" in tokenizer.get("modalities", []):
        from perceiverar.checkpoint import checkpoint_file  # noqa: PLC0415

        rel = (tokenizer.get("audio") or {}).get("dir", "audio_tokenizer")
        codec = load_audio_codec(checkpoint_file(checkpoint_dir, rel, "tokenizer.audio.dir"))
    return settings, codec


def bits(nats_count: list[float]) -> float:
    nats, n = nats_count
    return nats / max(n, 1) / math.log(2)


def bits_per_pixel_token(bits_per_token: float, height: int, width: int, mode: str) -> float:
    """Bits per content token of whole images -> bits per pixel token (per sub-pixel in sub-pixel mode): a sketch's
    bits count against the pixels they describe, so palette and sketch checkpoints compare."""
    n = image_tokens(height, width, mode)
    sh, sw = sketch_shape(height, width, mode)
    return bits_per_token * n / (n - sh * sw)


def _generation_speed(model, tokenizer: dict, ckpt_dir: Path, device) -> dict | None:
    """Tokens/s of a short generation through the pipeline, if the generation module is installed."""
    try:
        from perceiverar.pipeline import Pipeline  # noqa: PLC0415  (optional: the generation side)
    except ImportError:
        return None
    pipe = Pipeline(model, tokenizer, ckpt_dir)
    mods = pipe.modalities
    n = 64
    t0 = time.perf_counter()
    if "text" in mods:
        pipe.generate_text("To be, or not to be", max_new_bytes=n, seed=0)
        what = "text"
    elif "image" in mods:
        pipe.generate_image("a face", height=2, width=max(1, n // 6), seed=0)
        n = 2 * max(1, n // 6) * 3
        what = "image"
    else:
        return None
    dt = time.perf_counter() - t0
    return {"modality": what, "tokens": n, "seconds": round(dt, 4), "tokens_per_s": round(n / dt, 2)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perceiverar-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. RUN_DIR/best)")
    p.add_argument("--data", required=True, action="append", help="data folder in the training format (repeatable)")
    p.add_argument("--split", choices=["val", "all"], default="val", help="held-out split (default) or every item")
    p.add_argument("--max-items", type=int, default=None, help="score at most this many items per folder")
    p.add_argument("--max-windows", type=int, default=None, help="at most this many windows per item (estimate)")
    p.add_argument("--n-latents", type=int, default=None, help="latents per window (default: the model's N)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--cache-dir", default=None, help="token cache (default ~/.cache/perceiverar/datasets)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--no-speed", action="store_true", help="skip the generation-speed measurement")
    return p.parse_args(argv)


def _fail(message: str):
    """A bad checkpoint or data folder: one line on stderr and exit status 2, like a usage error."""
    print(f"perceiverar-eval: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(argv=None) -> dict:
    """perceiverar-eval's work: print (and with --out write) the JSON, and return it as a dict."""
    args = parse_args(argv)
    from perceiverar.checkpoint import CheckpointError, load_checkpoint  # noqa: PLC0415
    from perceiverar.pipeline import resolve_device  # noqa: PLC0415

    try:
        device = resolve_device(args.device)  # --device cuda without a GPU: a message, not a traceback
        ckpt = load_checkpoint(args.checkpoint, device=device)
        tok = ckpt.tokenizer or {}
        settings, codec = data_settings(tok, args.checkpoint)
        specs: list[SourceSpec] = [parse_data_arg(d) for d in args.data]
        sources, _ = prepare_sources(specs, settings, args.cache_dir or default_cache_dir(), codec=codec,
                                     log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    except (DatasetError, CheckpointError, ValueError) as e:
        _fail(str(e))
    t0 = time.perf_counter()
    acc = evaluate_sources(ckpt.model, sources, split=args.split, max_items=args.max_items,
                           max_windows=args.max_windows, n_latents=args.n_latents, device=device)  # fmt: skip
    result: dict = {"checkpoint": str(Path(args.checkpoint).resolve()), "split": args.split,
                    "data": [str(s.manifest["folder"]) for s in sources]}  # fmt: skip
    for mod, nc in acc.items():
        if nc[1] == 0:
            continue
        result[METRIC[mod]] = round(bits(nc), 6)
        result[f"{mod}_tokens_scored"] = int(nc[1])
        if mod == "image":
            result["image_height"], result["image_width"] = settings.image_height, settings.image_width
            result["image_mode"] = settings.image_mode
            if settings.image_mode != "subpixel":  # one token per pixel: "bits per dim" would mislead
                per_pixel = bits_per_pixel_token(bits(nc), settings.image_height, settings.image_width,
                                                 settings.image_mode)  # whole items are scored
                result["bits_per_pixel_token"] = round(per_pixel, 6)
                result["bits_per_subpixel_equivalent"] = round(per_pixel / 3, 6)
        if mod == "audio" and chord_block(settings.audio_mode):
            # one chord label per CHORD_BLOCK codes: count its bits against the codes, so the layouts compare
            result["audio_mode"] = settings.audio_mode
            result["bits_per_audio_code"] = round(bits(nc) * (chord_block(settings.audio_mode) + 1)
                                                  / chord_block(settings.audio_mode), 6)  # fmt: skip
    result["eval_seconds"] = round(time.perf_counter() - t0, 3)
    if not any(k in result for k in METRIC.values()):
        _fail(f"no {args.split} items to score in {', '.join(args.data)}")
    if not args.no_speed:
        speed = _generation_speed(ckpt.model, tok, Path(args.checkpoint), device)
        if speed:
            result["generation"] = speed
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


def main(argv=None) -> int:
    """The console script: 0 when the JSON was printed (a returned dict would make sys.exit print it and exit 1)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
