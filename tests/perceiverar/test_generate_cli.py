"""perceiverar-generate: every bad argument is refused before generating (exit 2), and results record their settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from perceiverar.generate_cli import main

RANDOM = ["--random-init", "--preset", "debug"]


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--top-p", "1.5"], "top_p must be above 0 and at most 1"),
        (["--seed", str(10**23)], "seed must be between 0 and"),
        (["--seed", "1e23"], "invalid int value"),
        (["--top-k", "-3"], "top_k must be at least 0"),
        (["--n-latents", "0"], "n_latents must be at least 1"),
        (["--candidates", "65"], "candidates must be between 1 and 64"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--compile", "yes"], "argument --compile: invalid choice"),
    ],
)  # fmt: skip
def test_bad_sampling_settings_are_usage_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "t.txt"
    err = _usage_error([*RANDOM, "--prompt", "hi", "--modality", "text", "--out", str(out), *extra], capsys)
    assert message in err and not out.exists()


def test_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = _usage_error([*RANDOM, "--prompt", "hi", "--modality", "text", "--out", str(tmp_path / "t.txt"),
                        "--device", "cuda"], capsys)  # fmt: skip
    assert "no CUDA GPU is available" in err


def test_out_is_checked_before_generating(tmp_path, capsys):
    base = [*RANDOM, "--prompt", "hi", "--modality", "image"]
    (tmp_path / "dir.png").mkdir()
    assert "not a regular file" in _usage_error([*base, "--out", str(tmp_path / "dir.png")], capsys)
    os.symlink("/dev/null", tmp_path / "null.png")
    assert "not a regular file" in _usage_error([*base, "--out", str(tmp_path / "null.png")], capsys)
    assert os.path.realpath(tmp_path / "null.png") == "/dev/null"
    (tmp_path / "file").write_text("x")
    assert "cannot write in" in _usage_error([*base, "--out", str(tmp_path / "file" / "a.png")], capsys)
    assert "name the file *.png" in _usage_error([*base, "--out", str(tmp_path / "a.jpg")], capsys)
    # a text result's sidecar must not replace a directory either
    (tmp_path / "t.json").mkdir()
    err = _usage_error([*RANDOM, "--prompt", "hi", "--modality", "text", "--out", str(tmp_path / "t.txt")], capsys)
    assert "t.json exists and is not a regular file" in err


def test_prompt_file_errors(tmp_path, capsys):
    base = [*RANDOM, "--modality", "text", "--out", str(tmp_path / "t.txt"), "--prompt-file"]
    assert "no such file" in _usage_error([*base, str(tmp_path / "missing.txt")], capsys)
    assert "not a regular file" in _usage_error([*base, str(tmp_path)], capsys)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert "not UTF-8 text (undecodable byte at offset 3)" in _usage_error([*base, str(tmp_path / "latin1.txt")], capsys)


def test_results_record_the_settings_like_the_app(tmp_path, capsys):
    out = tmp_path / "t.txt"
    assert main([*RANDOM, "--prompt", "hi", "--modality", "text", "--out", str(out), "--max-new-bytes", "6",
                 "--top-k", "5", "--candidates", "2"]) == 0  # fmt: skip
    meta = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert meta["prompt"] == "hi" and meta["modality"] == "text" and meta["max_new_bytes"] == 6
    assert meta["top_k"] == 5 and isinstance(meta["seed"], int) and meta["generator"] == "perceiverar-generate"
    assert meta["n_latents"] > 0 and meta["sample"] == 1 and meta["candidates"] == 2
    assert f"seed {meta['seed']}" in capsys.readouterr().err
    png = tmp_path / "i.png"
    assert main([*RANDOM, "--prompt", "sun", "--modality", "image", "--out", str(png), "--seed", str(2**40)]) == 0
    img = Image.open(png)
    params = json.loads(img.text["parameters"])
    assert img.text["prompt"] == "sun" and params["seed"] == 2**40 and (params["height"], params["width"]) == img.size


@pytest.mark.slow  # torch.compile of the step: about a minute on a 2-core CPU
def test_compile_on_draws_the_same_image(tmp_path):
    """--compile on (the compiled decode step on the CPU) gives the same image, byte for byte, as --compile off."""
    from perceiverar.decode_step import _COMPILED, set_compile_default

    base = [*RANDOM, "--prompt", "red circle", "--modality", "image", "--seed", "7"]
    try:
        assert main([*base, "--out", str(tmp_path / "off.png"), "--compile", "off"]) == 0
        assert main([*base, "--out", str(tmp_path / "on.png"), "--compile", "on"]) == 0
        assert not _COMPILED[None].failed, "the step fell back to eager"
    finally:
        set_compile_default(None)
    a, b = Image.open(tmp_path / "off.png"), Image.open(tmp_path / "on.png")
    assert a.tobytes() == b.tobytes() and a.size == b.size


LOSSLESS = Path(__file__).resolve().parents[2] / "checkpoints" / "emoji-lossless"


@pytest.mark.skipif(not (LOSSLESS / "model.safetensors").is_file(), reason="checkpoints/emoji-lossless is missing")
def test_a_prompt_longer_than_any_trained_is_flagged(tmp_path, capsys):
    """The bundled emoji-lossless checkpoint records its longest training caption (the emoji checkpoint was trained
    with long prompts too); a longer prompt still runs, with a notice."""
    from perceiverar import Pipeline

    limit = Pipeline.load(LOSSLESS).trained_prompt_tokens
    assert limit < 1000
    base = ["--checkpoint", str(LOSSLESS), "--modality", "image", "--seed", "1", "--n-latents", "64"]
    assert main([*base, "--prompt", "red apple", "--out", str(tmp_path / "a.png")]) == 0
    assert "longer than any" not in capsys.readouterr().err
    assert main([*base, "--prompt", "red apple " * (limit // 10 + 1), "--out", str(tmp_path / "b.png")]) == 0
    assert f"longer than any this checkpoint was trained with ({limit:,})" in capsys.readouterr().err
    assert Image.open(tmp_path / "b.png").size == Image.open(tmp_path / "a.png").size
