"""Partial rotary positions (``rope_fraction``): exact default, the right pairs turn, cache stays exact."""

from __future__ import annotations

import math

import pytest
import torch

from perceiverar import PerceiverAR, PerceiverARConfig
from perceiverar.generation import generate
from perceiverar.layers import apply_rope, rope_angles


def test_fraction_rotates_only_the_fastest_pairs():
    pos = torch.arange(0, 140_000, 4_999)
    D, base = 32, 500_000.0
    cos, sin = rope_angles(pos, D, base, 0.25)  # 4 of 16 pairs turn
    for i in range(D // 2):
        freq = base ** (-2 * i / D) if i < 4 else 0.0
        want = torch.tensor([p * freq for p in pos.tolist()], dtype=torch.float64)
        torch.testing.assert_close(cos[:, i], want.cos().float())
        torch.testing.assert_close(sin[:, i], want.sin().float())
    full = rope_angles(pos, D, base)
    for a, b in zip(full, rope_angles(pos, D, base, 1.0)):
        assert torch.equal(a, b)  # the default is classic rotary, bit for bit
    assert torch.equal(full[0][:, :4], cos[:, :4])
    assert math.isclose(rope_angles(pos, D, base, 0.0)[0].min().item(), 1.0)  # no position at all


def test_unrotated_pairs_score_by_content_at_any_distance():
    g = torch.Generator().manual_seed(0)
    D, half = 32, 16
    q, k = torch.randn(1, 1, 1, D, generator=g), torch.randn(1, 1, 1, D, generator=g)
    slow = torch.cat([torch.arange(8, 16), torch.arange(24, 32)])  # split-halves layout: pair i is dims i, i + 16
    scores, fast = [], []
    for d in (0, 100, 5_000, 65_000, 131_000):
        rq = apply_rope(q, *rope_angles(torch.tensor([d]), D, 500_000.0, 0.5))
        rk = apply_rope(k, *rope_angles(torch.tensor([0]), D, 500_000.0, 0.5))
        scores.append((rq[..., slow] * rk[..., slow]).sum().item())
        fast.append((rq[..., :8] * rk[..., :8]).sum().item() + (rq[..., half : half + 8] * rk[..., half : half + 8]).sum().item())
    assert max(scores) - min(scores) < 1e-5  # the slow pairs' share of the score ignores the distance
    assert max(fast) - min(fast) > 0.1  # the fast pairs' share does not


def test_config_default_and_bad_values():
    assert PerceiverARConfig().rope_fraction == 1.0
    old = PerceiverARConfig().to_dict()
    del old["rope_fraction"]  # configs saved before the option load as classic rotary
    assert PerceiverARConfig.from_dict(old).rope_fraction == 1.0
    for bad in (1.5, -0.1, float("nan"), "half", True):
        with pytest.raises(ValueError, match="rope_fraction"):
            PerceiverARConfig(rope_fraction=bad)


@torch.no_grad()
def test_partial_rope_is_used_and_cached_generation_stays_exact(debug_model):
    model = debug_model(rope_fraction=0.5, conv_kernel=4)
    full = PerceiverAR(PerceiverARConfig.from_dict({**model.cfg.to_dict(), "rope_fraction": 1.0})).eval()
    full.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(100)
    assert not torch.equal(model.rope(pos)[0], full.rope(pos)[0])
    assert not torch.equal(model(tokens), full(tokens))  # the option reaches the attention
    prompt = tokens[0, :40].tolist()
    cached = generate(model, prompt, 60, temperature=0.0, use_cache=True)
    uncached = generate(model, prompt, 60, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
