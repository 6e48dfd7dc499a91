"""The whole debug model with the Triton kernels matches the PyTorch reference path: logits and gradients."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported: run them in Triton's interpreter

import pytest  # noqa: E402

from perceiverar import PerceiverAR, PerceiverARConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _run(model, tokens, backend, monkeypatch):
    monkeypatch.setenv("PERCEIVERAR_ATTENTION", backend)
    model.zero_grad()
    logits = model(tokens)
    (logits.float().square().mean() + model.loss(torch.cat([tokens, tokens[:, :1]], 1))).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("T", [48, 77])
def test_debug_model_triton_matches_reference(monkeypatch, T):
    torch.manual_seed(0)
    cfg = PerceiverARConfig.preset("debug", head_dim=64, n_latents=24)
    model = PerceiverAR(cfg).to(DEVICE)
    torch.nn.init.normal_(model.head.weight, std=0.05)
    tokens = torch.randint(0, cfg.vocab_size, (2, T), device=DEVICE)
    ref_logits, ref_grads = _run(model, tokens, "reference", monkeypatch)
    from kernels import triton_ops

    calls = []
    for name in ("causal_cross_attention_fn", "causal_self_attention_fn"):
        fn = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    tri_logits, tri_grads = _run(model, tokens, "triton", monkeypatch)
    assert {"causal_cross_attention_fn", "causal_self_attention_fn"} <= set(calls)  # the kernels really ran
    torch.testing.assert_close(tri_logits, ref_logits, atol=2e-4, rtol=2e-4)
    assert ref_grads.keys() == tri_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(tri_grads[name], g, atol=2e-4, rtol=2e-3, msg=name)
