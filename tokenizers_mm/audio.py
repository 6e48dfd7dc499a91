"""Audio as codes of a learned codebook over log-mel spectrogram patches.

Pipeline::

    waveform (mono, resampled to 22,050 Hz)
      -> power mel spectrogram: n_fft 1024, hop 256, 80 mel bins (Slaney scale and norm, 0..11,025 Hz)
      -> dB (10 log10 power), floored at ``db_floor``
      -> patches of ``patch_frames`` frames x all 80 mel bins (one frequency band, AUDIO_FREQ_BANDS = 1)
      -> nearest centroid of a k-means codebook -> id = AUDIO_OFFSET + code
    decode: ids -> centroids -> dB -> linear power spectrum by NNLS -> fast Griffin-Lim from a phase-locked
      start (``tokenizers_mm.mel_inversion``, with the measurements behind its choices).

``db_floor`` is fitted: the median over the fitting clips of (clip maximum dB) - 55 dB, so the codebook spends no
capacity below the -50 dB floor of the quality metric (chorales rendered by fluidsynth -g 0.8: about -43 dB).

Numbers (Bach chorales rendered by fluidsynth; ``python -m benchmarks.audio_tokenizer``: codebook fitted on the
150 chorales after the first 20 in name order, evaluated on those first 20 (about 12 min of audio); metric = RMS
difference of 80-mel dB spectrograms, both floored at the original clip's max - 50 dB, pooled over all clips;
results in benchmarks/results/audio_tokenizer-cpu-*.json):

- 22,050 / 256 = 86.13 tokens per second of audio; a 65,536-token context holds 760.9 s (12.7 min) of audio.
- quantised 2.70 dB (bar 2.9), full round trip through the waveform 2.93 dB (bar 4.0), inversion alone (no
  quantisation) 1.46 dB; each mel bin's clip mean 7.82 dB.
- encode + decode of 10 s (``--threads 1``): 1.0 s wall, 0.49 s CPU, on a shared 2-core machine at load 5.8;
  the decode is nearly all of it (sparse NNLS 0.02 s, Griffin-Lim 32 iterations ~0.45 s CPU). Several torch
  threads on an oversubscribed machine are slower (5.2 s wall measured at 2 threads, load 5.4).
- fitting 150 chorales (250k sampled frames, K = 4096, 15 Lloyd iterations): ~3.5 min on 2 shared cores.

Choices, and the measurements that made them:

- patch = 1 frame x all 80 mel bins, codebook 4,096 (= AUDIO_CODES, the most the vocabulary has room for): the
  <= ~90 tokens/s budget allows one token per hop-256 frame, and the 2.9 dB bar needs the largest codebook.
  Quantisation error falls with more fitting data (the codebook over-fits a small set): 60 chorales / 100k frames
  -> 2.78 dB on 6 held-out clips, 140-150 chorales / 250k frames -> 2.69-2.70 dB on 10-20 held-out clips.
- the decoder's choices (NNLS, momentum, Griffin-Lim's start): see ``tokenizers_mm.mel_inversion``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torchaudio

from tokenizers_mm.audio_files import load_audio, render_midi  # noqa: F401  (render_midi: public here too)
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.kmeans import kmeans, nearest
from tokenizers_mm.mel_inversion import PHASE_INITS, MelInverter
from tokenizers_mm.ids import AUDIO_CODES, AUDIO_FREQ_BANDS, AUDIO_OFFSET, check_in_range

CODEBOOK_FILE = "codebook.safetensors"
CONFIG_FILE = "audio_tokenizer.json"
FORMAT_VERSION = 1
# Fields a tokenizer saved before they existed decodes with: what the code did then, not today's defaults.
LEGACY_DEFAULTS = {"griffin_lim_init": "random"}


@dataclass(kw_only=True)
class AudioConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    patch_frames: int = 1  # frames per token; all mel bins in one patch (AUDIO_FREQ_BANDS = 1)
    codebook_size: int = 4096
    db_floor: float = -45.0  # dB floor of the features; fitted by AudioTokenizer.fit
    nnls_iters: int = 50  # multiplicative NNLS updates for mel -> linear spectrum
    griffin_lim_iters: int = 16
    griffin_lim_momentum: float = 0.99
    griffin_lim_init: str = "peaks"  # Griffin-Lim's first phase: "peaks", "random" (seeded) or "zeros" (MelInverter.phase_init)
    seed: int = 0  # k-means and Griffin-Lim phase initialisation

    def __post_init__(self):
        if not 1 <= self.codebook_size <= AUDIO_CODES:
            raise TokenizerError(f"codebook_size={self.codebook_size} must be in 1..{AUDIO_CODES}")
        if self.patch_frames < 1:
            raise TokenizerError(f"patch_frames={self.patch_frames} must be >= 1")
        if self.griffin_lim_init not in PHASE_INITS:
            raise TokenizerError(f"griffin_lim_init={self.griffin_lim_init!r} must be one of {PHASE_INITS}")

    @property
    def patch_dim(self) -> int:
        return self.n_mels * self.patch_frames


def _mel_transform(cfg: AudioConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0,
        norm="slaney", mel_scale="slaney",
    )  # fmt: skip


def _mono(waveform, name: str = "waveform") -> torch.Tensor:
    """np/torch array (N,), (C, N) or (N, C) -> float32 mono tensor (N,)."""
    x = torch.as_tensor(np.asarray(waveform) if not torch.is_tensor(waveform) else waveform).float()
    if x.ndim == 2:  # channels are the short axis
        x = x.mean(0) if x.shape[0] <= x.shape[1] else x.mean(1)
    if x.ndim != 1:
        raise TokenizerError(f"{name}: expected a 1-D or 2-D waveform, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise TokenizerError(f"{name}: zero-length audio")
    if not torch.isfinite(x).all():
        raise TokenizerError(f"{name}: waveform contains NaN or infinite samples")
    return x


class AudioTokenizer:
    """Log-mel patch codebook tokenizer; see the module docstring. Build with ``fit`` or ``load``."""

    def __init__(self, config: AudioConfig, codebook: torch.Tensor):
        codebook = torch.as_tensor(codebook, dtype=torch.float32)
        if codebook.shape != (config.codebook_size, config.patch_dim):
            raise TokenizerError(
                f"codebook shape {tuple(codebook.shape)} does not match the config "
                f"({config.codebook_size}, {config.patch_dim})"
            )
        self.config = config
        self.codebook = codebook.contiguous()  # (K, patch_frames * n_mels), dB
        self._mel = _mel_transform(config)
        self.inverter = MelInverter(config, self._mel.mel_scale.fb.T)  # the decoder; filterbank (n_mels, n_freq)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def tokens_per_second(self) -> float:
        return self.config.sample_rate / self.config.hop_length / self.config.patch_frames

    def seconds_per_context(self, context_len: int = 65536) -> float:
        return context_len / self.tokens_per_second

    def n_tokens(self, seconds: float) -> int:
        """Tokens for ``seconds`` of audio (what encode returns for a clip that long)."""
        frames = 1 + int(round(seconds * self.config.sample_rate)) // self.config.hop_length
        return -(-frames // self.config.patch_frames)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "audio_offset": AUDIO_OFFSET,
                "audio_freq_bands": AUDIO_FREQ_BANDS, **asdict(self.config)}  # fmt: skip

    # ---------------------------------------------------------------------------------------- features

    def log_mel(self, waveform, sample_rate: int | None = None) -> torch.Tensor:
        """(n_mels, T) dB spectrogram, unfloored, of a waveform resampled to the tokenizer's rate."""
        x = _mono(waveform)
        sr = self.config.sample_rate if sample_rate is None else int(sample_rate)
        if sr != self.config.sample_rate:
            x = torchaudio.functional.resample(x, sr, self.config.sample_rate)
        frames = 1 + x.numel() // self.config.hop_length  # centred STFT frame count
        if x.numel() <= self.config.n_fft // 2:  # reflect padding of the centred STFT needs > n_fft/2 samples
            x = torch.nn.functional.pad(x, (0, self.config.n_fft // 2 + 1 - x.numel()))
        return 10.0 * torch.log10(self._mel(x)[:, :frames].clamp_min(1e-10))  # (n_mels, frames)

    def _patches(self, db: torch.Tensor) -> torch.Tensor:
        """(n_mels, T) dB -> (P, patch_frames * n_mels) floored patches; the last patch is padded by repetition."""
        p = self.config.patch_frames
        db = db.clamp_min(self.config.db_floor)
        pad = (-db.shape[1]) % p
        if pad:
            db = torch.cat([db, db[:, -1:].expand(-1, pad)], 1)
        return db.T.reshape(-1, p * self.config.n_mels)  # frames in order, each frame's mel bins contiguous

    # ---------------------------------------------------------------------------------------- fitting

    @classmethod
    def fit(
        cls,
        paths_or_waveforms,
        *,
        sample_rate: int = 22050,
        codebook_size: int = 4096,
        seed: int = 0,
        patch_frames: int = 1,
        max_frames: int = 100_000,
        iters: int = 15,
        db_floor: float | None = None,
        progress: bool = False,
        **config,
    ) -> "AudioTokenizer":
        """Fit the codebook by k-means on (at most ``max_frames`` randomly chosen) log-mel patches.

        Items: file paths (audio or MIDI), waveforms at ``sample_rate``, or (waveform, sample_rate) pairs.
        """
        cfg = AudioConfig(sample_rate=sample_rate, codebook_size=codebook_size, seed=seed,
                          patch_frames=patch_frames, **config)  # fmt: skip
        tok = cls(cfg, torch.zeros(cfg.codebook_size, cfg.patch_dim))
        items = list(paths_or_waveforms)
        if not items:
            raise TokenizerError("AudioTokenizer.fit needs at least one file or waveform")
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="log-mel", unit="clip")
        dbs = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                x, sr = tok.load_file(item)
            elif isinstance(item, tuple):
                x, sr = item
            else:
                x, sr = item, sample_rate
            dbs.append(tok.log_mel(x, sr))
        if db_floor is None:
            db_floor = float(np.median([float(d.max()) for d in dbs])) - 55.0
        cfg.db_floor = float(db_floor)
        x = torch.cat([tok._patches(d) for d in dbs])  # (N, patch_dim)
        if x.shape[0] < cfg.codebook_size:
            raise TokenizerError(
                f"only {x.shape[0]} spectrogram patches for a codebook of {cfg.codebook_size}: "
                "give more audio or a smaller codebook_size"
            )
        g = torch.Generator().manual_seed(seed)
        if x.shape[0] > max_frames:
            x = x[torch.randperm(x.shape[0], generator=g)[:max_frames]]
        log = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=iters, desc=f"k-means K={cfg.codebook_size} N={x.shape[0]}", unit="iter")

            def log(it, mse):
                bar.update(1)
                bar.set_postfix(rms_db=f"{(mse / cfg.patch_dim) ** 0.5:.2f}")

        codebook = kmeans(x, cfg.codebook_size, iters=iters, seed=seed, progress=log)
        if progress:
            bar.close()
        return cls(cfg, codebook)

    # ---------------------------------------------------------------------------------------- save / load

    def save(self, directory) -> Path:
        """Write codebook.safetensors + audio_tokenizer.json into ``directory`` (each via a temp file + rename)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp_cb, tmp_cfg = d / f".{CODEBOOK_FILE}.tmp", d / f".{CONFIG_FILE}.tmp"
        save_file({"codebook": self.codebook}, str(tmp_cb), metadata={"format_version": str(FORMAT_VERSION)})
        os.chmod(tmp_cb, 0o644)  # safetensors creates the file private; checkpoints are meant to be shared
        tmp_cfg.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp_cb, d / CODEBOOK_FILE)
        os.replace(tmp_cfg, d / CONFIG_FILE)
        return d

    @classmethod
    def load(cls, directory) -> "AudioTokenizer":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path, cb_path = d / CONFIG_FILE, d / CODEBOOK_FILE
        for p in (cfg_path, cb_path):
            if not p.is_file():
                raise TokenizerError(f"audio tokenizer file {str(p)!r} is missing")
        try:
            raw = json.loads(cfg_path.read_text())
            known = {f.name for f in fields(AudioConfig)}
            raw = {**LEGACY_DEFAULTS, **raw}  # not a JSON object: TypeError, a corrupt config below
            cfg = AudioConfig(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"corrupt audio tokenizer config {str(cfg_path)!r}: {e}") from None
        if raw.get("audio_offset", AUDIO_OFFSET) != AUDIO_OFFSET:
            raise TokenizerError(f"{str(cfg_path)!r} was saved for audio_offset {raw['audio_offset']}")
        try:
            tensors = load_file(str(cb_path))
            codebook = tensors["codebook"]
        except (SafetensorError, KeyError, OSError, ValueError, RuntimeError) as e:
            raise TokenizerError(f"corrupt audio codebook {str(cb_path)!r}: {e}") from None
        return cls(cfg, codebook)

    # ---------------------------------------------------------------------------------------- encoding

    def load_file(self, path) -> tuple[np.ndarray, int]:
        """(mono waveform, sample rate) of an audio file, or of a MIDI file rendered by fluidsynth."""
        return load_audio(path, self.config.sample_rate)

    def encode(self, waveform, sample_rate: int) -> list[int]:
        """Waveform (any rate; resampled) -> ids AUDIO_OFFSET + code, ``tokens_per_second`` of them per second."""
        patches = self._patches(self.log_mel(waveform, sample_rate))  # (P, D)
        codes, _ = nearest(patches, self.codebook)
        return (codes + AUDIO_OFFSET).tolist()

    def encode_file(self, path) -> list[int]:
        x, sr = self.load_file(path)
        try:
            return self.encode(x, sr)
        except TokenizerError as e:
            raise TokenizerError(f"{str(path)!r}: {e}") from None

    # ---------------------------------------------------------------------------------------- decoding

    def codes_to_db(self, ids) -> torch.Tensor:
        """Ids -> (n_mels, T) dB spectrogram of the centroids (the quantised spectrogram)."""
        lo, hi = AUDIO_OFFSET, AUDIO_OFFSET + self.config.codebook_size
        arr = check_in_range(ids, lo, hi, f"an audio code of this tokenizer (codebook_size {self.config.codebook_size})")
        patches = self.codebook[torch.from_numpy(arr - lo)]  # (P, patch_frames * n_mels)
        return patches.reshape(-1, self.config.n_mels).T  # (n_mels, T)

    def db_to_waveform(self, db: torch.Tensor) -> np.ndarray:
        """(n_mels, T) dB spectrogram -> float32 waveform of (T - 1) * hop samples (``tokenizers_mm.mel_inversion``)."""
        return self.inverter.db_to_waveform(db)

    def decode(self, ids) -> tuple[np.ndarray, int]:
        """Ids -> (float32 mono waveform, sample_rate). A partial sequence decodes to the audio so far."""
        with torch.no_grad():
            return self.db_to_waveform(self.codes_to_db(ids)), self.config.sample_rate
