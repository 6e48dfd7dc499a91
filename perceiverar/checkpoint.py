"""Checkpoints: safetensors weights plus a config.json, written atomically.

A checkpoint is a directory::

    model.safetensors   the weights (never pickle)
    config.json         {"format_version", "model": {...}, "tokenizer": {...}, "training": {...}}
    ...                 any extra files the tokenizer saved (e.g. the audio codebook)

``save_checkpoint`` writes everything into a sibling temp directory and swaps it into place, so an
interrupted save leaves either the old checkpoint or the new one, never half. On Linux the swap is one atomic
``renameat2(RENAME_EXCHANGE)``; elsewhere it takes two renames, and a crash between them leaves the finished
new checkpoint in ``.NAME.new-PID``, which :func:`recover_checkpoint_dir` moves into place.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
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


# A test hook: called as ``_save_hook(stage, final)`` at each step of a save ("written": the temp copy is
# complete; "staged", "detached": between the renames of the two-rename swap; "swapped": the new checkpoint is
# in place, the old one not yet deleted). Tests kill the process there; None otherwise.
_save_hook: Callable[[str, Path], None] | None = None
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|new)-[^.]+$")


def _stage(stage: str, final: Path) -> None:
    if _save_hook is not None:
        _save_hook(stage, final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):  # a filesystem without it (NFS, ...)
        return False
    raise OSError(err, os.strerror(err), str(b))


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp directory to ``final``, replacing an old one; at no moment is ``final`` missing or half
    written where the atomic exchange exists, and elsewhere a crash between the renames is undone by
    :func:`recover_checkpoint_dir`."""
    _stage("written", final)
    if not final.exists():
        os.replace(tmp, final)
        _stage("swapped", final)
        return
    if _exchange(tmp, final):  # final now holds the new checkpoint, tmp the old one
        _stage("swapped", final)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    new = final.with_name(f".{final.name}.new-{os.getpid()}")  # the name says: complete, not yet in place
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    for p in (new, old):
        if p.exists():
            shutil.rmtree(p)
    os.replace(tmp, new)
    try:
        _stage("staged", final)
        os.replace(final, old)
        _stage("detached", final)
        try:
            os.replace(new, final)
        except OSError:
            os.replace(old, final)  # put the previous checkpoint back
            raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _stage("swapped", final)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint_dir(final: str | os.PathLike) -> list[str]:
    """Finish a save of ``final`` that a crash interrupted, and delete the temp folders such saves leave.

    A missing ``final`` with a ``.NAME.new-*`` folder (complete, killed between the renames) gets that one, else
    its ``.NAME.old-*`` (the previous checkpoint). Every ``.NAME.tmp-*``, ``.old-*`` and ``.new-*`` left is then
    removed (each may hold a whole checkpoint). Only for folders no other process is saving into. Returns what
    was done, one line each.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    mine = [p for p in final.parent.iterdir() if (m := _LEFTOVER.match(p.name)) and m["name"] == final.name]
    done = []
    if not final.exists():
        by_age = sorted(mine, key=lambda p: p.stat().st_mtime, reverse=True)
        for kind in ("new", "old"):
            cand = [p for p in by_age if _LEFTOVER.match(p.name)["kind"] == kind and (p / CONFIG).is_file()]
            if cand:
                os.replace(cand[0], final)
                done.append(f"restored {final} from {cand[0].name} (a save was interrupted)")
                break
    for p in mine:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            done.append(f"removed the leftover {p}")
    return done


def leftover_names(folder: str | os.PathLike) -> list[str]:
    """The checkpoint names in ``folder`` that have temp folders left by interrupted saves."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({m["name"] for p in folder.iterdir() if (m := _LEFTOVER.match(p.name))})


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
    _check_sections(meta, cfg_path)
    return meta


def _check_sections(meta: dict, cfg_path: Path) -> None:
    """The sections' types, so that a hand-edited config.json fails here and says where, not deep in generation."""
    for key in ("model", "tokenizer", "training"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{cfg_path}: the {key!r} section must be a JSON object, got {type(meta[key]).__name__}")
    tok = meta.get("tokenizer") or {}
    for key in ("image", "audio", "text", "vocab", "defaults"):
        if tok.get(key) is not None and not isinstance(tok[key], dict):
            raise CheckpointError(f"{cfg_path}: tokenizer.{key} must be a JSON object, got {type(tok[key]).__name__}")
    mods = tok.get("modalities")
    if mods is not None and not (isinstance(mods, list) and all(m in ("image", "audio", "text") for m in mods)):
        raise CheckpointError(f"{cfg_path}: tokenizer.modalities must be a list of 'image', 'audio', 'text', got {mods!r}")
    audio_dir = (tok.get("audio") or {}).get("dir")
    if audio_dir is not None:
        checkpoint_file(cfg_path.parent, audio_dir, "tokenizer.audio.dir")


def checkpoint_file(directory: str | os.PathLike, rel, what: str = "a file name") -> Path:
    """``directory / rel`` for a name taken from config.json, which must stay inside the checkpoint folder."""
    if not isinstance(rel, str) or not rel:
        raise CheckpointError(f"{Path(directory) / CONFIG}: {what} must be a non-empty relative path, got {rel!r}")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise CheckpointError(f"{Path(directory) / CONFIG}: {what} {rel!r} points outside the checkpoint folder; "
                              "it must be a path inside it (no absolute path, no '..')")  # fmt: skip
    return Path(directory) / rel


def check_weights(weights: str | os.PathLike, cfg: PerceiverARConfig) -> None:
    """Compare the tensors a safetensors file declares in its header with what ``cfg`` builds, before any
    memory is allocated (the model is built on the meta device); CheckpointError names the first difference."""
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the checkpoint") from None
    with torch.device("meta"):
        expected = {k: tuple(t.shape) for k, t in PerceiverAR(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, shape in shapes.items():
        if shape != expected[k]:
            raise CheckpointError(f"{weights}: tensor {k} has shape {shape} but config.json implies {expected[k]}")


def load_checkpoint(directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a checkpoint saved by ``save_checkpoint``; weights only through safetensors."""
    d = Path(directory)
    meta = read_checkpoint_config(d)
    try:
        cfg = PerceiverARConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / CONFIG}: invalid model config: {e}") from None
    weights = d / WEIGHTS
    check_weights(weights, cfg)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the checkpoint") from None
    model = PerceiverAR(cfg)
    expected = model.state_dict()
    model.load_state_dict({k: t.to(expected[k].dtype) for k, t in state.items()})
    model.to(device=device, dtype=dtype).eval()
    return Checkpoint(model=model, config=cfg, tokenizer=meta.get("tokenizer", {}), training=meta.get("training", {}), path=d)
