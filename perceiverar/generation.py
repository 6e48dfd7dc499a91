"""Exact strided KV-cached generation (gpt-fast style: small functions over preallocated caches).

The window schedule
-------------------
Generation imitates training crops. A window (s, a) (see ``perceiverar.cache``) says: the
logits for the token after position p are those of the full forward pass over
``tokens[s : p + 1]`` with ``n_latents = p - a + 1`` (its last row). For a prompt of length P:

* first window: the one a slide would have produced, so the first ``stride`` tokens run
  without another prefill (no second prefill right after the first token) and the first
  prefill computes about half the latents: the prompt's last N' - stride + 1 positions are
  latents, a = max(s, P - (N' - stride + 1)); the context is the whole prompt when it fits
  (s = 0 for P <= L), else its last L - stride + 1 positions, s = P - (L - stride + 1).
  (N' = ``n_latents`` or the trained N.) Any choice is exact; this one is the steady state;
* each new token appends one latent (p grows, the window stays);
* when p - a + 1 would exceed N', a advances by ``stride`` (default N'/2): the latent stack
  is recomputed for positions a..p, reusing the cross-attention outputs (they depend on s,
  not on a);
* when p - s + 1 would exceed L, s advances by ``stride`` too (never past a) and the
  cross-attention K/V of the new window are recomputed (their rotary positions are pos - s).

So a slide costs one latent prefill every ``stride`` tokens (plus one context refill per
``stride`` tokens once the sequence is longer than L), and every token's logits equal a full
forward pass over its crop. ``use_cache=False`` runs exactly those full forward passes,
with the same windows: the reference the tests compare against.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from perceiverar.cache import DecodeCache, Window
from perceiverar.constraints import ModalityConstraint
from perceiverar.model import PerceiverAR
from perceiverar.prompting import as_ids, fit_context, unconditional_prompt
from perceiverar.sampling import check_sampling_args, guide, sample
from tokenizers_mm.vocab import FeatureTracker

# Context positions embedded and projected at once when (re)filling the cross K/V: bounds
# the temporary (B, chunk, C) activations for a 65,536-token window.
CONTEXT_CHUNK = 8_192
# The longest section the layout can describe is an audio clip of MAX_AUDIO_TOKENS (~1M) codes;
# beyond 2M new tokens a request is a mistake, not a plan (the id buffers alone would be huge).
MAX_NEW_TOKENS = 1 << 21


@dataclass(frozen=True)
class Schedule:
    context_len: int  # L
    n_latents: int  # N': latents per window at most
    stride: int  # how far a (and s) move on a slide

    def window(self, prev: Window | None, length: int) -> Window:
        """The window that predicts the token after position ``length - 1``."""
        p = length - 1
        if prev is None:  # as if a slide had just happened: see the module docstring
            s = 0 if length <= self.context_len else length - (self.context_len - self.stride + 1)
            return Window(s, max(s, length - (self.n_latents - self.stride + 1)))
        s, a = prev.start, prev.first_latent
        if p - a + 1 > self.n_latents:
            a += self.stride * math.ceil((p - a + 1 - self.n_latents) / self.stride)
        if p - s + 1 > self.context_len:
            s += self.stride * math.ceil((p - s + 1 - self.context_len) / self.stride)
            a = max(a, s)
        return Window(s, a)


def make_schedule(model: PerceiverAR, n_latents: int | None = None, stride: int | None = None) -> Schedule:
    L = model.cfg.context_len
    n = model.cfg.n_latents if n_latents is None else int(n_latents)
    if not 1 <= n <= L:
        raise ValueError(f"n_latents must be in 1..{L} (the context), got {n}")
    st = max(1, n // 2) if stride is None else int(stride)
    if not 1 <= st <= n:
        raise ValueError(f"stride must be in 1..n_latents={n}, got {st}")
    return Schedule(L, n, st)


@dataclass
class Stream:
    """Rows that share positions (one prompt, several samples): ids, features, caches, window."""

    tokens: torch.Tensor  # (B, capacity) int64; positions [0, length) are valid
    features: torch.Tensor  # (B, capacity, F) int64, computed causally on the whole sequence
    trackers: list[FeatureTracker]  # one per row: features of the next ids
    length: int
    cache: DecodeCache | None  # None: uncached reference path
    window: Window | None = None  # the window of the last logits; the cache's entries belong to it


def new_stream(
    model: PerceiverAR, prompt: list[int], batch: int, max_new_tokens: int, *, schedule: Schedule, use_cache: bool
) -> Stream:
    p = next(model.parameters())
    P, capacity = len(prompt), len(prompt) + max_new_tokens
    tracker = FeatureTracker()
    feats = torch.from_numpy(tracker.extend(prompt))  # (P, F), on the whole prompt, never on a crop
    tokens = torch.zeros(batch, capacity, dtype=torch.long, device=p.device)
    features = torch.zeros(batch, capacity, feats.shape[1], dtype=torch.long, device=p.device)
    tokens[:, :P] = torch.tensor(prompt, dtype=torch.long, device=p.device)
    features[:, :P] = feats.to(p.device)
    cache = None
    if use_cache:
        cache = DecodeCache(
            model.cfg,
            batch,
            context_capacity=min(schedule.context_len, capacity),
            latent_capacity=min(schedule.n_latents, capacity),
            device=p.device,
            dtype=p.dtype,
        )
    return Stream(tokens, features, [copy.deepcopy(tracker) for _ in range(batch)], P, cache)


def append(stream: Stream, ids: torch.Tensor) -> None:
    """Write ids (B,) at position ``length`` with their position features."""
    t = stream.length
    stream.tokens[:, t] = ids.to(stream.tokens.device)
    feats = np.stack([tr.push(int(i)) for tr, i in zip(stream.trackers, ids.tolist())])  # (B, F)
    stream.features[:, t] = torch.from_numpy(feats).to(stream.features.device)
    stream.length = t + 1


def _embed(model: PerceiverAR, stream: Stream, lo: int, hi: int, start: int) -> torch.Tensor:
    """Embeddings (B, hi - lo, C) of positions [lo, hi) in a window starting at ``start``: the short
    convolution reads the few positions before lo, but none before the window (as the crop in training)."""
    h0 = max(start, lo - max(0, model.cfg.conv_kernel - 1))
    return model.embed_tokens(stream.tokens[:, h0:hi], stream.features[:, h0:hi], history=lo - h0)


def _rope(model: PerceiverAR, lo: int, hi: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return model.rope(torch.arange(lo, hi, device=device))


def fill_context(model: PerceiverAR, stream: Stream, s: int, end: int) -> None:
    """Cross-attention K/V of positions [s + context_filled, end) of a window starting at s into the cache, in chunks."""
    c = stream.cache
    dev = stream.tokens.device
    for lo in range(s + c.context_filled, end, CONTEXT_CHUNK):
        hi = min(end, lo + CONTEXT_CHUNK)
        k, v = model.cross.kv(_embed(model, stream, lo, hi, s), _rope(model, lo - s, hi - s, dev))  # (B, H, hi-lo, D)
        c.cross_k[:, :, lo - s : hi - s] = k
        c.cross_v[:, :, lo - s : hi - s] = v
    c.context_filled = max(c.context_filled, end - s)


def cross_latents(model: PerceiverAR, stream: Stream, s: int, lo: int, hi: int) -> torch.Tensor:
    """Cross-attention outputs (B, hi - lo, C) of positions [lo, hi); the context must hold [s, hi)."""
    c = stream.cache
    x = _embed(model, stream, lo, hi, s)
    return model.cross.forward_cached(x, _rope(model, lo - s, hi - s, x.device), c.cross_k, c.cross_v, hi - s)


def prefill(model: PerceiverAR, stream: Stream, prev: Window | None, window: Window) -> torch.Tensor:
    """(Re)fill the caches, which hold entries of window ``prev``, for ``window`` over positions [s, length);
    logits (B, V) of the last position."""
    c = stream.cache
    s, a, end = window.start, window.first_latent, stream.length
    if prev is None or prev.start != s:
        c.clear()  # new rotary positions: the context K/V and everything after must be recomputed
    fill_context(model, stream, s, end)
    have = a  # cross outputs of positions [a, have) are already in the cache
    if c.latents_filled:  # they depend on s but not on a: keep the ones the new window shares with the old
        old_a = prev.first_latent
        keep = old_a + c.latents_filled - a
        if keep > 0:
            if a > old_a:
                c.cross_out[:, :keep] = c.cross_out[:, a - old_a : a - old_a + keep].clone()
            have = a + keep
    if have < end:
        c.cross_out[:, have - a : end - a] = cross_latents(model, stream, s, have, end)
    c.latents_filled = end - a
    h = c.cross_out[:, : end - a]  # (B, M, C)
    logits = model.latent_stack(h, _rope(model, a - s, end - s, h.device), caches=c.layers, pos=0, last_only=True)
    return logits[:, -1].float()  # (B, V)


def decode_one_token(model: PerceiverAR, stream: Stream) -> torch.Tensor:
    """The newest position p = length - 1 joins the context and becomes one more latent; logits (B, V)."""
    c = stream.cache
    p = stream.length - 1
    s, a = stream.window.start, stream.window.first_latent
    if c.context_filled != p - s or c.latents_filled != p - a:
        raise RuntimeError(
            f"cache out of step: position {p}, window ({s}, {a}), {c.context_filled} context / {c.latents_filled} latents"
        )
    x = _embed(model, stream, p, p + 1, s)  # (B, 1, C)
    rope = _rope(model, p - s, p - s + 1, x.device)
    k, v = model.cross.kv(x, rope)  # (B, H, 1, D)
    c.cross_k[:, :, p - s] = k[:, :, 0]
    c.cross_v[:, :, p - s] = v[:, :, 0]
    c.context_filled += 1
    h = model.cross.forward_cached(x, rope, c.cross_k, c.cross_v, p - s + 1)  # (B, 1, C)
    c.cross_out[:, p - a] = h[:, 0]
    c.latents_filled += 1
    logits = model.latent_stack(h, rope, caches=c.layers, pos=p - a, last_only=True)
    return logits[:, -1].float()  # (B, V)


def forward_window(model: PerceiverAR, stream: Stream, window: Window) -> torch.Tensor:
    """The uncached reference: a full forward pass over the window's crop; logits (B, V) of its last position."""
    s, a, end = window.start, window.first_latent, stream.length
    logits = model(stream.tokens[:, s:end], stream.features[:, s:end], n_latents=end - a)  # (B, n, V)
    return logits[:, -1].float()


