"""Pipeline (prompt -> media) and the perceiverar-generate CLI on a random debug model."""

from __future__ import annotations

import json
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceiverar import Pipeline, save_checkpoint
from perceiverar.constraints import ModalityConstraint
from perceiverar.generate_cli import main as cli_main
from perceiverar.pipeline import make_tokenizer_config
from tokenizers_mm.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_audio_tokenizer():
    from tokenizers_mm.audio import AudioConfig, AudioTokenizer

    g = torch.Generator().manual_seed(0)
    return AudioTokenizer(AudioConfig(codebook_size=16, griffin_lim_iters=2, nnls_iters=2), torch.randn(16, 80, generator=g) * 10 - 30)


@pytest.fixture
def image_text_pipe(debug_model) -> Pipeline:
    return Pipeline(debug_model(), make_tokenizer_config(["image", "text"], height=4, width=5))


def test_make_tokenizer_config_format():
    cfg = make_tokenizer_config(["text", "audio", "image"], height=32, width=24, audio_seconds=5, defaults={"top_p": 0.9})
    assert cfg["vocab"] == Vocabulary().to_dict()
    assert cfg["modalities"] == ["image", "audio", "text"]
    assert cfg["image"] == {"height": 32, "width": 24}
    assert cfg["audio"] == {"dir": "audio_tokenizer", "seconds": 5.0}
    assert cfg["defaults"]["top_p"] == 0.9 and cfg["defaults"]["temperature"] == 1.0
    json.dumps(cfg)  # it goes into config.json
    with pytest.raises(ValueError):
        make_tokenizer_config(["video"])
    with pytest.raises(ValueError, match="height"):
        make_tokenizer_config(["image"])


def test_generate_image_streams_and_is_reproducible(image_text_pipe):
    pipe = image_text_pipe
    assert pipe.modalities == ["image", "text"]
    progress = []
    imgs = pipe.generate_image("a cat", num_samples=2, seed=3, on_progress=lambda f, p: progress.append((f, p)))
    assert len(imgs) == 2 and all(isinstance(i, Image.Image) and i.size == (5, 4) and i.mode == "RGB" for i in imgs)
    assert progress and progress[-1][0] == 1.0 and len(progress[0][1]) == 2
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)
    assert np.array_equal(np.asarray(progress[-1][1][0]), np.asarray(imgs[0]))
    again = pipe.generate_image("a cat", num_samples=2, seed=3)
    assert np.array_equal(np.asarray(again[1]), np.asarray(imgs[1]))
    # guidance, other sizes and unconditional (empty prompt) generation
    big = pipe.generate_image("", height=6, width=2, cfg_scale=2.0, seed=0, top_k=1)
    assert big[0].size == (2, 6)


def test_generate_image_in_sketch_mode_shows_the_sketch_first(debug_model):
    from tokenizers_mm.image import cube_palette

    pal = cube_palette()
    cfg = make_tokenizer_config(["image"], height=8, width=6, image_mode="sketch", palette=pal)
    pipe = Pipeline(debug_model(), cfg)
    tok = pipe.image_tokenizer()
    assert tok.mode == "sketch" and tok.n_sketch == 4 and tok.n_tokens == 4 + 48
    progress = []
    imgs = pipe.generate_image("a red heart", num_samples=2, seed=1, on_progress=lambda f, p: progress.append((f, p)))
    assert all(i.size == (6, 8) for i in imgs)
    # the first report is the finished sketch: 4x4 blocks (clipped at the edges) of one palette colour each
    frac, first = progress[0]
    assert frac == pytest.approx(4 / 52)
    a = np.asarray(first[0]).astype(int)
    for r0, c0 in [(0, 0), (0, 4), (4, 0), (4, 4)]:
        block = a[r0 : r0 + 4, c0 : c0 + 4].reshape(-1, 3)
        assert (block == block[0]).all() and (pal.astype(int) == block[0]).all(1).any()
    assert progress[-1][0] == 1.0 and np.array_equal(np.asarray(progress[-1][1][1]), np.asarray(imgs[1]))
    # every generated colour is a palette colour
    px = np.asarray(imgs[0]).reshape(-1, 3).astype(int)
    assert all((pal.astype(int) == c).all(1).any() for c in px)


def test_candidates_keep_the_best_scored_of_each_group(image_text_pipe):
    pipe = image_text_pipe
    kw = dict(seed=5, cfg_scale=2.0, temperature=1.5)
    previews = []
    best = pipe.generate_image("a cat", num_samples=2, candidates=3, on_progress=lambda f, p: previews.append(p), **kw)
    every = pipe.generate_image("a cat", num_samples=6, **kw)  # the same rows, none chosen
    px = lambda imgs: [np.asarray(i).tobytes() for i in imgs]
    assert len(set(px(every))) == 6
    assert px(best)[0] in px(every)[:3] and px(best)[1] in px(every)[3:]  # result i is one of group i's candidates
    assert px(previews[-1]) == px(best)
    # the kept row is the highest-scoring of its group (generate's log_probs, tested against full forward passes)
    from perceiverar.candidates import Candidates

    c = Candidates(2, 3)
    assert c.rows == 6 and torch.equal(c.chosen(), torch.tensor([0, 3]))
    c.scores[:] = torch.tensor([0.5, 2.0, -1.0, 3.0, 3.5, 1.0])
    assert torch.equal(c.chosen(), torch.tensor([1, 4]))
    assert torch.equal(c.best(torch.arange(12).view(6, 2)), torch.tensor([[2, 3], [8, 9]]))
    with pytest.raises(ValueError, match="expected 6 rows"):
        c.best(torch.zeros(5, 2))
    assert Candidates(2, 1).scores is None and torch.equal(Candidates(2, 1).best(torch.arange(2)), torch.arange(2))


