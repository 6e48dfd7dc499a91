"""The run directory: numbered checkpoints (saved atomically, the last ``--keep-last`` kept), the latest usable
one to resume from, and ``best``.

Layout::

    RUN_DIR/run.json                 the arguments of the first launch
    RUN_DIR/metrics.jsonl            one JSON object per step ("kind": "train") and per validation ("val")
    RUN_DIR/train.log                the log lines (also printed)
    RUN_DIR/loss.png                 the loss curve (train and val), rewritten at every validation
    RUN_DIR/samples/                 step-XXXXXXX-<modality>.png/.txt/.wav samples
    RUN_DIR/checkpoints/step-XXXXXXX model.safetensors + config.json (a perceiverar checkpoint) + training_state.pt
                                     (optimizer, RNG states, step); the last --keep-last are kept
    RUN_DIR/best                     the checkpoint with the lowest validation loss (model + config only)
"""

from __future__ import annotations

import errno
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from perceiverar.checkpoint import (
    CONFIG, WEIGHTS, CheckpointError, check_weights, leftover_names, read_checkpoint_config, recover_checkpoint_dir,
    save_checkpoint,
)  # fmt: skip
from perceiverar.config import PerceiverARConfig

TRAINING_STATE = "training_state.pt"
CKPT_PREFIX = "step-"
BEST = "best"
STATE_KEYS = {"step", "optimizer", "rng", "best_val", "tokens_seen"}


