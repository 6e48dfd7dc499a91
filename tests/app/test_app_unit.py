"""Pieces of the app that need no server: options, the catalogue, request checks, slider ranges, outputs."""

from __future__ import annotations

import gradio as gr
import pytest
from app_testing import free_port, save_debug_checkpoint


def test_cli_defaults_are_local_and_private():
    from app.main import parse_args

    a = parse_args([])
    assert (a.host, a.port, a.share, a.checkpoint_dir, a.device) == ("127.0.0.1", 7860, False, [], "auto")
    b = parse_args(["--checkpoint-dir", "a", "--checkpoint-dir", "b", "--concurrency", "2", "--max-upload-kb", "64"])
    assert b.checkpoint_dir == ["a", "b"] and b.concurrency == 2 and b.max_upload_kb == 64
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"])
    assert a.compile == "auto" and parse_args(["--compile", "on"]).compile == "on"
    with pytest.raises(SystemExit):
        parse_args(["--compile", "yes"])


def test_discovery_lists_checkpoints_by_name_only(tmp_path):
    from app.catalogue import discover_checkpoints

    for d in ("one/a", "two/a", "two/b", "two/.hidden", "two/not-a-checkpoint"):
        (tmp_path / d).mkdir(parents=True)
    for d in ("one/a", "two/a", "two/b", "two/.hidden"):
        (tmp_path / d / "config.json").write_text("{}")
    found = discover_checkpoints([tmp_path / "one", tmp_path / "two", tmp_path / "two" / "b", tmp_path / "nope"])
    assert sorted(found) == ["a", "a (two)", "b"]
    assert found["a (two)"] == (tmp_path / "two" / "a").resolve()


