"""Prompt text in, images / audio / text out: a checkpoint's model plus its tokenizers around ``generate``.

The checkpoint's tokenizer config (``config.json["tokenizer"]``, written by the trainer with
:func:`make_tokenizer_config`)::

    {"vocab": Vocabulary().to_dict(),
     "modalities": ["image", "audio", "text"],            # the subset the model was trained on
     "image": {"height": h, "width": w, "mode": "subpixel"}, # when image; "palette"/"sketch" add "palette": K x 3
     "audio": {"dir": "audio_tokenizer", "seconds": s},   # when audio; AudioTokenizer.save(ckpt / dir);
                                                          # "mode": "chords" when trained with chord labels
     "defaults": {"temperature": 1.0, "top_k": null, "top_p": 0.95, "cfg_scale": 1.0, ...},
     "caption_template": "{text}; {style} style"}          # optional: how the training captions were built

Empty prompts: for image and audio an empty prompt is unconditional generation (the empty
condition that prompt dropout trains); a text continuation needs a non-empty prompt.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from perceiverar.candidates import Candidates
from perceiverar.checkpoint import CheckpointError, checkpoint_file, load_checkpoint
from perceiverar.constraints import ModalityConstraint
from perceiverar.decode_step import default_dtype
from perceiverar.generation import generate
from perceiverar.model import PerceiverAR
from perceiverar.sampling_options import SamplingOptions
from tokenizers_mm.chords import key_chords
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.midi_transpose import find_key, key_name
from tokenizers_mm.text import TextTokenizer
from tokenizers_mm.vocab import (
    AUDIO_OFFSET, PIXEL_OFFSET, TEXT_END, Vocabulary, audio_tokens, build_sequence, check_audio_mode, chord_block,
)  # fmt: skip

MODALITIES = ("image", "audio", "text")
DEFAULTS = {"temperature": 1.0, "top_k": None, "top_p": 0.95, "cfg_scale": 1.0, "cfg_scale_codes": None, "n_latents": None,
            "candidates": 1, "key_lock": False}
_END_TOKENS = 2  # the section's end marker, then EOS

Progress = Callable[[float, list], None]


def make_tokenizer_config(
    modalities,
    *,
    height: int | None = None,
    width: int | None = None,
    audio_seconds: float | None = None,
    audio_dir: str = "audio_tokenizer",
    defaults: dict | None = None,
    image_mode: str = "subpixel",
    palette=None,
    audio_mode: str = "codes",
) -> dict:
    """The tokenizer section of a checkpoint's config.json (see the module docstring)."""
    mods = [m for m in MODALITIES if m in set(modalities)]
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not mods:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    cfg: dict = {"vocab": Vocabulary().to_dict(), "modalities": mods}
    if "image" in mods:
        if height is None or width is None:
            raise ValueError("an image checkpoint needs its image height and width")
        img = ImageTokenizer(int(height), int(width), mode=image_mode, palette=palette).to_dict()
        img.pop("resize")  # the app resizes nothing: generation only needs the size and the layout
        if image_mode == "subpixel":
            img.pop("mode")  # the default layout: configs read the same as before the palette mode
        cfg["image"] = img
    if "audio" in mods:
        cfg["audio"] = {"dir": audio_dir, "seconds": float(audio_seconds if audio_seconds is not None else 10.0)}
        if audio_mode != "codes":  # (the default layout: configs read the same as before the chords mode)
            cfg["audio"]["mode"] = check_audio_mode(audio_mode)
    cfg["defaults"] = {**DEFAULTS, **(defaults or {})}
    return cfg


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1', ...; a GPU that is not there is a ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {str(device)!r} ({e}); use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available here; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {str(device)!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    return dev


def trained_prompt_tokens(tokenizer_config: dict) -> int | None:
    """The ``trained_prompt_tokens`` a checkpoint's tokenizer config records (``Pipeline.trained_prompt_tokens``);
    None when it records none, or a malformed value (an advisory hint)."""
    v = tokenizer_config.get("trained_prompt_tokens")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