class Weights:
    """What save_checkpoint needs of a model (cfg + state_dict), for a gathered FSDP state."""

    def __init__(self, cfg: PerceiverARConfig, state: dict):
        self.cfg, self._state = cfg, state

    def state_dict(self) -> dict:
        return self._state


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{CKPT_PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """RUN_DIR/checkpoints/step-* folders, oldest first."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    out = [c for c in d.iterdir() if c.name.startswith(CKPT_PREFIX) and c.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(out, key=lambda c: int(c.name[len(CKPT_PREFIX):]))


@dataclass
class ResumePoint:
    """A checkpoint that ``--resume`` can continue from, loaded and checked."""

    dir: Path
    meta: dict  # its config.json
    weights: dict  # the model's state dict
    state: dict  # training_state.pt: step, optimizer, rng, best_val, tokens_seen


def load_training_state(directory: Path) -> dict:
    """``training_state.pt`` of a checkpoint: plain tensors and values only (never arbitrary pickled objects)."""
    path = Path(directory) / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights_only refusal: a tampered or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} holds more than tensors and plain values, so it was not loaded ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    missing = sorted(STATE_KEYS - set(state)) if isinstance(state, dict) else sorted(STATE_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not a training state: it lacks {', '.join(missing)}")
    return state


def load_resume_point(c: Path) -> ResumePoint:
    """Everything ``--resume`` needs from checkpoint ``c``, or CheckpointError saying what is wrong with it."""
    meta = read_checkpoint_config(c)
    try:
        cfg = PerceiverARConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{c / CONFIG}: invalid model config: {e}") from None
    check_weights(c / WEIGHTS, cfg)
    try:
        weights = load_file(str(c / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{c / WEIGHTS} is corrupt or truncated ({e})") from None
    return ResumePoint(c, meta, weights, load_training_state(c))


def latest_resume_point(run_dir: Path, log) -> ResumePoint | None:
    """The newest checkpoint that loads whole (config, weights, training state); a damaged one is skipped with
    a message and the one before it tried. None if there are none; CheckpointError if none of them loads."""
    problems = []
    for c in reversed(list_checkpoints(run_dir)):
        try:
            return load_resume_point(c)
        except CheckpointError as e:
            log(f"skipping damaged checkpoint {c}: {e}; trying the one before it")
            problems.append(f"{c.name}: {e}")
    if problems:
        raise CheckpointError(f"--resume: none of the {len(problems)} checkpoints in {run_dir / 'checkpoints'} loads "
                              f"({'; '.join(problems)}); move them away to start afresh")  # fmt: skip
    return None


def tidy(run_dir: Path, log) -> None:
    """Finish or undo saves a crash interrupted (``best`` is restored if it went missing) and delete the temp
    folders they left (each may hold a whole checkpoint). Only the run's own trainer may be saving here."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for name in leftover_names(folder):
            for line in recover_checkpoint_dir(folder / name):
                log(line)


# Options a resumed run may change (how it trains, not what): every other option must match run.json.
RESUMABLE = {
    "resume", "out", "max_steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup", "weight_decay", "beta2",
    "grad_clip", "device", "fsdp", "compile", "cpu_bf16", "activation_checkpointing", "val_every", "val_items",
    "val_windows", "sample_every", "save_every", "keep_last", "log_every", "no_progress", "debug_step_sleep",
    "cache_dir", "audio_seconds", "given_options", "ema",
    # augmentation strengths: a later stretch may add or change them (the model and its data stay the same)
    "colour_tags", "hue_rotate", "recolour", "mirror", "rerender", "rerender_scale", "rerender_shift",
    "rerender_rotate", "balance",
}  # fmt: skip
# Of those, the settings of the machine a launch runs on: they follow the command (named or not), so a resume on
# another machine can leave out --compile or --cpu-bf16; the rest, left out, are the first launch's.
MACHINE = {
    "device", "fsdp", "compile", "cpu_bf16", "activation_checkpointing", "no_progress", "cache_dir", "debug_step_sleep",
}  # fmt: skip


def _normal(key: str, value):
    """A value of ``key`` in a form that compares equal however it was typed (paths resolved, weights parsed)."""
    def folder(arg: str):
        path, weight = arg, 1.0
        head, _, tail = arg.rpartition(":")
        if head:
            try:
                path, weight = head, float(tail)
            except ValueError:
                pass
        return str(Path(path).expanduser().resolve()), weight

    if value is None:
        return None
    if key == "data":
        return sorted(folder(d) for d in value)
    if key in ("filler", "init_from"):
        return folder(value) if key == "filler" else str(Path(value).expanduser().resolve())
    if key == "image_size":
        return (value[0], value[-1])
    return tuple(value) if isinstance(value, (list, tuple)) else value  # JSON reads a tuple back as a list


def resume_differences(run_json: dict, args) -> list[str]:
    """How the command ``args`` differs from ``run_json`` (the first launch's) in what it trains: model, data,
    seed. Options the command does not name (``args.given_options``; or left at None) take the first launch's
    value (``args`` is updated), so a plain ``--resume`` continues the run as it was, learning rate included;
    the machine settings (``MACHINE``) follow the command.
    Returns one ``--option NEW (run.json: OLD)`` per difference."""
    out = []
    given = getattr(args, "given_options", None)  # None: not known, so every option counts as given
    for key, old in sorted(run_json.items()):
        if key in ("resume", "given_options") or key in MACHINE or not hasattr(args, key):
            continue
        new = getattr(args, key)
        if given is not None and key not in given:
            if not (key == "min_lr" and "lr" in given):  # a new --lr alone keeps its own default min_lr (lr/10)
                setattr(args, key, old)
            continue
        if key in RESUMABLE:
            continue
        if new is None and old is not None:
            setattr(args, key, old)
            continue
        if key == "audio_codebook_size" and getattr(args, "init_from", None):
            continue  # taken from the --init-from checkpoint's codebook, which must match
        if _normal(key, new) != _normal(key, old):
            show = (lambda v: "not given" if v is None else " ".join(map(str, v)) if isinstance(v, list) else v)
            out.append(f"--{key.replace('_', '-')} {show(new)} (run.json: {show(old)})")
    return out


def save_step(run_dir: Path, step: int, weights: Weights, tokenizer_config: dict, *, training: dict,
              extra_files: Callable[[Path], None], keep_last: int, log) -> bool:  # fmt: skip
    """Checkpoint RUN_DIR/checkpoints/step-XXXXXXX atomically and drop the oldest beyond ``keep_last``.

    On failure (a full disk, a permission error, ...) keep the old ones, say so and return False: never lose the run.
    """
    target = step_dir(run_dir, step)
    try:
        tidy(run_dir, log)  # leftovers of killed saves first: they may hold the space this save needs
        save_checkpoint(target, weights, tokenizer_config, training=training, extra_files=extra_files)
        log(f"saved checkpoint {target}")
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as e:  # noqa: BLE001
        prev = [c for c in list_checkpoints(run_dir) if c != target]
        hint = " (disk full)" if disk_full(e) else ""
        log(f"ERROR: saving checkpoint {target} failed{hint}: {type(e).__name__}: {e}; "
            f"the previous checkpoint {prev[-1] if prev else '(none)'} is intact; training continues")  # fmt: skip
        return False
    return True


def save_best(run_dir: Path, weights: Weights, tokenizer_config: dict, *, training: dict,
              extra_files: Callable[[Path], None], val: float, log) -> None:  # fmt: skip
    """Replace RUN_DIR/best with these weights (validation loss ``val``); a failure is logged, the old best kept."""
    try:
        save_checkpoint(run_dir / BEST, weights, tokenizer_config, training=training, extra_files=extra_files)
        log(f"new best val loss {val:.4f} nats: saved {run_dir / BEST}")
    except Exception as e:  # noqa: BLE001
        hint = " (disk full)" if disk_full(e) else ""
        log(f"ERROR: saving the best checkpoint failed{hint}: {type(e).__name__}: {e}; the previous best is intact")


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk is full: an OSError, or safetensors' SafetensorError, which is not an OSError
    and only says so in its message."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e) or "os error 28" in str(e)
