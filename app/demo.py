"""The app's demo model: a small random pipeline, so the app runs (and says so) before any checkpoint is trained.

The model is ``perceiverar.untrained.random_pipeline`` on the ``debug`` preset with a longer context. Its audio
codebook is fitted in well under a second on synthetic chords. Everything it makes is noise: the app says so.
"""

from __future__ import annotations

import numpy as np

DEMO_CONTEXT = 4096  # a 32x32 image (3,072 tokens) or ~45 s of audio fits, with room for a long prompt
DEMO_CODES = 64
DEMO_SAMPLE_RATE = 22050


def demo_audio_tokenizer(codebook_size: int = DEMO_CODES, seed: int = 0):
    """An AudioTokenizer fitted on a few seconds of synthetic chords (harmonic tones with decays)."""
    from tokenizers_mm.audio import AudioTokenizer

    rng = np.random.default_rng(seed)
    sr = DEMO_SAMPLE_RATE
    t = np.arange(int(0.5 * sr)) / sr  # (T,)
    clips = []
    for _ in range(8):
        notes = 110.0 * 2 ** (rng.integers(0, 36, size=3) / 12)  # three random semitones over A2..A5
        x = sum(np.sin(2 * np.pi * f * k * t) / k for f in notes for k in (1, 2, 3))
        clips.append(((x * np.exp(-3 * t) / 6).astype(np.float32), sr))
    # Fewer NNLS / Griffin-Lim iterations than the default: the demo's audio is noise anyway; decodes ~10x faster.
    return AudioTokenizer.fit(clips, sample_rate=sr, codebook_size=codebook_size, seed=seed, iters=5,
                              nnls_iters=10, griffin_lim_iters=8)  # fmt: skip


def demo_pipeline(*, device: str = "auto", context_len: int = DEMO_CONTEXT, image_size: tuple[int, int] = (16, 16),
                  seconds: float = 2.0, seed: int = 0, audio: bool = True):  # fmt: skip
    """A ready Pipeline over a random ``debug``-preset model for image, audio (if ``audio``) and text."""
    from perceiverar.untrained import random_pipeline

    return random_pipeline(
        "debug", device=device, modalities=["image", "text"] + (["audio"] if audio else []), image_size=image_size,
        audio_seconds=seconds if audio else None, audio_tokenizer=demo_audio_tokenizer(seed=seed) if audio else None,
        head_std=0.5, seed=seed, context_len=context_len, n_latents=min(64, context_len),
    )  # fmt: skip
