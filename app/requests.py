"""Checking a generation request before it is queued: every setting against its range, each error naming it.

The page and the API send the same eleven values (``params``; music a twelfth, ``key_lock``). ``check_request``
returns a ready ``Request`` or, for each bad setting, a message that names it, its range and the value
("temperature must be between 0 and 2, got 100"), so the page can mark the field and an API client reads the same
words. Ranges that depend on the
checkpoint (image sizes, length, latents, the prompt's room in the context) come from its ``Capabilities``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real

from app.catalogue import MEDIUM, Catalogue, CheckpointUnavailable
from perceiverar.sampling_options import MAX_SEED, SamplingOptions

MAX_SAMPLES = 4
SIZE_PARAM = {"image": "size", "audio": "seconds", "text": "max_new_bytes"}
SAMPLING_PARAMS = ("num_samples", "seed", "temperature", "top_k", "top_p", "cfg_scale", "n_latents", "candidates")
MAX_CANDIDATES = 8  # each candidate costs a whole generation's rows: beyond this the page would keep a visitor waiting
# name: (lowest, highest, whole numbers only, what the ends mean)
RANGES = {
    "num_samples": (1, MAX_SAMPLES, True, ""),
    "seed": (-1, MAX_SEED, True, " (-1 = random)"),
    "temperature": (0.0, 2.0, False, " (0 = greedy)"),
    "top_k": (0, 256, True, " (0 = off)"),
    "top_p": (0.05, 1.0, False, " (1 = off)"),
    "cfg_scale": (0.0, 10.0, False, " (1 = off)"),
    "candidates": (1, MAX_CANDIDATES, True, " (1 = off)"),
}


AUDIO_PARAMS = ("key_lock",)  # music only: chords from the key the prompt names


def params(modality: str) -> tuple[str, ...]:
    """The request's parameter names, in the API's order."""
    return ("prompt", "checkpoint", SIZE_PARAM[modality], *SAMPLING_PARAMS, *(AUDIO_PARAMS if modality == "audio" else ()))


@dataclass
class Request:
    """A checked request: what to make, with which checkpoint, and the sampling settings as they will be used."""

    modality: str
    checkpoint: str
    prompt: str
    size: dict  # height/width, seconds or max_new_bytes
    sampling: SamplingOptions  # resolved: the checkpoint's defaults filled in, the seed picked


def size_label(h: int, w: int) -> str:
    return f"{h}x{w}"


def parse_size(text) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d{1,4})\s*[x×X*]\s*(\d{1,4})\s*", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def number(name: str, value, lo, hi, whole: bool, note: str = ""):
    """``value`` in lo..hi, or ValueError with the message the visitor sees."""
    kind = "a whole number" if whole else "a number"
    bad = ValueError(f"{name} must be {kind} between {_fmt(lo)} and {_fmt(hi)}{note}, got {value!r}")
    if isinstance(value, str):  # the API may send text
        try:
            value = float(value.strip())
        except ValueError:
            raise bad from None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise bad
    if whole:
        if value != int(value):
            raise bad
        value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {_fmt(lo)} and {_fmt(hi)}{note}, got {_fmt(value)}")
    return value if whole else float(value)


def _checkpoint(catalogue: Catalogue, modality: str, name):
    if not isinstance(name, str) or name not in catalogue.entries:
        shown = ", ".join(map(repr, catalogue.names(modality))) or "none"
        raise ValueError(f"Unknown checkpoint {name!r}; for {MEDIUM[modality]} pick one of: {shown}.")
    if modality not in catalogue.entries[name].modalities:
        able = " or ".join(map(repr, catalogue.makers(modality))) or "none is installed"
        raise ValueError(f"Checkpoint {name!r} was not trained to generate {MEDIUM[modality]}; pick {able}.")
    try:
        return catalogue.capabilities(name)
    except CheckpointUnavailable as e:
        raise ValueError(str(e)) from None


def check_size(caps, modality: str, value) -> dict:
    name = SIZE_PARAM[modality]
    if modality == "image":
        allowed = ", ".join(size_label(*s) for s in caps.image_sizes)
        hw = parse_size(value) if value not in (None, "") else caps.default_image_size
        if hw is None or hw not in caps.image_sizes:
            raise ValueError(f"size must be one of {allowed} for checkpoint {caps.name!r}, got {value!r}")
        return {"height": hw[0], "width": hw[1]}
    if value in (None, ""):  # left out: the checkpoint's default
        value = caps.default_seconds if modality == "audio" else caps.default_text_bytes
    if modality == "audio":
        if caps.max_seconds < 0.5:
            raise ValueError(f"checkpoint {caps.name!r} has no room in its context for 0.5 s of music")
        return {"seconds": number(name, value, 0.5, caps.max_seconds, False, f" for checkpoint {caps.name!r}")}
    if caps.max_text_bytes < 1:
        raise ValueError(f"checkpoint {caps.name!r} has no room in its context for new text")
    return {"max_new_bytes": number(name, value, 1, caps.max_text_bytes, True, f" for checkpoint {caps.name!r}")}


def check_request(catalogue: Catalogue, modality: str, values: dict, count_prompt) -> tuple[Request | None, dict]:
    """(Request, {}) when every setting is good, else (None, {parameter: message}) for each bad one.

    ``values`` maps ``params(modality)`` to what the page or the API sent. ``count_prompt(name, modality, prompt,
    size)`` gives (prompt tokens, room for them): the prompt is checked last, against these settings.
    """
    errors: dict[str, str] = {}
    got: dict = {}
    for name, (lo, hi, whole, note) in RANGES.items():
        value = values.get(name)
        try:
            got[name] = number(name, -1 if name == "seed" and value in (None, "") else value, lo, hi, whole, note)
        except ValueError as e:
            errors[name] = str(e)
    if modality == "audio":
        value = values.get("key_lock")
        if value in (None, ""):  # left out: the checkpoint's default
            got["key_lock"] = None
        elif isinstance(value, bool):
            got["key_lock"] = value
        else:
            errors["key_lock"] = f"key_lock must be true or false, got {value!r}"
    caps = size = None
    try:
        caps = _checkpoint(catalogue, modality, values.get("checkpoint"))
    except ValueError as e:
        errors["checkpoint"] = str(e)
    if caps is not None:
        try:
            size = check_size(caps, modality, values.get(SIZE_PARAM[modality]))
        except ValueError as e:
            errors[SIZE_PARAM[modality]] = str(e)
        try:
            n = number("n_latents", values.get("n_latents") or 0, 0, caps.max_latents, True,
                       f" (0 = as trained: {caps.n_latents:,})")  # fmt: skip
            got["n_latents"] = n or caps.n_latents
        except ValueError as e:
            errors["n_latents"] = str(e)
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        what = {"image": "the image", "audio": "the music", "text": "the text to continue"}[modality]
        errors["prompt"] = f"The prompt is empty: type or upload a description of {what}."
    elif caps is not None and size is not None:
        try:
            n, room = count_prompt(caps.name, modality, prompt, size)
        except ValueError as e:  # the tokenizer's word on a prompt it cannot encode
            n, room, errors["prompt"] = 0, 0, f"Invalid prompt: {e}"
        if n > room:
            errors["prompt"] = (
                f"The prompt is {n:,} tokens but checkpoint {caps.name!r} has room for {max(room, 0):,} prompt tokens "
                f"with these settings (its context is {caps.context_len:,} tokens). Shorten the prompt, or ask for "
                "a smaller image or a shorter output."
            )
    if errors:
        return None, errors
    seed = got.pop("seed")
    options = SamplingOptions(seed=None if seed == -1 else seed, **got)
    pipe = catalogue.pipeline(caps.name)
    return Request(modality, caps.name, prompt, size, pipe.sampling(options, pick_seed=True)), {}
