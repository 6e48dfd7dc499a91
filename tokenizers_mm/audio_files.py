"""Audio files in, samples out: any file soundfile or librosa reads, and MIDI rendered by fluidsynth.

MIDI is rendered with the FluidR3 General MIDI soundfont at gain 0.8 (``render_midi``); everything comes back as
a mono float32 waveform with its sample rate. ``tokenizers_mm.audio`` re-exports these names.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from tokenizers_mm.errors import TokenizerError

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MIDI_SUFFIXES = (".mid", ".midi")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


def render_midi(path, out_wav=None, sample_rate: int = 22050) -> tuple[np.ndarray, int]:
    """Render a MIDI file with fluidsynth + the FluidR3 General MIDI soundfont.

    Returns (mono float32 waveform, sample_rate); when ``out_wav`` is given the rendered WAV is also kept there.
    """
    path = Path(path)
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise TokenizerError(
            f"cannot render {str(path)!r}: fluidsynth not found; install the Debian packages 'fluidsynth' and "
            "'fluid-soundfont-gm' (scripts/setup-debian.sh)"
        )
    if not Path(SOUNDFONT).is_file():
        raise TokenizerError(
            f"cannot render {str(path)!r}: soundfont {SOUNDFONT} not found; install the Debian package "
            "'fluid-soundfont-gm' (scripts/setup-debian.sh)"
        )
    if not path.is_file():
        raise TokenizerError(f"MIDI file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"MThd":
            raise TokenizerError(f"{str(path)!r} is not a MIDI file (no MThd header)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(out_wav) if out_wav is not None else Path(tmp) / "out.wav"
        cmd = [exe, "-ni", "-g", "0.8", "-r", str(sample_rate), "-F", str(wav), SOUNDFONT, str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            msg = (proc.stderr or proc.stdout).strip()[-500:]
            raise TokenizerError(f"fluidsynth could not render {str(path)!r} (exit {proc.returncode}): {msg}")
        x, sr = _read_audio(wav)
    if x.size == 0:
        raise TokenizerError(f"MIDI file {str(path)!r} rendered to zero-length audio")
    return x, sr


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples of an audio file: soundfile (WAV/FLAC/OGG/MP3), then librosa as the fallback."""
    import soundfile as sf

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
        return x.mean(1), int(sr)
    except Exception as e_sf:  # noqa: BLE001 - any decoder failure becomes one clear error below
        try:
            import librosa

            with warnings.catch_warnings():  # librosa warns on its audioread fallback; we report our own error
                warnings.simplefilter("ignore")
                x, sr = librosa.load(str(path), sr=None, mono=True)
            return x.astype(np.float32), int(sr)
        except Exception:  # noqa: BLE001
            raise TokenizerError(f"cannot read audio file {str(path)!r}: {e_sf}") from None


def load_audio(path, sample_rate: int = 22050) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, its sample rate) of an audio file, or of a MIDI file rendered at ``sample_rate``."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"audio file {str(path)!r} does not exist")
    if path.suffix.lower() in MIDI_SUFFIXES:
        x, sr = render_midi(path, sample_rate=sample_rate)
    else:
        x, sr = _read_audio(path)
    if x.size == 0:
        raise TokenizerError(f"audio file {str(path)!r} has zero length")
    return x, sr
