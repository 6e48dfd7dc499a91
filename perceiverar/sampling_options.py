"""``SamplingOptions``: how each token is picked, one dataclass shared by the pipeline, the app and the CLI.

Every field left at None takes the checkpoint's default (``config.json["tokenizer"]["defaults"]``);
:meth:`SamplingOptions.resolved` fills them in, so what a result records is what was used. Bad values are
rejected when the options are made, with a message that names the setting, the range and the value.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; above that a seed would silently wrap
MAX_CANDIDATES = 64  # each candidate is a row of the batch: beyond this a request is a mistake, not a plan
RANDOM_SEEDS = 2**31  # a seed picked for the user: short enough to read back and type


def _integer(name: str, value, lo: int, hi: int | None = None, note: str = "") -> int:
    """``value`` as an int in lo..hi, or a ValueError naming the setting (floats with a fraction are refused)."""
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)):
        raise ValueError(f"{name} must be a whole number{note}, got {value!r}")
    if isinstance(value, Real) and not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{name} must be a whole number{note}, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo:,} and {hi:,}" if hi is not None else f"at least {lo:,}"
        raise ValueError(f"{name} must be {bound}{note}, got {v:,}")
    return v


def _number(name: str, value, lo: float, hi: float | None = None, *, lo_open: bool = False, note: str = "") -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi] when lo_open), or a ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number{note}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        if hi is None:
            bound = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            bound = f"{'above' if lo_open else 'between'} {lo:g} {'and at most' if lo_open else 'and'} {hi:g}"
        raise ValueError(f"{name} must be {bound}{note}, got {v:g}")
    return v


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How to sample. None: the checkpoint's default. Checked on construction (ValueError names the setting)."""

    num_samples: int = 1  # results from one prompt, generated as one batch
    seed: int | None = None  # 0..2**63-1; same seed and settings, same result. None: not reproducible
    temperature: float | None = None  # 0 = greedy (always the likeliest token)
    top_k: int | None = None  # keep the k likeliest tokens; 0 = off
    top_p: float | None = None  # nucleus: keep the likeliest tokens holding this much probability; 1 = off
    cfg_scale: float | None = None  # classifier-free guidance; 1 = off
    cfg_scale_codes: float | None = None  # audio with chord labels: guidance of the codes (labels: cfg_scale)
    n_latents: int | None = None  # latents per window at inference: fewer is faster and coarser
    candidates: int | None = None  # drawn per result, the likeliest given the prompt kept (1 = off; k x the work)
    key_lock: bool | None = None  # audio with chord labels: only the diatonic chords of the key the prompt names

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the types once, here
        set_(self, "num_samples", _integer("num_samples", self.num_samples, 1))
        if self.seed is not None:
            set_(self, "seed", _integer("seed", self.seed, 0, MAX_SEED))
        if self.temperature is not None:
            set_(self, "temperature", _number("temperature", self.temperature, 0.0, note=" (0 = greedy)"))
        if self.top_k is not None:
            set_(self, "top_k", _integer("top_k", self.top_k, 0, note=" (0 = off)"))
        if self.top_p is not None:
            set_(self, "top_p", _number("top_p", self.top_p, 0.0, 1.0, lo_open=True, note=" (1 = off)"))
        if self.cfg_scale is not None:
            set_(self, "cfg_scale", _number("cfg_scale", self.cfg_scale, 0.0, note=" (1 = off)"))
        if self.cfg_scale_codes is not None:
            set_(self, "cfg_scale_codes", _number("cfg_scale_codes", self.cfg_scale_codes, 0.0, note=" (1 = off)"))
        if self.n_latents is not None:
            set_(self, "n_latents", _integer("n_latents", self.n_latents, 1))
        if self.candidates is not None:
            set_(self, "candidates", _integer("candidates", self.candidates, 1, MAX_CANDIDATES, note=" (1 = off)"))
        if self.key_lock is not None and not isinstance(self.key_lock, bool):
            raise ValueError(f"key_lock must be True or False, got {self.key_lock!r}")

    @classmethod
    def of(cls, options: SamplingOptions | None = None, **overrides) -> SamplingOptions:
        """``options`` with ``overrides`` applied (keyword arguments such as ``seed=1``); unknown names raise."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; expected some of {sorted(names)}")
        return replace(options or cls(), **overrides)

    def resolved(self, defaults: dict, trained_latents: int, *, pick_seed: bool = False) -> SamplingOptions:
        """Every None filled from ``defaults`` (a checkpoint's), so the result is what generation uses.

        top_k 0 and top_p 1 mean off; n_latents falls back to the trained number. ``pick_seed``: a missing
        seed becomes a fresh random one, so the result can be made again from its record.
        """
        d = defaults
        top_p = self.top_p if self.top_p is not None else d.get("top_p")
        return SamplingOptions(
            num_samples=self.num_samples,
            seed=self.seed if self.seed is not None or not pick_seed else secrets.randbelow(RANDOM_SEEDS),
            temperature=self.temperature if self.temperature is not None else d.get("temperature", 1.0),
            top_k=self.top_k if self.top_k is not None else int(d.get("top_k") or 0),
            top_p=1.0 if top_p is None else top_p,
            cfg_scale=self.cfg_scale if self.cfg_scale is not None else d.get("cfg_scale", 1.0),
            cfg_scale_codes=self.cfg_scale_codes if self.cfg_scale_codes is not None else d.get("cfg_scale_codes"),
            n_latents=self.n_latents if self.n_latents is not None else (d.get("n_latents") or trained_latents),
            candidates=self.candidates if self.candidates is not None else int(d.get("candidates") or 1),
            key_lock=self.key_lock if self.key_lock is not None else bool(d.get("key_lock", False)),
        )

    def generate_kwargs(self) -> dict:
        """The keyword arguments of ``perceiverar.generation.generate`` (off switches as None). Resolve first.
        ``candidates`` is not among them: the caller draws num_samples x candidates rows (``perceiverar.candidates``);
        nor is ``key_lock``: the pipeline turns it into the audio constraint's chord labels."""
        return dict(
            num_samples=self.num_samples,
            seed=self.seed,
            temperature=self.temperature,
            top_k=self.top_k or None,
            top_p=None if self.top_p is None or self.top_p >= 1.0 else self.top_p,
            cfg_scale=1.0 if self.cfg_scale is None else self.cfg_scale,
            cfg_scale_codes=self.cfg_scale_codes,
            n_latents=self.n_latents,
        )

    def as_dict(self) -> dict:
        return asdict(self)