class Pipeline:
    def __init__(
        self,
        model: PerceiverAR,
        tokenizer_config: dict,
        checkpoint_dir: str | os.PathLike | None = None,
        *,
        audio_tokenizer=None,
    ):
        mods = list(tokenizer_config.get("modalities") or [])
        if not mods or any(m not in MODALITIES for m in mods):
            raise ValueError(f"tokenizer config lists modalities {mods}; expected a non-empty subset of {MODALITIES}")
        if "vocab" in tokenizer_config:
            Vocabulary.from_dict(tokenizer_config["vocab"])  # raises if the id layout differs from this code's
        self.model = model  # generate() switches to eval mode for the call and restores the mode after
        self.config = tokenizer_config
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.text_tokenizer = TextTokenizer()
        self._audio = audio_tokenizer

    @classmethod
    def load(
        cls, checkpoint_dir: str | os.PathLike, device: str | torch.device = "auto", dtype: torch.dtype | None = None
    ) -> "Pipeline":
        """``dtype``: of the weights, and so of the decode caches and attention; default bf16 on CUDA, fp32 on the
        CPU (``perceiverar.decode_step.default_dtype``)."""
        dev = resolve_device(device)
        ckpt = load_checkpoint(checkpoint_dir, device=dev, dtype=dtype or default_dtype(dev))
        bad = [name for name, t in ckpt.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:  # sampling would fail later with an obscure multinomial error
            raise CheckpointError(
                f"{Path(checkpoint_dir) / 'model.safetensors'} is broken: {len(bad)} weight tensor(s) hold NaN or "
                f"infinite values (first: {bad[0]}); re-export or re-download the checkpoint"
            )
        return cls(ckpt.model, ckpt.tokenizer, ckpt.path)

    # ------------------------------------------------------------------------------ what it offers

    @property
    def modalities(self) -> list[str]:
        return list(self.config["modalities"])

    @property
    def defaults(self) -> dict:
        return {**DEFAULTS, **self.config.get("defaults", {})}

    @property
    def context_len(self) -> int:
        return self.model.cfg.context_len

    @property
    def audio_tokenizer(self):
        if self._audio is None:
            from tokenizers_mm.audio import AudioTokenizer  # noqa: PLC0415 (torchaudio only when audio is used)

            if self.checkpoint_dir is None:
                raise ValueError("no audio tokenizer: pass audio_tokenizer= or load a checkpoint that has one")
            rel = (self.config.get("audio") or {}).get("dir", "audio_tokenizer")
            self._audio = AudioTokenizer.load(checkpoint_file(self.checkpoint_dir, rel, "tokenizer.audio.dir"))
        return self._audio

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"this checkpoint generates {', '.join(self.modalities)}; it was not trained on {modality!r}")

    def _image_size(self, height, width) -> tuple[int, int]:
        img = self.config.get("image", {})
        h, w = height if height is not None else img.get("height"), width if width is not None else img.get("width")
        if h is None or w is None:
            raise ValueError("this checkpoint has no default image size: pass height and width")
        return int(h), int(w)

    def image_tokenizer(self, height=None, width=None) -> ImageTokenizer:
        """The checkpoint's image tokenizer (its layout and palette) at the requested or default size."""
        h, w = self._image_size(height, width)
        return ImageTokenizer.from_dict({**self.config.get("image", {}), "height": h, "width": w})

    @property
    def audio_mode(self) -> str:
        """The audio section layout the checkpoint was trained on: "codes", or "chords" (a chord label per block)."""
        return check_audio_mode((self.config.get("audio") or {}).get("mode", "codes"))

    def _audio_tokens(self, seconds) -> int:
        s = seconds if seconds is not None else self.config.get("audio", {}).get("seconds", 10.0)
        if not float(s) > 0:
            raise ValueError(f"seconds must be positive, got {s}")
        return self.audio_tokenizer.n_tokens(float(s))

    @staticmethod
    def _prompt_bytes(prompt) -> bytes:
        if isinstance(prompt, str):
            return prompt.encode("utf-8")
        if isinstance(prompt, (bytes, bytearray)):
            return bytes(prompt)
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")

    def _layout(self, prompt, modality: str, *, height=None, width=None, seconds=None, max_new_bytes=None):
        """(prompt ids, new tokens to generate, build_sequence keyword arguments) for a request."""
        self._check_modality(modality)
        data = self._prompt_bytes(prompt)
        if modality == "image":
            tok = self.image_tokenizer(height, width)
            kw = dict(height=tok.height, width=tok.width, image_mode=tok.mode)
            n_new = tok.n_tokens + _END_TOKENS
        elif modality == "audio":
            n = self._audio_tokens(seconds)
            kw = dict(n_audio_tokens=n, audio_mode=self.audio_mode)
            n_new = audio_tokens(n, self.audio_mode) + _END_TOKENS
        else:
            n_bytes = 256 if max_new_bytes is None else int(max_new_bytes)
            if n_bytes < 1:
                raise ValueError(f"max_new_bytes must be >= 1, got {max_new_bytes}")
            kw = {}
            n_new = n_bytes + _END_TOKENS
        return build_sequence(data, modality, complete=False, **kw), n_new, kw

    @property
    def trained_prompt_tokens(self) -> int | None:
        """The longest prompt, in tokens, the checkpoint was trained with (``trained_prompt_tokens`` in its
        config.json: its longest caption, or its context when captions were buried in long text); None when not
        recorded (a text checkpoint, whose prompts are any text up to its context). A longer prompt still runs, but
        it is outside what the model learnt. (The bundled emoji model was trained with prompts up to its context:
        it reads a caption that opens a long prompt, through its pinned latents, but hardly one behind thousands of
        tokens of other text; ``benchmarks/long_prompt.py``, the README's long-context section.)"""
        return trained_prompt_tokens(self.config)

    def prompt_note(self, prompt: str) -> str | None:
        """A warning when ``prompt`` is longer than any the checkpoint was trained with, else None."""
        n, limit = len(self._prompt_bytes(prompt)), self.trained_prompt_tokens
        if limit is None or n <= limit:
            return None
        first = "; put the caption first" if self.model.cfg.pinned_latents else ""
        return (f"the prompt is {n:,} tokens, longer than any this checkpoint was trained with ({limit:,}): "
                f"it may follow it poorly; a short caption works best{first}")

    def count_prompt_tokens(self, prompt: str, modality: str, **size) -> int:
        """Tokens of the generation prefix (markers + prompt bytes + header) for this prompt."""
        ids, _, _ = self._layout(prompt, modality, **size)
        return len(ids)

    def context_budget(self, modality: str, **size) -> int:
        """The most prompt bytes that fit in the context next to the requested output (0 if none)."""
        ids, n_new, _ = self._layout("", modality, **size)
        return max(0, self.context_len - len(ids) - n_new)

    # ------------------------------------------------------------------------------ generation

    def sampling(self, options: SamplingOptions | None = None, *, pick_seed: bool = False, **overrides) -> SamplingOptions:
        """The options a generation would use: None fields take this checkpoint's defaults (see SamplingOptions)."""
        opts = SamplingOptions.of(options, **overrides)
        return opts.resolved(self.defaults, self.model.cfg.n_latents, pick_seed=pick_seed)

    def candidates(self, options: SamplingOptions) -> Candidates:
        """The rows a request draws: ``num_samples`` groups of ``candidates`` (resolved options)."""
        return Candidates(options.num_samples, options.candidates, next(self.model.parameters()).device)

    def _run(self, modality, prompt, n_new, kw, constraint, options: SamplingOptions, cands: Candidates, *, overflow,
             stop_event, on_token):  # fmt: skip
        """All ``cands.rows`` rows (rows, n_generated); ``cands.best`` picks each result's."""
        ids = prompt
        total = len(ids) + n_new
        if total > self.context_len and overflow == "error":
            n_bytes = len(ids) - len(build_sequence("", modality, complete=False, **kw))
            fit = n_bytes - (total - self.context_len)
            hint = f"at most {fit} prompt bytes fit" if fit >= 0 else f"the {n_new} output tokens alone do not fit; ask for less"
            raise ValueError(
                f"prompt too long: {n_bytes} prompt bytes ({len(ids)} tokens with markers) + {n_new} {modality} tokens "
                f"= {total} tokens, but the model's context holds {self.context_len}; {hint}, or pass "
                "overflow='truncate' (drops the oldest prompt bytes, then slides the window)"
            )
        opts = {**options.generate_kwargs(), "num_samples": cands.rows}
        uncond = build_sequence("", modality, complete=False, **kw)  # generate() runs it only when guidance is on
        return generate(
            self.model,
            ids,
            n_new,
            **opts,
            uncond_prompt_ids=uncond,
            on_token=on_token,
            constraint=constraint,
            overflow=overflow,
            stop_event=stop_event,
            log_probs=cands.scores,
        )

    def generate_image(
        self,
        prompt: str,
        *,
        height: int | None = None,
        width: int | None = None,
        sampling: SamplingOptions | None = None,
        on_progress: Progress | None = None,
        stop_event: threading.Event | None = None,
        overflow: str = "error",
        **options,
    ) -> list[Image.Image]:
        """``num_samples`` RGB images. on_progress(fraction, partial_images) is called every few pixel rows.

        ``sampling`` (a SamplingOptions) and/or its fields as keywords (``seed=1, top_p=0.9``); options left at
        None take the checkpoint's ``defaults`` (top_k=0 / top_p=1 disable them). The same holds for
        generate_audio and generate_text.
        A cancelled run (``stop_event``) returns the partial images (unfinished pixels white).
        """
        ids, n_new, kw = self._layout(prompt, "image", height=height, width=width)
        tok = self.image_tokenizer(kw["height"], kw["width"])
        h, w, n_px = tok.height, tok.width, tok.n_tokens
        every = max(1, h // 16) * w * tok.channels  # report every few rows: at most ~16 partial images
        n_sketch = tok.n_sketch  # sketch mode: report the finished sketch too (the first look at the image)
        n_ids = 256 if tok.palette is None else len(tok.palette)
        opts = self.sampling(SamplingOptions.of(sampling, **options))
        cands = self.candidates(opts)
        steps: list[torch.Tensor] = []

        def pixels(out: torch.Tensor) -> list[Image.Image]:
            rows = []
            for r in out.tolist():
                px = [t for t in r[:n_px] if PIXEL_OFFSET <= t < PIXEL_OFFSET + n_ids]
                rows.append(tok.decode(px))
            return rows

        def on_token(step: int, new: torch.Tensor) -> None:
            steps.append(new)
            done = step + 1
            if on_progress is not None and (done >= n_sketch and (done - n_sketch) % every == 0 or done == n_px):
                on_progress(min(1.0, done / n_px), pixels(cands.best(torch.stack(steps, 1))))

        constraint = ModalityConstraint("image", height=h, width=w, image_mode=tok.mode,
                                        content_range=(PIXEL_OFFSET, PIXEL_OFFSET + n_ids))
        out = self._run("image", ids, n_new, kw, constraint, opts, cands, overflow=overflow, stop_event=stop_event,
                        on_token=on_token)  # fmt: skip
        return pixels(cands.best(out))

    def generate_audio(
        self,
        prompt: str,
        *,
        seconds: float | None = None,
        sampling: SamplingOptions | None = None,
        on_progress: Progress | None = None,
        stop_event: threading.Event | None = None,
        overflow: str = "error",
        partial_audio: bool = True,
        **options,
    ) -> list[tuple[np.ndarray, int]]:
        """``num_samples`` (float32 mono waveform, sample_rate).

        on_progress(fraction, partial_audio) every 10%; the partial audio (a list of (waveform, rate))
        costs a vocoder pass each time, so ``partial_audio=False`` passes None instead (a progress bar).
        """
        ids, n_new, kw = self._layout(prompt, "audio", seconds=seconds)
        n, mode = kw["n_audio_tokens"], kw["audio_mode"]
        n_content = audio_tokens(n, mode)  # the codes, and in "chords" mode their chord labels
        at = self.audio_tokenizer
        hi = AUDIO_OFFSET + at.codebook_size
        opts = self.sampling(SamplingOptions.of(sampling, **options))
        constraint = self.audio_constraint(prompt, n, key_lock=opts.key_lock)
        every = max(1, n_content // 10)
        cands = self.candidates(opts)
        min_codes = getattr(at.config, "n_fft", 0) // getattr(at.config, "hop_length", 1) + 1
        steps: list[torch.Tensor] = []

        def audio(out: torch.Tensor) -> list[tuple[np.ndarray, int]]:
            rows = []
            for r in out.tolist():
                codes = [t for t in r[:n_content] if AUDIO_OFFSET <= t < hi]  # (chord labels dropped)
                # the vocoder's STFT needs more than n_fft / 2 samples: a clip shorter than that is empty so far
                rows.append(at.decode(codes) if len(codes) > min_codes else (np.zeros(0, np.float32), at.sample_rate))
            return rows

        def on_token(step: int, new: torch.Tensor) -> None:
            steps.append(new)
            done = step + 1
            if on_progress is not None and (done % every == 0 or done == n_content):
                on_progress(min(1.0, done / n_content), audio(cands.best(torch.stack(steps, 1))) if partial_audio else None)

        out = self._run("audio", ids, n_new, kw, constraint, opts, cands, overflow=overflow, stop_event=stop_event,
                        on_token=on_token)  # fmt: skip
        return audio(cands.best(out))

    def audio_constraint(self, prompt: str, n_audio_tokens: int, *, key_lock: bool = False) -> ModalityConstraint:
        """The constraint of an audio section of ``n_audio_tokens`` codes: this checkpoint's codebook, its layout,
        and with ``key_lock`` the chord labels of the key the prompt names (:meth:`key_lock`)."""
        hi = AUDIO_OFFSET + self.audio_tokenizer.codebook_size
        return ModalityConstraint("audio", n_audio_tokens=n_audio_tokens, content_range=(AUDIO_OFFSET, hi),
                                  audio_mode=self.audio_mode, **(self.key_lock(prompt) if key_lock else {}))  # fmt: skip

    def _lockable_key(self, prompt: str) -> tuple[int, str] | None:
        """(tonic, mode) of the first key ``prompt`` names, when this checkpoint's audio has chord labels to lock."""
        if "audio" not in self.modalities or not chord_block(self.audio_mode):
            return None
        return find_key(self._prompt_bytes(prompt).decode("utf-8", "replace"))

    def locked_key(self, prompt: str) -> str | None:
        """The key a key lock keeps ``prompt``'s chords to ("G minor"), or None when there is nothing to lock."""
        key = self._lockable_key(prompt)
        return None if key is None else key_name(*key)

    def key_lock(self, prompt: str) -> dict:
        """The chord labels a key lock allows for ``prompt`` (ModalityConstraint keyword arguments): the diatonic
        triads of the first key it names ("... in G major"), opening on the tonic triad; {} (no lock) when it names
        none or the checkpoint's audio has no chord labels."""
        key = self._lockable_key(prompt)
        if key is None:
            return {}
        tonic, mode = key
        return {"chord_labels": key_chords(tonic, mode), "first_chord": tonic + (12 if mode == "minor" else 0)}

    def generate_text(
        self,
        prompt: str,
        *,
        max_new_bytes: int = 256,
        sampling: SamplingOptions | None = None,
        on_progress: Progress | None = None,
        stop_event: threading.Event | None = None,
        overflow: str = "error",
        **options,
    ) -> list[str]:
        """``num_samples`` continuations of ``prompt`` (the new text only, up to ``max_new_bytes`` UTF-8 bytes).

        on_progress(fraction, partial_texts) every 16 bytes.
        """
        if not self._prompt_bytes(prompt):
            raise ValueError("empty prompt: text generation continues a prompt; give it at least one character")
        ids, n_new, kw = self._layout(prompt, "text", max_new_bytes=max_new_bytes)
        n_bytes = n_new - _END_TOKENS
        opts = self.sampling(SamplingOptions.of(sampling, **options))
        cands = self.candidates(opts)
        steps: list[torch.Tensor] = []

        def texts(out: torch.Tensor) -> list[str]:
            rows = []
            for r in out.tolist():
                r = r[: r.index(TEXT_END)] if TEXT_END in r else r
                rows.append(self.text_tokenizer.decode([t for t in r if 0 <= t < 256], strict=False))
            return rows

        def on_token(step: int, new: torch.Tensor) -> None:
            steps.append(new)
            if on_progress is not None and (step + 1) % 16 == 0:
                on_progress(min(1.0, (step + 1) / n_bytes), texts(cands.best(torch.stack(steps, 1))))

        out = self._run("text", ids, n_new, kw, ModalityConstraint("text", max_bytes=n_bytes), opts, cands,
                        overflow=overflow, stop_event=stop_event, on_token=on_token)  # fmt: skip
        result = texts(cands.best(out))
        if on_progress is not None:
            on_progress(1.0, result)
        return result
