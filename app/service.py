"""The app's service layer: find checkpoints, load each once, run the pipeline, explain failures.

Nothing here touches tensors: generation is ``perceiverar.pipeline.Pipeline``'s job. This module

- lists the checkpoints found in the given folders by *name*; requests name a checkpoint and can never make
  the server open a path a visitor typed;
- loads each checkpoint once (thread-safe, one lock per name) and shares the loaded pipeline between users;
- falls back to a small randomly initialised demo model (with a visible notice) when no checkpoint exists;
- checks prompts against the context budget before any compute, streams partial results from the pipeline's
  ``on_progress`` callback, stops a run when its ``stop_event`` is set, and writes downloads (PNG with the
  prompt and settings in a text chunk, WAV/TXT with a sidecar JSON);
- turns every failure into a ``gr.Error`` whose message a visitor understands, so the app keeps serving.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import torch
from PIL.PngImagePlugin import PngInfo

log = logging.getLogger("perceiverar.app")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CHECKPOINTS = REPO_ROOT / "checkpoints"
DEMO_NAME = "demo (random, untrained)"
DEMO_NOTICE = (
    "**No usable trained checkpoint was found**, so the app is running on a small *randomly initialised* model: "
    "it works end to end, but its images, music and text are noise. Put a checkpoint folder "
    "(`model.safetensors` + `config.json`) in `checkpoints/` or pass `--checkpoint-dir`, then restart."
)
PROMPT_FILE_TYPES = (".txt", ".md")
MAX_SAMPLES = 4
MAX_SEED = 2**31 - 1
STREAM_INTERVAL_S = 0.25  # at most ~4 UI updates a second: enough to watch, cheap to send
OUTPUT_TTL_S = 3600  # generated downloads older than this are deleted


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint the app may load: a folder found at start-up, or the built-in demo (path None)."""

    name: str
    path: Path | None
    demo: bool = False


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def discover_checkpoints(folders) -> dict[str, CheckpointEntry]:
    """Checkpoint folders in ``folders`` (each may be a checkpoint itself or hold checkpoints one level down).

    Names are folder names; a clash gets the parent folder's name added. Only these entries can ever be loaded.
    """
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            log.warning("checkpoint folder %s does not exist; skipped", folder)
            continue
        candidates = [folder] if _is_checkpoint(folder) else sorted(p for p in folder.iterdir() if p.is_dir())
        for c in candidates:
            if _is_checkpoint(c) and not c.name.startswith(".") and c.resolve() not in found:
                found.append(c.resolve())
    entries: dict[str, CheckpointEntry] = {}
    for path in found:
        name = path.name
        if name in entries or name == DEMO_NAME:
            name = f"{path.name} ({path.parent.name})"
        i = 2
        while name in entries:
            name, i = f"{path.name} ({path.parent.name} {i})", i + 1
        entries[name] = CheckpointEntry(name=name, path=path)
    return entries


@dataclass
class Capabilities:
    """What the UI needs to know about one checkpoint to set its controls."""

    name: str
    modalities: tuple[str, ...]
    context_len: int
    n_latents: int  # trained number of latents
    defaults: dict[str, Any]
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    default_image_size: tuple[int, int] | None = None
    max_seconds: float = 0.0
    default_seconds: float = 0.0
    max_text_bytes: int = 0
    default_text_bytes: int = 0
    notice: str = ""

    def modality_defaults(self, modality: str) -> dict[str, Any]:
        d = {k: v for k, v in self.defaults.items() if not isinstance(v, dict)}
        per = self.defaults.get(modality)
        if isinstance(per, dict):
            d.update(per)
        return d


def size_label(h: int, w: int) -> str:
    return f"{h}x{w}"


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,4})\s*[x×X*]\s*(\d{1,4})\s*", str(text or ""))
    if not m:
        raise gr.Error(f"Image size {text!r} is not of the form HEIGHTxWIDTH, e.g. 32x32.")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------------------------------------- service


