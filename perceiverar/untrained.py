"""A randomly initialised pipeline: ``perceiverar-generate --random-init`` and the app's demo model.

Its output head gets small random weights (the real initialisation zeroes it, which would make every sample
uniform noise of one kind). Everything it makes is noise; callers say so.
"""

from __future__ import annotations

import torch

from perceiverar.config import PerceiverARConfig
from perceiverar.model import PerceiverAR
from perceiverar.pipeline import Pipeline, make_tokenizer_config, resolve_device


def random_pipeline(preset: str = "debug", *, device: str | torch.device = "auto", modalities=("image", "text"),
                    image_size: tuple[int, int] = (8, 8), audio_seconds: float | None = None, audio_tokenizer=None,
                    head_std: float = 0.02, seed: int = 0, **overrides) -> Pipeline:  # fmt: skip
    """A Pipeline over a random ``preset`` model (``overrides``: config fields such as context_len).

    Audio needs ``audio_tokenizer`` (an AudioTokenizer). The same ``seed`` gives the same weights.
    """
    cfg = PerceiverARConfig.preset(preset, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PerceiverAR(cfg)
    with torch.no_grad():
        model.head.weight.normal_(0.0, head_std, generator=g)
    model.to(resolve_device(device))
    if "audio" in modalities and audio_tokenizer is None:
        raise ValueError("a random pipeline that makes audio needs an audio_tokenizer")
    tok_cfg = make_tokenizer_config(modalities, height=image_size[0], width=image_size[1], audio_seconds=audio_seconds)
    return Pipeline(model, tok_cfg, audio_tokenizer=audio_tokenizer)
