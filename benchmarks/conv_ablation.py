"""Does the short causal convolution before the cross-attention (``conv_kernel``) help a model read its caption?

Issue 18, item 3. Two models are trained with the real trainer (``perceiverar.train``), identical except for
``--conv-kernel``, on a synthetic captioned image set whose captions need their word order:

    8x8 images on white with two objects, one in the left half and one in the right half (4 x 8 pixels each),
    each a square, circle or triangle (pixel masks of side 3 or 4, placed at random inside the half) in one of
    six colours; the caption names the left object, then the right one: "red square, blue circle".

A model that reads the caption as a bag of bytes (the issue found "red" and "der" cost the same) can tell which
colours are in the image but not which is on the left. Measured on images never trained on, for each model:

- colour reading: bits of the image under its caption minus under the caption with one colour swapped for a
  colour absent from the image (per item, mean +- standard error; positive: the caption's colours are read);
- word order: bits under the order-swapped caption ("blue square, red circle": the two colours exchanged
  between the positions, shapes kept) minus under the true one, and the share of items where the true caption
  is the likelier (chance 50%);
- generation: one image per caption (``Pipeline.generate_image``), and whether the left half's dominant colour
  (``benchmarks.image_measures``) is the first named colour and the right half's the second (chance ~1/6 each);
- held-out bits per pixel token under the true caption.

Both on fresh images of captions seen in training (``seen``) and of caption combinations held out of the
training folder altogether (``held_out``: every colour and shape was seen on each side, never that pairing).

    nice -n 19 python -m benchmarks.conv_ablation --steps 100 --batch-size 16

Writes benchmarks/results/conv_ablation.json (both arms side by side, with the commands) and a PNG grid of
generated images beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import image_measures as M
from benchmarks.long_prompt import item_sequence, paired
from benchmarks.results_io import RESULTS, device_label
from perceiverar.data import (
    CAPTIONS, SourceSpec, TokenizerSettings, default_cache_dir, fit_source_palette, prepare_sources,
)  # fmt: skip
from perceiverar.evaluate import score_item
from tokenizers_mm.vocab import build_sequence

# Colours as image_measures names them (the test checks it), so the named colour can be read back from pixels.
COLOURS = {
    "red": (230, 30, 30), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 30), "orange": (245, 140, 20), "purple": (140, 50, 190),
}  # fmt: skip
SHAPES = ("square", "circle", "triangle")
SIDE, HALF = 8, 4  # image side; each object lives in a HALF x SIDE half
WHITE = (255, 255, 255)
HELD_OUT_SHARE = 0.125  # of the 324 (colour, shape, colour, shape) combinations, never in the training folder


def shape_mask(shape: str, s: int) -> np.ndarray:
    """(s, s) bool pixel mask of a shape of side s (3 or 4)."""
    r, c = np.mgrid[:s, :s]
    if shape == "square":
        return np.ones((s, s), bool)
    if shape == "circle":  # 3: a plus sign; 4: a square without its corners
        m = s - 1
        corner = ((r == 0) | (r == m)) & ((c == 0) | (c == m))
        return ~corner
    if shape == "triangle":  # right angle at the bottom left
        return c <= r
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw(objects) -> np.ndarray:
    """(SIDE, SIDE, 3) uint8 image of ``objects``: (colour, shape, side, x, y) per half, left half first."""
    img = np.full((SIDE, SIDE, 3), WHITE, np.uint8)
    for half, (colour, shape, s, x, y) in enumerate(objects):
        m = shape_mask(shape, s)
        x0 = half * HALF + x
        img[y : y + s, x0 : x0 + s][m] = COLOURS[colour]
    return img


def caption(combo) -> str:
    """'red square, blue circle' for the combination (left colour, left shape, right colour, right shape)."""
    cl, sl, cr, sr = combo
    return f"{cl} {sl}, {cr} {sr}"


def all_combos() -> list[tuple[str, str, str, str]]:
    objs = list(itertools.product(COLOURS, SHAPES))
    return [(*a, *b) for a, b in itertools.product(objs, objs)]


def held_out_combos(seed: int = 0) -> set[tuple[str, str, str, str]]:
    """The combinations never drawn into the training folder (a fixed share, chosen by ``seed``)."""
    combos = all_combos()
    rng = np.random.default_rng([seed, 1])
    pick = rng.choice(len(combos), int(round(HELD_OUT_SHARE * len(combos))), replace=False)
    return {combos[int(i)] for i in pick}


def sample_image(rng: np.random.Generator, combo) -> np.ndarray:
    """A random image of ``combo``: each object's side (3 or 4) and place inside its half drawn at random."""
    objs = []
    for colour, shape in (combo[:2], combo[2:]):
        s = int(rng.integers(3, 5))
        objs.append((colour, shape, s, int(rng.integers(0, HALF - s + 1)), int(rng.integers(0, SIDE - s + 1))))
    return draw(objs)


