"""The prompt policy of generation: checking prompt ids, the condition span, the unconditional prompt for
classifier-free guidance, and what happens when prompt + output exceed the context."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from tokenizers_mm.vocab import TEXT_BEGIN, TEXT_SIZE


def as_ids(ids, name: str, vocab_size: int) -> list[int]:
    """A prompt (list, 1-D tensor, (1, T) tensor or array of ids) as a checked, non-empty list of ints."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"{name} must be one sequence of ids (1-D), got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    elif isinstance(ids, np.ndarray):
        ids = ids.reshape(-1).tolist()
    elif isinstance(ids, (str, bytes)):
        raise ValueError(f"{name} must be token ids; build them with tokenizers_mm.build_sequence(...)")
    out = [int(t) for t in ids]
    if not out:
        raise ValueError(f"empty prompt: {name} holds no ids (even an unconditional prompt starts with BOS)")
    for i, t in enumerate(out):
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name} id {t} at position {i} is outside the vocabulary 0..{vocab_size - 1}")
    return out


def condition_span(prompt: list[int]) -> tuple[int, int]:
    """[i, j): the condition bytes right after the first TEXT_BEGIN (empty span if there is none)."""
    try:
        i = prompt.index(TEXT_BEGIN) + 1
    except ValueError:
        return 0, 0
    j = i
    while j < len(prompt) and 0 <= prompt[j] < TEXT_SIZE:
        j += 1
    return i, j


def unconditional_prompt(prompt: list[int]) -> list[int]:
    """The same layout with an empty condition (what prompt dropout trains): drop the prompt bytes."""
    i, j = condition_span(prompt)
    if i == 0:
        raise ValueError("cannot derive the unconditional prompt (no TEXT_BEGIN); pass uncond_prompt_ids")
    return prompt[:i] + prompt[j:]


def fit_context(prompt: list[int], max_new_tokens: int, context_len: int, overflow: str) -> list[int]:
    """Apply the overflow policy ("error" | "truncate") when prompt + output exceed the context L."""
    total = len(prompt) + max_new_tokens
    if total <= context_len:
        return prompt
    what = f"prompt of {len(prompt)} tokens + max_new_tokens={max_new_tokens} = {total} tokens"
    if overflow == "error":
        raise ValueError(
            f"{what} exceeds the model's context of {context_len} tokens; shorten the prompt, ask for fewer "
            "tokens, or pass overflow='truncate' (drops the oldest condition tokens)"
        )
    i, j = condition_span(prompt)
    drop = min(total - context_len, j - i)
    prompt = prompt[:i] + prompt[i + drop :]
    msg = f"{what} exceed the model's context of {context_len}: dropped the {drop} oldest condition tokens"
    if len(prompt) + max_new_tokens > context_len:
        msg += "; the window will still slide, so the oldest tokens leave the context as generation proceeds"
    warnings.warn(msg, stacklevel=3)  # the caller of generate()
    return prompt
