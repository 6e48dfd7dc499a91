"""Every console script, run as a user runs it: exit status 0 on success, 2 on a usage error.

(``perceiverar-eval`` used to print its JSON and exit 1: the console-script wrapper passed main()'s dict to
sys.exit.) Each run is a real subprocess on tiny inputs: a debug-preset checkpoint and a one-document folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def _run(script: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = BIN / script
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    d = tmp_path_factory.mktemp("tiny")
    ckpt = save_checkpoint(d / "ckpt", PerceiverAR(PerceiverARConfig.preset("debug")), make_tokenizer_config(["text"]))
    docs = d / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"d{i}.txt").write_text(f"Document {i}. " + "To be, or not to be: that is the question. " * 20)
    return {"ckpt": ckpt, "docs": docs, "dir": d}


@pytest.mark.parametrize("script", ["perceiverar-app", "perceiverar-train", "perceiverar-generate", "perceiverar-eval"])
def test_help_exits_0_and_a_bad_option_exits_2(script):
    if not (BIN / script).exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    runs = [subprocess.Popen([str(BIN / script), arg], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV) for arg in ("--help", "--no-such-option")]  # both at once: startup dominates
    (help_out, _), (_, bad_err) = (p.communicate(timeout=600) for p in runs)
    assert runs[0].returncode == 0 and "usage:" in help_out
    assert runs[1].returncode == 2 and "usage:" in bad_err


def test_generate_and_eval_exit_0_on_success_and_2_on_bad_input(tiny):
    out = tiny["dir"] / "t.txt"
    ok = _run("perceiverar-generate", "--checkpoint", tiny["ckpt"], "--prompt", "hi", "--modality", "text",
              "--out", out, "--max-new-bytes", "4", "--seed", "1")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["seed"] == 1
    bad = _run("perceiverar-generate", "--checkpoint", tiny["ckpt"], "--prompt", "hi", "--modality", "text",
               "--out", out, "--top-p", "1.5")  # fmt: skip
    assert bad.returncode == 2 and "top_p must be" in bad.stderr

    res = _run("perceiverar-eval", "--checkpoint", tiny["ckpt"], "--data", tiny["docs"], "--split", "all",
               "--max-items", "1", "--max-windows", "1", "--no-speed", "--cache-dir", tiny["dir"] / "cache")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["bits_per_byte"] > 0
    missing = _run("perceiverar-eval", "--checkpoint", tiny["dir"] / "nope", "--data", tiny["docs"])
    assert missing.returncode == 2 and "perceiverar-eval: error:" in missing.stderr


def test_train_exits_0_after_a_tiny_run(tiny):
    run = tiny["dir"] / "run"
    res = _run("perceiverar-train", "--data", tiny["docs"], "--preset", "debug", "--out", run, "--max-steps", "2",
               "--batch-size", "2", "--device", "cpu", "--no-progress", "--cache-dir", tiny["dir"] / "cache",
               "--val-every", "2", "--save-every", "2", "--sample-every", "0")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(run.iterdir())


def test_app_refuses_a_gpu_it_does_not_have():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = _run("perceiverar-app", "--device", "cuda", "--no-bundled")
    assert res.returncode == 2 and "no CUDA GPU is available" in res.stderr


def test_app_serves_then_exits_0_on_sigterm_and_removes_its_output_folder(tiny, tmp_path):
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    exe = BIN / "perceiverar-app"
    proc = subprocess.Popen([str(exe), "--no-bundled", "--checkpoint-dir", str(tiny["ckpt"]), "--port", str(port),
                             "--device", "cpu", "--quiet"], env={**ENV, "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.time() < deadline, "the app did not start"
                time.sleep(1)
        assert [p.name for p in tmp.glob("perceiverar-app-*")], "the output folder should exist while serving"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not list(tmp.glob("perceiverar-app-*")), "the output folder outlived the app"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
