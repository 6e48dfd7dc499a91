"""Perceiver AR: long-context autoregressive generation of images, music and text."""

from perceiverar.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from perceiverar.config import PRESETS, PerceiverARConfig
from perceiverar.generation import generate
from perceiverar.model import PerceiverAR

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CheckpointError",
    "PerceiverAR",
    "PerceiverARConfig",
    "load_checkpoint",
    "save_checkpoint",
]
