"""Exact strided KV-cached generation (gpt-fast style: small functions over preallocated caches).

Every token's logits equal a full forward pass over the crop its window (``perceiverar.window``) names: a slide
prefills the caches (``perceiverar.cache``) of the new window, reusing what it shares with the old one.
``use_cache=False`` runs exactly those full forward passes, with the same windows: the reference the tests
compare against.

Per token
---------
Between slides, one ``decode_one_token`` (``perceiverar.decode_step``: static shapes, compiled on CUDA) decodes
every row at once, the unconditional rows of classifier-free guidance included. Sampling and the modality
constraint stay on the device, and with a constraint the position features of every new token are known before
it is sampled (``ModalityConstraint.plan``), so a token costs no host synchronisation: only a text constraint,
which may stop early, asks the device whether every row has finished.
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

from perceiverar.cache import CachePool, DecodeCache
from perceiverar.constraints import ModalityConstraint
from perceiverar.decode_step import StepFn, decode_one_token, step_function, uses_cuda_graphs
from perceiverar.model import PerceiverAR
from perceiverar.prompting import as_ids, fit_context, unconditional_prompt
from perceiverar.sampling import check_sampling_args, guide, sample
from perceiverar.window import Schedule, Window, make_schedule
from tokenizers_mm.features import FeatureTracker
from tokenizers_mm.ids import WORD_SLOT
from tokenizers_mm.vocab import allowed_range

# Context positions embedded and projected at once when (re)filling the cross K/V: bounds
# the temporary (B, chunk, C) activations for a 65,536-token window.
CONTEXT_CHUNK = 8_192
# The longest section the layout can describe is an audio clip of MAX_AUDIO_TOKENS (~1M) codes;
# beyond 2M new tokens a request is a mistake, not a plan (the id buffers alone would be huge).
MAX_NEW_TOKENS = 1 << 21


@dataclass
class Stream:
    """Rows that share positions (one prompt, several samples): ids, features, caches, window."""

    tokens: torch.Tensor  # (B, capacity) int64; positions [0, length) are valid
    features: torch.Tensor  # (B, capacity, F) int64, computed causally on the whole sequence
    trackers: list[FeatureTracker] | None  # one per row: features of the next ids; None: planned up front
    length: int
    cache: DecodeCache | None  # None: uncached reference path
    window: Window | None = None  # the window of the last logits; the cache's entries belong to it


def new_cache(model: PerceiverAR, rows: int, capacity: int, schedule: Schedule) -> DecodeCache:
    """Caches for ``rows`` rows of sequences of up to ``capacity`` positions, in the model's dtype."""
    p = next(model.parameters())
    return DecodeCache(
        model.cfg,
        rows,
        context_capacity=min(schedule.context_len, capacity),
        latent_capacity=min(schedule.n_latents, capacity) + model.cfg.pinned_latents,
        device=p.device,
        dtype=p.dtype,
    )


def new_stream(
    model: PerceiverAR,
    prompt: list[int],
    batch: int,
    max_new_tokens: int,
    *,
    schedule: Schedule,
    use_cache: bool,
    cache: DecodeCache | None = None,
    plan: list[int] | None = None,
) -> Stream:
    """``batch`` rows that continue ``prompt``. ``cache``: the rows' share of a cache decoded with other streams
    (default: caches of their own). ``plan``: ids whose position features stand for those of the generated ids
    (``ModalityConstraint.plan``), so that no feature tracker runs per token."""
    dev = next(model.parameters()).device
    P, capacity = len(prompt), len(prompt) + max_new_tokens
    tracker = FeatureTracker()
    feats = tracker.extend(prompt)  # (P, F), on the whole prompt, never on a crop
    if plan is not None:
        feats = np.concatenate([feats, tracker.extend(plan[:max_new_tokens])])  # (P + len(plan), F)
    tokens = torch.zeros(batch, capacity, dtype=torch.long, device=dev)
    features = torch.zeros(batch, capacity, feats.shape[1], dtype=torch.long, device=dev)
    tokens[:, :P] = torch.tensor(prompt, dtype=torch.long, device=dev)
    features[:, : len(feats)] = torch.from_numpy(feats).to(dev)
    if use_cache and cache is None:
        cache = new_cache(model, batch, capacity, schedule)
    trackers = None if plan is not None else [copy.deepcopy(tracker) for _ in range(batch)]
    return Stream(tokens, features, trackers, P, cache if use_cache else None)


