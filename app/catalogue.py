"""The checkpoint catalogue: what the app can serve, per medium, each checkpoint loaded once.

- Checkpoints are found in the given folders and listed by *name*; a request names a checkpoint and can never
  make the server open a path a visitor typed.
- What each one makes is read from its config (``perceiverar.checkpoint.read_checkpoint_config``) without loading
  weights, so each tab lists only the checkpoints that make its medium. The first that loads is the tab's default.
- A tab no trained checkpoint covers gets the small random demo model (``app.demo``), with a notice saying what
  to add; ``demo=False`` leaves it empty with that notice instead.
- Loading is lazy, thread-safe (one lock per name) and shared between users; ``Capabilities`` turns a loaded
  pipeline into the plain numbers the UI needs (sizes, lengths, latents).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perceiverar.checkpoint import CheckpointError, read_checkpoint_config
from perceiverar.pipeline import trained_prompt_tokens

log = logging.getLogger("perceiverar.app")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CHECKPOINTS = REPO_ROOT / "checkpoints"
MODALITIES = ("image", "audio", "text")
MEDIUM = {"image": "images", "audio": "music", "text": "text"}
DEMO_NAME = "demo (random, untrained)"
DEMO_NOTICE = (
    "**No trained checkpoint here makes {medium}**, so this tab runs a small *randomly initialised* model: it works "
    "end to end, but what it makes is noise. Train one (README, \"Train on your own media\") and start the app with "
    "`--checkpoint-dir DIR`."
)
EMPTY_NOTICE = (
    "**No checkpoint here makes {medium}.** Train one (README, \"Train on your own media\") and start the app with "
    "`--checkpoint-dir DIR`, or start it with `--demo` to try a random model."
)
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)  # CheckpointError is a RuntimeError


class CheckpointUnavailable(Exception):
    """A checkpoint that is unknown, missing or cannot be loaded; the message is for a visitor."""


def _is_oom(exc: BaseException) -> bool:
    import torch  # noqa: PLC0415 (only the exception type)

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint the app may load: a folder found at start-up, a ready-made pipeline, or the demo."""

    name: str
    path: Path | None
    modalities: tuple[str, ...]
    demo: bool = False


def declared_modalities(folder: Path) -> tuple[str, ...]:
    """The media a checkpoint folder says it makes (its tokenizer's modalities); CheckpointError if unreadable."""
    tok = read_checkpoint_config(folder).get("tokenizer") or {}
    mods = tok.get("modalities", []) if isinstance(tok, dict) else []
    return tuple(m for m in MODALITIES if m in mods)


def discover_checkpoints(folders) -> dict[str, Path]:
    """Checkpoint folders (with a config.json) in ``folders``: each may be a checkpoint or hold some one level down.

    Names are folder names; a clash gets the parent folder's name added. Only these can ever be loaded.
    """
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            log.warning("checkpoint folder %s does not exist; skipped", folder)
            continue
        is_ckpt = (folder / "config.json").is_file()
        for c in [folder] if is_ckpt else sorted(p for p in folder.iterdir() if p.is_dir()):
            if (c / "config.json").is_file() and not c.name.startswith(".") and c.resolve() not in found:
                found.append(c.resolve())
    names: dict[str, Path] = {}
    for path in found:
        name, i = path.name, 2
        if name in names or name == DEMO_NAME:
            name = f"{path.name} ({path.parent.name})"
        while name in names:
            name, i = f"{path.name} ({path.parent.name} {i})", i + 1
        names[name] = path
    return names


@dataclass
class Capabilities:
    """What the UI and the request checks need to know about one loaded checkpoint."""

    name: str
    modalities: tuple[str, ...]
    context_len: int
    n_latents: int  # the trained number of latents
    n_params: int
    device: str
    defaults: dict[str, Any]
    caption_template: str | None = None
    notice: str = ""
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    default_image_size: tuple[int, int] | None = None
    max_seconds: float = 0.0
    default_seconds: float = 0.0
    max_text_bytes: int = 0
    default_text_bytes: int = 0

    @property
    def max_latents(self) -> int:
        """More latents than twice the trained number only costs time; the context is the hard limit."""
        return min(self.context_len, 2 * self.n_latents)