def test_unknown_checkpoint_never_touches_the_filesystem(tmp_path):
    from app.catalogue import Catalogue, CheckpointUnavailable

    cat = Catalogue([tmp_path], demo=False)
    for name in ("/etc", "../../etc/passwd", str(tmp_path)):
        with pytest.raises(CheckpointUnavailable, match="Unknown checkpoint"):
            cat.pipeline(name)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One debug checkpoint per medium, one that makes none (the copy task), one unreadable."""
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint

    d = tmp_path_factory.mktemp("mixed")
    save_debug_checkpoint(d / "a-pics", ["image"], height=4, width=4)
    save_debug_checkpoint(d / "b-words", ["text"])
    save_checkpoint(d / "c-copy", PerceiverAR(PerceiverARConfig.preset("debug")), {"task": "copy", "symbols": 256})
    (d / "d-broken").mkdir()
    (d / "d-broken" / "config.json").write_text("{not json")
    return d


def test_each_tab_lists_what_makes_its_medium(mixed):
    from app.catalogue import DEMO_NAME, Catalogue

    cat = Catalogue([mixed], device="cpu", demo="auto")
    assert cat.names("image") == ["a-pics"] and cat.names("text") == ["b-words"]
    assert cat.names("audio") == [DEMO_NAME]  # nothing makes music: the demo, with a notice saying what to add
    assert cat.default("image") == "a-pics" and cat.default("audio") == DEMO_NAME
    assert "makes music" in cat.notice(DEMO_NAME, "audio") and cat.notice("a-pics", "image") == ""
    assert "c-copy" not in cat.entries and "d-broken" in cat.problems  # not listed, and the log says why
    off = Catalogue([mixed], device="cpu", demo=False)
    assert off.names("audio") == [] and off.default("audio") is None
    assert "No checkpoint here makes music" in off.notice(None, "audio")
    every = Catalogue([mixed], device="cpu", demo=True)
    assert every.names("image") == ["a-pics", DEMO_NAME]


def test_checkpoint_dir_folders_come_first(mixed, tmp_path):
    from app.catalogue import Catalogue

    save_debug_checkpoint(tmp_path / "mine", ["text"])
    assert Catalogue([tmp_path, mixed], device="cpu").default("text") == "mine"


def test_unloadable_checkpoints_fall_back_to_the_demo(tmp_path):
    from app.catalogue import DEMO_NAME, Catalogue

    save_debug_checkpoint(tmp_path / "words", ["text"])
    (tmp_path / "words" / "model.safetensors").unlink()
    cat = Catalogue([tmp_path], device="cpu", demo="auto")
    assert cat.names("text") == ["words"]
    assert cat.default("text") == DEMO_NAME and DEMO_NAME in cat.names("text")


def _values(**kw):
    base = dict(prompt="hello", checkpoint="b-words", max_new_bytes=8, num_samples=1, seed=-1, temperature=1.0,
                top_k=0, top_p=1.0, cfg_scale=1.0, n_latents=0, candidates=1)  # fmt: skip
    return {**base, **kw}


def test_request_checks_name_each_bad_setting(mixed):
    from app.service import Service

    svc = Service([mixed], device="cpu", demo=False)
    req, errors = svc.check("text", _values(seed=2**40, n_latents=0))
    assert not errors and req.sampling.seed == 2**40 and req.sampling.n_latents == 32 and req.size == {"max_new_bytes": 8}
    req, errors = svc.check("text", _values(seed=-1))
    assert 0 <= req.sampling.seed < 2**31  # a random seed, picked now and recorded
    _, errors = svc.check("text", _values(prompt=" ", temperature=float("inf"), top_p=0, num_samples=1.5,
                                          checkpoint="a-pics"))  # fmt: skip
    assert set(errors) == {"prompt", "temperature", "top_p", "num_samples", "checkpoint"}
    assert errors["temperature"] == "temperature must be a number between 0 and 2 (0 = greedy), got inf"
    assert errors["checkpoint"] == "Checkpoint 'a-pics' was not trained to generate text; pick 'b-words'."
    _, errors = svc.check("text", _values(max_new_bytes=10**6, n_latents=65))
    assert "max_new_bytes must be between 1 and" in errors["max_new_bytes"]
    assert errors["n_latents"] == "n_latents must be between 0 and 64 (0 = as trained: 32), got 65"
    _, errors = svc.check("text", _values(candidates=9))
    assert errors == {"candidates": "candidates must be between 1 and 8 (1 = off), got 9"}
    req, errors = svc.check("text", _values(candidates=3))
    assert not errors and req.sampling.candidates == 3
    _, errors = svc.check("image", _values(checkpoint="a-pics", size="8x8"))
    assert errors == {"size": "size must be one of 4x4 for checkpoint 'a-pics', got '8x8'"}
    svc.close()


def test_music_requests_take_a_key_lock_switch(bundled):
    """/generate_music's twelfth value: left out, the checkpoint's default (bach's config); true/false as sent;
    anything else named. Which key it locks to is the prompt's."""
    from app.requests import params
    from app.service import Service
    from perceiverar import Pipeline

    assert params("audio")[-1] == "key_lock" and "key_lock" not in params("text")
    svc = Service([bundled], device="cpu", demo=False)
    base = dict(prompt="bach chorale in B- major", checkpoint="bach", seconds=1, num_samples=1, seed=1, temperature=1.0,
                top_k=0, top_p=1.0, cfg_scale=1.0, n_latents=0, candidates=1)  # fmt: skip
    default = bool(Pipeline.load(bundled / "bach", device="cpu").defaults.get("key_lock"))
    req, errors = svc.check("audio", base)
    assert not errors and req.sampling.key_lock is default
    for value in (True, False):
        req, errors = svc.check("audio", {**base, "key_lock": value})
        assert not errors and req.sampling.key_lock is value
    _, errors = svc.check("audio", {**base, "key_lock": "maybe"})
    assert errors == {"key_lock": "key_lock must be true or false, got 'maybe'"}
    pipe = svc.catalogue.pipeline("bach")
    assert pipe.locked_key(base["prompt"]) == "B- major" and pipe.locked_key("a chorale") is None
    svc.close()


def test_slider_ranges_follow_each_checkpoint(bundled, mixed):
    """Every widget and every checkpoint-change update is one Gradio accepts (minimum < maximum)."""
    from app.service import Service
    from app.ui import _sampling_widgets, _size_widget, checkpoint_controls, checkpoint_updates

    svc = Service([bundled, mixed], device="cpu", demo=True)
    with gr.Blocks():  # one Blocks: each costs ~0.4 s to close
        for modality in ("image", "audio", "text"):
            for name in svc.names(modality):
                caps = svc.capabilities(name)
                size = _size_widget(modality, caps)
                ctl = _sampling_widgets(caps, {"audio": "music"}.get(modality, modality))
                targets = [None, None, size, None, *(ctl[k] for k in checkpoint_controls(modality))]
                updates = checkpoint_updates(svc, modality, name)
                assert len(updates) == len(targets)
                for widget, update in zip(targets, updates):
                    if widget is not None:  # what Gradio does with an update: a widget from the merged arguments
                        args = {**widget.constructor_args, **{k: v for k, v in update.items() if k != "__type__"}}
                        type(widget)(**args)  # raises if Gradio refuses it
    bach = svc.capabilities("bach")
    assert bach.max_seconds % 0.5 == 0 and 12 <= bach.max_seconds < 2000 and bach.default_seconds == 12
    assert bach.max_latents == 2048 and svc.capabilities("emoji").max_latents == 1024
    svc.close()


def test_widgets_leave_the_range_check_to_the_service():
    from app.widgets import dropdown, number, slider

    with gr.Blocks():
        assert slider(0, 4, step=1).preprocess(9) == 9 and number(precision=0).preprocess(1.5) == 1.5
        assert dropdown(["a"]).preprocess("b") == "b"


def test_output_folder_is_removed_on_close(tmp_path):
    from app.outputs import Outputs

    out = Outputs()
    (out.root / "x").mkdir()
    out.close()
    assert not out.root.exists()
    kept = Outputs(tmp_path / "mine")
    kept.close()
    assert kept.root.exists()  # a folder the caller gave is the caller's


def test_app_and_cli_write_the_same_records(tmp_path):
    """The app's downloads and perceiverar-generate's files carry the same keys (the CLI says who made it)."""
    import json

    from PIL import Image

    from app.outputs import Outputs
    from perceiverar.generate_cli import main as cli_main
    from perceiverar.media_files import generation_record
    from perceiverar.sampling_options import SamplingOptions

    assert cli_main(["--random-init", "--prompt", "sun", "--modality", "image", "--out", str(tmp_path / "c.png"),
                     "--seed", "4"]) == 0  # fmt: skip
    cli = json.loads(Image.open(tmp_path / "c.png").text["parameters"])
    record = generation_record(prompt="sun", modality="image", checkpoint="x", sampling=SamplingOptions(seed=4).resolved({}, 8),
                               size={"height": 8, "width": 8}, generator="perceiverar-app", untrained_demo=False, stopped=False)  # fmt: skip
    [png] = Outputs(tmp_path / "app").save("image", [Image.open(tmp_path / "c.png")], record)
    app = json.loads(Image.open(png).text["parameters"])
    assert set(cli) | {"untrained_demo", "stopped"} == set(app)
    assert Image.open(png).text["prompt"] == Image.open(tmp_path / "c.png").text["prompt"] == "sun"


def test_launch_restarts_a_server_that_did_not_answer_in_time(tmp_path, monkeypatch):
    """Gradio stops when its new server does not answer one 3 s request (a loaded CPU): the app starts it again."""
    import gradio.networking as networking

    from app.main import create_app, launch
    from app.service import Service

    real, calls = networking.url_ok, []
    monkeypatch.setattr(networking, "url_ok", lambda url: bool(calls.append(url)) or (len(calls) > 1 and real(url)))
    svc = Service([tmp_path], device="cpu", demo="auto")
    demo = create_app(svc)
    try:
        _, url, _ = launch(demo, svc, port=free_port(), block=False, quiet=True)
        assert len(calls) == 2 and real(url)
    finally:
        demo.close()
        svc.close()


def test_runner_answers_a_close_within_one_interval_even_without_progress():
    """A generation silent for seconds (a long prefill) still yields every interval, so closing the stream (a
    client's cancel, which waits for the current step of the iterator) is quick and stops the worker."""
    import threading
    import time

    from app.runner import STREAM_INTERVAL_S, Runner

    seen_stop = threading.Event()

    def silent(on_progress, stop):
        on_progress(0.25)
        for _ in range(200):  # 10 s unless stopped
            if stop.wait(0.05):
                seen_stop.set()
                return "stopped"
        return "finished"

    runner = Runner()
    stream = runner.run(silent, session="s")
    t0 = time.perf_counter()
    first = [next(stream) for _ in range(3)]  # one real update, then two ticks with the last fraction
    assert [kind for kind, _ in first] == ["progress"] * 3 and first[1][1] == (0.25, None) == first[2][1]
    assert time.perf_counter() - t0 < 10 * STREAM_INTERVAL_S and runner.running == 1
    t1 = time.perf_counter()
    stream.close()
    assert time.perf_counter() - t1 < 2 * STREAM_INTERVAL_S and runner.running == 0
    assert seen_stop.wait(2.0), "the worker was not told to stop"
