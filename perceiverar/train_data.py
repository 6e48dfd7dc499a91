"""What a training run trains on: the tokenized sources, the image layout and the checkpoints' tokenizer config.

:func:`prepare_data` turns ``--data`` and ``--filler`` into sources in the token cache (rank 0 tokenizes, the
other ranks then find its cache); a fine-tune (``--init-from``) keeps its checkpoint's audio codebook, image
layout and palette, because its weights know those ids. :func:`tokenizer_config` is the ``tokenizer`` section
the checkpoints' config.json records. The loop that uses them is ``perceiverar.train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiverar.checkpoint import read_checkpoint_config
from perceiverar.config import PerceiverARConfig
from perceiverar.data import (
    AUDIO_TOKENIZER_DIR, AudioCodec, DatasetError, Filler, PreparedSource, SourceSpec, TokenizerSettings,
    RerenderSpec, default_cache_dir, detect_modality, fit_source_palette, load_audio_codec, parse_data_arg,
    prepare_rerenders, prepare_source, prepare_sources,
)  # fmt: skip
from perceiverar.distributed import Dist
from perceiverar.train_args import audio_options


@dataclass
class TrainingData:
    """What :func:`prepare_data` made: the settings the sources were tokenized with, the sources, the audio
    codebook (None without audio) and the filler text (None without ``--filler``)."""

    settings: TokenizerSettings
    sources: list[PreparedSource]
    codec: AudioCodec | None
    filler: Filler | None
    rerenders: list  # per source: its re-renders (--rerender) or None


def prepare_data(args, dd: Dist, log) -> TrainingData:
    """Tokenize the ``--data`` folders (and ``--filler``) into the cache: rank 0 first, then the other ranks find
    it. Settles ``args.audio_codebook_size`` and ``args.image_mode`` (a fine-tune keeps its checkpoint's), so
    run.json and the checkpoints record what was used."""
    a = args
    specs = [parse_data_arg(d, a.modality) for d in a.data]
    h = a.image_size[0]
    w = a.image_size[1] if len(a.image_size) > 1 else h
    codec = None
    if a.init_from and (Path(a.init_from) / AUDIO_TOKENIZER_DIR).is_dir():
        codec = load_audio_codec(Path(a.init_from) / AUDIO_TOKENIZER_DIR)  # the weights know these codes
        a.audio_codebook_size = codec.tokenizer.codebook_size  # so run.json and the checkpoint say so
    settings = TokenizerSettings(image_height=h, image_width=w, audio_codebook_size=a.audio_codebook_size,
                                 audio_fit_files=a.audio_fit_files, caption_template=a.caption_template,
                                 audio_options=audio_options(getattr(a, "audio_option", [])))  # fmt: skip
    cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
    _image_layout(a, specs, settings, cache, log if dd.main else (lambda m: None))
    _audio_layout(a, settings)
    filler_spec, filler_prob = None, 0.5
    if a.filler:
        filler_spec = parse_data_arg(a.filler)
        if filler_spec.path != Path(a.filler).expanduser().resolve():  # DIR:PROB
            filler_prob = filler_spec.weight
        kind = detect_modality(filler_spec.path)
        if kind != "text":
            raise DatasetError(f"--filler {a.filler}: needs a folder of .txt documents, but it holds {kind} files")
        filler_spec = SourceSpec(filler_spec.path, 1.0, "text")
    err, sources, codec_used, filler, rerenders = None, [], None, None, []
    for rank_turn in (True, False):  # rank 0 tokenizes; the others then find the cache
        if dd.main == rank_turn:
            try:
                sources, codec_used = prepare_sources(specs, settings, cache, codec=codec,
                                                      progress=not a.no_progress and rank_turn,
                                                      log=log if rank_turn else lambda m: None)  # fmt: skip
                if filler_spec is not None:
                    src = prepare_source(filler_spec, settings, cache, progress=False, log=log)
                    filler = Filler(src, filler_prob, lengths=a.filler_lengths, max_tokens=a.filler_tokens,
                                    places=a.filler_places)
                if a.rerender[0] > 0:
                    spec = RerenderSpec(variants=a.rerender[1], max_shift=a.rerender_shift,
                                        min_scale=a.rerender_scale, max_rotate=a.rerender_rotate)
                    rerenders = [prepare_rerenders(s, spec, cache, progress=not a.no_progress and rank_turn,
                                                   log=log if rank_turn else lambda m: None)
                                 if s.modality == "image" else None for s in sources]  # fmt: skip
            except DatasetError as e:
                err = e
        if rank_turn:
            dd.barrier()
    if err is not None:
        raise err
    for s in sources:
        log(f"data {s.manifest['folder']} ({s.modality}, weight {s.weight:g}): {s.manifest['n_train']} train / "
            f"{s.manifest['n_val']} val items, {s.manifest['n_tokens']:,} tokens, {s.manifest['n_skipped']} skipped; "
            f"cache {s.dir}")  # fmt: skip
    for s, r in zip(sources, rerenders):
        if r is not None:
            log(f"--rerender {a.rerender[0]:g}:{r.variants}: {s.name}: {r.variants} re-renders per image (moved up to "
                f"{a.rerender_shift:g} px, scaled from {a.rerender_scale:g}, turned up to {a.rerender_rotate:g} "
                f"degrees), cache {r.dir}")
    return TrainingData(settings, sources, codec_used, filler, rerenders)


def _image_layout(a, specs: list[SourceSpec], settings: TokenizerSettings, cache: Path, log) -> None:
    """Sub-pixels or colour tokens: a fine-tune keeps its checkpoint's layout and palette (the weights know
    those ids); a new palette run fits its palette on the training images."""
    init = Path(a.init_from) if a.init_from else None
    # (a missing or broken --init-from is reported with the model checks in build())
    img = read_checkpoint_config(init)["tokenizer"].get("image") if init and (init / "config.json").is_file() else None
    if img:
        mode, palette = img.get("mode", "subpixel"), img.get("palette")
        # the colour ids mean the same in palette and sketch mode: a palette model may learn to sketch first
        if a.image_mode not in (None, mode) and {a.image_mode, mode} != {"palette", "sketch"}:
            raise DatasetError(f"--image-mode {a.image_mode}: --init-from {a.init_from} was trained with {mode!r} images")
        a.image_mode = a.image_mode or mode
        palette = tuple(map(tuple, palette)) if palette is not None else None
    else:
        a.image_mode = a.image_mode or "subpixel"
        palette = None
        if a.image_mode in ("palette", "sketch"):
            specs = [s if s.modality else SourceSpec(s.path, s.weight, detect_modality(s.path)) for s in specs]
            palette = fit_source_palette(specs, settings, cache, colours=a.palette_colours, log=log)
    settings.image_mode, settings.image_palette = a.image_mode, palette


def _audio_layout(a, settings: TokenizerSettings) -> None:
    """Codes or codes with chord labels: a fine-tune keeps its checkpoint's layout, or learns to add the labels
    (the codes mean the same; the label ids are new to it)."""
    init = Path(a.init_from) if a.init_from else None
    cfg = read_checkpoint_config(init)["tokenizer"] if init and (init / "config.json").is_file() else {}
    mode = (cfg.get("audio") or {}).get("mode", "codes") if cfg.get("audio") else None
    requested = getattr(a, "audio_mode", None)
    if mode == "chords" and requested == "codes":
        raise DatasetError(f"--audio-mode codes: --init-from {a.init_from} was trained with chord labels")
    a.audio_mode = requested or mode or "codes"
    settings.audio_mode = a.audio_mode


def tokenizer_config(args, data: TrainingData, cfg: PerceiverARConfig) -> dict:
    """The ``tokenizer`` section of the checkpoints' config.json: modalities, image size and layout, audio length."""
    settings = data.settings
    mods = sorted({s.modality for s in data.sources})
    audio_s = audio_seconds(data.sources, data.codec, cfg) if "audio" in mods else None
    if args.audio_seconds is not None:
        audio_s = args.audio_seconds
    from perceiverar.pipeline import make_tokenizer_config  # noqa: PLC0415

    h, w = settings.image_height, settings.image_width
    tok = make_tokenizer_config(mods, height=h if "image" in mods else None, width=w if "image" in mods else None,
                                audio_seconds=audio_s, audio_dir=AUDIO_TOKENIZER_DIR,
                                image_mode=settings.image_mode, palette=settings.image_palette,
                                audio_mode=settings.audio_mode)  # fmt: skip
    if settings.caption_template != "{text}":  # how the training captions were written, for users and eval
        tok["caption_template"] = settings.caption_template
    return tok


def audio_seconds(sources, codec, cfg: PerceiverARConfig) -> float:
    lens = [int(b - a) for s in sources if s.modality == "audio" for a, b in s.index[:, 4:6]]
    tps = codec.tokenizer.tokens_per_second
    fit = max(1.0, (cfg.context_len - 128) / tps)  # leave room for a prompt
    return round(min(float(np.median(lens)) / tps, fit), 1) if lens else 10.0
