"""End to end through gradio_client on the real bundled checkpoints: each endpoint, outputs, errors, Stop."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

TEXT_OK = dict(prompt="ROMEO.\n", max_new_bytes=8, api_name="/generate_text")


def _text_ok(client) -> None:
    text, files, status = client.predict(**TEXT_OK)
    assert "Done" in status and files


def _cancel(jobs, service, timeout: float = 60.0) -> None:
    """Cancel client jobs and wait until none runs. A loaded machine (CI's 2 cores) may answer a cancel after
    gradio_client's 5 s HTTP timeout: the server still cancels, so a timed-out request is not a failure here;
    what is checked is that the worker is freed."""
    import httpx

    for job in jobs:
        try:
            job.cancel()
        except httpx.TimeoutException:
            pass
    deadline = time.time() + timeout
    while service.runner.running and time.time() < deadline:
        time.sleep(0.1)
    assert not service.runner.running, "a cancelled generation kept running"


def test_each_endpoint_uses_its_own_default_checkpoint(client):
    """No checkpoint given: image from emoji, music from bach, text from shakespeare (the README's calls)."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    defaults = {name: {p["parameter_name"]: p["parameter_default"] for p in api[name]["parameters"]}
                for name in ("/generate_image", "/generate_music", "/generate_text")}  # fmt: skip
    assert [defaults[n]["checkpoint"] for n in defaults] == ["emoji", "bach", "shakespeare"]
    assert defaults["/generate_music"]["seconds"] == 12 and defaults["/generate_text"]["max_new_bytes"] == 256
    assert all(d["n_latents"] == 0 and d["seed"] == -1 for d in defaults.values())  # 0 = as trained, -1 = random

    text, files, status = client.predict(prompt="ROMEO.\n", max_new_bytes=12, seed=2**40, api_name="/generate_text")
    meta = json.loads(open([f for f in files if f.endswith(".json")][0], encoding="utf-8").read())
    assert meta["checkpoint"] == "shakespeare" and meta["seed"] == 2**40 and "seed **1099511627776**" in status
    assert meta["n_latents"] == 512 and meta["max_new_bytes"] == 12 and meta["generator"] == "perceiverar-app"
    assert open([f for f in files if f.endswith(".txt")][0], encoding="utf-8").read() == text
    assert 0 < len(text.encode("utf-8", "surrogatepass")) <= 12

    audio, files, status = client.predict(prompt="bach chorale in G major, 4/4 time", seconds=0.5, seed=7,
                                          api_name="/generate_music")  # fmt: skip
    wave, sr = sf.read(audio)
    assert sr == 22050 and abs(len(wave) / sr - 0.5) < 0.05 and np.std(wave) > 1e-4
    meta = json.loads(open([f for f in files if f.endswith(".json")][0], encoding="utf-8").read())
    assert (meta["checkpoint"], meta["seconds"], meta["seed"], meta["sample_rate"]) == ("bach", 0.5, 7, 22050)
    assert meta["n_latents"] == 1024  # bach's own trained number, not the image model's
    audio, files, status = client.predict(prompt="bach chorale in E- minor", seconds=0.5, seed=7, key_lock=True,
                                          api_name="/generate_music")  # fmt: skip
    meta = json.loads(open([f for f in files if f.endswith(".json")][0], encoding="utf-8").read())
    assert meta["key_lock"] is True and meta["locked_key"] == "E- minor" and "key lock: E- minor" in status

    gallery, files, status = client.predict(prompt="red apple; food & drink", seed=3, n_latents=32, candidates=2,
                                            api_name="/generate_image")  # fmt: skip
    img = Image.open(files[0])
    meta = json.loads(img.text["parameters"])
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (meta["width"], meta["height"])
    assert img.text["prompt"] == "red apple; food & drink" and meta["checkpoint"] == "emoji"
    assert (meta["seed"], meta["n_latents"], meta["sample"], meta["candidates"]) == (3, 32, 1, 2) and len(gallery) == 1
    assert "best of 2" in status


def test_a_long_prompt_with_its_caption_first_makes_an_image(client, shared_data):
    """A caption opening 3,000 bytes of other text, through the app with the bundled emoji (whose pinned latents
    read the opening, and whose windows slide over the long prompt): a finished 16x16 image, not blank."""
    filler = (shared_data / "shakespeare" / "lovers_complaint_gut.txt").read_text(encoding="utf-8")[5000:8000]
    prompt = "red heart\n\n" + filler
    gallery, files, status = client.predict(prompt=prompt, seed=1, api_name="/generate_image")
    img = Image.open(files[0])
    meta = json.loads(img.text["parameters"])
    assert "Done" in status and meta["checkpoint"] == "emoji" and img.size == (16, 16) and len(gallery) == 1
    assert np.asarray(img.convert("RGB")).std() > 10
    assert img.text["prompt"] == prompt  # the whole prompt is recorded with the image


def test_same_seed_same_text_and_two_samples(client):
    kw = dict(prompt="HAMLET.\n", max_new_bytes=16, seed=11, temperature=0.8, top_k=40, top_p=0.9,
              api_name="/generate_text")  # fmt: skip
    a, _, _ = client.predict(**kw)
    b, _, _ = client.predict(**kw)
    assert a == b
    two, files, status = client.predict(**{**kw, "num_samples": 2})
    assert "── sample 2 ──" in two and len([f for f in files if f.endswith(".txt")]) == 2


def test_three_clients_at_once(app_server):
    from gradio_client import Client

    results, errors = {}, []

    def run(i):
        try:
            c = Client(app_server.url, verbose=False)
            text, files, status = c.predict(prompt=f"KING {i}.\n", max_new_bytes=8, seed=i, api_name="/generate_text")
            results[i] = json.loads(open(files[1], encoding="utf-8").read())["seed"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize(
    "kwargs, parameter, message",
    [
        (dict(prompt="   ", api_name="/generate_image"), "prompt", "The prompt is empty"),
        (dict(prompt="", api_name="/generate_text"), "prompt", "The prompt is empty"),
        (dict(prompt="x" * 70_000, api_name="/generate_text"), "prompt", "has room for"),
        (dict(prompt="hi", temperature=100, api_name="/generate_text"), "temperature",
         "temperature must be between 0 and 2 (0 = greedy), got 100"),
        (dict(prompt="hi", top_p=1.5, api_name="/generate_music"), "top_p", "top_p must be between 0.05 and 1"),
        (dict(prompt="hi", top_k=-2, api_name="/generate_text"), "top_k", "top_k must be between 0 and 256"),
        (dict(prompt="hi", cfg_scale=11, api_name="/generate_image"), "cfg_scale", "between 0 and 10"),
        (dict(prompt="hi", num_samples=9, api_name="/generate_text"), "num_samples", "between 1 and 4, got 9"),
        (dict(prompt="hi", seed=1.5, api_name="/generate_text"), "seed", "seed must be a whole number"),
        (dict(prompt="hi", seed=-7, api_name="/generate_text"), "seed", "-1 = random"),
        (dict(prompt="hi", seed=10**23, api_name="/generate_text"), "seed", "between -1 and 9,223,372,036,854,775,807"),
        (dict(prompt="hi", seed="abc", api_name="/generate_text"), "seed", "got 'abc'"),
        (dict(prompt="hi", n_latents=5000, api_name="/generate_text"), "n_latents",
         "n_latents must be between 0 and 1,024 (0 = as trained: 512), got 5,000"),
        (dict(prompt="hi", size="64x64", api_name="/generate_image"), "size", "size must be one of"),
        (dict(prompt="hi", seconds=10_000, api_name="/generate_music"), "seconds", "seconds must be between 0.5 and"),
        (dict(prompt="hi", max_new_bytes=0, api_name="/generate_text"), "max_new_bytes", "between 1 and"),
        (dict(prompt="hi", checkpoint="emoji", api_name="/generate_text"), "checkpoint",
         "Checkpoint 'emoji' was not trained to generate text; pick 'shakespeare'"),
        (dict(prompt="hi", checkpoint="broken", api_name="/generate_text"), "checkpoint", "could not be loaded"),
        (dict(prompt="hi", checkpoint="../../../etc/passwd", api_name="/generate_text"), "checkpoint",
         "Unknown checkpoint '../../../etc/passwd'"),
    ],
    ids=["empty-image", "empty-text", "over-context", "temperature", "top-p", "top-k", "cfg", "samples", "seed-float",
         "seed-negative", "seed-huge", "seed-text", "latents", "size", "seconds", "bytes", "wrong-medium", "broken",
         "path"],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_setting(client, capfd, kwargs, parameter, message):
    from gradio_client.exceptions import ValidationError

    capfd.readouterr()
    with pytest.raises(ValidationError) as info:
        client.predict(**kwargs)
    assert f"- {parameter}: " in str(info.value) and message in str(info.value), str(info.value)
    _text_ok(client)
    assert "Traceback" not in capfd.readouterr().err  # a visitor's mistake is one log line, not a traceback


def test_bad_requests_are_refused_before_queueing(app_server, client):
    """An empty prompt behind a long job is refused at once, not after the job."""
    from gradio_client.exceptions import ValidationError

    busy = [client.submit(prompt="KING.\n", max_new_bytes=3000, api_name="/generate_text") for _ in range(3)]
    try:
        deadline = time.time() + 30
        while not app_server.service.runner.running and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(ValidationError, match="The prompt is empty"):
            client.predict(prompt="", api_name="/generate_text")
        assert time.perf_counter() - t0 < 5
    finally:
        _cancel(busy, app_server.service)


def test_out_of_memory_and_missing_checkpoint(client, capfd, vanished_checkpoint):
    from gradio_client.exceptions import AppError, ValidationError

    with pytest.raises(AppError, match="Out of memory"):
        client.predict(prompt="hi", checkpoint="oom", max_new_bytes=4, api_name="/generate_text")
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(ValidationError, match="is missing"):
        client.predict(prompt="hi", checkpoint=vanished_checkpoint, api_name="/generate_text")
    _text_ok(client)


def test_stop_keeps_the_partial_result(app_server):
    """Stop (service.stop for the session) ends a real run early; the partial text is saved and recorded."""
    service = app_server.service
    _cancel([], service)  # nothing left over from an earlier test
    req, errors = service.check("text", dict(prompt="KING.\n", checkpoint="shakespeare", max_new_bytes=3000,
                                             num_samples=1, seed=5, temperature=1.0, top_k=0, top_p=1.0,
                                             cfg_scale=1.0, n_latents=0, candidates=1))  # fmt: skip
    assert not errors
    t0 = time.perf_counter()
    for kind, *rest in service.run(req, session="s-stop"):
        if kind == "progress":
            service.stop("s-stop")
        else:
            texts, files, record = rest
    assert record["stopped"] is True and time.perf_counter() - t0 < 60
    assert 0 < len(texts[0].encode("utf-8", "surrogatepass")) < 3000
    assert json.loads(open(files[1], encoding="utf-8").read())["stopped"] is True
    assert service.runner.running == 0


def test_client_cancel_frees_the_worker(app_server, client):
    service = app_server.service
    job = client.submit(prompt="KING.\n", max_new_bytes=3000, api_name="/generate_text")
    deadline = time.time() + 30
    while not service.runner.running and time.time() < deadline:
        time.sleep(0.05)
    assert service.runner.running, "generation never started"
    _cancel([job], service)
    _text_ok(client)


def test_live_token_count(app_server):
    service = app_server.service
    ok = service.token_count("text", "hello", "shakespeare", 16)
    assert ok.startswith("**5 / ") and "prompt tokens" in ok
    assert "over" in service.token_count("text", "x" * 70_000, "shakespeare", 16)
    assert "Unknown checkpoint" in service.token_count("text", "hi", "/etc/passwd", 16)
    limit = service.catalogue.pipeline("emoji-lossless").trained_prompt_tokens  # its longest caption
    assert limit and "longer than any" not in service.token_count("image", "red apple", "emoji-lossless", "16x16")
    long = service.token_count("image", "a" * (limit + 1), "emoji-lossless", "16x16")
    assert f"the prompt is {limit + 1:,} tokens, longer than any this checkpoint was trained with ({limit:,})" in long
    assert "put the caption first" not in long  # it has no pinned latents
    # the bundled emoji was trained with prompts up to its context: no notice there, and the notice names it
    assert "longer than any" not in service.token_count("image", "a" * (limit + 1), "emoji", "16x16")
    assert "**emoji** was trained with prompts this long" in long
    assert "longer than any" not in service.token_count("text", "x" * 5_000, "shakespeare", 16)  # any text, any length
