"""Generated media as files that say how they were made: the same files from the app and from the CLI.

A PNG carries two iTXt chunks (any Unicode, compressed): ``prompt`` (the prompt text) and ``parameters`` (the
JSON record below). WAV (16-bit PCM) and TXT (UTF-8) results get a sidecar ``<name>.json`` with the record.

The record: prompt, modality, checkpoint, the size (height/width, seconds or max_new_bytes), every sampling
setting as used (seed included, so the result can be made again), sample (1-based), created, generator, and
extras such as ``stopped`` or ``sample_rate``. Each file is written to a temporary name and renamed into place,
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL.PngImagePlugin import PngInfo

from perceiverar.sampling_options import SamplingOptions

SUFFIX = {"image": ".png", "audio": ".wav", "text": ".txt"}


def generation_record(*, prompt: str, modality: str, checkpoint: str, sampling: SamplingOptions, size: dict,
                      generator: str, **extra) -> dict:  # fmt: skip
    """The JSON record of one request (``size``: height/width, seconds or max_new_bytes)."""
    return {
        "prompt": prompt,
        "modality": modality,
        "checkpoint": checkpoint,
        **size,
        **sampling.as_dict(),
        **extra,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "generator": generator,
    }


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_json(path: Path, record: dict) -> Path:
    text = json.dumps(record, ensure_ascii=False, indent=2)
    return write_atomic(path, lambda p: Path(p).write_text(text + "\n", encoding="utf-8"))


def save_image(path, image, record: dict, *, sample: int = 1) -> list[Path]:
    """``image`` (PIL) as a PNG with the prompt and the record in iTXt chunks. Returns [path]."""
    meta = {**record, "sample": sample}
    info = PngInfo()
    info.add_itxt("prompt", record["prompt"], zip=True)
    info.add_itxt("parameters", json.dumps(meta, ensure_ascii=False), zip=True)
    return [write_atomic(path, lambda p: image.save(p, format="PNG", pnginfo=info))]


def save_audio(path, wave: np.ndarray, sample_rate: int, record: dict, *, sample: int = 1) -> list[Path]:
    """A mono float waveform as 16-bit PCM WAV, plus its sidecar JSON. Returns [wav, json]."""
    import soundfile as sf  # noqa: PLC0415 (only audio needs it)

    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    wav = write_atomic(path, lambda p: sf.write(p, wave, int(sample_rate), subtype="PCM_16", format="WAV"))
    return [wav, _write_json(sidecar_path(path), {**record, "sample": sample, "sample_rate": int(sample_rate)})]


def save_text(path, text: str, record: dict, *, sample: int = 1) -> list[Path]:
    """UTF-8 text plus its sidecar JSON. Returns [txt, json]."""
    txt = write_atomic(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return [txt, _write_json(sidecar_path(path), {**record, "sample": sample})]


def save_result(modality: str, path, result, record: dict, *, sample: int = 1) -> list[Path]:
    """One generated result (an image, a (wave, rate) pair or a text) written as ``modality`` dictates."""
    if modality == "image":
        return save_image(path, result, record, sample=sample)
    if modality == "audio":
        wave, rate = result
        return save_audio(path, wave, rate, record, sample=sample)
    return save_text(path, str(result), record, sample=sample)