class Service:
    """Loads checkpoints once, runs generation, and speaks to users in plain words.

    folders: where to look for checkpoints. demo: offer the random demo model ("auto": only when no checkpoint
    was found). pipelines: ready-made pipelines (or zero-argument factories) by name, for tests and embedding.
    """

    def __init__(
        self,
        folders=(),
        *,
        device: str = "auto",
        max_upload_kb: int = 512,
        demo: bool | str = "auto",
        pipelines: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
        default: str | None = None,
    ):
        self.device = device
        self.max_upload_bytes = int(max_upload_kb) * 1024
        self.entries = discover_checkpoints(folders)
        for name in [n for n in self.entries if self.declared_modalities(n) == set()]:
            log.info("checkpoint %s generates no media (e.g. the copy-task model); not listed", name)
            del self.entries[name]
        self._factories: dict[str, Callable[[], Any]] = {}
        for name, p in (pipelines or {}).items():
            self.entries[name] = CheckpointEntry(name=name, path=None)
            self._factories[name] = p if callable(p) and not hasattr(p, "generate_image") else (lambda p=p: p)
        if demo is True or (demo == "auto" and (not self.entries or self.uncovered_modalities())):
            # No checkpoint at all, or none for some tab (an image-only checkpoint leaves Music and Text
            # without one): offer the random demo model for those.
            self.entries[DEMO_NAME] = CheckpointEntry(name=DEMO_NAME, path=None, demo=True)
        self._default = default
        self._loaded: dict[str, Any] = {}
        self._caps: dict[str, Capabilities] = {}
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._active: dict[str, set[threading.Event]] = defaultdict(set)
        self._active_guard = threading.Lock()
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="perceiverar-app-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    # ---- checkpoints ----

    def declared_modalities(self, name: str) -> set[str] | None:
        """The modalities a checkpoint's config.json declares (read without loading weights); None if unknown."""
        entry = self.entries[name]
        if entry.path is None:
            return None
        try:
            meta = json.loads((entry.path / "config.json").read_text())
            return set(meta.get("tokenizer", {}).get("modalities", []))
        except (OSError, ValueError, AttributeError):
            return None

    def uncovered_modalities(self) -> set[str]:
        """Tabs no found checkpoint declares it can fill (ready-made pipelines count as covering all)."""
        covered: set[str] = set()
        for name, entry in self.entries.items():
            if entry.demo:
                continue
            if entry.path is None:
                return set()
            mods = self.declared_modalities(name)
            covered |= mods or set()
        return {"image", "audio", "text"} - covered

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def default_name(self) -> str | None:
        """The checkpoint selected when the page opens: the requested default, else the first that loads."""
        if self._default in self.entries:
            return self._default
        # The page opens on the Image tab: prefer a checkpoint that makes images, then music, then text.
        order = {"image": 0, "audio": 1, "text": 2}
        ranked = sorted(self.names, key=lambda n: min((order[m] for m in self.declared_modalities(n) or () if m in order), default=3))
        for name in ranked:
            try:
                self.capabilities(name)
            except gr.Error as e:
                log.warning("%s", e.message)
                continue
            self._default = name
            return name
        if DEMO_NAME not in self.entries:  # nothing loads: serve the demo model rather than nothing
            log.warning("no checkpoint could be loaded; serving the random demo model")
            self.entries[DEMO_NAME] = CheckpointEntry(name=DEMO_NAME, path=None, demo=True)
            return self.default_name
        return None

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[name]

    def pipeline(self, name: str):
        """The loaded pipeline of checkpoint ``name`` (loaded on first use, then shared)."""
        if name not in self.entries:
            shown = ", ".join(repr(n) for n in self.names) or "none"
            raise gr.Error(f"Unknown checkpoint {name!r}. Pick one of the listed checkpoints: {shown}.")
        if name in self._loaded:
            return self._loaded[name]
        with self._lock_for(name):  # one load per checkpoint even when several users ask at once
            if name in self._loaded:
                return self._loaded[name]
            entry = self.entries[name]
            t0 = time.perf_counter()
            try:
                if entry.demo:
                    from perceiverar.demo import demo_pipeline

                    pipe = demo_pipeline(device=self.device)
                elif name in self._factories:
                    pipe = self._factories[name]()
                else:
                    from perceiverar.pipeline import Pipeline

                    if not entry.path.is_dir():
                        raise FileNotFoundError(entry.path)
                    pipe = Pipeline.load(entry.path, device=self.device)
            except gr.Error:
                raise
            except FileNotFoundError:
                raise gr.Error(
                    f"Checkpoint {name!r} is missing: its folder was moved or deleted after the app started. "
                    "Pick another checkpoint or restart the app."
                ) from None
            except Exception as e:  # noqa: BLE001 - any load failure becomes a message, the app keeps serving
                log.exception("loading checkpoint %s failed", name)
                if _is_oom(e):
                    raise gr.Error(f"Not enough memory to load checkpoint {name!r}.") from None
                raise gr.Error(f"Checkpoint {name!r} could not be loaded: {e}") from None
            log.info("loaded checkpoint %s in %.1f s", name, time.perf_counter() - t0)
            self._loaded[name] = pipe
            return pipe

    def capabilities(self, name: str) -> Capabilities:
        if name in self._caps:
            return self._caps[name]
        pipe = self.pipeline(name)
        caps = _capabilities(name, pipe, demo=self.entries[name].demo)
        self._caps[name] = caps
        return caps

    def envelope(self) -> tuple[int, float]:
        """(largest context, longest audio in seconds) over all checkpoints, read from their config files.

        The UI's sliders use these as their static limits, so an API client may ask any checkpoint for what it
        supports; each request is then checked against its own checkpoint's limits.
        """
        contexts, seconds = [], []
        for caps in list(self._caps.values()):
            contexts.append(caps.context_len)
            seconds.append(caps.max_seconds)
        for entry in self.entries.values():
            if entry.path is None:
                continue
            try:
                meta = json.loads((entry.path / "config.json").read_text())
                ctx = int(meta["model"]["context_len"])
                contexts.append(ctx)
                tok = meta.get("tokenizer", {})
                if "audio" in tok.get("modalities", []):
                    a = json.loads((entry.path / tok["audio"].get("dir", "audio_tokenizer") / "audio_tokenizer.json")
                                   .read_text())  # fmt: skip
                    seconds.append(ctx * a["hop_length"] * a.get("patch_frames", 1) / a["sample_rate"])
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue  # an unreadable checkpoint says so when it is picked
        return max(contexts, default=1), max(seconds, default=0.5)

    # ---- prompts ----

    def read_prompt_file(self, path: str | None) -> str:
        """An uploaded .txt/.md file as text: size-limited, UTF-8 only, no binary."""
        if not path:
            raise gr.Error("No file was uploaded.")
        p = Path(path)
        shown = p.name
        if p.suffix.lower() not in PROMPT_FILE_TYPES:
            raise gr.Error(f"{shown!r} is not a text prompt: upload a .txt or .md file.")
        try:
            size = p.stat().st_size
            if size > self.max_upload_bytes:
                raise gr.Error(
                    f"{shown!r} is {size / 1024:,.0f} KB; prompt files are limited to "
                    f"{self.max_upload_bytes // 1024:,} KB."
                )
            data = p.read_bytes()
        except OSError as e:
            raise gr.Error(f"Could not read the uploaded file {shown!r} ({e.strerror or e}).") from None
        if b"\x00" in data:
            raise gr.Error(f"{shown!r} looks like a binary file, not text. Upload a UTF-8 .txt or .md file.")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise gr.Error(
                f"{shown!r} is not UTF-8 text (undecodable byte at offset {e.start}). Save it as UTF-8 and retry."
            ) from None
        if not text.strip():
            raise gr.Error(f"{shown!r} is empty.")
        return text

    @staticmethod
    def _budget_kw(modality: str, *, size=None, seconds=None, max_new_bytes=None) -> dict:
        if modality == "image" and size:
            h, w = parse_size(size)
            return {"height": h, "width": w}
        if modality == "audio" and seconds:
            return {"seconds": float(seconds)}
        if modality == "text" and max_new_bytes:
            return {"max_new_bytes": int(max_new_bytes)}
        return {}

    def prompt_tokens(self, name: str, modality: str, prompt: str, **settings) -> tuple[int, int]:
        """(tokens of the prompt itself, the most prompt tokens these settings leave room for)."""
        pipe = self.pipeline(name)
        kw = self._budget_kw(modality, **settings)
        # count_prompt_tokens counts the whole generation prefix (markers and header too); the budget is for
        # the prompt's own tokens, so count the prompt as the difference from an empty one.
        n = int(pipe.count_prompt_tokens(prompt or "", modality, **kw))
        n -= int(pipe.count_prompt_tokens("", modality, **kw))
        return n, int(pipe.context_budget(modality, **kw))

    def token_count(self, modality: str, prompt: str, name: str, **settings) -> str:
        """Markdown line 'N / budget prompt tokens' for the live counter; never raises."""
        try:
            n, budget = self.prompt_tokens(name, modality, prompt, **settings)
        except gr.Error as e:
            return f"⚠ {e.message}"
        except Exception as e:  # noqa: BLE001
            return f"⚠ cannot count tokens: {e}"
        if budget <= 0:
            return f"⚠ **{n:,}** prompt tokens, but these settings leave no room for a prompt in the context."
        if n > budget:
            return (
                f"⚠ **{n:,} / {budget:,}** prompt tokens: **{n - budget:,} over** the context budget. "
                "Shorten the prompt or reduce the output size."
            )
        return f"**{n:,} / {budget:,}** prompt tokens ({100 * n / budget:.1f}% of the context budget)"

    def _check_prompt(self, name: str, prompt: str, modality: str, **settings) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            what = {"image": "the image", "audio": "the music", "text": "the text to continue"}[modality]
            raise gr.Error(f"The prompt is empty: type or upload a description of {what}.")
        try:
            n, budget = self.prompt_tokens(name, modality, prompt, **settings)
        except ValueError as e:
            raise gr.Error(f"Invalid request: {e}") from None
        if n > budget:
            raise gr.Error(
                f"The prompt is {n:,} tokens but checkpoint {name!r} has room for {max(budget, 0):,} prompt tokens "
                f"with these settings (its context is {self.capabilities(name).context_len:,} tokens). "
                "Shorten the prompt, or choose a smaller image / shorter output."
            )
        return prompt

    # ---- stopping ----

    def stop(self, session: str | None, *, wait: float = 0.0) -> bool:
        """Stop every generation running for this browser session; wait up to ``wait`` s for them to finish.

        Returns True when none is left running (each stopped run still delivers its partial result).
        """
        key = session or ""
        with self._active_guard:
            for ev in self._active.get(key, ()):
                ev.set()
        deadline = time.monotonic() + wait
        while True:
            with self._active_guard:
                if not self._active.get(key):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _register(self, session: str | None) -> threading.Event:
        ev = threading.Event()
        with self._active_guard:
            self._active[session or ""].add(ev)
        return ev

    def _unregister(self, session: str | None, ev: threading.Event) -> None:
        with self._active_guard:
            s = self._active.get(session or "")
            if s is not None:
                s.discard(ev)
                if not s:
                    self._active.pop(session or "", None)

    # ---- running ----

    def _run(self, call: Callable[..., Any], session: str | None) -> Iterator[tuple[str, Any]]:
        """Run ``call(on_progress, stop_event)`` in a worker thread.

        Yields ("progress", (fraction, partial)) at most every STREAM_INTERVAL_S, then ("done", (result, stopped)).
        Failures are re-raised here as gr.Error. Closing the iterator (Stop, a disconnect) sets the stop event.
        """
        stop = self._register(session)
        updates: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def on_progress(fraction, partial=None):
            updates.put((float(fraction), partial))

        def work():
            try:
                outcome["result"] = call(on_progress, stop)
            except BaseException as e:  # noqa: BLE001 - handed to the request thread
                outcome["error"] = e
            finally:
                updates.put(None)

        worker = threading.Thread(target=work, name="perceiverar-generate", daemon=True)
        worker.start()
        try:
            last_sent, latest, finished = 0.0, None, False
            while not finished:
                try:
                    item = updates.get(timeout=STREAM_INTERVAL_S)
                except queue.Empty:
                    item = False
                while item not in (False, None):  # keep only the newest update
                    latest = item
                    try:
                        item = updates.get_nowait()
                    except queue.Empty:
                        item = False
                finished = item is None
                now = time.monotonic()
                if latest is not None and not finished and now - last_sent >= STREAM_INTERVAL_S:
                    yield "progress", latest
                    latest, last_sent = None, now
            worker.join()
            if "error" in outcome:
                raise _friendly_error(outcome["error"], stopped=stop.is_set())
            yield "done", (outcome.get("result"), stop.is_set())
        finally:
            stop.set()  # no-op when finished; stops the worker when the client went away or pressed Stop
            self._unregister(session, stop)

    def _settings(self, name, modality, prompt, **settings) -> dict:
        return {
            "prompt": prompt,
            "modality": modality,
            "checkpoint": name,
            "untrained_demo": self.entries[name].demo,
            **settings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "generator": "perceiverar-app",
        }

    def _out_dir(self) -> Path:
        now = time.time()
        for old in self.output_dir.iterdir():
            try:
                if now - old.stat().st_mtime > OUTPUT_TTL_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        d = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def _common(self, name: str, seed, temperature, top_k, top_p, cfg_scale, n_latents, num_samples) -> dict:
        caps = self.capabilities(name)
        try:
            seed = int(seed) if seed is not None and str(seed).strip() not in ("", "random") else -1
        except (TypeError, ValueError):
            raise gr.Error(f"Seed {seed!r} is not a whole number; use -1 for a random seed.") from None
        if seed < 0:
            seed = secrets.randbelow(MAX_SEED)
        num_samples = int(num_samples or 1)
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise gr.Error(f"Number of samples must be between 1 and {MAX_SAMPLES}, got {num_samples}.")
        n_latents = int(n_latents or caps.n_latents)
        if not 1 <= n_latents <= caps.context_len:
            raise gr.Error(f"Number of latents must be between 1 and {caps.context_len:,}, got {n_latents:,}.")
        temperature = float(temperature)
        if temperature < 0:
            raise gr.Error("Temperature must be 0 (greedy) or more.")
        top_p = float(top_p)
        if not 0 < top_p <= 1:
            raise gr.Error("Top-p must be in (0, 1]; 1 turns it off.")
        top_k = int(top_k or 0)
        if top_k < 0:
            raise gr.Error("Top-k must be 0 (off) or more.")
        return dict(seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=float(cfg_scale),
                    n_latents=n_latents, num_samples=num_samples)  # fmt: skip

    def _require(self, name: str, modality: str):
        pipe = self.pipeline(name)
        caps = self.capabilities(name)
        if modality not in caps.modalities:
            what = {"image": "images", "audio": "music", "text": "text"}[modality]
            able = [n for n in self.names if n != name and (n == DEMO_NAME or modality in (self.declared_modalities(n) or ()))]
            hint = f": {' or '.join(repr(n) for n in able)}" if able else ""
            raise gr.Error(f"Checkpoint {name!r} was not trained to generate {what}; pick another checkpoint{hint}.")
        return pipe, caps

    # ---- the three generators (each yields (fraction, partial, None) then (1.0, result, files)) ----

    def generate_image(self, prompt, name, size, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                       n_latents, *, session=None):  # fmt: skip
        """Yields ('progress', fraction, partial images) ... then ('done', images, png paths, settings)."""
        pipe, caps = self._require(name, "image")
        h, w = parse_size(size or size_label(*caps.default_image_size))
        if caps.image_sizes and (h, w) not in caps.image_sizes:
            allowed = ", ".join(size_label(*s) for s in caps.image_sizes)
            raise gr.Error(f"Checkpoint {name!r} cannot make a {h}x{w} image; choose one of {allowed}.")
        common = self._common(name, seed, temperature, top_k, top_p, cfg_scale, n_latents, num_samples)
        prompt = self._check_prompt(name, prompt, "image", size=size_label(h, w))
        settings = self._settings(name, "image", prompt, height=h, width=w, **common)

        def call(on_progress, stop):
            return pipe.generate_image(prompt, height=h, width=w, **common, on_progress=on_progress, stop_event=stop)

        for kind, value in self._run(call, session):
            if kind == "progress":
                yield "progress", value[0], value[1]
            else:
                images, settings["stopped"] = list(value[0] or []), value[1]
                yield "done", images, self._save_images(images, settings), settings

    def generate_music(self, prompt, name, seconds, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                       n_latents, *, session=None):  # fmt: skip
        pipe, caps = self._require(name, "audio")
        seconds = float(seconds or caps.default_seconds)
        if not 0 < seconds <= caps.max_seconds + 1e-9:
            raise gr.Error(f"Audio length must be between 0 and {caps.max_seconds:g} s for {name!r}, got {seconds:g}.")
        common = self._common(name, seed, temperature, top_k, top_p, cfg_scale, n_latents, num_samples)
        prompt = self._check_prompt(name, prompt, "audio", seconds=seconds)
        settings = self._settings(name, "audio", prompt, seconds=seconds, **common)

        def call(on_progress, stop):
            return pipe.generate_audio(prompt, seconds=seconds, **common, on_progress=on_progress,
                                       stop_event=stop, partial_audio=False)  # progress only: no vocoder per update

        for kind, value in self._run(call, session):
            if kind == "progress":
                yield "progress", value[0], None
            else:
                clips, settings["stopped"] = list(value[0] or []), value[1]
                wavs, files = self._save_audio(clips, settings)
                yield "done", wavs, files, settings

    def generate_text(self, prompt, name, max_new_bytes, num_samples, seed, temperature, top_k, top_p, cfg_scale,
                      n_latents, *, session=None):  # fmt: skip
        pipe, caps = self._require(name, "text")
        max_new_bytes = int(max_new_bytes or caps.default_text_bytes)
        if not 1 <= max_new_bytes <= caps.max_text_bytes:
            raise gr.Error(f"Length must be between 1 and {caps.max_text_bytes:,} bytes, got {max_new_bytes:,}.")
        common = self._common(name, seed, temperature, top_k, top_p, cfg_scale, n_latents, num_samples)
        prompt = self._check_prompt(name, prompt, "text", max_new_bytes=max_new_bytes)
        settings = self._settings(name, "text", prompt, max_new_bytes=max_new_bytes, **common)

        def call(on_progress, stop):
            return pipe.generate_text(prompt, max_new_bytes=max_new_bytes, **common, on_progress=on_progress,
                                      stop_event=stop)  # fmt: skip

        for kind, value in self._run(call, session):
            if kind == "progress":
                yield "progress", value[0], value[1]
            else:
                texts, settings["stopped"] = [str(t) for t in (value[0] or [])], value[1]
                yield "done", texts, self._save_texts(texts, settings), settings

    # ---- downloads ----

    @staticmethod
    def _stem(settings: dict, i: int, n: int) -> str:
        kind = {"image": "image", "audio": "music", "text": "text"}[settings["modality"]]
        return f"perceiverar-{kind}-seed{settings['seed']}" + (f"-{i + 1}" if n > 1 else "")

    def _save_images(self, images, settings: dict) -> list[str]:
        d, out = self._out_dir(), []
        for i, img in enumerate(images):
            meta = {**settings, "sample": i + 1}
            info = PngInfo()
            info.add_itxt("prompt", settings["prompt"], zip=True)  # iTXt: any Unicode, compressed
            info.add_itxt("parameters", json.dumps(meta, ensure_ascii=False), zip=True)
            path = d / f"{self._stem(settings, i, len(images))}.png"
            img.save(path, format="PNG", pnginfo=info)
            out.append(str(path))
        return out

    def _save_audio(self, clips, settings: dict) -> tuple[list[str], list[str]]:
        import soundfile as sf

        d, wavs, files = self._out_dir(), [], []
        for i, (wave, sr) in enumerate(clips):
            stem = self._stem(settings, i, len(clips))
            path = d / f"{stem}.wav"
            sf.write(path, wave, int(sr), subtype="PCM_16")
            (d / f"{stem}.json").write_text(json.dumps({**settings, "sample": i + 1, "sample_rate": int(sr)},
                                                       ensure_ascii=False, indent=2))  # fmt: skip
            wavs.append(str(path))
            files += [str(path), str(d / f"{stem}.json")]
        return wavs, files

    def _save_texts(self, texts, settings: dict) -> list[str]:
        d, files = self._out_dir(), []
        for i, text in enumerate(texts):
            stem = self._stem(settings, i, len(texts))
            (d / f"{stem}.txt").write_text(text, encoding="utf-8")
            (d / f"{stem}.json").write_text(json.dumps({**settings, "sample": i + 1}, ensure_ascii=False, indent=2))
            files += [str(d / f"{stem}.txt"), str(d / f"{stem}.json")]
        return files


