"""Train a Perceiver AR model on folders of captioned images, audio or text: ``perceiverar-train``.

One GPU or CPU::

    perceiverar-train --data ../shared/data/emoji --preset small --out runs/emoji --max-steps 20000
    perceiverar-train --data imgs:3 --data music:1 --data books --preset base --out runs/mix --max-steps 1e5 \\
        --batch-size 4 --grad-accum 8 --activation-checkpointing
    perceiverar-train ... --resume          # continue exactly where RUN_DIR's last checkpoint stopped

Several GPUs on one machine (DDP; each rank takes its slice of the same global batch, rank 0 logs and saves)::

    torchrun --standalone --nproc_per_node 8 -m perceiverar.train --data ... --out runs/x --max-steps ...

Several machines: start the same command on every node, with the node count, this node's rank and a reachable
rendezvous endpoint on the first node (every node must see the data folders and RUN_DIR on shared storage, or at
least RUN_DIR on node 0; the token cache is rebuilt per node if it is not shared)::

    # on each of the 4 nodes (NODE_RANK = 0..3), 8 GPUs each:
    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK \\
        --rdzv_backend c10d --rdzv_endpoint node0.example:29500 --rdzv_id perceiverar-run1 \\
        -m perceiverar.train --data /shared/emoji --preset base --out /shared/runs/base --max-steps 100000

Add ``--fsdp`` for presets whose weights + optimizer state do not fit one device: parameters, gradients and
AdamW state are sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) per block (cross-attention and each latent block). The global
batch is ``--batch-size x --grad-accum x world size`` sequences; change the world size and keep the global
batch by adjusting ``--batch-size``/``--grad-accum`` (a resumed run may use a different world size).

Run directory::

    RUN_DIR/run.json                 the arguments of the first launch
    RUN_DIR/metrics.jsonl            one JSON object per step ("kind": "train") and per validation ("val")
    RUN_DIR/train.log                the log lines (also printed)
    RUN_DIR/loss.png                 the loss curve (train and val), rewritten at every validation
    RUN_DIR/samples/                 step-XXXXXXX-<modality>.png/.txt/.wav samples
    RUN_DIR/checkpoints/step-XXXXXXX model.safetensors + config.json (a perceiverar checkpoint) + training_state.pt
                                     (optimizer, RNG states, step); the last --keep-last are kept
    RUN_DIR/best                     the checkpoint with the lowest validation loss (model + config only)

Batches: one crop length per micro-step for the whole global batch (no padding; see ``perceiverar.data``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from perceiverar.checkpoint import CheckpointError, read_checkpoint_config, save_checkpoint
from perceiverar.config import PRESETS, PerceiverARConfig
from perceiverar.data import (
    AUDIO_TOKENIZER_DIR, DatasetError, Filler, Mixture, SourceSpec, TokenizerSettings, detect_modality,
    load_audio_codec, parse_data_arg, prepare_source, prepare_sources,
)  # fmt: skip
from perceiverar.evaluate import METRIC, bits, evaluate_sources
from perceiverar.model import PerceiverAR

TRAINING_STATE = "training_state.pt"
CKPT_PREFIX = "step-"


class UsageError(ValueError):
    """A bad command line or data folder: reported as ``perceiverar-train: error: ...``."""


def default_cache_dir() -> Path:
    if os.environ.get("PERCEIVERAR_CACHE"):
        return Path(os.environ["PERCEIVERAR_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "perceiverar" / "datasets"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # show "(default: x)" only where it says something
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perceiverar-train", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", required=True, metavar="DIR[:WEIGHT]",
                   help="data folder (images or audio with captions, or .txt documents); repeat to mix, with weights")
    g.add_argument("--modality", choices=["image", "audio", "text"], default=None,
                   help="force the modality of every --data folder (default: detected from the file types)")
    g.add_argument("--image-size", type=int, nargs="+", default=[32], metavar="H",
                   help="image size: H, or H W; images are resized (fit + white padding) to it (default: 32 x 32)")
    g.add_argument("--audio-codebook-size", type=int, default=1024, help="audio codebook entries (fitted once)")
    g.add_argument("--audio-fit-files", type=int, default=32, help="fit the audio codebook on at most this many files")
    g.add_argument("--audio-seconds", type=float, default=None,
                   help="default clip length written into the checkpoint (default: median training clip, fit to L)")
    g.add_argument("--cache-dir", default=None, help="token cache root (default $PERCEIVERAR_CACHE or ~/.cache/perceiverar/datasets)")
    g.add_argument("--caption-template", default="{text}", metavar="TEMPLATE",
                   help="build each caption from its captions.jsonl fields, e.g. '{text}; {style} style'")
    g.add_argument("--filler", default=None, metavar="DIR[:PROB]",
                   help="folder of .txt documents: bury captions in long runs of its text in this fraction of media "
                        "batches (default 0.5), so captions steer from far away in long prompts")
    g.add_argument("--prompt-dropout", type=float, default=0.1,
                   help="probability of training an item with the empty prompt (for classifier-free guidance)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="small", help=f"model size: {', '.join(PRESETS)}")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights and architecture (fine-tuning; --context-len and "
                        "--n-latents may still change, the optimizer starts afresh); audio reuses its codebook")
    g.add_argument("--n-latents", type=int, default=None, help="override the preset's N (latents)")
    g.add_argument("--context-len", type=int, default=None, help="override the preset's L (context)")
    g.add_argument("--context-dropout", type=float, default=0.0, help="fraction of prefix keys dropped per step (paper)")
    g.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    g.add_argument("--activation-checkpointing", action="store_true", help="recompute latent blocks in backward")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("optimisation")
    g.add_argument("--out", required=True, help="run directory (checkpoints, metrics, samples)")
    g.add_argument("--max-steps", type=int, required=True, help="optimizer steps in all")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per rank per micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine (default lr/10)")
    g.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices and embeddings only)")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the data order and dropout")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 instead of DDP")
    g = p.add_argument_group("monitoring")
    g.add_argument("--val-every", type=int, default=500, help="validate every this many steps (and at the end)")
    g.add_argument("--val-items", type=int, default=32, help="validation items per folder")
    g.add_argument("--val-windows", type=int, default=8, help="sliding windows per validation item at most")
    g.add_argument("--sample-every", type=int, default=2000, help="save generated samples every this many steps (0: never)")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint every this many steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints kept in RUN_DIR/checkpoints")
    g.add_argument("--log-every", type=int, default=1, help="metrics.jsonl line every this many steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug-step-sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow steps down
    args = p.parse_args(argv)
    if args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    for name in ("max_steps", "batch_size", "grad_accum", "keep_last", "val_every", "save_every", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.prompt_dropout <= 1:
        p.error(f"--prompt-dropout must be in [0, 1], got {args.prompt_dropout}")
    if len(args.image_size) > 2:
        p.error("--image-size takes H or H W")
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    return args


# ------------------------------------------------------------------------------------------ distributed


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum_(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()


def setup_dist(device_arg: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None and world > 1:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


class LossModule(nn.Module):
    """model.loss behind forward(), so DDP / FSDP see the whole step as one forward call."""

    def __init__(self, model: PerceiverAR):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.model.loss(tokens, features)


# ------------------------------------------------------------------------------------------ schedule


def lr_at(step: int, args) -> float:
    """Linear warm-up to --lr over --warmup steps, then cosine decay to --min-lr at --max-steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    span = max(1, args.max_steps - args.warmup)
    t = min(1.0, (step - args.warmup) / span)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, args) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), eps=1e-8)


