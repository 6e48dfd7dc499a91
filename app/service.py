"""The app's service: check a request, run it, save the result. No tensor code, no Gradio.

``Service`` joins the checkpoint catalogue (``app.catalogue``), the request checks (``app.requests``), the worker
threads (``app.runner``) and the downloads (``app.outputs``). The three tabs and the three API endpoints share one
path, ``generate(modality, values)``: check every setting (``InvalidRequest`` names each bad one), run the pipeline
in a worker with streamed progress and Stop, then save the results with a record of how they were made.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any, Iterator

from app.catalogue import MEDIUM, Capabilities, Catalogue, CheckpointUnavailable
from app.outputs import Outputs
from app.requests import Request, check_request, check_size
from app.runner import Runner
from perceiverar.media_files import generation_record

log = logging.getLogger("perceiverar.app")

PROMPT_FILE_TYPES = (".txt", ".md")


class InvalidRequest(ValueError):
    """Settings out of range, an empty or too long prompt, a checkpoint that cannot serve: {parameter: message}."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__(" ".join(self.errors.values()))


class PromptFileError(ValueError):
    """An uploaded prompt file that is not usable text."""


class Service:
    """Loads checkpoints once, checks and runs requests, and speaks to users in plain words.

    folders: where to look for checkpoints (earlier folders first: the first checkpoint for a medium is its
    tab's default). demo: offer the random demo model (True, "auto": in tabs no checkpoint covers, False).
    pipelines: ready-made pipelines (or factories) by name, for tests and embedding. output_dir: where downloads
    go (default: a temporary folder removed on exit).
    """

    def __init__(self, folders=(), *, device: str = "auto", max_upload_kb: int = 512, demo: bool | str = "auto",
                 pipelines: dict[str, Any] | None = None, output_dir: str | Path | None = None):  # fmt: skip
        self.max_upload_bytes = int(max_upload_kb) * 1024
        self.catalogue = Catalogue(folders, device=device, demo=demo, pipelines=pipelines)
        self.runner = Runner()
        self.outputs = Outputs(output_dir)
        atexit.register(self.close)

    # ---- checkpoints ----

    def names(self, modality: str | None = None) -> list[str]:
        return self.catalogue.names(modality)

    def default_name(self, modality: str) -> str | None:
        return self.catalogue.default(modality)

    def capabilities(self, name: str) -> Capabilities:
        """Raises CheckpointUnavailable with a visitor's message."""
        return self.catalogue.capabilities(name)

    def notice(self, name: str | None, modality: str) -> str:
        return self.catalogue.notice(name, modality)

    # ---- prompts ----

    def read_prompt_file(self, path: str | None) -> str:
        """An uploaded .txt/.md file as text: size-limited, UTF-8 only, no binary."""
        if not path:
            raise PromptFileError("No file was uploaded.")
        p = Path(path)
        shown = p.name
        if p.suffix.lower() not in PROMPT_FILE_TYPES:
            raise PromptFileError(f"{shown!r} is not a text prompt: upload a .txt or .md file.")
        try:
            size = p.stat().st_size
            if size > self.max_upload_bytes:
                raise PromptFileError(f"{shown!r} is {size / 1024:,.0f} KB; prompt files are limited to "
                                      f"{self.max_upload_bytes // 1024:,} KB.")  # fmt: skip
            data = p.read_bytes()
        except OSError as e:
            raise PromptFileError(f"Could not read the uploaded file {shown!r} ({e.strerror or e}).") from None
        if b"\x00" in data:
            raise PromptFileError(f"{shown!r} looks like a binary file, not text. Upload a UTF-8 .txt or .md file.")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PromptFileError(f"{shown!r} is not UTF-8 text (undecodable byte at offset {e.start}). "
                                  "Save it as UTF-8 and retry.") from None  # fmt: skip
        if not text.strip():
            raise PromptFileError(f"{shown!r} is empty.")
        return text

    def count_prompt(self, name: str, modality: str, prompt: str, size: dict) -> tuple[int, int]:
        """(tokens of the prompt itself, the most prompt tokens these settings leave room for)."""
        pipe = self.catalogue.pipeline(name)
        # count_prompt_tokens counts the whole generation prefix (markers and header too); the budget is for
        # the prompt's own tokens, so count the prompt as the difference from an empty one.
        n = int(pipe.count_prompt_tokens(prompt or "", modality, **size))
        n -= int(pipe.count_prompt_tokens("", modality, **size))
        return n, int(pipe.context_budget(modality, **size))

    def token_count(self, modality: str, prompt: str, name: str, size) -> str:
        """Markdown line 'N / budget prompt tokens' for the live counter; never raises."""
        try:
            caps = self.capabilities(name)
            n, budget = self.count_prompt(name, modality, prompt, check_size(caps, modality, size))
            note = self.catalogue.pipeline(name).prompt_note(prompt or "")
        except (CheckpointUnavailable, ValueError, KeyError) as e:
            return f"⚠ {e}"
        if budget <= 0:
            return f"⚠ **{n:,}** prompt tokens, but these settings leave no room for a prompt in the context."
        if n > budget:
            return (f"⚠ **{n:,} / {budget:,}** prompt tokens: **{n - budget:,} over** the context budget. "
                    "Shorten the prompt or reduce the output size.")  # fmt: skip
        line = f"**{n:,} / {budget:,}** prompt tokens ({100 * n / budget:.1f}% of the context budget)"
        if note:
            others = self.catalogue.for_long_prompts(modality, n, besides=name)
            if others:  # e.g. the bundled emoji (trained with prompts up to its context) for emoji-lossless
                note += f"; {' or '.join(f'**{o}**' for o in others)} was trained with prompts this long"
        return line + (f" · ⚠ {note}" if note else "")

    # ---- generation ----

    def check(self, modality: str, values: dict) -> tuple[Request | None, dict[str, str]]:
        """(Request, {}) or (None, {parameter: message}); nothing runs."""
        return check_request(self.catalogue, modality, values, self.count_prompt)

    def generate(self, modality: str, values: dict, *, session: str | None = None) -> Iterator[tuple]:
        """Check, run and save one request. Yields ("progress", fraction, partial or None) now and then, then
        ("done", results, files, record). Raises InvalidRequest before anything runs, RunFailed after."""
        request, errors = self.check(modality, values)
        if errors:
            raise InvalidRequest(errors)
        yield from self.run(request, session=session)

    def run(self, req: Request, *, session: str | None = None) -> Iterator[tuple]:
        pipe = self.catalogue.pipeline(req.checkpoint)
        method = {"image": pipe.generate_image, "audio": pipe.generate_audio, "text": pipe.generate_text}[req.modality]
        extra = {"partial_audio": False} if req.modality == "audio" else {}  # no vocoder pass per progress update

        def call(on_progress, stop):
            return method(req.prompt, **req.size, sampling=req.sampling, on_progress=on_progress, stop_event=stop,
                          **extra)  # fmt: skip

        notes = {}
        if req.modality == "audio" and req.sampling.key_lock:  # which key the chords keep to (None: no key named)
            notes["locked_key"] = pipe.locked_key(req.prompt)
        record = generation_record(
            prompt=req.prompt, modality=req.modality, checkpoint=req.checkpoint, sampling=req.sampling, size=req.size,
            generator="perceiverar-app", untrained_demo=self.catalogue.entries[req.checkpoint].demo,
            **notes,
        )  # fmt: skip
        log.info("generating %s with %s (seed %s)", MEDIUM[req.modality], req.checkpoint, req.sampling.seed)
        for kind, value in self.runner.run(call, session):
            if kind == "progress":
                fraction, partial = value
                yield "progress", fraction, (None if req.modality == "audio" else partial)
            else:
                results, record["stopped"] = list(value[0] or []), value[1]
                yield "done", results, self.outputs.save(req.modality, results, record), record

    def stop(self, session: str | None, *, wait: float = 0.0) -> bool:
        return self.runner.stop(session, wait=wait)

    def close(self) -> None:
        """Remove the temporary output folder (called on exit)."""
        self.outputs.close()
