"""One app server for all app tests: tiny random demo model, a fault-injecting fake, and checkpoint folders.

Checkpoints served (names are what clients pass as ``checkpoint``):
    tiny      random debug model (context 1024) for image 8x8, 0.5 s audio, text: the default
    good      a real checkpoint folder (text only) loaded through Pipeline.load
    broken    a folder with config.json but no weights
    vanished  a valid checkpoint folder that the ``vanished_checkpoint`` fixture deletes
    oom       a fake pipeline whose every generation raises torch.OutOfMemoryError
    slow      a fake pipeline whose text comes at 50 bytes/s and stops on request
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "app"


@dataclass
class Server:
    url: str
    service: object
    checkpoints: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_text_checkpoint(path: Path) -> None:
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    save_checkpoint(path, model, make_tokenizer_config(["text"], defaults={"max_new_bytes": 24}))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> Server:
    import torch
    from fake_pipeline import FakePipeline

    from app.main import create_app, launch
    from app.service import Service
    from perceiverar.demo import demo_pipeline

    ckpts = tmp_path_factory.mktemp("checkpoints")
    _save_text_checkpoint(ckpts / "good")
    _save_text_checkpoint(ckpts / "vanished")
    (ckpts / "broken").mkdir()
    (ckpts / "broken" / "config.json").write_text(json.dumps(json.loads((ckpts / "good" / "config.json").read_text())))

    def tiny():
        return demo_pipeline(device="cpu", context_len=1024, image_size=(8, 8), seconds=0.5)

    def oom():
        return FakePipeline(fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))

    service = Service([ckpts], device="cpu", demo=False, max_upload_kb=4, default="tiny",
                      pipelines={"tiny": tiny, "oom": oom, "slow": lambda: FakePipeline(seconds_per_byte=0.02)},
                      output_dir=tmp_path_factory.mktemp("outputs"))  # fmt: skip
    demo = create_app(service, concurrency=2)
    _, url, _ = launch(demo, service, host="127.0.0.1", port=_free_port(), block=False, quiet=True)
    yield Server(url=url, service=service, checkpoints=ckpts)
    demo.close()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


@pytest.fixture
def vanished_checkpoint(app_server) -> str:
    shutil.rmtree(app_server.checkpoints / "vanished", ignore_errors=True)
    return "vanished"