def next_logits(model: PerceiverAR, stream: Stream, schedule: Schedule) -> torch.Tensor:
    """Logits (B, V) for the token after the stream's last position, sliding the window when due."""
    prev = stream.window
    stream.window = window = schedule.window(prev, stream.length)
    if stream.cache is None:
        return forward_window(model, stream, window)
    if window != prev:
        return prefill(model, stream, prev, window)
    return decode_one_token(model, stream)


def decode_n(
    model: PerceiverAR,
    streams: list[Stream],
    n: int,
    *,
    schedule: Schedule,
    pick: Callable[[torch.Tensor], torch.Tensor],
    cfg_scale: float = 1.0,
    constraint: ModalityConstraint | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    stop_event: threading.Event | None = None,
) -> torch.Tensor:
    """Up to n new ids (B, n_done): streams[0] is conditional, an optional streams[1] the unconditional one.

    Stops early when ``stop_event`` is set (between tokens) or the constraint has finished every row.
    """
    out: list[torch.Tensor] = []
    for step in range(n):
        if stop_event is not None and stop_event.is_set():
            break
        logits = next_logits(model, streams[0], schedule)
        if len(streams) > 1:
            logits = guide(logits, next_logits(model, streams[1], schedule), cfg_scale)
        if constraint is not None:
            logits = constraint.apply(logits)
        ids = pick(logits).cpu()  # (B,)
        if constraint is not None:
            constraint.update(ids)
        for st in streams:
            append(st, ids)  # the guided sample continues both sequences
        out.append(ids)
        if on_token is not None:
            on_token(step, ids)
        if constraint is not None and constraint.done:
            break
    if not out:
        return torch.zeros(streams[0].tokens.shape[0], 0, dtype=torch.long)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------- generate()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate(
    model: PerceiverAR,
    prompt_ids,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    uncond_prompt_ids=None,
    seed: int | None = None,
    n_latents: int | None = None,
    stride: int | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    constraint: ModalityConstraint | None = None,
    overflow: str = "error",
    stop_event: threading.Event | None = None,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` ids after ``prompt_ids``; returns (num_samples, n_generated) int64 on CPU.

    temperature 0 or top_k 1 is greedy. ``seed`` makes the samples reproducible. ``cfg_scale`` != 1
    runs classifier-free guidance against ``uncond_prompt_ids`` (default: the prompt with its
    condition bytes removed), each group with its own caches and windows. ``n_latents`` below the
    trained N is faster and coarser; ``stride`` is how far the window slides (default n_latents // 2).
    ``use_cache=False`` recomputes a full forward pass per token over the same windows (slow; the
    reference). ``on_token(step, ids)`` streams each step's ids (num_samples,); ``stop_event`` cancels
    between tokens (what was generated so far is returned). ``constraint`` (a ModalityConstraint) forces a
    well-formed section and may stop early. ``overflow`` ("error" | "truncate") decides what happens when
    prompt + output exceed the context.
    """
    cfg = model.cfg
    prompt = as_ids(prompt_ids, "prompt_ids", cfg.vocab_size)
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS:,}, got {max_new_tokens}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if overflow not in ("error", "truncate"):
        raise ValueError(f"overflow must be 'error' or 'truncate', got {overflow!r}")
    if not math.isfinite(float(cfg_scale)):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    check_sampling_args(temperature, top_k, top_p)
    max_new_tokens, num_samples = int(max_new_tokens), int(num_samples)
    schedule = make_schedule(model, n_latents, stride)
    prompt = fit_context(prompt, max_new_tokens, cfg.context_len, overflow)
    prompts = [prompt]
    if float(cfg_scale) != 1.0:
        uncond = unconditional_prompt(prompt) if uncond_prompt_ids is None else as_ids(uncond_prompt_ids, "uncond_prompt_ids", cfg.vocab_size)
        prompts.append(fit_context(uncond, max_new_tokens, cfg.context_len, overflow))
    if constraint is not None:
        constraint.begin(prompt, num_samples, max_new_tokens)
        need = constraint.tokens_needed()
        if need > max_new_tokens:
            raise ValueError(f"the requested {constraint.modality} needs {need} more tokens but max_new_tokens={max_new_tokens}")

    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    with torch.inference_mode(), _eval_mode(model):
        streams = [new_stream(model, p, num_samples, max_new_tokens, schedule=schedule, use_cache=use_cache) for p in prompts]
        return decode_n(
            model,
            streams,
            max_new_tokens,
            schedule=schedule,
            pick=pick,
            cfg_scale=float(cfg_scale),
            constraint=constraint,
            on_token=on_token,
            stop_event=stop_event,
        )