def capabilities(name: str, pipe, *, demo: bool) -> Capabilities:
    """Read a pipeline's modalities, sizes, lengths and defaults into plain numbers."""
    model_cfg = pipe.model.cfg
    defaults = dict(pipe.defaults or {})
    modalities = tuple(m for m in MODALITIES if m in pipe.modalities)
    device = getattr(pipe, "device", None) or next(iter(pipe.model.parameters())).device
    caps = Capabilities(name=name, modalities=modalities, context_len=int(model_cfg.context_len),
                        n_latents=int(model_cfg.n_latents), n_params=int(pipe.model.num_params()), device=str(device),
                        defaults=defaults, caption_template=(pipe.config or {}).get("caption_template"))  # fmt: skip

    def fits(modality, **size) -> bool:
        try:
            return pipe.context_budget(modality, **size) >= 1
        except (ValueError, TypeError):
            return False

    if "image" in modalities:
        tok = pipe.image_tokenizer()
        trained = (tok.height, tok.width)
        sizes = sorted({trained, (8, 8), (16, 16), (32, 32)}) if demo else [trained]
        caps.image_sizes = [s for s in sizes if fits("image", height=s[0], width=s[1])]
        caps.default_image_size = trained if trained in caps.image_sizes else next(iter(caps.image_sizes), None)
    if "audio" in modalities:
        lo, hi = 0.0, 0.5  # the longest multiple of 0.5 s that fits: double, then bisect
        while hi <= 3600 and fits("audio", seconds=hi):
            lo, hi = hi, hi * 2
        while hi - lo > 0.5:
            mid = round(lo + hi) / 2  # (lo + hi) / 2 rounded to a multiple of 0.5
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if fits("audio", seconds=mid) else (lo, mid)
        caps.max_seconds = lo
        trained_s = float(((pipe.config or {}).get("audio") or {}).get("seconds") or 4.0)
        caps.default_seconds = min(round(trained_s * 2) / 2, lo)
    if "text" in modalities:
        try:
            caps.max_text_bytes = max(0, int(pipe.context_budget("text", max_new_bytes=1)))
        except (ValueError, TypeError):
            caps.max_text_bytes = 0
        caps.default_text_bytes = min(int(defaults.get("max_new_bytes") or 256), caps.max_text_bytes)
    return caps


