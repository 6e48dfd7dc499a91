"""Checkpoints: safetensors weights plus a config.json, written atomically.

A checkpoint is a directory::

    model.safetensors   the weights (never pickle)
    config.json         {"format_version", "model": {...}, "tokenizer": {...}, "training": {...}}
    ...                 any extra files the tokenizer saved (e.g. the audio codebook)

``save_checkpoint`` writes everything into a sibling temp directory and renames it into
place, so an interrupted save leaves either the old checkpoint or the new one, never half.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from perceiverar.config import PerceiverARConfig
from perceiverar.model import PerceiverAR

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not match its config."""


@dataclass
class Checkpoint:
    model: PerceiverAR
    config: PerceiverARConfig
    tokenizer: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    path: Path | None = None


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp directory to ``final``, replacing an old one with no moment of absence that loads half."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # put the previous checkpoint back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(
    directory: str | os.PathLike,
    model: PerceiverAR,
    tokenizer_config: dict | None = None,
    *,
    training: dict | None = None,
    extra_files: Callable[[Path], None] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``model`` (and its tokenizer config) to ``directory`` atomically.

    ``extra_files(tmp_dir)`` may write more files (an audio codebook) into the checkpoint.
    ``dtype`` (e.g. torch.bfloat16) stores floating weights in that precision to save space.
    Returns the checkpoint's path.
    """
    final = Path(directory).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        state = {}
        for k, t in model.state_dict().items():
            t = t.detach().to("cpu")
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[k] = t.contiguous()
        save_file(state, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
        meta = {
            "format_version": FORMAT_VERSION,
            "model": model.cfg.to_dict(),
            "tokenizer": tokenizer_config or {},
            "training": training or {},
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if extra_files is not None:
            extra_files(tmp)
        for f in tmp.rglob("*"):  # make the bytes durable before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(f, 0o755 if f.is_dir() else 0o644)  # mkdtemp and some writers use owner-only modes
        os.chmod(tmp, 0o755)
        _atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a checkpoint, with clear errors."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist; pass a folder made by save_checkpoint or perceiverar-train")
    cfg_path = d / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} is missing: {d} is not a perceiverar checkpoint")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{cfg_path} has no 'model' section")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path} has format_version {version!r}; this perceiverar reads version {FORMAT_VERSION}")
    return meta


def load_checkpoint(directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a checkpoint saved by ``save_checkpoint``; weights only through safetensors."""
    d = Path(directory)
    meta = read_checkpoint_config(d)
    try:
        cfg = PerceiverARConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / CONFIG}: invalid model config: {e}") from None
    weights = d / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the checkpoint") from None
    model = PerceiverAR(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise CheckpointError(
                f"{weights}: tensor {k} has shape {tuple(t.shape)} but config.json implies {tuple(expected[k].shape)}"
            )
    model.load_state_dict({k: t.to(expected[k].dtype) for k, t in state.items()})
    model.to(device=device, dtype=dtype).eval()
    return Checkpoint(model=model, config=cfg, tokenizer=meta.get("tokenizer", {}), training=meta.get("training", {}), path=d)