def test_generate_image_cancel_returns_partial(image_text_pipe):
    stop = threading.Event()
    stop.set()
    img = image_text_pipe.generate_image("a cat", stop_event=stop)[0]
    assert np.all(np.asarray(img) == 255)  # nothing generated: all background


def test_generate_text(image_text_pipe):
    pipe = image_text_pipe
    partial = []
    texts = pipe.generate_text("Hello", max_new_bytes=20, num_samples=2, seed=0, temperature=2.0, on_progress=lambda f, t: partial.append(t))
    assert len(texts) == 2 and all(isinstance(t, str) and len(t.encode("utf-8", "surrogatepass")) <= 3 * 20 for t in texts)
    assert partial[-1] == texts
    with pytest.raises(ValueError, match="empty prompt"):
        pipe.generate_text("", max_new_bytes=5)


def test_errors_and_budget(image_text_pipe):
    pipe = image_text_pipe
    with pytest.raises(ValueError, match="not trained on 'audio'"):
        pipe.generate_audio("drums", seconds=1)
    budget = pipe.context_budget("image")
    assert budget == 256 - 7 - (4 * 5 * 3 + 2)
    assert pipe.count_prompt_tokens("ab", "image") == 9
    pipe.generate_image("x" * budget, seed=0)
    with pytest.raises(ValueError, match=rf"prompt too long: {budget + 1} prompt bytes .* at most {budget} prompt bytes fit"):
        pipe.generate_image("x" * (budget + 1))
    with pytest.warns(UserWarning, match="dropped the 1 oldest"):
        pipe.generate_image("x" * (budget + 1), overflow="truncate", seed=0)
    with pytest.raises(ValueError, match="prompt must be a str"):
        pipe.generate_image(123)


@pytest.mark.parametrize("pinned", [0, 8])
def test_prompt_note_flags_prompts_longer_than_trained(debug_model, pinned):
    """A prompt longer than the checkpoint's ``trained_prompt_tokens`` gets a notice; a model with pinned latents
    (which read a long prompt's opening) is told to put the caption first."""
    cfg = make_tokenizer_config(["image", "text"], height=4, width=5)
    cfg["trained_prompt_tokens"] = 10
    pipe = Pipeline(debug_model(pinned_latents=pinned), cfg)
    assert pipe.prompt_note("a red apple") is not None and pipe.prompt_note("red apple") is None  # 11 and 9 bytes
    note = pipe.prompt_note("a" * 40)
    assert "the prompt is 40 tokens, longer than any this checkpoint was trained with (10)" in note
    assert ("put the caption first" in note) == bool(pinned)
    pipe.generate_image("a" * 40, seed=0)  # it still runs


def test_load_checkpoint_with_audio_and_cli(debug_model, tmp_path):
    at = tiny_audio_tokenizer()
    cfg = make_tokenizer_config(["image", "audio"], height=3, width=3, audio_seconds=0.1)
    ckpt = save_checkpoint(tmp_path / "ckpt", debug_model(), cfg, extra_files=lambda d: at.save(d / "audio_tokenizer"))
    pipe = Pipeline.load(ckpt, device="auto")
    assert pipe.modalities == ["image", "audio"] and pipe.checkpoint_dir == ckpt
    (y, sr), = pipe.generate_audio("drums", seed=0)
    assert sr == 22050 and y.dtype == np.float32 and y.ndim == 1 and y.size > 0
    partial = []
    pipe.generate_audio("drums", seed=0, on_progress=lambda f, p: partial.append((f, p)))
    assert partial[-1][0] == 1.0 and np.array_equal(partial[-1][1][0][0], y)

    out = tmp_path / "out" / "a.wav"
    assert cli_main(["--checkpoint", str(ckpt), "--prompt", "drums", "--modality", "audio", "--out", str(out), "--seed", "1"]) == 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == 22050 and w.getnframes() > 0
    png = tmp_path / "i.png"
    assert cli_main(["--checkpoint", str(ckpt), "--prompt", "sun", "--modality", "image", "--out", str(png), "--top-k", "4"]) == 0
    assert Image.open(png).size == (3, 3)
    assert cli_main(["--checkpoint", str(ckpt), "--prompt", "x", "--modality", "text", "--out", str(tmp_path / "t.txt")]) == 2
    assert cli_main(["--checkpoint", str(tmp_path / "nope"), "--prompt", "x", "--modality", "image", "--out", str(png)]) == 2


