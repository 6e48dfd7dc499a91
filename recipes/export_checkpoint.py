"""Turn a training run into a bundled demo checkpoint: bf16 weights, measured metrics, a model card.

    python -m recipes.export_checkpoint --run runs/emoji --name emoji --data ../shared/data/emoji \
        --recipe "bash recipes/emoji.sh"

Takes RUN/best (the lowest validation loss), stores its weights in bf16 under checkpoints/NAME (with any
tokenizer files, e.g. the audio codebook), evaluates it on the run's held-out split with perceiverar-eval,
and records the recipe command, machine, training time and metrics in config.json and checkpoints/NAME/README.md.
The write is atomic (perceiverar.save_checkpoint), so a failed export leaves the previous checkpoint in place.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from perceiverar import load_checkpoint, save_checkpoint
from perceiverar.data import longest_caption
from perceiverar.evaluate import METRIC
from perceiverar.evaluate import run as evaluate  # run returns the result; main, the console script, an exit code
from tokenizers_mm.colours import COLOUR_NAMES

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 25 * 2**20

DATA_NOTES = {
    "emoji": "Emoji images from `../shared/data/emoji`: Noto Color Emoji renders (Apache License 2.0) and Twemoji "
    "renders (CC-BY 4.0, © Twitter/X Corp), from the emoji-datasource 16.0.0 packages, with captions "
    "(name; category; keywords). About 5% of emoji codes are absent from the set and kept as an unseen "
    "evaluation set; the run also holds out ~5% of the files by a hash of their names.",
    "bach": "419 Bach chorales (public domain; the music21 corpus) rendered to audio with fluidsynth and the "
    "FluidR3 General MIDI soundfont, captioned with their BWV number, key and metre.",
    "shakespeare": "Shakespeare's plays and poems (public domain; Project Gutenberg editions as bundled in the "
    "Open Knowledge Foundation's `shakespeare` 0.6 package). A few works are absent from the set and kept "
    "unseen.",
    "copy": "Random byte sequences followed by their exact repeat (synthetic).",
}


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}"


def _train_stats(run: Path) -> dict:
    steps, seconds, tokens = 0, 0.0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            steps, seconds, tokens = rec["step"], rec.get("time", seconds), rec.get("tokens_seen", tokens)
    return {"steps": steps, "train_seconds": round(seconds, 1), "tokens_seen": tokens}


def _stages(run: Path) -> list[dict]:
    """This run's training stats, preceded by those of the runs it was fine-tuned from (``--init-from``)."""
    stages: list[dict] = []
    while run is not None and len(stages) < 8:
        args = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        stages.append({"run": run.name, **_train_stats(run), "init_from": args.get("init_from"),
                       "filler": args.get("filler"), "context_len": args.get("context_len")})  # fmt: skip
        init, run = args.get("init_from"), None
        if init:  # RUN/best or RUN/checkpoints/step-N
            p = Path(init)
            base = p.parent if p.name == "best" else p.parent.parent if p.parent.name == "checkpoints" else None
            if base is not None and (base / "metrics.jsonl").is_file():
                run = base
    return stages[::-1]


def trained_prompt_tokens(ck, stages: list[dict], data: Path) -> int | None:
    """The longest prompt the checkpoint's training gave it, in tokens: the context of a stage that buried captions
    in long text (``--filler``), else the data's longest caption under the checkpoint's caption template, plus room
    for a colour tag in front of an image's name ("orange red apple"); None for a text checkpoint."""
    media = [m for m in ck.tokenizer.get("modalities", []) if m in ("image", "audio")]
    if not media:
        return None
    buried = [st["context_len"] or ck.config.context_len for st in stages if st.get("filler")]
    if buried:
        return max(buried)
    longest = longest_caption(data, media[0], ck.tokenizer.get("caption_template", "{text}"))
    return longest + (max(map(len, COLOUR_NAMES)) + 1 if media[0] == "image" else 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="training run directory (its best/ is exported)")
    p.add_argument("--name", required=True, help="checkpoints/NAME")
    p.add_argument("--data", required=True, help="the training data folder (its held-out split is evaluated)")
    p.add_argument("--recipe", required=True, help="the command that reproduces this checkpoint")
    p.add_argument("--eval-items", type=int, default=64)
    p.add_argument("--eval-max-windows", type=int, default=None, help="score at most this many windows per item")
    p.add_argument("--limitations", default="", help="a sentence for the model card")
    p.add_argument("--out-root", type=Path, default=ROOT / "checkpoints")
    return p


