"""What a run reports: the log (train.log and the terminal), metrics.jsonl, the loss plot and samples."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm


class Logger:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "train.log"
        self.bar: tqdm | None = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)  # above the progress bar
        else:
            print(line, file=sys.stderr, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a killed run wrote after its last checkpoint (they will be produced again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text("".join(s + "\n" for s in keep))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the old file stays whole
        raise


def plot_losses(metrics: Path, out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    train, val = [], []
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            train.append((r["step"], r["loss"]))
        elif r.get("kind") == "val":
            val.append((r["step"], r["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, label="train loss (nats/token)")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss (nats/target token)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


def save_samples(model, tokenizer_config: dict, sources: list, codec, out: Path, step: int, log) -> None:
    """One generated sample per data folder, prompted like its first val item: ``out/step-XXXXXXX-<modality>.*``.

    A failure is logged, never raised: a sample must never stop training.
    """
    try:
        from perceiverar.pipeline import Pipeline  # noqa: PLC0415
    except ImportError as e:
        log(f"no samples: perceiverar.pipeline is not available ({e})")
        return
    out.mkdir(exist_ok=True)
    pipe = Pipeline(model, tokenizer_config, None, audio_tokenizer=codec.tokenizer if codec else None)
    was = model.training
    try:
        for src in sources:
            i = int((src.val_items if len(src.val_items) else src.train_items)[0])
            ids = src.item(i)
            stem = out / f"step-{step:07d}-{src.modality}"
            if src.modality == "image":
                prompt = bytes(int(t) for t in ids[2 : 2 + src.index[i, 2]]).decode("utf-8", "replace")
                pipe.generate_image(prompt, seed=0, overflow="truncate")[0].save(f"{stem}.png")
                (out / f"{stem.name}.prompt.txt").write_text(prompt + "\n")
            elif src.modality == "audio":
                import soundfile  # noqa: PLC0415

                prompt = bytes(int(t) for t in ids[2 : 2 + src.index[i, 2]]).decode("utf-8", "replace")
                wav, sr = pipe.generate_audio(prompt, seconds=2.0, seed=0, overflow="truncate")[0]
                soundfile.write(f"{stem}.wav", wav, sr)
            else:
                a, _ = src.target_range(i)
                prompt = bytes(int(t) for t in ids[a : a + 64]).decode("utf-8", "replace") or "The"
                text = pipe.generate_text(prompt, max_new_bytes=128, seed=0, overflow="truncate")[0]
                Path(f"{stem}.txt").write_text(f"{prompt}|{text}\n")
        log(f"samples saved to {out}")
    except Exception as e:  # noqa: BLE001  (a sample must never stop training)
        log(f"sample generation failed: {type(e).__name__}: {e}")
    finally:
        model.train(was)
