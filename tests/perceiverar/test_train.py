"""The trainer: bad arguments, a debug run whose validation loss drops, exact kill-and-resume, failed saves, DDP/FSDP."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from perceiverar import load_checkpoint
from perceiverar import rundir
from perceiverar import train as T
from perceiverar.grow import grown_layer_sources
from test_data import make_image_folder, make_text_folder, make_triad_folder
from tokenizers_mm.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"  # the same folder as tests/conftest.py's shared_data fixture
# One thread per process: the runs compared below must use the same kernels, and a shared 2-core box
# is much faster without oversubscription.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    tmp = tmp_path_factory.mktemp("data")
    img = make_image_folder(SHARED_DATA, tmp / "emoji")
    txt = make_text_folder(SHARED_DATA, tmp / "text")
    return img, txt, tmp / "cache"  # read-only for the tests; the token cache is shared by them


def train_in_process(argv) -> None:
    """T.main in this process with one thread, like the subprocesses (ENV), so the numbers are the same."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.main(argv)
    finally:
        torch.set_num_threads(n)


_SINGLE: dict = {}


def single_reference(data, tmp_path_factory, argv) -> Path:
    """The one-process run the 2-process runs are compared with (computed once per module)."""
    key = tuple(argv)
    if key not in _SINGLE:
        run = tmp_path_factory.mktemp("single") / "run"
        train_in_process(["--out", str(run), *argv, "--batch-size", "4"])
        _SINGLE[key] = run
    return _SINGLE[key]


def common(data, **over) -> list[str]:
    img, txt, cache = data
    opts = {"preset": "debug", "max-steps": 12, "image-size": 8, "cache-dir": cache, "val-every": 4, "save-every": 4,
            "sample-every": 0, "batch-size": 2, "lr": 3e-3, "warmup": 2, "val-items": 4, "val-windows": 4, **over}
    argv = ["--data", str(img), "--data", f"{txt}:0.5", "--no-progress"]
    for k, v in opts.items():
        if v is not None:
            argv += [f"--{k}", str(v)]
    return argv


def losses(run: Path, kind: str = "train") -> list[tuple[int, float]]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == kind:
            out.append((r["step"], r["loss" if kind == "train" else "val_loss"]))
    return out


def run_cli(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceiverar.train", *argv], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=240, **kw)  # fmt: skip


# -------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments(data, tmp_path, capsys):
    img, txt, cache = data
    with pytest.raises(SystemExit, match="does not exist"):
        T.main(["--data", str(tmp_path / "missing"), "--preset", "debug", "--out", str(tmp_path / "r"), "--max-steps", "1"])
    with pytest.raises(SystemExit) as e:
        T.main(["--data", str(img), "--preset", "huge", "--out", str(tmp_path / "r"), "--max-steps", "1"])
    assert e.value.code == 2 and "unknown preset 'huge'" in capsys.readouterr().err
    nocap = tmp_path / "nocap"
    shutil.copytree(img, nocap)
    (nocap / "captions.jsonl").unlink()
    with pytest.raises(SystemExit, match="no captions"):
        T.main(["--data", str(nocap), "--preset", "debug", "--out", str(tmp_path / "r"), "--max-steps", "1", "--cache-dir", str(cache)])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.png").write_text("corrupt")
    (empty / "captions.jsonl").write_text('{"file": "a.png", "text": "x"}\n')
    with pytest.raises(SystemExit, match="empty"):
        T.main(["--data", str(empty), "--preset", "debug", "--out", str(tmp_path / "r"), "--max-steps", "1", "--cache-dir", str(cache)])
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--preset", "debug", "--out", str(tmp_path / "r"), "--max-steps", "0"])
    assert "--max-steps must be >= 1" in capsys.readouterr().err
    for bad in ("8", "0:86", "x:1", "2:-1"):
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--opening-weight", bad])
        assert "--opening-weight: expected" in capsys.readouterr().err
    for bad, why in (("0.5", "expected PROB:SECONDS"), ("x:12", "expected PROB:SECONDS"), ("1.5:12", "PROB must be"),
                     ("0.5:0", "SECONDS positive")):  # fmt: skip
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--opening-clips", bad])
        assert why in capsys.readouterr().err
    for bad in ("1.5", "x", "0.5:0"):
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--rerender", bad])
        assert "--rerender:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--rerender-scale", "1.2"])
    assert "--rerender-scale must be in [0.5, 1], got 1.2" in capsys.readouterr().err
    for flag, bad, why in (("--rerender-shift", "5", "[0, 4] target pixels"), ("--rerender-rotate", "-1", "[0, 45]")):
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", flag, bad])
        assert f"{flag} must be in {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--augment-tags"])
    err = capsys.readouterr().err
    assert "--augment-tags names re-rendered and mirrored rows: it needs --rerender or --mirror" in err
    for flag, bad in (("--mirror", "1.5"), ("--recolour", "-0.1"), ("--hue-rotate", "2")):
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", flag, bad])
        assert f"{flag} must be in [0, 1], got {float(bad)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--balance", "category:2"])
    assert "POWER must be in [0, 1]" in capsys.readouterr().err
    for bad, why in (("1", "--ema must be in [0, 1)"), ("-0.5", "--ema must be in [0, 1)")):
        with pytest.raises(SystemExit):
            T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--ema", bad])
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--query-len-scale", "-1"])
    assert "--query-len-scale must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--data", str(img), "--out", str(tmp_path / "r"), "--max-steps", "1", "--pinned-latents", "-2"])
    assert "--pinned-latents must be >= 0" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- a short run