def main(argv=None) -> None:
    a = build_parser().parse_args(argv)

    src = a.run / "best"
    if not src.is_dir():
        ckpts = sorted((a.run / "checkpoints").glob("step-*"))
        if not ckpts:
            raise SystemExit(f"export: {a.run} has no best/ and no checkpoints/step-*: train first")
        src = ckpts[-1]
    ck = load_checkpoint(src)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = evaluate(["--checkpoint", str(src), "--data", a.data, "--split", "val",
                            "--max-items", str(a.eval_items), "--device", "cpu"]
                           + (["--max-windows", str(a.eval_max_windows)] if a.eval_max_windows else []))
    stages = _stages(a.run)
    trained = trained_prompt_tokens(ck, stages, Path(a.data))
    if trained:
        ck.tokenizer["trained_prompt_tokens"] = trained  # Pipeline.prompt_note warns above it
    stats = {k: sum(st[k] for st in stages) for k in ("steps", "train_seconds", "tokens_seen")}
    stats["train_seconds"] = round(stats["train_seconds"], 1)
    training = {
        **ck.training,
        "recipe": a.recipe,
        "machine": _machine(),
        "exported": dt.date.today().isoformat(),
        **stats,
        "stages": stages,
        "eval": {k: v for k, v in metrics.items() if k not in ("checkpoint", "data")},
        "run_args": json.loads((a.run / "run.json").read_text()) if (a.run / "run.json").is_file() else {},
    }

    def extra(tmp: Path) -> None:  # tokenizer files (audio codebook) travel with the weights
        for f in src.iterdir():
            if f.is_dir():
                shutil.copytree(f, tmp / f.name)

    out = save_checkpoint(a.out_root / a.name, ck.model, ck.tokenizer, training=training, extra_files=extra,
                          dtype=torch.bfloat16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"export: {out} is {size / 2**20:.1f} MiB, over the 25 MiB limit for bundled checkpoints")
    modality, metric = next(((mod, m) for mod, m in METRIC.items() if m in metrics), (None, None))
    cfg = ck.config
    steps = f"{stats['steps']:,} steps"
    if len(stages) > 1:
        steps = " + ".join(f"{st['steps']:,}" for st in stages) + f" steps in {len(stages)} stages (" + "; ".join(
            f"{st['run']}: {st['train_seconds'] / 60:.0f} min" + (f", context {st['context_len']:,}" if st["context_len"] else "")
            + (f", captions buried in {Path(st['filler'].rsplit(':', 1)[0]).name} text" if st["filler"] else "")
            for st in stages) + ")"
    template = ck.tokenizer.get("caption_template")
    prompts = (f"\n\n## Prompts\n\nThe training captions were written as `{template}` from the data's captions.jsonl "
               "fields; prompts in that form work best.\n" if template else "")
    card = f"""# {a.name}

A Perceiver AR checkpoint bundled with perceiverar. Load it with `Pipeline.load("checkpoints/{a.name}")`, pick
it in `perceiverar-app`, or `perceiverar-generate --checkpoint checkpoints/{a.name} ...`.

| | |
|---|---|
| modalities | {", ".join(ck.tokenizer.get("modalities", [])) or "-"} |
| model | width {cfg.width}, {cfg.n_layers} latent layers, {cfg.n_heads} heads x {cfg.head_dim}, context {cfg.context_len:,}, {cfg.n_latents:,} latents, {ck.model.num_params() / 1e6:.2f} M parameters (bf16, {size / 2**20:.1f} MiB on disk) |
| training | {steps}, {stats["tokens_seen"]:,} tokens read as context (the loss is on the latent positions only), {stats["train_seconds"] / 60:.0f} min on {training["machine"]} |
| held-out {metric or "metric"} | {metrics.get(metric, "n/a")} ({metrics.get(f"{modality}_tokens_scored", "?")} tokens scored, {a.eval_items} held-out items at most) |
| reproduce | `{a.recipe}` |

## Data

{DATA_NOTES.get(a.name, a.data)}{prompts}

## Limitations

{a.limitations or "A small model trained briefly: expect rough samples."} The figures above are measured on the
run's held-out split by `perceiverar-eval`; they are in `config.json` under `training.eval` too.
"""
    (out / "README.md").write_text(card)
    print(json.dumps({"checkpoint": str(out), "bytes": size, **training["eval"]}, indent=2))


if __name__ == "__main__":
    main()
