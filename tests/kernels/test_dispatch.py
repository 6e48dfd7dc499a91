"""kernels.dispatch: PERCEIVERAR_ATTENTION picks Triton or the reference; the Triton import stays lazy."""

import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from kernels import dispatch, reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = ["cross", "self", "decode"]


def _args(op):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 64, generator=g).to(DEVICE)
    k, v = torch.randn(2, 1, 2, 21, 64, generator=g).to(DEVICE)
    if op == "self":
        return (q, q.flip(2), q.roll(1, 2))
    if op == "decode":
        return (q, k, v, 17)
    return (q, k, v)


_REF = {
    "cross": reference.causal_cross_attention_ref,
    "self": reference.causal_self_attention_ref,
    "decode": reference.decode_attention_ref,
}
_NAME = {"cross": "causal_cross_attention", "self": "causal_self_attention", "decode": "decode_attention"}
_TRITON_NAME = {op: name + "_fn" for op, name in _NAME.items()}


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_runs_triton(monkeypatch, op):
    triton_ops = dispatch._triton_ops()
    calls = []
    real = getattr(triton_ops, _TRITON_NAME[op])

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_ops, _TRITON_NAME[op], spy)
    monkeypatch.setenv("PERCEIVERAR_ATTENTION", "triton")
    out = getattr(dispatch, _NAME[op])(*_args(op))
    assert calls, "the dispatcher did not call the Triton kernel"
    torch.testing.assert_close(out, _REF[op](*_args(op)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_forced_reference_runs_reference(monkeypatch, op):
    triton_ops = dispatch._triton_ops()
    monkeypatch.setattr(triton_ops, _TRITON_NAME[op], lambda *a, **k: pytest.fail("Triton called"))
    monkeypatch.setenv("PERCEIVERAR_ATTENTION", "reference")
    out = getattr(dispatch, _NAME[op])(*_args(op))
    assert torch.equal(out, _REF[op](*_args(op)))


def test_default_backend_follows_device(monkeypatch):
    monkeypatch.delenv("PERCEIVERAR_ATTENTION", raising=False)
    assert dispatch.backend_for(torch.zeros(1)) == "reference"
    if torch.cuda.is_available():
        assert dispatch.backend_for(torch.zeros(1, device="cuda")) == "triton"


def test_invalid_value_raises(monkeypatch):
    monkeypatch.setenv("PERCEIVERAR_ATTENTION", "cudnn")
    with pytest.raises(ValueError, match="PERCEIVERAR_ATTENTION"):
        dispatch.causal_cross_attention(*_args("cross"))


def test_import_kernels_does_not_import_the_triton_kernels():
    # torch.nn.attention.bias (used by the reference) may import the triton package itself when it
    # is installed; what must stay lazy is our Triton code.
    code = "import sys, kernels; bad = [m for m in ('kernels.triton_ops', 'kernels.cross_attention', " \
           "'kernels.decode') if m in sys.modules]; assert not bad, bad"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
