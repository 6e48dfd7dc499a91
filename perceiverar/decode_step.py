"""The decode step: one new token for every row, with static shapes (gpt-fast's ``decode_one_token``).

Everything that changes from token to token is a tensor: the rows' window positions (``DecodeCache.context_pos``
and ``latent_pos``), the rotary angles (looked up in the cache's table), the new keys/values (written in place at
those positions), and attention runs over the whole preallocated buffers under a mask. So one graph serves every
token, and ``torch.compile`` compiles it once; on CUDA, ``mode="reduce-overhead"`` also records it as a CUDA graph,
which removes the per-kernel launch cost that dominates a small model's step.

On the CPU the eager step is the default (``COMPILE_ON_CPU``). Measured on this project's shared 2-core CPU in CPU
seconds of one thread (``benchmarks/generate.py --targets``, results/generate-targets-cpu-2026-11-29.json), the
compiled step is cheaper per token (text: 254 bytes per CPU second against 195 eager; a 16x16 palette image: 1.30
against 1.64 CPU s; at a 16K context: 6.3-6.8 against 7.7-7.9 ms per token), but compiling it took 40-55 s of wall
time per process (and again for new shapes), ten times the image itself; a long-running process can turn it on
(``set_compile_default``; ``perceiverar-app --compile on``). Re-measured on 2026-12-01 (an Intel Xeon, one thread,
results/generate-targets-xeon-cpu-2026-12-01.json): compiled 0.71-0.76 s per emoji against 1.22-1.26 s, text
390-398 against 238-247 bytes/s, 3.9-4.1 against 5.8-6.2 ms per token at a 16K context.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from perceiverar.attention import write_cache
from perceiverar.model import PerceiverAR

# Whether generation compiles the step on the CPU by default (see the module docstring): PERCEIVERAR_COMPILE_CPU=1
# turns it on for a process; ``generate(compile=...)`` chooses per call.
COMPILE_ON_CPU = os.environ.get("PERCEIVERAR_COMPILE_CPU", "0") == "1"
COMPILE_CHOICES = {"auto": None, "on": True, "off": False}  # the --compile values of perceiverar-app / -generate
_compile_default: bool | None = None  # set_compile_default(); None: on CUDA, and on the CPU when COMPILE_ON_CPU


def set_compile_default(value: bool | str | None) -> None:
    """What ``generate(compile=None)`` does in this process: True (or "on") compiles the decode step on every
    device, False ("off") on none, None ("auto", the initial value) on CUDA, and on the CPU only when
    PERCEIVERAR_COMPILE_CPU=1. ``perceiverar-app`` and ``perceiverar-generate`` set it from ``--compile``: a
    long-running app on a CPU gains from it (see the module docstring for the figures and for what compiling costs
    first)."""
    global _compile_default
    if isinstance(value, str):
        if value not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {value!r}")
        value = COMPILE_CHOICES[value]
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"compile must be True, False or None, got {value!r}")
    _compile_default = value

StepFn = Callable[..., torch.Tensor]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The weights' dtype generation runs in by default (``Pipeline.load``), and so its caches' and attention's:
    bf16 on CUDA (tensor cores; norms, rotary angles, softmax statistics and logits stay fp32), fp32 on the CPU,
    where bf16 measured slower (text 163 against 195 bytes per CPU second; at a 16K context 12.8 against 7.8 ms per
    token: PyTorch's bf16 attention is slow on this CPU); ``benchmarks/generate.py --targets``, ``new_bf16``."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def decode_one_token(
    model: PerceiverAR,
    tokens: torch.Tensor,
    features: torch.Tensor,
    cross_k: torch.Tensor,
    cross_v: torch.Tensor,
    cross_out: torch.Tensor,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    rope: tuple[torch.Tensor, torch.Tensor],
    context_pos: torch.Tensor,
    latent_pos: torch.Tensor,
) -> torch.Tensor:
    """Every row's newest position p joins its context and becomes one more latent; logits (R, V) fp32.

    tokens (R, K), features (R, K, F): ids and position features of positions p - K + 1 .. p (K = the short
    convolution's width, at least 1); context_pos, latent_pos (R,): p - s and P + p - a in the row's window (s, a)
    with P pinned latents before the window's (``perceiverar.generation.prefill``).
    The caches are ``DecodeCache``'s buffers (R rows).
    """
    K = tokens.shape[1]
    back = torch.arange(K - 1, -1, -1, device=tokens.device)  # (K,): how far each slot lies behind p
    inside = context_pos[:, None] >= back  # (R, K): slots before the window are a crop's zero padding
    x = model.embed_tokens(tokens, features, history=K - 1, inside=inside)  # (R, 1, C)
    cos, sin = rope
    rope_p = cos[context_pos][:, None, None], sin[context_pos][:, None, None]  # (R, 1, 1, D/2)
    k, v = model.cross.kv(x, rope_p)  # (R, H, 1, D)
    write_cache(cross_k, k, context_pos)
    write_cache(cross_v, v, context_pos)
    q_rope = model.cross.query_rope(rope_p, context_pos + 1)  # the query sees context_pos + 1 positions
    h = model.cross.forward_cached(x, q_rope, cross_k, cross_v, context_pos + 1)  # (R, 1, C)
    cross_out[torch.arange(h.shape[0], device=h.device), latent_pos] = h[:, 0]
    logits = model.latent_stack(h, rope_p, caches=layers, pos=latent_pos, last_only=True)  # (R, 1, V)
    return logits[:, -1].float()


class _Compiled:
    """``torch.compile(decode_one_token)``; if compiling fails (no C++ compiler, an unsupported op), it warns once
    and runs the eager step from then on: the same results, only slower."""

    def __init__(self, mode: str | None):
        self.mode = mode
        self.fn: StepFn = torch.compile(decode_one_token, mode=mode, fullgraph=True)
        self.failed = False

    def __call__(self, *args) -> torch.Tensor:
        if not self.failed:
            try:
                if self.mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
                return self.fn(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001  (any compiler failure: fall back to the same step, eager)
                self.failed = True
                warnings.warn(f"compiling the decode step failed ({type(e).__name__}: {e}); decoding eagerly", stacklevel=2)
        return decode_one_token(*args)


_COMPILED: dict[str | None, _Compiled] = {}


def step_function(device: torch.device, compile: bool | None = None) -> StepFn:
    """The decode step for ``device``: compiled (``compile=True``; None: the process default of
    ``set_compile_default``, which unset means on CUDA, and on the CPU when ``COMPILE_ON_CPU``), else eager."""
    if compile is None:
        compile = _compile_default
    if compile is None:
        compile = device.type == "cuda" or COMPILE_ON_CPU
    if not compile:
        return decode_one_token
    mode = "reduce-overhead" if device.type == "cuda" else None
    if mode not in _COMPILED:
        _COMPILED[mode] = _Compiled(mode)
    return _COMPILED[mode]


def uses_cuda_graphs(step: StepFn) -> bool:
    return isinstance(step, _Compiled) and step.mode == "reduce-overhead"
