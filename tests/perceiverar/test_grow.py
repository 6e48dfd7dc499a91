"""Growing a trained latent stack (perceiverar.grow): where the new blocks go, and that the grown model computes
exactly what the old one did, in the full pass and in cached generation."""

from __future__ import annotations

import pytest
import torch

from perceiverar import PerceiverAR, PerceiverARConfig
from perceiverar.generation import generate
from perceiverar.grow import grow_state, grown_layer_sources


def test_new_blocks_are_spread_through_the_stack():
    assert grown_layer_sources(6, 2) == [(0, False), (1, False), (2, False), (2, True), (3, False), (4, False),
                                         (5, False), (5, True)]  # fmt: skip
    assert grown_layer_sources(2, 2) == [(0, False), (0, True), (1, False), (1, True)]
    assert grown_layer_sources(3, 0) == [(0, False), (1, False), (2, False)]
    assert [old for old, _ in grown_layer_sources(4, 1)] == [0, 1, 2, 3, 3]  # one new block goes on top
    for n, add in ((6, 3), (5, 7), (1, 4)):
        layout = grown_layer_sources(n, add)
        assert len(layout) == n + add and sum(new for _, new in layout) == add
        assert [old for old, new in layout if not new] == list(range(n))  # the old blocks keep their order
    with pytest.raises(ValueError, match="cannot add"):
        grown_layer_sources(0, 2)


def test_grown_model_computes_what_the_checkpoint_did(debug_model, one_thread):
    old = debug_model()
    n = old.cfg.n_layers
    state = grow_state(old.state_dict(), n, 2)
    grown = PerceiverAR(PerceiverARConfig.from_dict({**old.cfg.to_dict(), "n_layers": n + 2})).eval()
    grown.load_state_dict(state)  # strict: every new block's weights are there
    layout = grown_layer_sources(n, 2)
    for k, (src, new) in enumerate(layout):
        assert torch.equal(grown.blocks[k].wqkv.weight, old.blocks[src].wqkv.weight)
        assert (grown.blocks[k].wo.weight.abs().sum() == 0) == new
        assert (grown.blocks[k].mlp.down.weight.abs().sum() == 0) == new
    torch.manual_seed(1)
    x = torch.randint(0, old.cfg.vocab_size, (2, 96))
    with torch.no_grad():
        torch.testing.assert_close(grown(x), old(x), atol=0, rtol=0)  # the new blocks add exact zeros
    # and the exact cache agrees: the same sampled tokens from the same seed
    prompt = x[0, :40].tolist()
    outs = [generate(m, prompt, 24, temperature=1.0, seed=3) for m in (old, grown)]
    assert torch.equal(outs[0], outs[1])
    # a grown stack is not a copy of the old one's function once its new projections train
    with torch.no_grad():
        grown.blocks[3].wo.weight.normal_(std=0.02)
        assert not torch.equal(grown(x), old(x))


def test_grow_refuses_weights_that_do_not_match_their_config(debug_model):
    model = debug_model()
    state, n = model.state_dict(), model.cfg.n_layers
    with pytest.raises(ValueError, match="not the"):
        grow_state(state, n + 1, 2)
    assert grow_state(state, n, 0).keys() == state.keys()
