"""Perceiver AR: long-context autoregressive generation of images, music and text."""

from perceiverar.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from perceiverar.config import PRESETS, PerceiverARConfig
from perceiverar.decode_step import set_compile_default
from perceiverar.generation import generate
from perceiverar.model import PerceiverAR
from perceiverar.pipeline import Pipeline

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CheckpointError",
    "PerceiverAR",
    "PerceiverARConfig",
    "Pipeline",
    "generate",
    "load_checkpoint",
    "save_checkpoint",
    "set_compile_default",
]