# ------------------------------------------------------------------------------------------ run state


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Weights:
    """What save_checkpoint needs of a model (cfg + state_dict), for a gathered FSDP state."""

    def __init__(self, cfg: PerceiverARConfig, state: dict):
        self.cfg, self._state = cfg, state

    def state_dict(self) -> dict:
        return self._state


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    out = [c for c in d.iterdir() if c.name.startswith(CKPT_PREFIX) and c.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(out, key=lambda c: int(c.name[len(CKPT_PREFIX):]))


def latest_checkpoint(run_dir: Path, log) -> Path | None:
    for c in reversed(list_checkpoints(run_dir)):
        try:
            read_checkpoint_config(c)
            if (c / TRAINING_STATE).is_file():
                return c
        except CheckpointError as e:
            log(f"skipping unusable checkpoint {c}: {e}")
    return None


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
    tmp.write_text("".join(s + "\n" for s in keep))
    os.replace(tmp, path)


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


# ------------------------------------------------------------------------------------------ trainer


def build_config(args, resume_cfg: dict | None, init_cfg: dict | None = None) -> PerceiverARConfig:
    if resume_cfg is not None:  # a resumed run keeps its architecture
        return PerceiverARConfig.from_dict({**resume_cfg, "activation_checkpointing": args.activation_checkpointing})
    over = {"context_dropout": args.context_dropout, "activation_checkpointing": args.activation_checkpointing}
    for key, val in (("n_latents", args.n_latents), ("context_len", args.context_len), ("dropout", args.dropout)):
        if val is not None:
            over[key] = val
    if init_cfg is not None:  # fine-tuning: the checkpoint's architecture, with the run-time knobs overridden
        return PerceiverARConfig.from_dict({**init_cfg, **over})
    return PerceiverARConfig.preset(args.preset, **over)


def audio_seconds(sources, codec, cfg: PerceiverARConfig) -> float:
    lens = [int(b - a) for s in sources if s.modality == "audio" for a, b in s.index[:, 4:6]]
    tps = codec.tokenizer.tokens_per_second
    fit = max(1.0, (cfg.context_len - 128) / tps)  # leave room for a prompt
    return round(min(float(np.median(lens)) / tps, fit), 1) if lens else 10.0


class Trainer:
    def __init__(self, args, dd: Dist):
        self.args, self.dd = args, dd
        self.run_dir = Path(args.out)
        if dd.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dd.barrier()
        self.log = Logger(self.run_dir, dd.main)
        self.metrics = self.run_dir / "metrics.jsonl"

    # ---- setup ----

    def prepare_data(self):
        a = self.args
        specs = [parse_data_arg(d, a.modality) for d in a.data]
        h = a.image_size[0]
        w = a.image_size[1] if len(a.image_size) > 1 else h
        codec = None
        if a.init_from and (Path(a.init_from) / AUDIO_TOKENIZER_DIR).is_dir():
            codec = load_audio_codec(Path(a.init_from) / AUDIO_TOKENIZER_DIR)  # the weights know these codes
            a.audio_codebook_size = codec.tokenizer.codebook_size  # so run.json and the checkpoint say so
        self.settings = TokenizerSettings(image_height=h, image_width=w, audio_codebook_size=a.audio_codebook_size,
                                          audio_fit_files=a.audio_fit_files, caption_template=a.caption_template)  # fmt: skip
        cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
        filler_spec, filler_prob = None, 0.5
        if a.filler:
            filler_spec = parse_data_arg(a.filler)
            if filler_spec.path != Path(a.filler).expanduser().resolve():  # DIR:PROB
                filler_prob = filler_spec.weight
            kind = detect_modality(filler_spec.path)
            if kind != "text":
                raise DatasetError(f"--filler {a.filler}: needs a folder of .txt documents, but it holds {kind} files")
            filler_spec = SourceSpec(filler_spec.path, 1.0, "text")
        err = None
        for rank_turn in (True, False):  # rank 0 tokenizes; the others then find the cache
            if self.dd.main == rank_turn:
                try:
                    self.sources, self.codec = prepare_sources(specs, self.settings, cache, codec=codec,
                                                               progress=not a.no_progress and rank_turn,
                                                               log=self.log if rank_turn else lambda m: None)  # fmt: skip
                    self.filler = None
                    if filler_spec is not None:
                        src = prepare_source(filler_spec, self.settings, cache, progress=False, log=self.log)
                        self.filler = Filler(src, filler_prob)
                except DatasetError as e:
                    err = e
            if rank_turn:
                self.dd.barrier()
        if err is not None:
            raise err
        for s in self.sources:
            self.log(f"data {s.manifest['folder']} ({s.modality}, weight {s.weight:g}): {s.manifest['n_train']} train / "
                     f"{s.manifest['n_val']} val items, {s.manifest['n_tokens']:,} tokens, {s.manifest['n_skipped']} skipped; "
                     f"cache {s.dir}")  # fmt: skip

    def tokenizer_config(self) -> dict:
        mods = sorted({s.modality for s in self.sources})
        audio_s = audio_seconds(self.sources, self.codec, self.cfg) if "audio" in mods else None
        if self.args.audio_seconds is not None:
            audio_s = self.args.audio_seconds
        from perceiverar.pipeline import make_tokenizer_config  # noqa: PLC0415

        h, w = self.settings.image_height, self.settings.image_width
        cfg = make_tokenizer_config(mods, height=h if "image" in mods else None, width=w if "image" in mods else None,
                                    audio_seconds=audio_s, audio_dir=AUDIO_TOKENIZER_DIR)  # fmt: skip
        if self.settings.caption_template != "{text}":  # how the training captions were written, for users and eval
            cfg["caption_template"] = self.settings.caption_template
        return cfg

    def build(self, resume_dir: Path | None) -> None:
        a, dd = self.args, self.dd
        resume_meta = read_checkpoint_config(resume_dir) if resume_dir else None
        init_dir = Path(a.init_from) if a.init_from and resume_dir is None else None
        init_meta = None
        if init_dir is not None:
            try:
                init_meta = read_checkpoint_config(init_dir)
            except CheckpointError as e:
                raise UsageError(f"--init-from: {e}") from None
        self.cfg = build_config(a, resume_meta["model"] if resume_meta else None, init_meta["model"] if init_meta else None)
        torch.manual_seed(a.seed)  # same initial weights on every rank and every run
        model = PerceiverAR(self.cfg)
        if resume_dir is not None or init_dir is not None:
            from safetensors.torch import load_file  # noqa: PLC0415

            weights = (resume_dir or init_dir) / "model.safetensors"
            try:
                model.load_state_dict(load_file(str(weights)))
            except (OSError, RuntimeError) as e:  # missing, truncated or another architecture's file
                raise UsageError(f"cannot load the weights {weights}: {e}") from None
            if init_dir is not None:
                self.log(f"weights from {init_dir} (step {init_meta.get('training', {}).get('step', '?')})")
        model.to(dd.device)
        self.model = model  # the plain module: validation, samples, checkpoints
        net: nn.Module = LossModule(model)
        self.fsdp = a.fsdp and dd.world > 1
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model.cross)  # the full forward computes keys/values inside cross.forward
            fully_shard(model)  # the root: embeddings, norm and head
        if a.compile:
            net = torch.compile(net)
        if dd.world > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

            net = DDP(net, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
        self.net = net
        self.opt = make_optimizer(model, a)
        self.mixture = Mixture(self.sources, self.cfg.context_len, self.cfg.n_latents, a.prompt_dropout, a.seed,
                               filler=self.filler)  # fmt: skip
        self.tok_cfg = self.tokenizer_config()
        self.step, self.best_val, self.tokens_seen = 0, math.inf, 0
        if resume_dir is not None:
            state = torch.load(resume_dir / TRAINING_STATE, map_location="cpu", weights_only=True)
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415

                set_optimizer_state_dict(model, self.opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))
            else:
                self.opt.load_state_dict(state["optimizer"])
            self.step, self.best_val, self.tokens_seen = int(state["step"]), float(state["best_val"]), int(state["tokens_seen"])
            rngs = state["rng"]
            set_rng_state(rngs[dd.rank] if dd.rank < len(rngs) else rngs[0])
        n = sum(p.numel() for p in model.parameters())
        self.log(f"model {a.preset}: {n / 1e6:.2f} M parameters, L={self.cfg.context_len}, N={self.cfg.n_latents}; "
                 f"device {dd.device}, world {dd.world}{' (FSDP)' if self.fsdp else ' (DDP)' if dd.world > 1 else ''}; "
                 f"global batch {a.batch_size * a.grad_accum * dd.world} sequences")  # fmt: skip

    # ---- checkpoints ----

    def _gather(self) -> tuple[dict, dict]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
                StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
            )  # fmt: skip

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.model, options=opts), get_optimizer_state_dict(self.model, self.opt, options=opts)
        return self.model.state_dict(), self.opt.state_dict()

    def _training_meta(self, val: float | None = None) -> dict:
        a = vars(self.args).copy()
        return {"step": self.step, "val_loss": val, "tokens_seen": self.tokens_seen, "args": a,
                "data": [s.manifest["folder"] for s in self.sources]}  # fmt: skip

    def _extra(self, state: dict | None):
        codec = self.codec

        def write(tmp: Path) -> None:
            if codec is not None:
                shutil.copytree(codec.dir, tmp / AUDIO_TOKENIZER_DIR, ignore=shutil.ignore_patterns(".complete"))
            if state is not None:
                torch.save(state, tmp / TRAINING_STATE)

        return write

    def save(self) -> bool:
        """Checkpoint RUN_DIR/checkpoints/step-XXXXXXX atomically; on failure keep the old ones and say so."""
        weights, opt_state = self._gather()
        rngs = [rng_state()]
        if self.dd.world > 1:
            gathered = [None] * self.dd.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        ok = True
        if self.dd.main:
            target = self.run_dir / "checkpoints" / f"{CKPT_PREFIX}{self.step:07d}"
            state = {"step": self.step, "optimizer": opt_state, "rng": rngs, "best_val": self.best_val,
                     "tokens_seen": self.tokens_seen, "schedule": {"kind": "cosine", "warmup": self.args.warmup,
                     "lr": self.args.lr, "min_lr": self.args.min_lr, "max_steps": self.args.max_steps}}  # fmt: skip
            try:
                save_checkpoint(target, _Weights(self.cfg, weights), self.tok_cfg, training=self._training_meta(),
                                extra_files=self._extra(state))  # fmt: skip
                self.log(f"saved checkpoint {target}")
                for old in list_checkpoints(self.run_dir)[: -self.args.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            except Exception as e:  # noqa: BLE001  (a full disk, a permission error, ...: never lose the run)
                prev = [c for c in list_checkpoints(self.run_dir) if c != target]
                hint = " (disk full)" if isinstance(e, OSError) and e.errno == errno.ENOSPC else ""
                self.log(f"ERROR: saving checkpoint {target} failed{hint}: {type(e).__name__}: {e}; "
                         f"the previous checkpoint {prev[-1] if prev else '(none)'} is intact; training continues")  # fmt: skip
                ok = False
        self.dd.barrier()
        return ok

    def save_best(self, val: float) -> None:
        weights, _ = self._gather()
        if not self.dd.main:
            return
        try:
            save_checkpoint(self.run_dir / "best", _Weights(self.cfg, weights), self.tok_cfg,
                            training=self._training_meta(val), extra_files=self._extra(None))  # fmt: skip
            self.log(f"new best val loss {val:.4f} nats: saved {self.run_dir / 'best'}")
        except Exception as e:  # noqa: BLE001
            self.log(f"ERROR: saving the best checkpoint failed: {type(e).__name__}: {e}; the previous best is intact")

    # ---- validation and samples ----

    def validate(self) -> float | None:
        a, dd = self.args, self.dd
        rank, world = (0, 1) if self.fsdp else (dd.rank, dd.world)
        model = self.model
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dd.device.type == "cuda" else contextlib.nullcontext()
        with amp:
            acc = evaluate_sources(model, self.sources, split="val", max_items=a.val_items, max_windows=a.val_windows,
                                   device=dd.device, rank=rank, world=world)  # fmt: skip
        mods = sorted(acc)
        flat = dd.sum_([v for m in mods for v in acc[m]]) if not self.fsdp else [v for m in mods for v in acc[m]]
        acc = {m: flat[2 * i : 2 * i + 2] for i, m in enumerate(mods)}
        total = [sum(v[0] for v in acc.values()), sum(v[1] for v in acc.values())]
        if total[1] == 0:
            return None
        rec = {"kind": "val", "step": self.step, "val_loss": total[0] / total[1]}
        for m, v in acc.items():
            if v[1]:
                rec[f"val_{METRIC[m]}"] = bits(v)
        if dd.main:
            append_metrics(self.metrics, rec)
            self.log("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("val_")))
            try:
                plot_losses(self.metrics, self.run_dir / "loss.png")
            except Exception as e:  # noqa: BLE001
                self.log(f"could not draw loss.png: {e}")
        return rec["val_loss"]

    def samples(self) -> None:
        if not self.dd.main:
            return
        if self.fsdp:
            self.log("samples are skipped under --fsdp (the weights are sharded)")
            return
        try:
            from perceiverar.pipeline import Pipeline  # noqa: PLC0415
        except ImportError as e:
            self.log(f"no samples: perceiverar.pipeline is not available ({e})")
            return
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        pipe = Pipeline(self.model, self.tok_cfg, None, audio_tokenizer=self.codec.tokenizer if self.codec else None)
        was = self.model.training
        try:
            for src in self.sources:
                i = int((src.val_items if len(src.val_items) else src.train_items)[0])
                ids = src.item(i)
                stem = out / f"step-{self.step:07d}-{src.modality}"
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
            self.log(f"samples saved to {out}")
        except Exception as e:  # noqa: BLE001  (a sample must never stop training)
            self.log(f"sample generation failed: {type(e).__name__}: {e}")
        finally:
            self.model.train(was)

    # ---- the loop ----

    def train_step(self) -> dict:
        a, dd = self.args, self.dd
        lr = lr_at(self.step, a)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        rows = a.batch_size * dd.world
        losses, lens, tokens = [], [], 0
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dd.device.type == "cuda" else contextlib.nullcontext()
        for micro in range(a.grad_accum):
            toks, feats, st = self.mixture.batch(self.step, micro, rows)
            sl = slice(dd.rank * a.batch_size, (dd.rank + 1) * a.batch_size)
            toks, feats = toks[sl].to(dd.device), feats[sl].to(dd.device)
            last = micro == a.grad_accum - 1
            sync = self.net.no_sync() if (dd.world > 1 and not self.fsdp and not last) else contextlib.nullcontext()
            with sync:
                with amp:
                    loss = self.net(toks, feats)
                (loss / a.grad_accum).backward()
            losses.append(loss.detach().float())
            lens.append(st["seq_len"])
            tokens += rows * (st["seq_len"] - 1)
        gnorm = None
        if a.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
        self.opt.step()
        loss = float(torch.stack(losses).mean())
        if dd.world > 1:
            loss = dd.sum_([loss])[0] / dd.world
        return {"loss": loss, "lr": lr, "grad_norm": gnorm, "seq_len": lens, "tokens": tokens}

    def run(self) -> int:
        a, dd = self.args, self.dd
        resume_dir = None
        if a.resume:
            resume_dir = latest_checkpoint(self.run_dir, self.log)
            if resume_dir is None:
                self.log(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting from scratch")
        elif list_checkpoints(self.run_dir):
            raise UsageError(f"{self.run_dir} already holds checkpoints: pass --resume to continue, or another --out")
        self.prepare_data()
        self.build(resume_dir)
        if dd.main:
            if resume_dir is None:
                self.metrics.unlink(missing_ok=True)
                (self.run_dir / "run.json").write_text(json.dumps(vars(a), indent=2))
            else:
                truncate_metrics(self.metrics, self.step)
                self.log(f"resumed from {resume_dir} at step {self.step}")
        dd.barrier()
        if self.step >= a.max_steps:
            self.log(f"already at step {self.step} >= --max-steps {a.max_steps}: nothing to do")
            return 0
        self.net.train()
        if self.step == 0:
            self.validate()
        bar = tqdm(total=a.max_steps, initial=self.step, desc="training", unit="step", disable=a.no_progress or not dd.main,
                   dynamic_ncols=True)  # fmt: skip
        self.log.bar = bar
        t_start, last_save_ok = time.perf_counter(), True
        try:
            while self.step < a.max_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                self.step += 1
                self.tokens_seen += rec["tokens"]
                dt = time.perf_counter() - t0
                if not math.isfinite(rec["loss"]):
                    self.log(f"ERROR: loss is {rec['loss']} at step {self.step}; stopping (try a lower --lr)")
                    return 1
                if dd.main and (self.step % a.log_every == 0 or self.step == a.max_steps):
                    append_metrics(self.metrics, {"kind": "train", "step": self.step, **rec, "tokens_per_s": rec["tokens"] / dt,
                                                  "tokens_seen": self.tokens_seen, "time": time.perf_counter() - t_start})  # fmt: skip
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens'] / dt:,.0f}", lr=f"{rec['lr']:.2e}")
                bar.update(1)
                done = self.step == a.max_steps
                if self.step % a.val_every == 0 or done:
                    val = self.validate()
                    if val is not None and val < self.best_val:
                        self.best_val = val
                        self.save_best(val)
                if a.sample_every and (self.step % a.sample_every == 0):
                    self.samples()
                if self.step % a.save_every == 0 or done:
                    last_save_ok = self.save()
                if a.debug_step_sleep:
                    time.sleep(a.debug_step_sleep)
        finally:
            bar.close()
            self.log.bar = None
        if dd.main and self.metrics.is_file():
            try:
                plot_losses(self.metrics, self.run_dir / "loss.png")
            except Exception as e:  # noqa: BLE001
                self.log(f"could not draw loss.png: {e}")
        if not last_save_ok:
            self.log("ERROR: the final checkpoint could not be saved (see above)")
            return 1
        self.log(f"done: {self.step} steps; checkpoints in {self.run_dir / 'checkpoints'}")
        return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    dd = setup_dist(args.device)
    try:
        code = Trainer(args, dd).run()
    except (DatasetError, UsageError) as e:
        raise SystemExit(f"perceiverar-train: error: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    main()