def test_debug_run_learns_and_writes_the_run(data, tmp_path):
    run = tmp_path / "run"
    train_in_process(["--out", str(run), *common(data, **{"max-steps": 40, "val-every": 20, "save-every": 20, "keep-last": 1})])
    val = losses(run, "val")
    assert [s for s, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] - 1.0, val  # nats per target token: from ~ln(5696) = 8.65 well down
    rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert {"val_bits_per_dim", "val_bits_per_byte"} <= set(rec)
    train = losses(run, "train")
    assert [s for s, _ in train] == list(range(1, 41))
    # checkpoints: keep-last 1, a loadable perceiverar checkpoint with the tokenizer config, a best copy
    ckpts = T.list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step-0000040"]
    ck = load_checkpoint(ckpts[0])
    tok = ck.tokenizer
    assert tok["modalities"] == ["image", "text"] and tok["image"] == {"height": 8, "width": 8}
    assert tok["vocab"] == Vocabulary().to_dict() and tok["defaults"]["top_p"] == 0.95
    assert ck.training["step"] == 40
    state = torch.load(ckpts[0] / T.TRAINING_STATE, weights_only=True)
    assert state["step"] == 40 and "optimizer" in state and len(state["rng"]) == 1
    best = load_checkpoint(run / "best")
    assert best.training["val_loss"] == pytest.approx(min(v for _, v in val))
    assert (run / "loss.png").stat().st_size > 1000 and (run / "run.json").is_file()
    # a second launch into the same run directory without --resume is refused
    with pytest.raises(SystemExit, match="--resume"):
        T.main(["--out", str(run), *common(data)])