def sample_items(n: int, seed: int, combos) -> list[tuple[tuple, np.ndarray]]:
    """``n`` (combo, image) pairs, combos drawn uniformly from ``combos`` (a list), deterministic by ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        combo = combos[int(rng.integers(len(combos)))]
        out.append((combo, sample_image(rng, combo)))
    return out


def write_folder(folder: Path, n: int, seed: int = 0) -> Path:
    """A captioned image folder (``NNNNN.png`` + captions.jsonl, the training format) of ``n`` two-object
    images, none of a held-out combination; deterministic by (n, seed). An existing complete folder is reused
    (the trainer's token cache is keyed by file times, so rewriting it would re-tokenize)."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.is_file():
        return folder
    held = held_out_combos(seed)
    train = [c for c in all_combos() if c not in held]
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines = []
    for k, (combo, img) in enumerate(sample_items(n, seed, train)):
        name = f"{k:05d}.png"
        Image.fromarray(img, "RGB").save(tmp / name)
        lines.append(json.dumps({"file": name, "text": caption(combo)}))
    (tmp / CAPTIONS).write_text("\n".join(lines) + "\n")
    (tmp / ".complete").write_text(json.dumps({"n": n, "seed": seed}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def half_colours(img) -> tuple[str, str]:
    """The dominant colour name of the left and of the right half ('none' for a blank half)."""
    a = np.asarray(img)
    return M.dominant_colour(np.ascontiguousarray(a[:, :HALF])), M.dominant_colour(np.ascontiguousarray(a[:, HALF:]))


def item_tokens(combo) -> int:
    """Tokens of a whole training item: markers + caption bytes + header + one colour token per pixel."""
    pixels = [256] * SIDE * SIDE
    return len(build_sequence(caption(combo), "image", pixels, height=SIDE, width=SIDE, image_mode="palette"))


# ---------------------------------------------------------------------------------------------- scoring


def image_bits(model, tok, text: str, image) -> tuple[float, int]:
    """Bits of ``image``'s colour tokens under the caption ``text`` (teacher-forced) and how many tokens.

    ``tok``: the checkpoint's ImageTokenizer (palette mode); the item is laid out as training lays it out.
    """
    pixels = tok.encode(np.asarray(image, np.uint8))
    full = build_sequence("", "image", pixels, height=tok.height, width=tok.width, image_mode=tok.mode)
    rest = np.asarray(full[2:], np.int64)  # from [TEXT_END] on
    ids, feats, target = item_sequence(np.frombuffer(text.encode(), np.uint8).astype(np.int64), rest)
    nats, n = score_item(model, ids, feats, target, device=next(model.parameters()).device)
    return nats / np.log(2), n


def colour_swapped(combo, rng: np.random.Generator) -> tuple:
    """``combo`` with the colour of one object (left or right at random) replaced by a colour in neither."""
    side = int(rng.integers(2))
    free = [c for c in COLOURS if c not in (combo[0], combo[2])]
    out = list(combo)
    out[2 * side] = free[int(rng.integers(len(free)))]
    return tuple(out)


def order_swapped(combo) -> tuple:
    """'red square, blue circle' -> 'blue square, red circle': the colours exchange places, the shapes stay."""
    cl, sl, cr, sr = combo
    return (cr, sl, cl, sr)


def probe(model, tok, items, seed: int = 0) -> dict:
    """Colour reading, word order and held-out bits over ``items`` [(combo, image)] (see the module docstring)."""
    rng = np.random.default_rng([seed, 2])
    rows, bits, count = [], 0.0, 0
    for combo, img in items:
        true, n = image_bits(model, tok, caption(combo), img)
        bits, count = bits + true, count + n
        swap_c = colour_swapped(combo, rng)
        row = {"caption": caption(combo), "true": round(true, 3), "colour_swapped_caption": caption(swap_c),
               "colour_swap": round(image_bits(model, tok, caption(swap_c), img)[0], 3)}  # fmt: skip
        if combo[0] != combo[2]:  # the order swap of "red square, red circle" is the same caption
            row["order_swapped_caption"] = caption(order_swapped(combo))
            row["order_swap"] = round(image_bits(model, tok, row["order_swapped_caption"], img)[0], 3)
        rows.append(row)
    ordered = [r for r in rows if "order_swap" in r]
    return {
        "items": len(rows),
        "bits_per_pixel_token": round(bits / count, 4),
        "colour_swap_minus_true_bits": paired(rows, "colour_swap", "true", 2),
        "colour_true_likelier_share": round(float(np.mean([r["colour_swap"] > r["true"] for r in rows])), 3),
        "order_items": len(ordered),
        "order_swap_minus_true_bits": paired(ordered, "order_swap", "true", 2) if ordered else None,
        "order_true_likelier_share": round(float(np.mean([r["order_swap"] > r["true"] for r in ordered])), 3)
        if ordered else None,
        "per_item": rows,
    }  # fmt: skip


def generation_probe(pipe, combos, *, temperature: float, seed: int = 0) -> tuple[dict, list]:
    """One image per combo; does each half's dominant colour match the colour named for it? (and the images)"""
    rows, images = [], []
    for k, combo in enumerate(combos):
        (img,) = pipe.generate_image(caption(combo), temperature=temperature, top_k=0, top_p=1.0, cfg_scale=1.0,
                                     seed=seed + k)  # fmt: skip
        a = np.asarray(img)
        left, right = half_colours(a)
        rows.append({"caption": caption(combo), "left": left, "right": right, "left_ok": left == combo[0],
                     "right_ok": right == combo[2], "swapped": (left, right) == (combo[2], combo[0]),
                     "blank": bool(M.is_blank(a))})  # fmt: skip
        images.append(a)
    share = lambda key: round(float(np.mean([r[key] for r in rows])), 3)  # noqa: E731
    summary = {"images": len(rows), "left_matches": share("left_ok"), "right_matches": share("right_ok"),
               "both_match": round(float(np.mean([r["left_ok"] and r["right_ok"] for r in rows])), 3),
               "order_swapped": share("swapped"), "blank": share("blank"), "per_caption": rows}  # fmt: skip
    return summary, images


# ---------------------------------------------------------------------------------------------- training


def train_command(data: Path, out: Path, kernel: int, args) -> list[str]:
    """The ``perceiverar.train`` command of one arm: every option the same but ``--conv-kernel``."""
    return [sys.executable, "-m", "perceiverar.train", "--data", str(data), "--image-size", str(SIDE),
            "--image-mode", "palette", "--preset", "debug", "--n-latents", str(args.n_latents),
            "--context-len", str(args.context_len), "--conv-kernel", str(kernel), "--cpu-bf16", "--device", args.device,
            "--out", str(out), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--warmup", str(args.warmup), "--seed", str(args.seed),
            "--val-every", str(args.steps), "--val-items", "64", "--save-every", str(args.steps),
            "--sample-every", "0", "--log-every", "10", "--no-progress",
            "--cache-dir", str(args.cache_dir)]  # fmt: skip


def prepare_data(data: Path, cache: Path, log=print) -> None:
    """Fit the palette and tokenize the folder once, as the trainer would (it then finds both in ``cache``), so
    that neither arm's time includes them and two arms started at once do not both do them."""
    spec = SourceSpec(data.resolve(), 1.0, "image")
    settings = TokenizerSettings(image_height=SIDE, image_width=SIDE, image_mode="palette")
    settings.image_palette = fit_source_palette([spec], settings, cache, log=log)
    prepare_sources([spec], settings, cache, progress=False, log=log)


def train_arms(commands: dict[int, list[str]], runs: dict[int, Path], parallel: bool, threads: int) -> dict[int, float]:
    """Run the trainer once per arm (one after the other, or both at once); wall seconds per arm."""
    started, seconds = {}, {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for k, cmd in commands.items():
        shutil.rmtree(runs[k], ignore_errors=True)
        runs[k].mkdir(parents=True)
        log = open(runs[k] / "stdout.log", "w")  # noqa: SIM115 (closed when the process ends)
        started[k] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.perf_counter(), log)
        if not parallel:
            _finish(k, started, seconds, runs)
    for k in list(started):
        _finish(k, started, seconds, runs)
    return seconds


def _finish(k: int, started: dict, seconds: dict, runs: dict) -> None:
    proc, t0, log = started.pop(k)
    code = proc.wait()
    seconds[k] = round(time.perf_counter() - t0, 1)
    log.close()
    if code != 0:
        tail = (runs[k] / "stdout.log").read_text()[-2000:]
        raise SystemExit(f"conv_ablation: error: the conv_kernel={k} run failed (exit {code}):\n{tail}")
    (runs[k] / "wall_seconds.json").write_text(json.dumps({"wall_seconds": seconds[k]}))


def run_summary(run: Path) -> dict:
    """Steps, last training loss, final validation bits and tokens/s of a finished run (its metrics.jsonl)."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in recs if r["kind"] == "train"]
    val = [r for r in recs if r["kind"] == "val"]
    wall = run / "wall_seconds.json"
    return {"steps": train[-1]["step"], "train_loss_last": round(train[-1]["loss"], 4),
            "val_bits_per_pixel_token": round(val[-1]["val_bits_per_dim"], 4) if val else None,
            "train_seconds_in_loop": round(train[-1]["time"], 1),
            "median_tokens_per_s": round(float(np.median([r["tokens_per_s"] for r in train])), 1),
            "wall_seconds": json.loads(wall.read_text())["wall_seconds"] if wall.is_file() else None}  # fmt: skip


# ---------------------------------------------------------------------------------------------- grid


def save_grid(path: Path, captions: list[str], columns: dict[str, list[np.ndarray]], scale: int = 8) -> Path:
    """A PNG: one row per caption, one column per entry of ``columns`` (title -> images), upscaled ``scale``x."""
    from PIL import ImageDraw  # noqa: PLC0415

    cell, label, pad, top = SIDE * scale, 220, 6, 20
    grid = Image.new("RGB", (label + len(columns) * (cell + pad), top + len(captions) * (cell + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(columns):
        draw.text((label + j * (cell + pad), 4), title, fill="black")
    for i, text in enumerate(captions):
        y = top + i * (cell + pad)
        draw.text((4, y + cell // 2 - 6), text, fill="black")
        for j, imgs in enumerate(columns.values()):
            big = Image.fromarray(imgs[i]).resize((cell, cell), Image.Resampling.NEAREST)
            x = label + j * (cell + pad)
            grid.paste(big, (x, y))
            draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=(200, 200, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2500, help="images in the synthetic training folder")
    p.add_argument("--kernels", type=int, nargs=2, default=[0, 4], help="the two --conv-kernel values compared")
    p.add_argument("--steps", type=int, default=1500,
                   help="optimizer steps per arm, the same for both (1,500 x 16 items: ~5 CPU-minutes per arm on a free "
                        "core; 100 steps learn the layout, not yet the caption)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--n-latents", type=int, default=128, help="must hold a whole item (whole-item training)")
    p.add_argument("--context-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="data set, training and probe seed")
    p.add_argument("--probe-items", type=int, default=120, help="fresh images per probe set (seen, held_out)")
    p.add_argument("--gen-captions", type=int, default=30, help="captions per probe set to generate an image for")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature of the generated images")
    p.add_argument("--work", default=None, help="data folder, runs and token cache (default: <cache>/conv_ablation)")
    p.add_argument("--cache-dir", default=None, help="token cache (default: WORK/cache)")
    p.add_argument("--parallel", action="store_true",
                   help="train both arms at once (default: one after the other, each with the CPU share to itself)")
    p.add_argument("--device", default="cpu", help="where to train and score (cpu, cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch threads here and OMP_NUM_THREADS of the trainer")
    p.add_argument("--reuse", action="store_true", help="score the runs already in WORK/runs instead of training")
    p.add_argument("--out", default=str(RESULTS / "conv_ablation.json"))
    args = p.parse_args(argv)
    if min(args.images, args.steps, args.batch_size, args.probe_items, args.threads) < 1 or args.gen_captions < 0:
        p.error("--images, --steps, --batch-size, --probe-items and --threads must be >= 1, --gen-captions >= 0")
    if args.kernels[0] == args.kernels[1]:
        p.error("--kernels: two different conv_kernel values")
    longest = max(item_tokens(c) for c in all_combos())
    if longest > min(args.n_latents, args.context_len) + 1:
        p.error(f"--n-latents {args.n_latents}: the longest item is {longest} tokens; whole-item training needs "
                f"n_latents >= {longest - 1}")  # fmt: skip
    args.work = Path(args.work) if args.work else default_cache_dir().parent / "conv_ablation"
    args.cache_dir = Path(args.cache_dir) if args.cache_dir else args.work / "cache"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch  # noqa: PLC0415

    from perceiverar.pipeline import Pipeline  # noqa: PLC0415

    torch.set_num_threads(args.threads)  # tiny matmuls: more threads only spin-wait on a busy CPU

    data = write_folder(args.work / f"two_shapes-n{args.images}-s{args.seed}", args.images, args.seed)
    runs = {k: args.work / "runs" / f"conv{k}" for k in args.kernels}
    commands = {k: train_command(data, runs[k], k, args) for k in args.kernels}
    if args.reuse:
        missing = [str(r / "best") for r in runs.values() if not (r / "best").is_dir()]
        if missing:
            raise SystemExit(f"conv_ablation: error: --reuse: no trained run at {', '.join(missing)}")
    else:
        t0 = time.perf_counter()
        prepare_data(data, args.cache_dir, log=lambda m: print(m, file=sys.stderr))
        print(f"data prepared in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        train_arms(commands, runs, parallel=args.parallel, threads=args.threads)
    held = held_out_combos(args.seed)
    seen = [c for c in all_combos() if c not in held]
    train_pixels = {np.asarray(Image.open(f)).tobytes() for f in sorted(data.glob("*.png"))}
    sets = {}
    for name, combos, s in (("seen", seen, 1), ("held_out", sorted(held), 2)):
        items = [(c, im) for c, im in sample_items(args.probe_items * 2, args.seed + 1000 * s, combos)
                 if im.tobytes() not in train_pixels][: args.probe_items]  # fresh images only  # fmt: skip
        distinct = [c for c in combos if c[0] != c[2]]
        n_gen = min(args.gen_captions, len(distinct))
        pick = np.random.default_rng([args.seed, s]).choice(len(distinct), n_gen, replace=False)
        sets[name] = (items, [distinct[int(i)] for i in sorted(pick)])
    arms, gen_images = {}, {}
    for k in args.kernels:
        pipe = Pipeline.load(runs[k] / "best", device=args.device)
        tok = pipe.image_tokenizer()
        t0 = time.perf_counter()
        res = {"conv_kernel": k, "command": " ".join(commands[k][1:]), "training": run_summary(runs[k])}
        for name, (items, gen_combos) in sets.items():
            res[name] = probe(pipe.model, tok, items, args.seed)
            if gen_combos:
                res[name]["generation"], gen_images[(k, name)] = generation_probe(
                    pipe, gen_combos, temperature=args.temperature, seed=args.seed)  # fmt: skip
        res["scoring_seconds"] = round(time.perf_counter() - t0, 1)
        arms[f"conv{k}"] = res
        print(_headline(res), file=sys.stderr)
    grid = None
    if args.gen_captions:
        n = min(8, args.gen_captions)
        caps, real = [], []
        for name in ("held_out", "seen"):
            for c in sets[name][1][:n]:
                caps.append(f"{caption(c)} ({name.replace('_', '-')})")
                real.append(sample_items(1, args.seed + 7, [c])[0][1])
        cols = {"real": real}
        cols.update({f"kernel {k}": [*gen_images[(k, "held_out")][:n], *gen_images[(k, "seen")][:n]]
                     for k in args.kernels})  # fmt: skip
        grid = save_grid(Path(args.out).with_suffix(".png"), caps, cols)
    result = {
        "benchmark": "conv_ablation", "device": device_label(args.device), "date": time.strftime("%Y-%m-%d"),
        "data": {"folder": str(data), "images": args.images, "seed": args.seed, "held_out_combos": len(held),
                 "combos": len(all_combos()), "longest_item_tokens": max(item_tokens(c) for c in all_combos())},
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                     "n_latents": args.n_latents, "context_len": args.context_len, "temperature": args.temperature,
                     "probe_items": args.probe_items, "gen_captions": args.gen_captions,
                     "trained_in_parallel": args.parallel, "threads": args.threads, "niceness": os.nice(0),
                     "load_average_at_end": os.getloadavg()},
        "benchmark_command": "python -m benchmarks.conv_ablation " + " ".join(sys.argv[1:] if argv is None else argv),
        "arms": arms, "grid": str(grid) if grid else None,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}", file=sys.stderr)
    return result


def _headline(res: dict) -> str:
    lines = [f"conv_kernel={res['conv_kernel']}: {res['training']}"]
    for name in ("seen", "held_out"):
        r = res[name]
        c, o = r["colour_swap_minus_true_bits"], r["order_swap_minus_true_bits"] or {"mean": float("nan"), "stderr": 0}
        g = r.get("generation", {})
        lines.append(f"  {name}: {r['bits_per_pixel_token']:.3f} bits/pixel token; colour swap {c['mean']:+.1f} +- "
                     f"{c['stderr']:.1f} bits; order swap {o['mean']:+.1f} +- {o['stderr']:.1f} bits "
                     f"(true likelier {r['order_true_likelier_share']}); generated left/right/both "
                     f"{g.get('left_matches')}/{g.get('right_matches')}/{g.get('both_match')}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