def test_a_chords_checkpoint_generates_labels_and_decodes_only_the_codes(debug_model, tmp_path):
    """tokenizer.audio.mode "chords": generation lays out a chord label before every CHORD_BLOCK codes, and the
    audio (final and partial) is decoded from the codes alone: the same waveform as decoding those codes."""
    from tokenizers_mm.chords import split_chords
    from tokenizers_mm.vocab import CHORD_BLOCK

    at = tiny_audio_tokenizer()
    cfg = make_tokenizer_config(["audio"], audio_seconds=0.6, audio_mode="chords")
    assert cfg["audio"]["mode"] == "chords" and "mode" not in make_tokenizer_config(["audio"])["audio"]
    ckpt = save_checkpoint(tmp_path / "ckpt", debug_model(), cfg, extra_files=lambda d: at.save(d / "audio_tokenizer"))
    pipe = Pipeline.load(ckpt)
    assert pipe.audio_mode == "chords"
    n = at.n_tokens(0.6)
    assert n > CHORD_BLOCK  # at least two labels
    ids, n_new, kw = pipe._layout("a chorale", "audio")
    assert n_new == n + -(-n // CHORD_BLOCK) + 2 and kw["audio_mode"] == "chords"
    progress = []
    (y, sr), = pipe.generate_audio("a chorale", seed=0, on_progress=lambda f, p: progress.append((f, p)))
    assert sr == at.sample_rate and progress[-1][0] == 1.0 and np.array_equal(progress[-1][1][0][0], y)
    # the same generation through generate(): its labels and codes, and the codes alone decode to y
    out = pipe._run("audio", ids, n_new, kw, ModalityConstraint("audio", n_audio_tokens=n, audio_mode="chords",
                    content_range=(512, 512 + 16)), pipe.sampling(seed=0), pipe.candidates(pipe.sampling()), overflow="error", stop_event=None,
                    on_token=None)[0].tolist()  # fmt: skip
    chords, codes = split_chords(out[: n_new - 2])
    assert len(chords) == -(-n // CHORD_BLOCK) and len(codes) == n
    assert np.array_equal(at.decode(codes)[0], y)


def test_cli_random_init(tmp_path, capsys):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("a tiny story")
    out = tmp_path / "s.txt"
    rc = cli_main(["--random-init", "--preset", "debug", "--prompt-file", str(prompt_file), "--modality", "text",
                   "--out", str(out), "--max-new-bytes", "12", "--seed", "0"])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert "random" in capsys.readouterr().err
    assert not list(tmp_path.glob(".s.txt*"))  # the temp file was renamed into place


BACH = Path(__file__).resolve().parents[2] / "checkpoints" / "bach"


@pytest.mark.skipif(not (BACH / "model.safetensors").is_file(), reason="the bundled bach checkpoint is missing")
def test_key_lock_keeps_the_bundled_bach_checkpoints_chords_in_the_prompts_key():
    """The real chords-layout checkpoint: generate_audio's constraint with key_lock allows only the diatonic triads
    of the key the prompt names, opening on the tonic triad (all 25 labels without it, or when no key is named), and
    sampling through it at a high temperature draws only those labels, where the unlocked constraint leaves them."""
    from perceiverar.generation import generate
    from tokenizers_mm.chords import chord_name
    from tokenizers_mm.vocab import CHORD_BLOCK, CHORD_OFFSET, N_CHORDS, build_sequence

    pipe = Pipeline.load(BACH, device="cpu")
    prompt = "bach chorale in E- minor, 4/4 time"
    n = 6 * CHORD_BLOCK
    locked = pipe.audio_constraint(prompt, n, key_lock=True)
    assert {chord_name(t - CHORD_OFFSET) for t in locked.chord_ids} == {"Ebm", "Abm", "Bbm", "F#", "B", "C#", "Bb", "N"}
    assert chord_name(locked.first_chord - CHORD_OFFSET) == "Ebm"  # the tonic triad opens
    assert len(pipe.audio_constraint(prompt, n).chord_ids) == N_CHORDS
    assert len(pipe.audio_constraint("a chorale", n, key_lock=True).chord_ids) == N_CHORDS
    assert pipe.sampling().key_lock is True and pipe.sampling(key_lock=False).key_lock is False  # on by default

    ids = build_sequence(prompt, "audio", n_audio_tokens=n, complete=False, audio_mode=pipe.audio_mode)
    slots = list(range(0, n + 6, CHORD_BLOCK + 1))
    drawn = {}
    for lock in (False, True):
        out = generate(pipe.model, ids, n + 8, constraint=pipe.audio_constraint(prompt, n, key_lock=lock), seed=0,
                       num_samples=3, temperature=4.0)  # fmt: skip
        drawn[lock] = {out[r, i].item() for r in range(3) for i in slots}
        if lock:
            assert out[:, 0].tolist() == [locked.first_chord] * 3
    assert drawn[True] <= set(locked.chord_ids)
    assert drawn[False] - set(locked.chord_ids)
    with pytest.raises(ValueError, match="key_lock"):
        pipe.sampling(key_lock="yes")