def test_kill_and_resume_is_exact(data, tmp_path):
    argv = common(data, **{"max-steps": 14, "save-every": 5, "val-every": 5, "context-dropout": 0.25, "dropout": 0.1})
    ref = tmp_path / "ref"  # uninterrupted (in this process: same single-thread kernels as the subprocesses)
    train_in_process(["--out", str(ref), *argv])

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "perceiverar.train", "--out", str(killed), *argv, "--debug-step-sleep", "0.3"],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            done = (killed / "metrics.jsonl").is_file() and len(losses(killed)) >= 7
            if (killed / "checkpoints" / "step-0000005").is_dir() and done:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(losses(killed))
    assert 7 <= n_before < 14
    r = run_cli(["--out", str(killed), *argv, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    a, b = losses(ref), losses(killed)
    assert [s for s, _ in b] == list(range(1, 15))  # the lines after the checkpoint were redone, not duplicated
    for (sa, la), (sb, lb) in zip(a, b):
        assert sa == sb and abs(la - lb) <= 1e-6, (sa, la, lb)
    ref_w = load_file(str(ref / "checkpoints" / "step-0000014" / "model.safetensors"))
    new_w = load_file(str(killed / "checkpoints" / "step-0000014" / "model.safetensors"))
    for k in ref_w:
        torch.testing.assert_close(new_w[k], ref_w[k], atol=1e-6, rtol=0)


def test_ema_is_the_average_of_the_trained_weights_and_resumes_exactly(data, tmp_path):
    """--ema D: after step t the average is D * average + (1 - D) * weights (the first step copies them); it is
    what validation scores and RUN_DIR/best holds, the step checkpoints keep the trained weights, and a resume
    from an earlier checkpoint ends with the same average as an uninterrupted run."""
    decay = 0.6
    argv = common(data, **{"max-steps": 6, "save-every": 1, "val-every": 3, "keep-last": 6, "ema": decay})
    run = tmp_path / "run"
    train_in_process(["--out", str(run), *argv])
    steps = [load_file(str(run / "checkpoints" / f"step-{i:07d}" / "model.safetensors")) for i in range(1, 7)]
    avg = {k: v.clone() for k, v in steps[0].items()}
    for w in steps[1:]:
        for k in avg:
            if avg[k].is_floating_point():
                avg[k] = decay * avg[k] + (1 - decay) * w[k]
    state = torch.load(run / "checkpoints" / "step-0000006" / T.TRAINING_STATE, weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 6
    for k in avg:
        torch.testing.assert_close(state["ema"][f"module.{k}"], avg[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(avg["head.weight"], steps[-1]["head.weight"])  # the average is not the last weights
    # validation scored the average: RUN_DIR/best holds it (from step 3 or 6, whichever scored lower)
    val = dict(losses(run, "val"))
    best_step = 3 if val[3] < val[6] else 6
    best = load_file(str(run / "best" / "model.safetensors"))
    at = {k: v.clone() for k, v in steps[0].items()}
    for w in steps[1:best_step]:
        for k in at:
            if at[k].is_floating_point():
                at[k] = decay * at[k] + (1 - decay) * w[k]
    for k in at:
        torch.testing.assert_close(best[k], at[k], atol=1e-6, rtol=1e-5)
    # resume from step 3 after losing the later checkpoints: the same average at the end
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for i in range(4, 7):
        shutil.rmtree(resumed / "checkpoints" / f"step-{i:07d}")
    train_in_process(["--out", str(resumed), *argv, "--resume"])
    again = torch.load(resumed / "checkpoints" / "step-0000006" / T.TRAINING_STATE, weights_only=True)["ema"]
    for k, v in state["ema"].items():
        torch.testing.assert_close(again[k], v, atol=1e-6, rtol=0)


def test_a_palette_model_goes_on_in_sketch_mode(data, tmp_path, capsys):
    """--image-mode sketch from a palette checkpoint keeps its palette, trains the sketch (with an opening weight on
    it) and writes a sketch checkpoint that generates and evaluates; another layout than the checkpoint's is refused."""
    from perceiverar import Pipeline
    from perceiverar import evaluate as E

    img, _, cache = data
    base = tmp_path / "base"
    over = {"max-steps": 2, "val-every": 2, "save-every": 2}
    train_in_process(["--out", str(base), *common(data, **over), "--image-mode", "palette", "--palette-colours", "16"])
    src = T.list_checkpoints(base)[-1]
    sk = tmp_path / "sketch"
    train_in_process(["--out", str(sk), *common(data, **over), "--init-from", str(src), "--image-mode", "sketch",
                      "--opening-weight", "4:4", "--rerender", "0.5:2", "--rerender-scale", "1", "--rerender-shift", "0.75",
                      "--rerender-rotate", "5", "--augment-tags"])  # fmt: skip
    log = (sk / "train.log").read_text()
    assert "--rerender 0.5:2: emoji: 2 re-renders per image (moved up to 0.75 px, scaled from 1, turned up to 5 " \
        "degrees)" in log and "--augment-tags: re-rendered and" in log
    rr = [p for p in cache.glob("rerender-*") if json.loads((p / "manifest.json").read_text())["shape"][1:] == [2, 68]]
    assert len(rr) == 1  # the sketch layout's re-renders (4 sketch + 64 colour ids per image)
    assert json.loads((rr[0] / "manifest.json").read_text())["spec"] == [2, 0.75, 1.0, 5.0]  # moved and turned
    ck = T.list_checkpoints(sk)[-1]
    before, after = (json.loads((p / "config.json").read_text())["tokenizer"]["image"] for p in (src, ck))
    assert before["mode"] == "palette" and after["mode"] == "sketch" and after["palette"] == before["palette"]
    pipe = Pipeline.load(ck)
    assert pipe.image_tokenizer().n_tokens == 4 + 64
    assert pipe.generate_image("a cat", seed=0)[0].size == (8, 8)
    out = tmp_path / "eval.json"
    E.main(["--checkpoint", str(ck), "--data", str(img), "--max-items", "2", "--cache-dir", str(cache), "--no-speed",
            "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["image_mode"] == "sketch" and r["image_tokens_scored"] > 0 and r["image_tokens_scored"] % 68 == 0
    assert r["bits_per_pixel_token"] == pytest.approx(r["bits_per_dim"] * 68 / 64, abs=1e-5)  # the sketch's bits count
    with pytest.raises(SystemExit, match="trained with 'sketch'"):
        T.main(["--out", str(tmp_path / "bad"), *common(data, **over), "--init-from", str(ck),
                "--image-mode", "subpixel"])


def three_slot_copy(src: Path, dst: Path) -> Path:
    """``src`` as a checkpoint trained before the word feature slot: config and weights without the slots from the
    fourth on."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    slots = len(cfg["model"]["feature_sizes"])
    cfg["model"]["feature_sizes"] = cfg["model"]["feature_sizes"][:3]
    (dst / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(dst / "model.safetensors"))
    for slot in range(3, slots):
        del state[f"embed.features.{slot}.weight"]
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_word_features_added_to_an_older_checkpoint(data, tmp_path, capsys):
    """A checkpoint without the word slot loads and generates as it is; ``--init-from`` keeps its three slots, and
    with ``--word-features`` adds the fourth zero-initialised (``--paragraph-features``: the fourth and the fifth):
    the first validation loss is exactly the old model's, the slots then train, and the new checkpoint has four
    (five) slots and generates."""
    from perceiverar import Pipeline

    over = {"max-steps": 2, "val-every": 2, "save-every": 2}
    base = tmp_path / "base"
    train_in_process(["--out", str(base), *common(data, **over), "--image-mode", "palette", "--palette-colours", "16"])
    old = three_slot_copy(T.list_checkpoints(base)[-1], tmp_path / "old")
    assert Pipeline.load(old).generate_image("a red heart", seed=0)[0].size == (8, 8)
    runs = {}
    for name, extra in (("kept", []), ("words", ["--word-features"]), ("paragraphs", ["--paragraph-features"])):
        runs[name] = tmp_path / name
        train_in_process(["--out", str(runs[name]), *common(data, **over), "--init-from", str(old), *extra])
    kept, words, paras = (T.list_checkpoints(runs[k])[-1] for k in ("kept", "words", "paragraphs"))
    def slots(ck):
        return json.loads((ck / "config.json").read_text())["model"]["feature_sizes"]

    assert slots(kept) == [257, 257, 17] and slots(words) == [257, 257, 17, 8192]
    assert slots(paras) == [257, 257, 17, 8192, 8]
    # step 0: the same function
    assert losses(runs["kept"], "val")[0] == losses(runs["words"], "val")[0] == losses(runs["paragraphs"], "val")[0]
    emb = load_file(str(words / "model.safetensors"))["embed.features.3.weight"]
    assert emb.abs().sum() > 0, "the word embedding should have trained"
    emb = load_file(str(paras / "model.safetensors"))["embed.features.4.weight"]
    assert emb[1].abs().sum() > 0, "the first paragraph's embedding should have trained"
    assert "feature slots [257, 257, 17] -> [257, 257, 17, 8192]" in (runs["words"] / "train.log").read_text()
    assert "feature slots [257, 257, 17] -> [257, 257, 17, 8192, 8]" in (runs["paragraphs"] / "train.log").read_text()
    for ck in (words, paras):
        assert Pipeline.load(ck).generate_image("a red heart", seed=0)[0].size == (8, 8)


def test_add_layers_grows_a_checkpoint_from_the_same_function(data, tmp_path, capsys):
    """``--init-from CKPT --add-layers 2``: the grown model's first validation loss is exactly the checkpoint's (the
    new blocks start as zero updates), their output projections then train, and the checkpoint it writes has
    two more layers and generates. Without --init-from, or below zero, the flag is refused."""
    from perceiverar import Pipeline

    over = {"max-steps": 2, "val-every": 2, "save-every": 2}
    base = tmp_path / "base"
    train_in_process(["--out", str(base), *common(data, **over)])
    src = T.list_checkpoints(base)[-1]
    runs = {}
    for name, extra in (("kept", []), ("deeper", ["--add-layers", "2"])):
        runs[name] = tmp_path / name
        train_in_process(["--out", str(runs[name]), *common(data, **over), "--init-from", str(src), *extra])
    n = load_checkpoint(src).config.n_layers
    deeper = T.list_checkpoints(runs["deeper"])[-1]
    assert load_checkpoint(deeper).config.n_layers == n + 2
    assert losses(runs["kept"], "val")[0] == losses(runs["deeper"], "val")[0]  # step 0: the same function
    assert losses(runs["kept"], "train")[0] == losses(runs["deeper"], "train")[0]
    w = load_file(str(deeper / "model.safetensors"))
    new = [k for k, (_, fresh) in enumerate(grown_layer_sources(n, 2)) if fresh]
    assert all(w[f"blocks.{k}.wo.weight"].abs().sum() > 0 for k in new), "the new blocks' projections should train"
    assert f"latent layers {n} -> {n + 2}" in (runs["deeper"] / "train.log").read_text()
    assert Pipeline.load(deeper).generate_image("a red heart", seed=0)[0].size == (8, 8)
    for bad, why in ((["--add-layers", "2"], "give the checkpoint with --init-from"),
                     (["--add-layers", "-1", "--init-from", str(src)], "--add-layers must be >= 0")):  # fmt: skip
        with pytest.raises(SystemExit):
            T.main(["--out", str(tmp_path / "bad"), *common(data, **over), *bad])
        assert why in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_codes_model_goes_on_in_chords_mode(tmp_path):
    """--audio-mode chords from a codes checkpoint keeps its codebook, trains chord labels (weighted) before
    every block of codes and writes a chords checkpoint that generates and evaluates; going back is refused."""
    from perceiverar import Pipeline
    from perceiverar import evaluate as E
    from perceiverar.data import PreparedSource
    from tokenizers_mm.vocab import CHORD_BLOCK, CHORD_OFFSET, split_sequence

    clips, cache = make_triad_folder(tmp_path / "clips"), tmp_path / "cache"
    opts = ["--data", str(clips), "--preset", "debug", "--cache-dir", str(cache), "--max-steps", "2", "--val-every",
            "2", "--save-every", "2", "--sample-every", "0", "--batch-size", "2", "--val-items", "2", "--no-progress",
            "--audio-codebook-size", "8", "--audio-fit-files", "6", "--context-len", "256", "--n-latents", "64"]  # fmt: skip
    base = tmp_path / "base"
    train_in_process(["--out", str(base), *opts])
    src = T.list_checkpoints(base)[-1]
    ch = tmp_path / "chords"
    train_in_process(["--out", str(ch), *opts, "--init-from", str(src), "--audio-mode", "chords", "--chord-weight", "4"])
    ck = T.list_checkpoints(ch)[-1]
    before, after = (json.loads((p / "config.json").read_text())["tokenizer"]["audio"] for p in (src, ck))
    assert "mode" not in before and after["mode"] == "chords"
    assert (ck / "audio_tokenizer" / "codebook.safetensors").read_bytes() == (src / "audio_tokenizer" / "codebook.safetensors").read_bytes()
    caches = [PreparedSource(d) for d in cache.glob("audio-*") if (d / "manifest.json").is_file()]
    chords_src = next(c for c in caches if c.manifest["n_tokens"] == max(x.manifest["n_tokens"] for x in caches))
    p = split_sequence(chords_src.item(0))
    assert p.audio_mode == "chords" and p.complete
    labels = p.target[:: CHORD_BLOCK + 1]
    assert len(labels) == -(-p.n_audio_tokens // CHORD_BLOCK) and all(CHORD_OFFSET <= c < CHORD_OFFSET + 25 for c in labels)
    # the clip is one sustained triad: its inner blocks all get its label
    assert len(set(labels[1:-1])) == 1, labels
    pipe = Pipeline.load(ck)
    (y, sr), = pipe.generate_audio("triad 1", seconds=0.6, seed=0)
    assert sr == 22050 and y.size > 0
    out = tmp_path / "eval.json"
    E.main(["--checkpoint", str(ck), "--data", str(clips), "--cache-dir", str(cache), "--no-speed", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["audio_mode"] == "chords" and r["bits_per_audio_code"] == pytest.approx(r["bits_per_token"] * 23 / 22, abs=1e-5)
    with pytest.raises(SystemExit, match="trained with chord labels"):
        T.main(["--out", str(tmp_path / "bad"), *opts, "--init-from", str(ck), "--audio-mode", "codes"])


def test_init_from_fine_tunes_with_buried_captions(data, tmp_path, capsys):
    img, txt, cache = data
    base = tmp_path / "base"
    train_in_process(["--out", str(base), *common(data, **{"max-steps": 4, "val-every": 4})])
    src = T.list_checkpoints(base)[-1]
    # lr 0 (and so no weight decay): the fine-tuned weights must be exactly the checkpoint's, in a longer context
    tuned = tmp_path / "tuned"
    argv = ["--data", str(img), "--init-from", str(src), "--context-len", "512", "--query-len-scale", "64",
            "--pinned-latents", "24", "--filler", f"{txt}:0.6",
            "--filler-lengths", "log", "--filler-tokens", "400",
            *common(data, **{"max-steps": 6, "val-every": 6, "save-every": 6, "lr": 0, "min-lr": 0})[4:]]
    train_in_process(["--out", str(tuned), *argv])
    assert "weights from" in capsys.readouterr().err
    ck = load_checkpoint(T.list_checkpoints(tuned)[-1])
    before = load_checkpoint(src)
    assert ck.config.query_len_scale == 64 and before.config.query_len_scale == 0
    assert ck.config.pinned_latents == 24 and before.config.pinned_latents == 0
    assert ck.config.context_len == 512 and ck.config.width == before.config.width and ck.config.n_layers == before.config.n_layers
    for k, v in before.model.state_dict().items():
        torch.testing.assert_close(ck.model.state_dict()[k], v, atol=0, rtol=0)
    # the buried-caption batches are longer than any 8x8 emoji item (~230 tokens): the filler was used
    recs = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    lens = [n for r in recs for n in r["seq_len"]]
    assert max(lens) > 300, lens
    # --filler-tokens 400: a buried batch over 200 tokens keeps one of its two rows, and the token count says so
    assert all(r["tokens"] == (1 if r["seq_len"][0] > 200 else 2) * (r["seq_len"][0] - 1) for r in recs), recs
    run_args = json.loads((tuned / "run.json").read_text())
    assert run_args["init_from"] == str(src) and run_args["filler"].endswith(":0.6")
    with pytest.raises(SystemExit, match="--init-from"):
        T.main(["--out", str(tmp_path / "bad"), "--data", str(img), "--init-from", str(tmp_path / "nowhere"),
                *common(data, **{"max-steps": 1})[4:]])
    with pytest.raises(SystemExit, match=".txt documents"):
        T.main(["--out", str(tmp_path / "bad2"), "--data", str(img), "--filler", str(img),
                *common(data, **{"max-steps": 1})[4:]])


def test_failed_save_keeps_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real, calls = rundir.save_checkpoint, []

    def flaky(directory, *a, **kw):
        calls.append(Path(directory).name)
        if Path(directory).name == "step-0000008":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, *a, **kw)

    monkeypatch.setattr(rundir, "save_checkpoint", flaky)
    train_in_process(["--out", str(run), *common(data)])  # saves at 4, 8 (fails), 12
    err = capsys.readouterr().err
    assert "step-0000008 failed (disk full)" in err and "step-0000004 is intact" in err and "training continues" in err
    assert [c.name for c in T.list_checkpoints(run)] == ["step-0000004", "step-0000012"]
    assert load_checkpoint(run / "checkpoints" / "step-0000004").training["step"] == 4
    assert "step-0000008 failed" in (run / "train.log").read_text()
    assert not any(p.name.startswith(".step-0000008") for p in (run / "checkpoints").iterdir())  # no temp left

    # a failing final save ends the run with an error status after saying so
    run2 = tmp_path / "run2"
    monkeypatch.setattr(rundir, "save_checkpoint", lambda d, *a, **k: (_ for _ in ()).throw(PermissionError(13, "read-only", str(d))))
    with pytest.raises(SystemExit) as e:
        T.main(["--out", str(run2), *common(data, **{"max-steps": 2})])
    assert e.value.code == 1 and "final checkpoint could not be saved" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_gloo_matches_single_process(data, tmp_path, tmp_path_factory, mode):
    argv = common(data, **{"max-steps": 4, "save-every": 4, "val-every": 2, "grad-accum": 2})
    single = single_reference(data, tmp_path_factory, argv)
    multi = tmp_path / mode
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "perceiverar.train",
           "--out", str(multi), *argv, "--batch-size", "2"] + (["--fsdp"] if mode == "fsdp" else [])  # fmt: skip
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"world 2 ({mode.upper()})" in r.stderr and "global batch 8 sequences" in r.stderr
    for kind in ("train", "val"):
        a, b = losses(single, kind), losses(multi, kind)
        assert len(a) == len(b) > 1
        for (sa, la), (sb, lb) in zip(a, b):
            assert sa == sb and abs(la - lb) <= 1e-5, (kind, sa, la, lb)
    # one writer: a single metrics line per step, one checkpoint, loadable on one process
    assert len(losses(multi)) == 4
    ck = load_checkpoint(multi / "checkpoints" / "step-0000004")
    ref = load_checkpoint(single / "checkpoints" / "step-0000004")
    # Sharded gradients are summed in another order; Adam divides each update by its gradient's RMS, so a weight
    # whose gradient is near zero (a token id seen once, a unit that hardly fired) can take a step of another size:
    # up to lr (3e-3) per step. Seen: 1.07e-5 on 1 of 16,384 weights; with another initialisation 5.5e-4 on 4 of
    # 1.46 M token-embedding weights and 6.3e-4 on 18 of 16,384 MLP weights. All but 0.5% of each tensor must
    # agree to 3e-5 (the losses above agree to 1e-5).
    for k, v in ref.model.state_dict().items():
        diff = (ck.model.state_dict()[k] - v).abs()
        loose = diff > 3e-5 + 1e-4 * v.abs()
        assert int(loose.sum()) <= max(4, v.numel() // 200), (k, int(loose.sum()), float(diff.max()))
        assert float(diff.max()) <= 4 * 3e-3, (k, float(diff.max()))


# -------------------------------------------------------------------------------------- resuming safely


def test_resume_refuses_a_different_model_or_data(data, tmp_path, capsys):
    img, txt, cache = data
    run = tmp_path / "run"
    argv = common(data, **{"max-steps": 2, "val-every": 2, "save-every": 2})
    train_in_process(["--out", str(run), *argv])
    for change, named in [({"context-len": 128}, "--context-len 128 (run.json: not given)"),
                          ({"preset": "small"}, "--preset small (run.json: debug)"),
                          ({"image-size": 16}, "--image-size 16 (run.json: 8)"),
                          ({"seed": 3}, "--seed 3 (run.json: 0)")]:  # fmt: skip
        with pytest.raises(SystemExit, match="would change what") as e:
            T.main(["--out", str(run), *common(data, **{"max-steps": 4, **change}), "--resume"])
        assert named in str(e.value), e.value
    with pytest.raises(SystemExit, match=r"--data \S+emoji \(run\.json: \S+emoji \S+text:0\.5\)"):
        T.main(["--out", str(run), "--data", str(img), *common(data, **{"max-steps": 4})[4:], "--resume"])
    # how it trains may change: more steps, another batch size and learning rate
    train_in_process(["--out", str(run), *common(data, **{"max-steps": 4, "lr": 1e-3, "batch-size": 1}), "--resume"])
    assert "resumed from" in capsys.readouterr().err and len(losses(run)) == 4
    # options the command leaves out are the first launch's (preset, image size, batch size...), not the defaults
    train_in_process(["--out", str(run), "--data", str(img), "--data", f"{txt}:0.5", "--max-steps", "6", "--resume"])
    assert len(losses(run)) == 6
    ck = load_checkpoint(T.list_checkpoints(run)[-1])
    assert ck.config.width == 64 and ck.tokenizer["image"]["height"] == 8  # the debug preset, 8x8 images
    # machine settings follow the command, named or not: a run launched with --compile resumes without it
    args = T.parse_args(["--out", str(run), "--data", str(img), "--max-steps", "8", "--resume"])
    assert rundir.resume_differences({"compile": True, "lr": 0.5, "preset": "debug"}, args) == []
    assert args.compile is False and args.lr == 0.5 and args.preset == "debug"
    # augmentation strengths may change in a later stretch; named ones are the command's, the rest run.json's
    args = T.parse_args(["--out", str(run), "--data", str(img), "--max-steps", "8", "--recolour", "0.25",
                         "--mirror", "0.5", "--resume"])  # fmt: skip
    old = {"hue_rotate": 0.25, "colour_tags": 0.5, "mirror": 0.0, "recolour": 0.0, "preset": "debug"}
    assert rundir.resume_differences(old, args) == []
    assert (args.recolour, args.mirror, args.hue_rotate, args.colour_tags) == (0.25, 0.5, 0.25, 0.5)


def test_resume_falls_back_past_a_damaged_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = common(data, **{"max-steps": 8, "val-every": 4, "save-every": 4})
    train_in_process(["--out", str(run), *argv])
    ckpts = T.list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step-0000004", "step-0000008"]
    w = ckpts[-1] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # a save cut short by a full disk, say
    longer = common(data, **{"max-steps": 9, "val-every": 4, "save-every": 4})
    train_in_process(["--out", str(run), *longer, "--resume"])
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "step-0000008" in err and "truncated" in err
    assert "resumed from" in err and "step-0000004 at step 4" in err
    assert load_checkpoint(run / "checkpoints" / "step-0000009").training["step"] == 9

    # a training state that asks to unpickle arbitrary objects is refused, never run
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for c in T.list_checkpoints(run):
        torch.save({"step": 1, "optimizer": Evil()}, c / T.TRAINING_STATE)
    (T.list_checkpoints(run)[0] / T.TRAINING_STATE).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(SystemExit, match="none of the 3 checkpoints") as e:
        T.main(["--out", str(run), *common(data, **{"max-steps": 10}), "--resume"])
    assert "not loaded" in str(e.value) and "corrupt or truncated" in str(e.value)


def test_disk_full_is_named_and_failed_launches_leave_no_run_dir(data, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    # safetensors reports ENOSPC as a SafetensorError (not an OSError) with the OS error in its message
    def full(directory, *a, **kw):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')  # fmt: skip

    run = tmp_path / "run"
    monkeypatch.setattr(rundir, "save_checkpoint", full)
    with pytest.raises(SystemExit):
        T.main(["--out", str(run), *common(data, **{"max-steps": 2})])
    assert "step-0000002 failed (disk full): SafetensorError" in capsys.readouterr().err
    monkeypatch.undo()
    # rewriting metrics.jsonl on --resume with the disk full: a message, and metrics.jsonl unharmed
    train_in_process(["--out", str(run / "ok"), *common(data, **{"max-steps": 2, "save-every": 2})])
    before = (run / "ok" / "metrics.jsonl").read_text()
    real_write = Path.write_text

    def write_text(self, text, *a, **kw):
        if self.name == "metrics.tmp":
            real_write(self, text[:10], *a, **kw)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SystemExit, match=r"cannot rewrite .*metrics.jsonl \(disk full\)"):
        T.main(["--out", str(run / "ok"), *common(data, **{"max-steps": 3}), "--resume"])
    monkeypatch.undo()
    assert (run / "ok" / "metrics.jsonl").read_text() == before and not (run / "ok" / "metrics.tmp").exists()
    # a first launch that fails on its data leaves no run directory behind
    bad = tmp_path / "new-run"
    with pytest.raises(SystemExit, match="does not exist"):
        T.main(["--out", str(bad), "--data", str(tmp_path / "missing"), *common(data)[4:]])
    assert not bad.exists()


_KILL_DURING_SAVE = """
import os, signal, sys
from perceiverar import checkpoint
stage, name, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if not exchange:  # the two-rename fallback of filesystems without renameat2(RENAME_EXCHANGE)
    checkpoint._exchange = lambda a, b: False
def hook(at, final):
    if at == stage and final.name == name:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint._save_hook = hook
from perceiverar.train import main
main(sys.argv[4:])
"""


def _leftovers(run: Path) -> list[str]:
    return [p.name for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]


def test_kill_during_saves_then_resume_loses_nothing(data, tmp_path):
    """kill -9 a run at each stage of a save (a step checkpoint, then `best`, with the atomic exchange and with
    the two-rename fallback); each --resume repairs what the kill left, and the run ends with `best` and the
    last step loadable and no temp folders."""
    run = tmp_path / "run"
    argv = ["--out", str(run), *common(data, **{"max-steps": 8, "val-every": 1, "save-every": 2, "val-items": 2,
                                               "val-windows": 2, "keep-last": 2})]  # fmt: skip
    kills = [("written", "step-0000004", "1"), ("swapped", "best", "1"), ("staged", "best", "0"),
             ("detached", "best", "0")]  # (every stage of both paths is covered in-process by test_checkpoint)
    for i, (stage, name, exchange) in enumerate(kills):
        cmd = [sys.executable, "-c", _KILL_DURING_SAVE, stage, name, exchange, *argv, *(["--resume"] if i else [])]
        r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert r.returncode == -signal.SIGKILL, (stage, name, r.stderr[-2000:])
        assert _leftovers(run), (stage, name)  # the kill left a temp folder for the next launch to deal with
        if stage == "detached":
            assert not (run / "best").exists()  # between the two renames: no best until the next launch repairs it
    r = run_cli([*argv, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "restored" in r.stderr or "removed the leftover" in r.stderr
    assert _leftovers(run) == []
    best = load_checkpoint(run / "best")
    last = load_checkpoint(T.list_checkpoints(run)[-1])
    assert last.training["step"] == 8 and best.training["val_loss"] == pytest.approx(min(v for _, v in losses(run, "val")))