# ------------------------------------------------------------------------------------------------ helpers


def _friendly_error(exc: BaseException, *, stopped: bool = False) -> gr.Error:
    """A library exception as a gr.Error a visitor can act on (full traceback goes to the server log)."""
    if isinstance(exc, gr.Error):
        return exc
    if _is_oom(exc):
        log.warning("out of memory during generation: %s", exc)
        return gr.Error(
            "Out of memory: this request needs more memory than the server has free. Try fewer samples, a "
            "smaller image or shorter audio, fewer latents, or a shorter prompt."
        )
    if stopped:
        return gr.Error("Generation was stopped.")
    if isinstance(exc, ValueError):  # the library's input errors (TokenizerError is a ValueError)
        return gr.Error(f"Invalid request: {exc}")
    log.error("generation failed", exc_info=exc)
    return gr.Error(f"Generation failed ({type(exc).__name__}: {exc}). The app is still running; try again.")


def device_of(pipe) -> str:
    """Where a pipeline's model runs, for display."""
    if getattr(pipe, "device", None) is not None:
        return str(pipe.device)
    try:
        return str(next(iter(pipe.model.parameters())).device)
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def _capabilities(name: str, pipe, *, demo: bool) -> Capabilities:
    """Read a pipeline's modalities, sizes and defaults into plain numbers for the UI."""
    model_cfg = pipe.model.cfg
    tok = dict(getattr(pipe, "config", None) or getattr(pipe, "tokenizer_config", None) or {})
    defaults = dict(getattr(pipe, "defaults", {}) or {})
    modalities = tuple(getattr(pipe, "modalities", ()) or tok.get("modalities", ()))
    caps = Capabilities(
        name=name, modalities=modalities, context_len=int(model_cfg.context_len), n_latents=int(model_cfg.n_latents),
        defaults=defaults, notice=DEMO_NOTICE if demo else "",
    )  # fmt: skip

    def fits(budget_kw) -> bool:
        try:
            return pipe.context_budget(**budget_kw) >= 1
        except (ValueError, TypeError):
            return False

    if "image" in modalities:
        img = tok.get("image", {}) or {}
        trained = (int(img.get("height", 32)), int(img.get("width", 32)))
        sizes = [tuple(int(v) for v in s) for s in (img.get("sizes") or defaults.get("image_sizes") or [trained])]
        if demo:
            sizes = sorted({trained, (8, 8), (16, 16), (32, 32)})
        sizes = [s for s in sizes if fits(dict(modality="image", height=s[0], width=s[1]))]
        caps.image_sizes = sizes
        caps.default_image_size = trained if trained in sizes else (sizes[0] if sizes else trained)
    if "audio" in modalities:
        aud = tok.get("audio", {}) or {}
        default_s = float(caps.modality_defaults("audio").get("seconds") or aud.get("seconds") or 4.0)
        lo, hi = 0.0, 0.5  # largest multiple of 0.5 s that fits: double, then bisect
        while hi <= 3600 and fits(dict(modality="audio", seconds=hi)):
            lo, hi = hi, hi * 2
        while hi - lo > 0.5:
            mid = round(lo + hi) / 2  # (lo + hi) / 2 rounded to a multiple of 0.5
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if fits(dict(modality="audio", seconds=mid)) else (lo, mid)
        caps.max_seconds = lo
        caps.default_seconds = min(default_s, lo)
    if "text" in modalities:
        try:
            caps.max_text_bytes = max(1, int(pipe.context_budget("text", max_new_bytes=1)))
        except (ValueError, TypeError):
            caps.max_text_bytes = max(1, caps.context_len - 16)
        default_n = int(caps.modality_defaults("text").get("max_new_bytes") or 256)
        caps.default_text_bytes = min(default_n, caps.max_text_bytes)
    return caps
