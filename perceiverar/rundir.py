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
import shutil
from pathlib import Path
from typing import Callable

from perceiverar.checkpoint import CheckpointError, read_checkpoint_config, save_checkpoint
from perceiverar.config import PerceiverARConfig

TRAINING_STATE = "training_state.pt"
CKPT_PREFIX = "step-"
BEST = "best"


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


def latest_checkpoint(run_dir: Path, log) -> Path | None:
    """The newest checkpoint with a readable config and a training state (what ``--resume`` continues from)."""
    for c in reversed(list_checkpoints(run_dir)):
        try:
            read_checkpoint_config(c)
            if (c / TRAINING_STATE).is_file():
                return c
        except CheckpointError as e:
            log(f"skipping unusable checkpoint {c}: {e}")
    return None


def save_step(run_dir: Path, step: int, weights: Weights, tokenizer_config: dict, *, training: dict,
              extra_files: Callable[[Path], None], keep_last: int, log) -> bool:  # fmt: skip
    """Checkpoint RUN_DIR/checkpoints/step-XXXXXXX atomically and drop the oldest beyond ``keep_last``.

    On failure (a full disk, a permission error, ...) keep the old ones, say so and return False: never lose the run.
    """
    target = step_dir(run_dir, step)
    try:
        save_checkpoint(target, weights, tokenizer_config, training=training, extra_files=extra_files)
        log(f"saved checkpoint {target}")
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as e:  # noqa: BLE001
        prev = [c for c in list_checkpoints(run_dir) if c != target]
        hint = " (disk full)" if isinstance(e, OSError) and e.errno == errno.ENOSPC else ""
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
        log(f"ERROR: saving the best checkpoint failed: {type(e).__name__}: {e}; the previous best is intact")
