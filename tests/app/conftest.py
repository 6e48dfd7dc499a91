"""App servers for the app tests, on the real bundled checkpoints.

``app_server`` (one per session) serves ``checkpoints/`` (emoji, bach, shakespeare: each tab's default) plus:
    broken     a text checkpoint folder with config.json but no weights
    vanished   a small valid text checkpoint that the ``vanished_checkpoint`` fixture deletes
    oom        the demo pipeline wrapped so every generation raises torch.OutOfMemoryError (a real one is
               impractical to provoke)
``start_app`` starts more servers (one checkpoint only, say) and closes them at the end of the test.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from app_testing import free_port, save_debug_checkpoint

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "checkpoints"
ARTIFACTS = ROOT / "test-artifacts" / "app"


@dataclass
class Server:
    url: str
    service: object
    demo: object


class OutOfMemory:
    """A real pipeline whose generations fail the way a full GPU does."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def _fail(self, *args, **kwargs):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    generate_image = generate_audio = generate_text = _fail


def serve(service, *, concurrency: int = 1) -> Server:
    from app.main import create_app, launch

    demo = create_app(service, concurrency=concurrency)
    _, url, _ = launch(demo, service, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    return Server(url=url, service=service, demo=demo)


@pytest.fixture(scope="session")
def bundled() -> Path:
    missing = [n for n in ("emoji", "bach", "shakespeare") if not (BUNDLED / n / "model.safetensors").is_file()]
    if missing:
        pytest.skip(f"bundled checkpoints missing: {missing}")
    return BUNDLED


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_server(bundled, tmp_path_factory) -> Server:
    from app.demo import demo_pipeline
    from app.service import Service

    extras = tmp_path_factory.mktemp("checkpoints")
    save_debug_checkpoint(extras / "vanished")
    save_debug_checkpoint(extras / "broken")
    (extras / "broken" / "model.safetensors").unlink()
    oom = OutOfMemory(demo_pipeline(device="cpu", context_len=1024, image_size=(8, 8), seconds=0.5))
    service = Service([bundled, extras], device="cpu", demo=False, max_upload_kb=4, pipelines={"oom": oom},
                      output_dir=tmp_path_factory.mktemp("outputs"))  # fmt: skip
    server = serve(service, concurrency=2)
    yield server
    server.demo.close()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


@pytest.fixture
def start_app():
    """start_app(folders, **service_kw) -> Server; closed after the test."""
    from app.service import Service

    started = []

    def start(folders, **kw):
        service = Service(folders, device="cpu", **kw)
        started.append(serve(service))
        return started[-1]

    yield start
    for s in started:
        s.demo.close()
        s.service.close()


@pytest.fixture
def vanished_checkpoint(app_server) -> str:
    folder = app_server.service.catalogue.entries["vanished"].path
    shutil.rmtree(folder, ignore_errors=True)
    return "vanished"
