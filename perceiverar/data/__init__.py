"""Training data: folders of captioned media or plain text -> a tokenized, memory-mapped cache -> random crops.

One module per job:

- ``sources``: what ``--data`` names, file discovery, modality detection, captions, the train/val split;
- ``codec``: the audio codebook, fitted once on the audio folders and cached;
- ``cache``: each folder tokenized once into a memory-mapped cache (:func:`prepare_source`, :class:`PreparedSource`);
- ``filler``: long prompts, captions buried in unrelated text (:class:`Filler`);
- ``palette``: the colour-token palette, fitted on the training images (:func:`fit_source_palette`);
- ``colour_augment``: colour tags and hue rotation that teach colour words (:class:`ColourAugment`);
- ``mirror``: left-right flips of images whose caption does not name a direction (:class:`Mirror`);
- ``rerender``: new pictures of each caption, its source image re-rendered a fraction of a pixel off (:class:`Rerender`);
- ``balance``: draws weighted against common groups, e.g. the emoji category (:func:`balanced_probs`);
- ``batches``: the weighted mixture of folders -> equal-length crop batches (:class:`Mixture`).

The public names are re-exported here: ``from perceiverar.data import Mixture, prepare_sources``.
"""

from perceiverar.data.balance import balanced_probs, parse_balance
from perceiverar.data.batches import Mixture
from perceiverar.data.cache import PreparedSource, default_cache_dir, prepare_source, prepare_sources
from perceiverar.data.codec import AUDIO_TOKENIZER_DIR, AudioCodec, fit_audio_codec, load_audio_codec
from perceiverar.data.colour_augment import ColourAugment
from perceiverar.data.filler import CAPTION_SEP, Filler, bury_caption, prompted_sequence
from perceiverar.data.mirror import Mirror
from perceiverar.data.palette import fit_source_palette
from perceiverar.data.rerender import Rerender, RerenderSpec, Rerenders, prepare_rerenders
from perceiverar.data.sources import (
    AUDIO_EXTS, CACHE_FORMAT, CAPTIONS, IMAGE_EXTS, TEXT_EXTS, VAL_PERMILLE, DatasetError, Entry, SourceSpec,
    TokenizerSettings, caption_from, detect_modality, is_val, list_entries, longest_caption, parse_data_arg,
)  # fmt: skip

__all__ = [
    "Mixture", "PreparedSource", "default_cache_dir", "prepare_source", "prepare_sources", "AUDIO_TOKENIZER_DIR",
    "AudioCodec", "fit_audio_codec", "load_audio_codec", "CAPTION_SEP", "Filler", "bury_caption", "prompted_sequence",
    "fit_source_palette", "ColourAugment", "Mirror", "balanced_probs", "parse_balance",
    "Rerender", "RerenderSpec", "Rerenders", "prepare_rerenders",
    "AUDIO_EXTS", "CACHE_FORMAT", "CAPTIONS", "IMAGE_EXTS", "TEXT_EXTS", "VAL_PERMILLE", "DatasetError", "Entry",
    "SourceSpec", "TokenizerSettings", "caption_from", "detect_modality", "is_val", "list_entries", "longest_caption",
    "parse_data_arg",
]  # fmt: skip
