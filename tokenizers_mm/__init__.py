"""Modality tokenizers: text bytes, RGB pixels and audio codes in one id space and one sequence layout.

Data flows file -> tokenizer -> ids -> (model) -> ids -> tokenizer -> media; see ``tokenizers_mm.ids`` for
the id ranges, ``tokenizers_mm.vocab`` for the layout and ``tokenizers_mm.features`` for the position features.
"""

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.text import TextTokenizer
from tokenizers_mm.vocab import (
    AUDIO_BEGIN, AUDIO_CODES, AUDIO_END, AUDIO_FREQ_BANDS, AUDIO_OFFSET, BOS, EOS, FEATURE_SIZES, IMAGE_BEGIN,
    IMAGE_END, MAX_AUDIO_TOKENS, MAX_IMAGE_SIDE, N_FEATURES, NUM_OFFSET, NUM_VALUES, PAD, PALETTE_BEGIN, PIXEL_OFFSET, SEP,
    SKETCH_BEGIN, SPECIAL_OFFSET, TEXT_BEGIN, TEXT_END, TEXT_OFFSET, VOCAB_SIZE, FeatureTracker, ParsedSequence, Vocabulary,
    allowed_range, build_sequence, modality_of, position_features, split_sequence, token_name,
)  # fmt: skip

__all__ = [
    "TextTokenizer", "ImageTokenizer", "AudioTokenizer", "AudioConfig", "render_midi", "load_audio", "Vocabulary", "ParsedSequence", "FeatureTracker", "TokenizerError",
    "build_sequence", "split_sequence", "position_features", "allowed_range", "modality_of", "token_name",
    "TEXT_OFFSET", "PIXEL_OFFSET", "AUDIO_OFFSET", "AUDIO_CODES", "NUM_OFFSET", "NUM_VALUES", "SPECIAL_OFFSET",
    "PAD", "BOS", "EOS", "TEXT_BEGIN", "TEXT_END", "IMAGE_BEGIN", "IMAGE_END", "AUDIO_BEGIN", "AUDIO_END", "SEP", "PALETTE_BEGIN", "SKETCH_BEGIN",
    "VOCAB_SIZE", "N_FEATURES", "FEATURE_SIZES", "AUDIO_FREQ_BANDS", "MAX_IMAGE_SIDE", "MAX_AUDIO_TOKENS",
]  # fmt: skip

# The audio tokenizer pulls in torchaudio and librosa (seconds to import): load it on first use, so that
# ``import perceiverar.config`` or an image-only program never pays for it.
_AUDIO_NAMES = ("AudioConfig", "AudioTokenizer")
_AUDIO_FILE_NAMES = ("load_audio", "render_midi")


def __getattr__(name: str):
    if name in _AUDIO_NAMES:
        from tokenizers_mm import audio  # noqa: PLC0415

        return getattr(audio, name)
    if name in _AUDIO_FILE_NAMES:
        from tokenizers_mm import audio_files  # noqa: PLC0415

        return getattr(audio_files, name)
    raise AttributeError(f"module 'tokenizers_mm' has no attribute {name!r}")
