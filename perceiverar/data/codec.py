"""The audio codec of the training data: one codebook fitted (once, cached) on the audio folders' training files."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from perceiverar.data.sources import (
    CACHE_FORMAT, DatasetError, SourceSpec, TokenizerSettings, hash_int, is_val, list_entries, list_files, listing_hash,
)  # fmt: skip
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.ids import chord_block

AUDIO_TOKENIZER_DIR = "audio_tokenizer"


def _audio_cls():
    try:
        from tokenizers_mm.audio import AudioTokenizer  # noqa: PLC0415  (optional until the audio tokenizer lands)
    except ImportError as e:
        raise DatasetError(f"audio data needs tokenizers_mm.audio.AudioTokenizer, which cannot be imported ({e})") from None
    return AudioTokenizer


def _dir_fingerprint(d: Path) -> str:
    h = hashlib.sha256()
    for f in list_files(d):
        h.update(f.relative_to(d).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class AudioCodec:
    """A fitted audio tokenizer, where it lives on disk and a fingerprint of it (part of the cache key)."""

    tokenizer: object
    dir: Path
    fingerprint: str
    # Waveforms already read (MIDI rendered) while fitting, so preparation does not render them twice.
    waveforms: dict = field(default_factory=dict, repr=False)


def load_audio_codec(directory: Path) -> AudioCodec:
    cls = _audio_cls()
    return AudioCodec(cls.load(directory), Path(directory), _dir_fingerprint(Path(directory)))


def fit_audio_codec(
    specs: list[SourceSpec], settings: TokenizerSettings, cache_root: Path, *, progress: bool = True, log=print
) -> AudioCodec:
    """Fit (or reuse) one codebook for all audio folders, on up to ``audio_fit_files`` training files."""
    paths = []
    h = hashlib.sha256(f"audio-fit-v{CACHE_FORMAT}\0{settings.audio_codebook_size}\0{settings.audio_fit_files}".encode())
    options = dict(settings.audio_options)
    if options:  # (only then, so codebooks fitted before the options existed keep their cache key)
        h.update(f"\0{sorted(options.items())}".encode())
    for spec in specs:
        entries, _ = list_entries(spec.path, "audio", settings.caption_template)
        h.update(f"{spec.path}\0{listing_hash(spec.path, entries)}\n".encode())
        paths += [spec.path / e.file for e in entries if not is_val(e.file)]
    final = Path(cache_root) / f"audio-codebook-{h.hexdigest()[:16]}"
    if (final / ".complete").is_file():
        return load_audio_codec(final)
    if not paths:
        raise DatasetError("no audio files to fit the audio codebook on")
    step = max(1, len(paths) // settings.audio_fit_files)
    subset = sorted(paths, key=lambda p: hash_int(p.name))[:: step][: settings.audio_fit_files]
    cls = _audio_cls()
    from tokenizers_mm.audio import AudioConfig  # noqa: PLC0415

    rate = {"sample_rate": options["sample_rate"]} if "sample_rate" in options else {}
    loader = cls(AudioConfig(codebook_size=settings.audio_codebook_size, **rate),
                 torch.zeros(settings.audio_codebook_size, AudioConfig().patch_dim))  # only to read files
    waves = []
    # A corrupt file must not stop the fit: read each one here and leave out those that fail.
    for p in tqdm(subset, desc="reading audio for the codebook", unit="file", disable=not progress):
        try:
            waves.append((p, loader.load_file(p)))
        except (TokenizerError, OSError, ValueError, RuntimeError) as e:
            log(f"audio codebook fit: skipping {p} ({e})")
    if not waves:
        raise DatasetError(f"none of the {len(subset)} audio files chosen to fit the codebook could be read")
    log(f"fitting the audio codebook ({settings.audio_codebook_size} codes{''.join(f', {k}={v}' for k, v in options.items())})"
        f" on {len(waves)} files ...")
    try:
        tok = cls.fit([w for _, w in waves], codebook_size=settings.audio_codebook_size, **options)
    except TypeError as e:  # an option AudioTokenizer.fit / AudioConfig does not know
        raise DatasetError(f"bad --audio-option: {e}") from None
    except TokenizerError as e:
        raise DatasetError(f"fitting the audio codebook failed: {e} (try a smaller --audio-codebook-size)") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tok.save(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    codec = load_audio_codec(final)
    codec.waveforms = {str(p): w for p, w in waves}
    return codec


def audio_ids(codec: AudioCodec, path: Path, mode: str = "codes") -> list[int]:
    """The content ids of an audio file's section: its codes, or in "chords" mode its codes with their chord
    labels interleaved (``tokenizers_mm.chords``; the labels are read from the same waveform)."""
    tok = codec.tokenizer
    if str(path) in codec.waveforms:
        x, sr = codec.waveforms.pop(str(path))
    else:
        x, sr = tok.load_file(str(path))
    try:
        ids = tok.encode(x, sr)
    except TokenizerError as e:
        raise TokenizerError(f"{str(path)!r}: {e}") from None
    if chord_block(mode):
        from tokenizers_mm.chords import audio_chord_ids, interleave  # noqa: PLC0415  (librosa: only this layout)

        x = np.asarray(x, np.float32)
        if sr != tok.sample_rate:
            import torchaudio  # noqa: PLC0415  (only with audio: the config and data modules stay light)

            x = torchaudio.functional.resample(torch.from_numpy(x), sr, tok.sample_rate).numpy()
        hop = tok.config.hop_length * tok.config.patch_frames
        ids = interleave(audio_chord_ids(x, tok.sample_rate, len(ids), hop), ids)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    return arr.tolist()
