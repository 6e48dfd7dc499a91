"""End to end through gradio_client: each endpoint, decoded outputs, concurrency, errors, Stop."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

TEXT_OK = dict(prompt="Once upon a time", checkpoint="tiny", max_new_bytes=16, api_name="/generate_text")


def _text_ok(client) -> None:
    text, files, status = client.predict(**TEXT_OK)
    assert "Done" in status and files


def test_generate_image_png_with_metadata(client):
    gallery, files, status = client.predict(
        prompt="A red apple on a white table", checkpoint="tiny", size="8x8", num_samples=2, seed=1234,
        temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.5, n_latents=16, api_name="/generate_image",
    )  # fmt: skip
    assert len(gallery) == 2 and len(files) == 2, (gallery, files)
    assert "seed **1234**" in status
    for i, path in enumerate(files):
        img = Image.open(path)
        assert img.format == "PNG" and img.size == (8, 8) and img.mode == "RGB"
        assert np.asarray(img).std() > 0, "the image is one flat colour"
        assert img.text["prompt"] == "A red apple on a white table"
        meta = json.loads(img.text["parameters"])
        assert meta["seed"] == 1234 and meta["cfg_scale"] == 1.5 and meta["n_latents"] == 16
        assert (meta["height"], meta["width"], meta["sample"], meta["checkpoint"]) == (8, 8, i + 1, "tiny")
    # the same seed and settings give the same images
    gallery2, files2, _ = client.predict(
        prompt="A red apple on a white table", checkpoint="tiny", size="8x8", num_samples=2, seed=1234,
        temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.5, n_latents=16, api_name="/generate_image",
    )  # fmt: skip
    a, b = np.asarray(Image.open(files[0])), np.asarray(Image.open(files2[0]))
    assert np.array_equal(a, b)


def test_generate_music_wav_and_sidecar(client):
    audio, files, status = client.predict(
        prompt="A slow chorale in G major", checkpoint="tiny", seconds=0.5, num_samples=1, seed=7,
        api_name="/generate_music",
    )  # fmt: skip
    wave, sr = sf.read(audio)
    assert sr == 22050
    assert abs(len(wave) / sr - 0.5) < 0.05, len(wave) / sr
    assert np.std(wave) > 1e-4, "silent audio"
    wavs = [f for f in files if f.endswith(".wav")]
    sidecars = [f for f in files if f.endswith(".json")]
    assert len(wavs) == 1 and len(sidecars) == 1
    meta = json.loads(open(sidecars[0], encoding="utf-8").read())
    assert meta["prompt"] == "A slow chorale in G major" and meta["seconds"] == 0.5 and meta["seed"] == 7
    assert meta["sample_rate"] == 22050 and meta["modality"] == "audio"


def test_generate_text_and_sidecar(client):
    text, files, status = client.predict(
        prompt="Dear diary, today I ", checkpoint="tiny", max_new_bytes=24, num_samples=1, seed=3,
        temperature=0.8, top_k=40, top_p=0.9, api_name="/generate_text",
    )  # fmt: skip
    assert isinstance(text, str) and len(text) > 0 and len(text.encode("utf-8", "surrogatepass")) <= 24 * 3
    assert len(set(text)) > 1, "constant text"
    txt = [f for f in files if f.endswith(".txt")][0]
    meta = json.loads(open([f for f in files if f.endswith(".json")][0], encoding="utf-8").read())
    assert open(txt, encoding="utf-8").read() == text
    assert meta["prompt"] == "Dear diary, today I " and meta["max_new_bytes"] == 24 and meta["top_k"] == 40


def test_real_checkpoint_folder_loads(client):
    text, files, status = client.predict(prompt="Hello", checkpoint="good", max_new_bytes=8, seed=1,
                                         api_name="/generate_text")  # fmt: skip
    assert "Done" in status and isinstance(text, str)


def test_three_clients_at_once(app_server):
    from gradio_client import Client

    results, errors = {}, []

    def run(i):
        try:
            c = Client(app_server.url, verbose=False)
            gallery, files, status = c.predict(prompt=f"client {i}", checkpoint="tiny", size="8x8", seed=i,
                                               api_name="/generate_image")  # fmt: skip
            results[i] = Image.open(files[0]).size
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {0: (8, 8), 1: (8, 8), 2: (8, 8)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="   ", checkpoint="tiny", api_name="/generate_image"), "prompt is empty"),
        (dict(prompt="", checkpoint="tiny", api_name="/generate_text"), "prompt is empty"),
        (dict(prompt="x" * 5000, checkpoint="tiny", max_new_bytes=16, api_name="/generate_text"), "has room for"),
        (dict(prompt="x" * 900, checkpoint="tiny", size="8x8", api_name="/generate_image"), "has room for"),
        (dict(prompt="hi", checkpoint="broken", api_name="/generate_text"), "could not be loaded"),
        (dict(prompt="hi", checkpoint="oom", api_name="/generate_image"), "Out of memory"),
        (dict(prompt="hi", checkpoint="tiny", size="64x64", api_name="/generate_image"), "cannot make a 64x64"),
        (dict(prompt="hi", checkpoint="good", api_name="/generate_image"), "not trained to generate images"),
        (dict(prompt="hi", checkpoint="tiny", num_samples=9, api_name="/generate_text"), "maximum value 4"),
        (dict(prompt="hi", checkpoint="good", max_new_bytes=1000, api_name="/generate_text"), "Length must be"),
        (dict(prompt="hi", checkpoint="../../../etc/passwd", api_name="/generate_text"), "passwd"),
    ],
    ids=["empty-image", "empty-text", "over-context-text", "over-context-image", "broken-checkpoint", "oom",
         "bad-size", "wrong-modality", "bad-samples", "too-long-for-checkpoint", "path-as-checkpoint"],
)  # fmt: skip
def test_errors_are_explained_and_the_app_keeps_serving(client, kwargs, message):
    with pytest.raises(Exception) as info:
        client.predict(**kwargs)
    assert message in str(info.value), str(info.value)
    _text_ok(client)


def test_missing_checkpoint(client, vanished_checkpoint):
    with pytest.raises(Exception, match="is missing"):
        client.predict(prompt="hi", checkpoint=vanished_checkpoint, api_name="/generate_text")
    _text_ok(client)


def test_stop_button_path_stops_the_worker(app_server):
    """Stop (service.stop for the session) ends the run early with a partial result."""
    service = app_server.service
    run = service.generate_text("Once", "tiny", 900, 1, 5, 1.0, 0, 1.0, 1.0, 16, session="s-stop")
    t0 = time.perf_counter()
    for kind, *rest in run:
        if kind == "progress":
            service.stop("s-stop")
        else:
            texts, files, settings = rest
    assert settings["stopped"] is True
    assert 0 < len(texts[0].encode("utf-8", "surrogatepass")) < 900 * 3
    assert time.perf_counter() - t0 < 30
    assert "s-stop" not in service._active


def test_client_cancel_frees_the_worker(app_server, client):
    service = app_server.service
    job = client.submit(prompt="Once", checkpoint="tiny", max_new_bytes=900, api_name="/generate_text")
    deadline = time.time() + 30
    while not service._active and time.time() < deadline:
        time.sleep(0.05)
    assert service._active, "generation never started"
    job.cancel()
    deadline = time.time() + 20
    while service._active and time.time() < deadline:
        time.sleep(0.1)
    assert not service._active, "the generation kept running after the client cancelled"
    _text_ok(client)


def test_prompt_upload_rules(app_server, tmp_path):
    import gradio as gr

    service = app_server.service
    good = tmp_path / "prompt.md"
    good.write_text("# A long prompt\n\nwith ünïcode", encoding="utf-8")
    assert service.read_prompt_file(str(good)) == "# A long prompt\n\nwith ünïcode"
    cases = {
        "binary.txt": (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
        "latin1.txt": ("café".encode("latin-1"), "not UTF-8"),
        "big.txt": (b"a" * 5000, "limited to 4 KB"),
        "image.png": (b"hello", ".txt or .md"),
        "empty.md": (b"  \n", "empty"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(gr.Error, match=message):
            service.read_prompt_file(str(tmp_path / name))


def test_live_token_count(app_server):
    service = app_server.service
    ok = service.token_count("text", "hello", "tiny", max_new_bytes=16)
    assert ok.startswith("**5 / ") and "prompt tokens" in ok
    over = service.token_count("image", "x" * 900, "tiny", size="8x8")
    assert "over" in over
    assert "Unknown checkpoint" in service.token_count("text", "hi", "/etc/passwd")
