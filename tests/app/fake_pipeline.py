"""A stand-in for ``perceiverar.pipeline.Pipeline`` with the same surface, no model: for fault injection.

``seconds_per_byte`` makes text generation slow and stoppable. ``fail`` makes every generate call raise that exception (e.g. ``torch.OutOfMemoryError``) after one progress
update, so tests can check the app turns it into a message and keeps serving.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
from PIL import Image


class FakePipeline:
    modalities = ("image", "audio", "text")

    def __init__(self, *, context_len: int = 1024, n_latents: int = 32, fail: BaseException | None = None,
                 seconds_per_byte: float = 0.0):  # fmt: skip
        cfg = SimpleNamespace(context_len=context_len, n_latents=n_latents)
        self.model = SimpleNamespace(cfg=cfg, num_params=lambda: 12345)
        self.config = {"modalities": list(self.modalities), "image": {"height": 8, "width": 8},
                                 "audio": {"seconds": 1.0}}  # fmt: skip
        self.defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "cfg_scale": 1.0}
        self.device = "cpu"
        self.fail = fail
        self.seconds_per_byte = seconds_per_byte  # > 0: text comes slowly, honouring stop_event (for Stop tests)
        self.calls = 0
        self._lock = threading.Lock()

    def count_prompt_tokens(self, prompt: str, modality: str, **size) -> int:
        return 7 + len(prompt.encode("utf-8"))  # markers + header + prompt bytes, as the real pipeline counts

    def context_budget(self, modality: str, *, height=None, width=None, seconds=None, max_new_bytes=None) -> int:
        L = self.model.cfg.context_len
        if modality == "image":
            return max(0, L - 9 - (height or 8) * (width or 8) * 3)
        if modality == "audio":
            return max(0, L - 9 - int(86 * (seconds or 1.0)))
        return max(0, L - 4 - (max_new_bytes or 64))

    def _start(self, on_progress):
        with self._lock:
            self.calls += 1
        if on_progress:
            on_progress(0.5, None)
        if self.fail is not None:
            raise self.fail

    def generate_image(self, prompt, *, height=8, width=8, num_samples=1, seed=None, on_progress=None,
                       stop_event=None, **kw):  # fmt: skip
        self._start(on_progress)
        rng = np.random.default_rng(seed)
        return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_samples)]

    def generate_audio(self, prompt, *, seconds=1.0, num_samples=1, seed=None, on_progress=None, stop_event=None, **kw):
        self._start(on_progress)
        rng = np.random.default_rng(seed)
        return [(rng.uniform(-0.5, 0.5, int(22050 * seconds)).astype(np.float32), 22050) for _ in range(num_samples)]

    def generate_text(self, prompt, *, max_new_bytes=16, num_samples=1, seed=None, on_progress=None, stop_event=None,
                      **kw):  # fmt: skip
        self._start(on_progress)
        text = ""
        for i in range(max_new_bytes):
            if stop_event is not None and stop_event.is_set():
                break
            text += "abcdefgh"[i % 8]
            if self.seconds_per_byte:
                time.sleep(self.seconds_per_byte)
                if on_progress and i % 8 == 7:
                    on_progress((i + 1) / max_new_bytes, [text] * num_samples)
        return [text] * num_samples