def append(stream: Stream, ids: torch.Tensor) -> None:
    """Write ids (B,) at position ``length`` (with their position features, unless planned)."""
    t = stream.length
    stream.tokens[:, t] = ids.to(stream.tokens.device)
    if stream.trackers is not None:
        feats = np.stack([tr.push(int(i)) for tr, i in zip(stream.trackers, ids.tolist())])  # (B, F)
        stream.features[:, t] = torch.from_numpy(feats).to(stream.features.device)
    stream.length = t + 1


def _embed(model: PerceiverAR, stream: Stream, lo: int, hi: int, start: int) -> torch.Tensor:
    """Embeddings (B, hi - lo, C) of positions [lo, hi) in a window starting at ``start``: the short
    convolution reads the few positions before lo, but none before the window (as the crop in training)."""
    h0 = max(start, lo - max(0, model.cfg.conv_kernel - 1))
    return model.embed_tokens(stream.tokens[:, h0:hi], stream.features[:, h0:hi], history=lo - h0)


def _rope(cache: DecodeCache, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary angles (hi - lo, D/2) of window positions [lo, hi), from the cache's table."""
    cos, sin = cache.rope
    return cos[lo:hi], sin[lo:hi]


def fill_context(model: PerceiverAR, stream: Stream, s: int, end: int) -> None:
    """Cross-attention K/V of positions [s + context_filled, end) of a window starting at s into the cache, in chunks."""
    c = stream.cache
    for lo in range(s + c.context_filled, end, CONTEXT_CHUNK):
        hi = min(end, lo + CONTEXT_CHUNK)
        k, v = model.cross.kv(_embed(model, stream, lo, hi, s), _rope(c, lo - s, hi - s))  # (B, H, hi-lo, D)
        c.cross_k[:, :, lo - s : hi - s] = k
        c.cross_v[:, :, lo - s : hi - s] = v
    c.context_filled = max(c.context_filled, end - s)


def cross_latents(model: PerceiverAR, stream: Stream, s: int, lo: int, hi: int) -> torch.Tensor:
    """Cross-attention outputs (B, hi - lo, C) of positions [lo, hi); the context must hold [s, hi)."""
    c = stream.cache
    x = _embed(model, stream, lo, hi, s)
    q_rope = model.cross.query_rope(_rope(c, lo - s, hi - s), torch.arange(lo - s + 1, hi - s + 1, device=x.device))
    return model.cross.forward_cached(x, q_rope, c.cross_k, c.cross_v, hi - s)


def prefill(model: PerceiverAR, stream: Stream, prev: Window | None, window: Window) -> torch.Tensor:
    """(Re)fill the caches, which hold entries of window ``prev``, for ``window`` over positions [s, length);
    logits (B, V) of the last position.

    The latent entries (``cross_out`` and every layer's) are the window's pinned positions s.. (P of them, see
    ``PerceiverARConfig.pinned_latents``; usually none) and then its latents a..: position p at index P + p - a.
    """
    c = stream.cache
    s, a, end = window.start, window.first_latent, stream.length
    if prev is None or prev.start != s:
        c.clear()  # new rotary positions: the context K/V and everything after must be recomputed
    fill_context(model, stream, s, end)
    P, old_P = model.num_pinned(a - s), c.pinned_filled  # old_P is 0 after a clear
    have = a  # cross outputs of positions [a, have) are already in the cache
    if c.latents_filled:  # they depend on s but not on a: keep the ones the new window shares with the old
        old_a = prev.first_latent
        keep = old_a + c.latents_filled - a
        if keep > 0:
            if a - old_a + old_P != P:
                src = old_P + a - old_a
                c.cross_out[:, P : P + keep] = c.cross_out[:, src : src + keep].clone()
            have = a + keep
    if have < end:
        c.cross_out[:, P + have - a : P + end - a] = cross_latents(model, stream, s, have, end)
    if P != old_P:  # positions s.. s + P - 1 depend on s only: kept while s stays and P has stopped growing
        c.cross_out[:, :P] = cross_latents(model, stream, s, s, s + P)
    c.latents_filled, c.pinned_filled = end - a, P
    c.context_pos.fill_(end - s)  # the next position, ``end``, in this window
    c.latent_pos.fill_(P + end - a)
    h = c.cross_out[:, : P + end - a]  # (B, P + M, C)
    logits = model.latent_stack(h, _rope(c, a - s - P, end - s), caches=c.layers, pos=0, last_only=True)
    return logits[:, -1].float()  # (B, V)


def _recent(t: torch.Tensor, p: int, k: int) -> torch.Tensor:
    """Positions p - k + 1 .. p of (B, capacity, ...) ``t``; positions before 0 are zeros (the step masks them)."""
    lo = p - k + 1
    if lo >= 0:
        return t[:, lo : p + 1]
    pad = t.new_zeros(t.shape[0], -lo, *t.shape[2:])
    return torch.cat([pad, t[:, : p + 1]], dim=1)


def decode_rows(model: PerceiverAR, streams: list[Stream], cache: DecodeCache, step: StepFn = decode_one_token) -> torch.Tensor:
    """Every stream's newest position joins its window: one ``step`` over all their rows, which are ``cache``'s
    rows in order; logits (R, V)."""
    k = max(1, model.cfg.conv_kernel)
    tokens, features = [], []
    for st in streams:
        c, p = st.cache, st.length - 1
        s, a = st.window.start, st.window.first_latent
        if c.context_filled != p - s or c.latents_filled != p - a:
            raise RuntimeError(
                f"cache out of step: position {p}, window ({s}, {a}), {c.context_filled} context / {c.latents_filled} latents"
            )
        c.context_filled += 1
        c.latents_filled += 1
        tokens.append(_recent(st.tokens, p, k))
        features.append(_recent(st.features, p, k))
    layers = cache.layers
    logits = step(model, torch.cat(tokens), torch.cat(features), cache.cross_k, cache.cross_v, cache.cross_out, layers,
                  cache.rope, cache.context_pos, cache.latent_pos)  # fmt: skip
    cache.context_pos += 1
    cache.latent_pos += 1
    return logits


def forward_window(model: PerceiverAR, stream: Stream, window: Window) -> torch.Tensor:
    """The uncached reference: a full forward pass over the window's crop; logits (B, V) of its last position."""
    s, a, end = window.start, window.first_latent, stream.length
    logits = model(stream.tokens[:, s:end], stream.features[:, s:end], n_latents=end - a)  # (B, n, V)
    return logits[:, -1].float()


def next_logits(model: PerceiverAR, stream: Stream, schedule: Schedule, step: StepFn = decode_one_token) -> torch.Tensor:
    """Logits (B, V) for the token after the stream's last position, sliding the window when due."""
    prev = stream.window
    stream.window = window = schedule.window(prev, stream.length)
    if stream.cache is None:
        return forward_window(model, stream, window)
    if window != prev:
        return prefill(model, stream, prev, window)
    return decode_rows(model, [stream], stream.cache, step)


def next_logits_all(
    model: PerceiverAR, streams: list[Stream], schedule: Schedule, cache: DecodeCache | None, step: StepFn
) -> torch.Tensor:
    """Logits (R, V) of every stream's rows, in order; ``cache`` holds all their rows (None: uncached, or each
    stream has caches of its own). While no window slides, one batched ``step``; otherwise each stream on its own
    (several streams then decode eagerly: a rare call of another size, not worth a compiled graph)."""
    if cache is not None and all(schedule.window(st.window, st.length) == st.window for st in streams):
        return decode_rows(model, streams, cache, step)
    if cache is not None and len(streams) > 1:
        step = decode_one_token
    return torch.cat([next_logits(model, st, schedule, step) for st in streams])


def decode_n(
    model: PerceiverAR,
    streams: list[Stream],
    n: int,
    *,
    schedule: Schedule,
    pick: Callable[[torch.Tensor], torch.Tensor],
    cache: DecodeCache | None = None,
    step: StepFn = decode_one_token,
    cfg_scale: float = 1.0,
    constraint: ModalityConstraint | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    stop_event: threading.Event | None = None,
    log_probs: torch.Tensor | None = None,
    cfg_scales: list[float] | None = None,
) -> torch.Tensor:
    """Up to n new ids (B, n_done) on the CPU: streams[0] is conditional, an optional streams[1] the unconditional
    one; ``cache`` holds all their rows in that order (None: uncached, or streams with caches of their own).

    Stops early when ``stop_event`` is set (between tokens) or the constraint has finished every row.
    ``log_probs`` (B,) float32: each row's ``sample_log_prob`` (under the conditional logits) is added in place.
    ``cfg_scales``: the guidance of each step (``guidance_schedule``), instead of ``cfg_scale`` throughout.
    """
    B = streams[0].tokens.shape[0]
    out = torch.zeros(B, n, dtype=torch.long, device=streams[0].tokens.device)
    if constraint is not None:
        n = min(n, constraint.tokens_needed())  # every row has finished by then
    done = 0
    for i in range(n):
        if stop_event is not None and stop_event.is_set():
            break
        both = next_logits_all(model, streams, schedule, cache, step)  # (len(streams) * B, V)
        scale = cfg_scales[i] if cfg_scales is not None and i < len(cfg_scales) else cfg_scale
        logits = guide(both[:B], both[B:], scale) if len(streams) > 1 else both
        if constraint is not None:
            logits = constraint.apply(logits)
        ids = pick(logits)  # (B,), on the device: no host synchronisation
        if log_probs is not None:
            log_probs += sample_log_prob(both[:B], ids, constraint)
        if constraint is not None:
            constraint.update(ids)
        for st in streams:
            append(st, ids)  # the guided sample continues both sequences
        out[:, i] = ids
        done = i + 1
        if on_token is not None:
            on_token(i, ids)
        if constraint is not None and constraint.may_stop_early and constraint.done:
            break
    return out[:, :done].cpu()


def guidance_schedule(plan: list[int] | None, cfg_scale: float, codes_scale: float | None) -> list[float] | None:
    """The guidance of each planned step: ``cfg_scale`` at the chord labels of an audio section, ``codes_scale`` at
    every other step (the codes that render them). None (``cfg_scale`` throughout) when there is no codes scale, it
    equals ``cfg_scale``, or the plan holds no chord label (image, text, audio without labels)."""
    if plan is None or codes_scale is None or float(codes_scale) == float(cfg_scale):
        return None
    lo, hi = allowed_range("chord")
    if not any(lo <= t < hi for t in plan):
        return None
    return [float(cfg_scale) if lo <= t < hi else float(codes_scale) for t in plan]


def sample_log_prob(logits: torch.Tensor, ids: torch.Tensor, constraint: ModalityConstraint | None = None) -> torch.Tensor:
    """log p(id) (B,) of the sampled ids under ``logits`` (B, V) at temperature 1, over the ids the constraint allows
    (a forced id scores 0): summed over a sample, its log-likelihood given the prompt (``perceiverar.candidates``)."""
    if constraint is not None:
        logits = constraint.apply(logits)
    return logits.float().log_softmax(-1).gather(-1, ids[:, None])[:, 0]


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
    compile: bool | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    constraint: ModalityConstraint | None = None,
    overflow: str = "error",
    stop_event: threading.Event | None = None,
    log_probs: torch.Tensor | None = None,
    cfg_scale_codes: float | None = None,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` ids after ``prompt_ids``; returns (num_samples, n_generated) int64 on CPU.

    temperature 0 or top_k 1 is greedy. ``seed`` makes the samples reproducible. ``cfg_scale`` != 1
    runs classifier-free guidance against ``uncond_prompt_ids`` (default: the prompt with its
    condition bytes removed), each group with its own windows. ``n_latents`` below the
    trained N is faster and coarser; ``stride`` is how far the window slides (default n_latents // 2).
    ``use_cache=False`` recomputes a full forward pass per token over the same windows (slow; the
    reference). ``compile`` compiles the decode step (None: on CUDA only; see ``perceiverar.decode_step``).
    ``on_token(step, ids)`` streams each step's ids (num_samples,), on the model's device; ``stop_event`` cancels
    between tokens (what was generated so far is returned). ``constraint`` (a ModalityConstraint) forces a
    well-formed section and may stop early. ``overflow`` ("error" | "truncate") decides what happens when
    prompt + output exceed the context. Generation runs in the model's dtype (``Pipeline.load`` gives bf16
    weights on CUDA, fp32 on the CPU).

    ``log_probs``: a (num_samples,) float32 tensor on the model's device; each sample's log-likelihood given the
    prompt (``sample_log_prob`` of its ids, under the conditional model, unguided, at temperature 1) is added to it
    in place as they are sampled (readable between tokens, from ``on_token``). It costs no model evaluation.

    ``cfg_scale_codes``: in an audio section with chord labels, the guidance of the codes, while the labels keep
    ``cfg_scale`` (None: ``cfg_scale`` for every token; ignored for other sections): guidance where the caption
    decides the harmony, less where the codes render it.
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
    if cfg_scale_codes is not None and not math.isfinite(float(cfg_scale_codes)):
        raise ValueError(f"cfg_scale_codes must be a finite number, got {cfg_scale_codes}")
    check_sampling_args(temperature, top_k, top_p)
    max_new_tokens, num_samples = int(max_new_tokens), int(num_samples)
    schedule = make_schedule(model, n_latents, stride)
    prompt = fit_context(prompt, max_new_tokens, cfg.context_len, overflow)
    prompts = [prompt]
    if log_probs is not None and tuple(log_probs.shape) != (int(num_samples),):
        raise ValueError(f"log_probs must have shape ({int(num_samples)},), got {tuple(log_probs.shape)}")
    if float(cfg_scale) != 1.0 or (cfg_scale_codes is not None and float(cfg_scale_codes) != 1.0):
        uncond = (unconditional_prompt(prompt) if uncond_prompt_ids is None
                  else as_ids(uncond_prompt_ids, "uncond_prompt_ids", cfg.vocab_size))  # fmt: skip
        prompts.append(fit_context(uncond, max_new_tokens, cfg.context_len, overflow))
    plan = None
    if constraint is not None:
        constraint.begin(prompt, num_samples, max_new_tokens)
        need = constraint.tokens_needed()
        if need > max_new_tokens:
            raise ValueError(f"the requested {constraint.modality} needs {need} more tokens but max_new_tokens={max_new_tokens}")
        # A plan stands in for the generated ids' features; generated text has word features only a tracker
        # can give (a model trained before the word slot reads none, so its text may be planned too).
        if constraint.modality != "text" or len(cfg.feature_sizes) <= WORD_SLOT:
            plan = constraint.plan()
    scales = guidance_schedule(plan, float(cfg_scale), cfg_scale_codes)  # (chord labels are only in audio plans)

    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    step = step_function(device, compile)
    with torch.inference_mode(), _eval_mode(model):
        cache, pooled = None, None
        if use_cache:  # one cache for every row: the conditional rows, then the unconditional ones
            rows, capacity = num_samples * len(prompts), max(len(ids) for ids in prompts) + max_new_tokens
            if uses_cuda_graphs(step):
                dtype = next(model.parameters()).dtype
                latent_capacity = min(schedule.n_latents, capacity) + cfg.pinned_latents
                pooled, cache = _POOL.take(cfg, rows, min(schedule.context_len, capacity), latent_capacity,
                                           device=device, dtype=dtype, on_new=_static_addresses)  # fmt: skip
            else:
                cache = new_cache(model, rows, capacity, schedule)
        streams = []
        for i, ids in enumerate(prompts):
            share = cache if cache is None or len(prompts) == 1 else cache.rows(i * num_samples, (i + 1) * num_samples)
            streams.append(new_stream(model, ids, num_samples, max_new_tokens, schedule=schedule, use_cache=use_cache,
                                      cache=share, plan=plan))  # fmt: skip
        try:
            return decode_n(model, streams, max_new_tokens, schedule=schedule, pick=pick, cache=cache, step=step,
                            cfg_scale=float(cfg_scale), constraint=constraint, on_token=on_token, stop_event=stop_event,
                            log_probs=log_probs, cfg_scales=scales)  # fmt: skip
        finally:
            if pooled is not None:
                _POOL.give(pooled, cache)


_POOL = CachePool()


def _static_addresses(cache: DecodeCache) -> None:
    for t in cache.buffers():  # the CUDA graph reads and writes them in place: no copies in and out
        torch._dynamo.mark_static_address(t)
