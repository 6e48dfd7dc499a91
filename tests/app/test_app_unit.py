"""Pieces of the app that need no server: options, checkpoint discovery, sizes."""

from __future__ import annotations

import pytest


def test_cli_defaults_are_local_and_private():
    from app.main import parse_args

    a = parse_args([])
    assert (a.host, a.port, a.share, a.checkpoint_dir, a.device) == ("127.0.0.1", 7860, False, [], "auto")
    b = parse_args(["--checkpoint-dir", "a", "--checkpoint-dir", "b", "--concurrency", "2", "--max-upload-kb", "64"])
    assert b.checkpoint_dir == ["a", "b"] and b.concurrency == 2 and b.max_upload_kb == 64
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"])


def test_discovery_lists_checkpoints_by_name_only(tmp_path):
    from app.service import discover_checkpoints

    for d in ("one/a", "two/a", "two/b", "two/.hidden", "two/not-a-checkpoint"):
        (tmp_path / d).mkdir(parents=True)
    for d in ("one/a", "two/a", "two/b", "two/.hidden"):
        (tmp_path / d / "config.json").write_text("{}")
    entries = discover_checkpoints([tmp_path / "one", tmp_path / "two", tmp_path / "two" / "b", tmp_path / "nope"])
    assert sorted(entries) == ["a", "a (two)", "b"]
    assert entries["a (two)"].path == (tmp_path / "two" / "a").resolve()


def test_unknown_checkpoint_never_touches_the_filesystem(tmp_path):
    import gradio as gr

    from app.service import Service

    svc = Service([tmp_path], demo=False)
    for name in ("/etc", "../../etc/passwd", str(tmp_path)):
        with pytest.raises(gr.Error, match="Unknown checkpoint"):
            svc.pipeline(name)


def test_parse_size():
    import gradio as gr

    from app.service import parse_size

    assert parse_size("32x16") == (32, 16) and parse_size(" 8 × 8 ") == (8, 8)
    with pytest.raises(gr.Error):
        parse_size("big")


def test_unloadable_checkpoints_fall_back_to_the_demo(tmp_path, monkeypatch):
    import app.service as service_mod
    import perceiverar.demo as demo_mod
    from fake_pipeline import FakePipeline

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    monkeypatch.setattr(demo_mod, "demo_pipeline", lambda **kw: FakePipeline())  # fast stand-in for the demo
    svc = service_mod.Service([tmp_path], demo="auto")
    assert svc.names == ["broken", service_mod.DEMO_NAME]  # a config.json that does not parse declares no tab
    assert svc.default_name == service_mod.DEMO_NAME
    assert svc.capabilities(service_mod.DEMO_NAME).notice.startswith("**No usable trained checkpoint")


def test_image_only_checkpoint_also_offers_the_demo_for_other_tabs(tmp_path):
    import gradio as gr

    from app.service import DEMO_NAME, Service
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    save_checkpoint(tmp_path / "pics", model, make_tokenizer_config(["image"], height=8, width=8))
    svc = Service([tmp_path], demo="auto")
    assert svc.names == ["pics", DEMO_NAME]
    assert svc.uncovered_modalities() == {"audio", "text"}
    with pytest.raises(gr.Error, match=r"not trained to generate text; pick another checkpoint: .demo"):
        next(svc.generate_text("hello", "pics", 8, 1, 0, 1.0, 0, 1.0, 1.0, None))
    # Checkpoints that cover every tab: no demo.
    save_checkpoint(tmp_path / "rest", model, make_tokenizer_config(["audio", "text"], audio_seconds=1.0))
    assert Service([tmp_path], demo="auto").names == ["pics", "rest"]


def test_checkpoints_that_make_no_media_are_not_listed(tmp_path):
    from app.service import Service
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    save_checkpoint(tmp_path / "copy", model, {"task": "copy", "symbols": 256})
    save_checkpoint(tmp_path / "words", model, make_tokenizer_config(["text"]))
    assert Service([tmp_path], demo=False).names == ["words"]


def test_default_checkpoint_fits_the_first_tab(tmp_path):
    from app.service import Service
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    save_checkpoint(tmp_path / "a-music", model, make_tokenizer_config(["audio"], audio_seconds=1.0))
    save_checkpoint(tmp_path / "b-words", model, make_tokenizer_config(["text"]))
    save_checkpoint(tmp_path / "c-pics", model, make_tokenizer_config(["image"], height=8, width=8))
    assert Service([tmp_path], demo=False).default_name == "c-pics"  # the Image tab opens first


def test_checkpoint_summary_shows_the_caption_template(tmp_path):
    from app.service import Service
    from app.ui import _md_checkpoint
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    tok = make_tokenizer_config(["image"], height=8, width=8)
    save_checkpoint(tmp_path / "plain", model, tok)
    save_checkpoint(tmp_path / "styled", model, {**tok, "caption_template": "{text}; {style} style"})
    svc = Service([tmp_path], demo=False)
    assert "`{text}; {style} style`" in _md_checkpoint(svc.capabilities("styled"), svc)
    assert "captions written as" not in _md_checkpoint(svc.capabilities("plain"), svc)
