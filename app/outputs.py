"""The app's downloads: one folder per result under a temporary root, removed when the app exits.

The files themselves are written by ``perceiverar.media_files``, exactly as ``perceiverar-generate`` writes them
(a PNG with the prompt and settings in iTXt chunks; WAV and TXT with a sidecar JSON). Folders older than
``OUTPUT_TTL_S`` are deleted as new ones are made, so a long-running server does not fill its disk.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from perceiverar.media_files import SUFFIX, save_result

log = logging.getLogger("perceiverar.app")

OUTPUT_TTL_S = 3600  # generated downloads older than this are deleted
STEM = {"image": "image", "audio": "music", "text": "text"}


class Outputs:
    """Result folders under ``root`` (default: a new temporary folder, which ``close`` removes)."""

    def __init__(self, root: str | Path | None = None):
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="perceiverar-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _new_folder(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > OUTPUT_TTL_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        d = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d

    def save(self, modality: str, results: list, record: dict) -> list[str]:
        """Write each result with its record; returns every file written (media and sidecars)."""
        d, files = self._new_folder(), []
        for i, result in enumerate(results):
            stem = f"perceiverar-{STEM[modality]}-seed{record['seed']}" + (f"-{i + 1}" if len(results) > 1 else "")
            files += [str(p) for p in save_result(modality, d / f"{stem}{SUFFIX[modality]}", result, record, sample=i + 1)]
        return files

    def close(self) -> None:
        """Remove the temporary root (only one this object made)."""
        if self.owned and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            log.info("removed the output folder %s", self.root)