class Catalogue:
    """The checkpoints the app serves, by name and by medium; each is loaded once and shared.

    folders: where to look. device: where models run. demo: True (offer the demo model in every tab), "auto" (in
    tabs no trained checkpoint covers) or False. pipelines: ready-made pipelines or zero-argument factories by
    name (tests and embedding); they are listed after the folders' checkpoints.
    """

    def __init__(self, folders=(), *, device: str = "auto", demo: bool | str = "auto",
                 pipelines: dict[str, Any] | None = None):  # fmt: skip
        self.device = device
        self.entries: dict[str, CheckpointEntry] = {}
        self.problems: dict[str, str] = {}  # checkpoints not listed, and why
        self._loaded: dict[str, Any] = {}
        self._caps: dict[str, Capabilities] = {}
        self._prompt_limits: dict[str, int | None] = {}  # trained_prompt_tokens, by name
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        for name, path in discover_checkpoints(folders).items():
            try:
                mods = declared_modalities(path)
            except CheckpointError as e:
                self.problems[name] = str(e)
                log.warning("checkpoint %s is not listed: %s", name, e)
                continue
            if not mods:
                log.info("checkpoint %s generates no media (e.g. the copy-task model); not listed", name)
                continue
            self.entries[name] = CheckpointEntry(name, path, mods)
        for name, p in (pipelines or {}).items():
            pipe = p() if callable(p) and not hasattr(p, "generate_image") else p
            self._loaded[name] = pipe
            self.entries[name] = CheckpointEntry(name, None, tuple(m for m in MODALITIES if m in pipe.modalities))
        uncovered = [m for m in MODALITIES if not self.names(m)]
        if demo is True or (demo == "auto" and uncovered):
            self.entries[DEMO_NAME] = CheckpointEntry(DEMO_NAME, None, MODALITIES, demo=True)
        self._demo_tabs = set(MODALITIES) if demo is True else set(uncovered) if demo == "auto" else set()
        self._defaults: dict[str, str | None] = {}

    # ---- listing ----

    def names(self, modality: str | None = None) -> list[str]:
        """Checkpoint names, all or those that make ``modality`` (the demo only where it is offered)."""
        if modality is None:
            return list(self.entries)
        return [n for n, e in self.entries.items()
                if modality in e.modalities and (not e.demo or modality in self._demo_tabs)]  # fmt: skip

    def trained_prompt_tokens(self, name: str) -> int | None:
        """A checkpoint's ``trained_prompt_tokens`` (``Pipeline.trained_prompt_tokens``), read once from its
        config.json without loading its weights (the live token counter asks on every keystroke); None when not
        recorded or unreadable."""
        if name not in self._prompt_limits:
            e = self.entries.get(name)
            if e is None or e.demo:
                return None
            if e.path is None:
                limit = self._loaded[name].trained_prompt_tokens
            else:
                try:
                    limit = trained_prompt_tokens(read_checkpoint_config(e.path).get("tokenizer") or {})
                except CheckpointError:
                    limit = None
            self._prompt_limits[name] = limit
        return self._prompt_limits[name]

    def for_long_prompts(self, modality: str, n: int, *, besides: str | None = None) -> list[str]:
        """The checkpoints of ``modality`` (other than ``besides``) trained with prompts of at least ``n`` tokens."""
        return [m for m in self.names(modality) if m != besides and (self.trained_prompt_tokens(m) or 0) >= n]

    def default(self, modality: str) -> str | None:
        """The tab's default: its first checkpoint that loads (the demo if none does and demo is not off)."""
        if modality not in self._defaults:
            chosen = None
            for name in self.names(modality):
                try:
                    self.capabilities(name)
                except CheckpointUnavailable as e:
                    log.warning("%s", e)
                    continue
                chosen = name
                break
            if chosen is None and DEMO_NAME in self.entries and modality not in self._demo_tabs:
                self._demo_tabs.add(modality)  # every trained checkpoint for this tab failed to load
                chosen = DEMO_NAME
            self._defaults[modality] = chosen
        return self._defaults[modality]

    def notice(self, name: str | None, modality: str) -> str:
        """A Markdown notice for a tab: the demo model, or no checkpoint at all; "" when a trained one serves."""
        if name is None:
            return EMPTY_NOTICE.format(medium=MEDIUM[modality])
        return DEMO_NOTICE.format(medium=MEDIUM[modality]) if self.entries[name].demo else ""

    # ---- loading ----

    def pipeline(self, name: str):
        """The loaded pipeline of checkpoint ``name`` (loaded on first use, then shared)."""
        if name not in self.entries:
            raise CheckpointUnavailable(f"Unknown checkpoint {name!r}: pick one of {', '.join(map(repr, self.entries))}.")
        if name in self._loaded:
            return self._loaded[name]
        with self._guard:
            lock = self._locks[name]
        with lock:  # one load per checkpoint even when several users ask at once
            if name in self._loaded:
                return self._loaded[name]
            entry, t0 = self.entries[name], time.perf_counter()
            try:
                if entry.demo:
                    from app.demo import demo_pipeline  # noqa: PLC0415

                    pipe = demo_pipeline(device=self.device)
                else:
                    from perceiverar.pipeline import Pipeline  # noqa: PLC0415

                    if not entry.path.is_dir():
                        raise FileNotFoundError(entry.path)
                    pipe = Pipeline.load(entry.path, device=self.device)
            except FileNotFoundError:
                raise CheckpointUnavailable(
                    f"Checkpoint {name!r} is missing: its folder was moved or deleted after the app started. "
                    "Pick another checkpoint or restart the app."
                ) from None
            except Exception as e:  # noqa: BLE001 - a bad checkpoint is a message; the app keeps serving
                if _is_oom(e):
                    raise CheckpointUnavailable(f"Not enough memory to load checkpoint {name!r}.") from None
                if not isinstance(e, LOAD_ERRORS):
                    log.exception("loading checkpoint %s failed", name)
                raise CheckpointUnavailable(f"Checkpoint {name!r} could not be loaded: {e}") from None
            log.info("loaded checkpoint %s in %.1f s", name, time.perf_counter() - t0)
            self._loaded[name] = pipe
            return pipe

    def capabilities(self, name: str) -> Capabilities:
        if name not in self._caps:
            self._caps[name] = capabilities(name, self.pipeline(name), demo=self.entries[name].demo)
        return self._caps[name]

    def makers(self, modality: str, *, but: str | None = None) -> list[str]:
        """Names that make ``modality`` (for hints in errors)."""
        return [n for n in self.names(modality) if n != but]
