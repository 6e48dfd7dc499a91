"""Fixtures shared by the perceiverar tests: a random debug model, single-threaded decoding."""

from __future__ import annotations

import pytest
import torch

from perceiverar import PerceiverAR, PerceiverARConfig


def build_debug_model(*, bias_std: float = 0.02, **overrides) -> PerceiverAR:
    """The ``debug`` preset (with ``overrides``), seeded, in eval mode, with every weight able to change the logits."""
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", **overrides))
    # The output projection starts at zero; give it weights so that logits depend on the input.
    torch.nn.init.normal_(model.head.weight, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):  # zero at init; make them matter
            torch.nn.init.normal_(p, std=bias_std)
    if getattr(model, "conv", None) is not None:  # zero-initialised: give it weights so a wrong conv window shows
        torch.nn.init.normal_(model.conv.weight, std=0.5)
    return model.eval()


@pytest.fixture
def debug_model():
    """``debug_model(bias_std=0.02, **config_overrides)`` -> a fresh random debug model (see build_debug_model)."""
    return build_debug_model


@pytest.fixture(scope="module")
def one_thread():
    """Decoding is many tiny matmuls: on a shared 2-core machine intra-op threads only add spin-wait contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
