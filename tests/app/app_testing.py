"""Helpers shared by the app tests and their conftest (a module of its own: every conftest is named 'conftest',
so ``from conftest import ...`` picks whichever directory's conftest was imported last in a full run)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_debug_checkpoint(path: Path, modalities=("text",), **tok) -> Path:
    """A random debug-preset checkpoint that makes ``modalities`` (tokenizer options such as height=4, width=4)."""
    from perceiverar import PerceiverAR, PerceiverARConfig, save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config

    model = PerceiverAR(PerceiverARConfig.preset("debug"))
    return save_checkpoint(path, model, make_tokenizer_config(modalities, **tok))
