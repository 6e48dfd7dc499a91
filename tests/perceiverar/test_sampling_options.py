"""SamplingOptions: one checked set of sampling settings for the pipeline, the app and the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
from perceiverar.checkpoint import CheckpointError
from perceiverar.generation import generate
from perceiverar.pipeline import Pipeline, make_tokenizer_config, resolve_device
from perceiverar.sampling_options import MAX_SEED, SamplingOptions


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=math.inf), "temperature must be a finite number >= 0"),
        (dict(temperature=math.nan), "temperature must be a finite number >= 0"),
        (dict(temperature=-0.5), "temperature must be"),
        (dict(top_p=1.5), "top_p must be above 0 and at most 1 (1 = off), got 1.5"),
        (dict(top_p=0.0), "top_p must be above 0"),
        (dict(top_k=-1), "top_k must be at least 0"),
        (dict(top_k=2.5), "top_k must be a whole number"),
        (dict(seed=1e23), "seed must be between 0 and 9,223,372,036,854,775,807"),
        (dict(seed=-1), "seed must be between 0"),
        (dict(seed="7"), "seed must be a whole number"),
        (dict(seed=True), "seed must be a whole number"),
        (dict(num_samples=0), "num_samples must be at least 1"),
        (dict(n_latents=0), "n_latents must be at least 1"),
        (dict(cfg_scale=math.inf), "cfg_scale must be a finite number"),
        (dict(candidates=0), "candidates must be between 1 and 64 (1 = off), got 0"),
        (dict(cfg_scale_codes=-1), "cfg_scale_codes must be a finite number >= 0 (1 = off), got -1"),
        (dict(candidates=1.5), "candidates must be a whole number"),
    ],
)  # fmt: skip
def test_bad_values_name_the_setting(kwargs, message):
    with pytest.raises(ValueError) as info:
        SamplingOptions(**kwargs)
    assert message in str(info.value)


def test_exact_values_are_kept():
    o = SamplingOptions(seed=2**40, top_k=4.0, temperature=1, num_samples=2)
    assert o.seed == 2**40 and type(o.top_k) is int and o.temperature == 1.0 and type(o.temperature) is float
    assert SamplingOptions(seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(TypeError, match="unknown sampling option"):
        SamplingOptions.of(None, tempreature=1.0)


def test_resolved_fills_the_checkpoint_defaults():
    d = {"temperature": 0.8, "top_k": None, "top_p": 0.95, "cfg_scale": 1.0, "n_latents": None}
    r = SamplingOptions(top_k=5).resolved(d, 64)
    assert (r.temperature, r.top_k, r.top_p, r.cfg_scale, r.n_latents, r.seed) == (0.8, 5, 0.95, 1.0, 64, None)
    assert 0 <= SamplingOptions().resolved(d, 64, pick_seed=True).seed < 2**31
    assert SamplingOptions(seed=3).resolved(d, 64, pick_seed=True).seed == 3
    assert SamplingOptions(top_p=1.0, top_k=0).resolved(d, 64).generate_kwargs()["top_p"] is None
    assert r.cfg_scale_codes is None and r.candidates == 1  # not in the defaults: off
    r = SamplingOptions().resolved({**d, "cfg_scale_codes": 1.0, "candidates": 2}, 64)
    assert (r.cfg_scale_codes, r.candidates) == (1.0, 2) and r.generate_kwargs()["cfg_scale_codes"] == 1.0
    assert SamplingOptions(cfg_scale_codes=2).resolved({**d, "cfg_scale_codes": 1.0}, 64).cfg_scale_codes == 2.0
    assert r.key_lock is False and "key_lock" not in r.generate_kwargs()  # off unless a checkpoint says so
    assert SamplingOptions().resolved({**d, "key_lock": True}, 64).key_lock is True
    assert SamplingOptions(key_lock=False).resolved({**d, "key_lock": True}, 64).key_lock is False
    with pytest.raises(ValueError, match="key_lock must be True or False, got 1"):
        SamplingOptions(key_lock=1)


def test_generate_refuses_an_infinite_temperature():
    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        generate(model, [1, 2, 3], 2, temperature=math.inf)


@pytest.fixture(scope="module")
def text_pipe():
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=256, n_latents=16))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return Pipeline(model, make_tokenizer_config(["text"]))


def test_options_object_and_keywords_give_the_same_text(text_pipe):
    a = text_pipe.generate_text("hi", max_new_bytes=12, seed=5, top_k=8)
    b = text_pipe.generate_text("hi", max_new_bytes=12, sampling=SamplingOptions(seed=5, top_k=8))
    c = text_pipe.generate_text("hi", max_new_bytes=12, sampling=SamplingOptions(seed=4, top_k=8), seed=5)
    assert a == b == c
    with pytest.raises(ValueError, match="top_p must be"):
        text_pipe.generate_text("hi", max_new_bytes=4, top_p=1.5)
    assert text_pipe.sampling(seed=1).n_latents == 16


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu7")
    assert resolve_device("auto").type == "cpu"


def test_nan_weights_are_reported_as_a_broken_checkpoint(tmp_path):
    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan", model, make_tokenizer_config(["text"]))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        Pipeline.load(tmp_path / "nan", device="cpu")
