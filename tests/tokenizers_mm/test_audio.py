import shutil
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

import tokenizers_mm.audio as audio_mod
import tokenizers_mm.audio_files as audio_files
from tokenizers_mm import AUDIO_OFFSET, AudioTokenizer, TokenizerError, render_midi
from tokenizers_mm.fit_audio import main as fit_main

SR = 22050
needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not __import__("os").path.isfile(audio_files.SOUNDFONT),
    reason="fluidsynth / fluid-soundfont-gm not installed",
)


def tones(seconds, freqs, seed=0, sr=SR):
    """A little 'melody': one chord of sines per quarter second, with a decaying envelope."""
    rng = np.random.default_rng(seed)
    n_seg = int(seconds * 4)
    seg = np.arange(sr // 4) / sr
    out = []
    for _ in range(n_seg):
        f = rng.choice(freqs, 2)
        env = np.exp(-4 * seg)
        out.append(0.2 * env * (np.sin(2 * np.pi * f[0] * seg) + 0.5 * np.sin(2 * np.pi * f[1] * seg)))
    return np.concatenate(out).astype(np.float32)


FREQS = [220.0, 261.6, 329.6, 392.0, 440.0, 523.3]


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return AudioTokenizer.fit([tones(4, FREQS, s) for s in range(3)], codebook_size=64, iters=8, seed=0)


def rms_db(tok, ref, x_db):
    fl = ref.max() - 50
    t = min(ref.shape[1], x_db.shape[1])
    return float(((ref[:, :t].clamp_min(fl) - x_db[:, :t].clamp_min(fl)) ** 2).mean().sqrt())


def test_encode_decode_shapes_and_quality(tok):
    x = tones(2, FREQS, seed=7)  # unseen
    ids = tok.encode(x, SR)
    assert len(ids) == tok.n_tokens(2.0) == 1 + len(x) // 256
    assert min(ids) >= AUDIO_OFFSET and max(ids) < AUDIO_OFFSET + 64
    assert abs(tok.tokens_per_second - 86.13) < 0.01 and abs(tok.seconds_per_context(65536) - 760.9) < 0.1
    y, sr = tok.decode(ids)
    assert sr == SR and y.dtype == np.float32 and abs(len(y) - len(x)) <= 256
    ref = tok.log_mel(x, SR)
    q = rms_db(tok, ref, tok.codes_to_db(ids))
    rt = rms_db(tok, ref, tok.log_mel(y, SR))
    assert q < 6.0 and rt < 9.0, (q, rt)
    # chance level: a random code sequence is much worse
    rnd = np.random.default_rng(0).integers(AUDIO_OFFSET, AUDIO_OFFSET + 64, len(ids))
    assert rms_db(tok, ref, tok.codes_to_db(rnd)) > q + 3


def test_partial_decode_and_resample(tok):
    x = tones(1, FREQS, seed=3)
    ids = tok.encode(x, SR)
    y_part, _ = tok.decode(ids[:20])
    assert len(y_part) == 19 * 256
    assert tok.decode([])[0].shape == (0,)
    x44 = np.interp(np.arange(2 * len(x)) / 2, np.arange(len(x)), x).astype(np.float32)
    ids44 = tok.encode(x44, 2 * SR)
    assert abs(len(ids44) - len(ids)) <= 1
    assert tok.encode(np.stack([x, x]), SR) == ids  # stereo (C, N) -> mono
    assert tok.encode(x, SR) == ids  # deterministic


def test_save_load_identical(tok, tmp_path):
    x = tones(1, FREQS, seed=5)
    tok.save(tmp_path / "tok")
    tok2 = AudioTokenizer.load(tmp_path / "tok")
    assert tok2.to_dict() == tok.to_dict() and torch.equal(tok2.codebook, tok.codebook)
    assert tok2.encode(x, SR) == tok.encode(x, SR)
    assert np.array_equal(tok2.decode(tok.encode(x, SR))[0], tok.decode(tok.encode(x, SR))[0])
    (tmp_path / "tok" / "codebook.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match="codebook.safetensors"):
        AudioTokenizer.load(tmp_path / "tok")
    with pytest.raises(TokenizerError, match="audio_tokenizer.json.* missing"):
        AudioTokenizer.load(tmp_path / "nothing")


def test_bad_input(tok, tmp_path):
    with pytest.raises(TokenizerError, match=r"id 300 .*position 1"):
        tok.decode([AUDIO_OFFSET, 300])
    with pytest.raises(TokenizerError, match="id 600"):  # beyond this 64-code codebook
        tok.decode([600])
    with pytest.raises(TokenizerError, match="zero-length"):
        tok.encode(np.zeros(0, np.float32), SR)
    with pytest.raises(TokenizerError, match="NaN"):
        tok.encode(np.full(1000, np.nan, np.float32), SR)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    with pytest.raises(TokenizerError, match="broken.wav"):
        tok.encode_file(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(TokenizerError, match="empty.wav.*zero length"):
        tok.encode_file(empty)
    with pytest.raises(TokenizerError, match="missing.ogg"):
        tok.encode_file(tmp_path / "missing.ogg")
    with pytest.raises(TokenizerError, match="codebook_size"):
        AudioTokenizer.fit([tones(0.25, FREQS)], codebook_size=4096)
    assert len(tok.encode(np.ones(10, np.float32) * 0.1, SR)) == 1  # very short audio still encodes


def test_encode_file_formats(tok, tmp_path):
    x = tones(1, FREQS, seed=2)
    ids = tok.encode(x, SR)
    for name in ("a.wav", "a.flac", "a.ogg"):
        sf.write(tmp_path / name, x, SR)
        got = tok.encode_file(tmp_path / name)
        assert len(got) == len(ids)
    assert tok.encode_file(tmp_path / "a.flac") == ids  # lossless formats give identical codes


def _tiny_midi(path, seconds=1.0):
    """A format-0 MIDI file: one C-major chord for ``seconds`` (120 bpm, 480 ticks per quarter)."""
    ticks = int(seconds * 960)

    def vlq(n):
        out = [n & 0x7F]
        while n > 127:
            n >>= 7
            out.insert(0, (n & 0x7F) | 0x80)
        return bytes(out)

    ev = b"".join(b"\x00\x90" + bytes([p, 90]) for p in (60, 64, 67))
    ev += vlq(ticks) + b"\x80\x3c\x00" + b"\x00\x80\x40\x00" + b"\x00\x80\x43\x00" + b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(ev)) + ev)


def test_midi_without_fluidsynth(tok, tmp_path, monkeypatch):
    mid = tmp_path / "song.mid"
    _tiny_midi(mid)
    monkeypatch.setattr(audio_files.shutil, "which", lambda name: None)
    with pytest.raises(TokenizerError, match=r"song.mid.*fluidsynth.*fluid-soundfont-gm"):
        tok.encode_file(mid)


@needs_fluidsynth
def test_midi_render(tok, tmp_path):
    mid = tmp_path / "song.mid"
    _tiny_midi(mid, 1.0)
    x, sr = render_midi(mid, tmp_path / "song.wav")
    assert sr == SR and 0.9 * SR < len(x) < 4 * SR and np.abs(x).max() > 0.01
    assert (tmp_path / "song.wav").is_file()
    ids = tok.encode_file(mid)
    assert len(ids) == 1 + len(x) // 256
    notmidi = tmp_path / "fake.mid"
    notmidi.write_bytes(b"hello")
    with pytest.raises(TokenizerError, match="fake.mid.*not a MIDI"):
        render_midi(notmidi)


def test_fit_cli(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for s in range(2):
        sf.write(data / f"clip{s}.wav", tones(1.5, FREQS, seed=s), SR)
    (data / "notes.txt").write_text("ignored")
    fit_main(["--data", str(data), "--out", str(tmp_path / "tok"), "--codebook-size", "16", "--iters", "3"])
    tok = AudioTokenizer.load(tmp_path / "tok")
    assert tok.codebook_size == 16 and len(tok.encode_file(data / "clip0.wav")) == 1 + int(1.5 * SR) // 256
    fit_main(["--data", str(data), "--out", str(tmp_path / "tok2"), "--codebook-size", "16", "--iters", "3",
              "--n-mels", "128", "--patch-frames", "2"])  # fmt: skip
    tok2 = AudioTokenizer.load(tmp_path / "tok2")
    assert (tok2.config.n_mels, tok2.config.patch_frames) == (128, 2)
    assert len(tok2.encode_file(data / "clip0.wav")) == -(-(1 + int(1.5 * SR) // 256) // 2)


def _spectral_convergence(tok, magnitude, y):
    """|| |STFT(y)| - magnitude || / || magnitude ||: how far a waveform is from having that magnitude."""
    c = tok.config
    s = torch.stft(torch.as_tensor(y), c.n_fft, c.hop_length, window=tok.inverter.window, return_complex=True).abs()
    t = min(s.shape[1], magnitude.shape[1])
    return float((s[:, :t] - magnitude[:, :t]).norm() / magnitude[:, :t].norm())


def test_peaks_phase_init_starts_close_to_a_consistent_phase(tok):
    """A chord of steady partials: the phase-locked start is nearly consistent before any Griffin-Lim iteration
    (random phase is far off), and stays ahead of random phase after a few iterations."""
    t = np.arange(2 * SR) / SR
    x = sum(np.sin(2 * np.pi * f * t + ph) / (i + 1) for i, (f, ph) in enumerate([(261.6, 0.3), (329.6, 1.0),
                                                                                 (392.0, 2.0), (523.2, 0.1)]))
    x = torch.as_tensor((0.1 * x).astype(np.float32))
    mag = torch.stft(x, 1024, 256, window=tok.inverter.window, return_complex=True).abs()  # (513, T)
    conv = {}
    for init in ("random", "zeros", "peaks"):
        for iters in (0, 8):
            cfg = audio_mod.AudioConfig(codebook_size=64, griffin_lim_init=init, griffin_lim_iters=iters)
            vt = AudioTokenizer(cfg, tok.codebook)
            conv[init, iters] = _spectral_convergence(vt, mag, vt.inverter.griffin_lim(mag, (mag.shape[1] - 1) * 256))
    assert conv["peaks", 0] < 0.15 < 0.5 < conv["random", 0] and conv["zeros", 0] > 0.5, conv
    assert conv["peaks", 8] < 0.8 * conv["random", 8], conv


def test_decoder_settings_are_recorded_and_old_configs_decode_as_before(tok, tmp_path):
    import dataclasses
    import json

    assert tok.config.griffin_lim_init == "peaks" and tok.config.griffin_lim_iters == 16  # a new fit's decoder
    # what every tokenizer saved before griffin_lim_init existed used: 32 iterations from seeded random phase
    legacy = AudioTokenizer(dataclasses.replace(tok.config, griffin_lim_init="random", griffin_lim_iters=32),
                            tok.codebook)  # fmt: skip
    ids = tok.encode(tones(1, FREQS, seed=4), SR)
    y = tok.decode(ids)[0]
    assert np.array_equal(y, tok.decode(ids)[0])  # deterministic
    assert not np.array_equal(y, legacy.decode(ids)[0])
    tok.save(tmp_path / "new")
    assert AudioTokenizer.load(tmp_path / "new").config == tok.config
    legacy.save(tmp_path / "old")
    cfg_file = tmp_path / "old" / "audio_tokenizer.json"
    raw = json.loads(cfg_file.read_text())
    del raw["griffin_lim_init"]  # as written before the field existed
    cfg_file.write_text(json.dumps(raw))
    old = AudioTokenizer.load(tmp_path / "old")
    assert old.config.griffin_lim_init == "random" and np.array_equal(old.decode(ids)[0], legacy.decode(ids)[0])
    cfg_file.write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="corrupt audio tokenizer config"):
        AudioTokenizer.load(tmp_path / "old")
    with pytest.raises(TokenizerError, match="griffin_lim_init"):
        audio_mod.AudioConfig(griffin_lim_init="smart")


def test_two_frames_per_token_and_128_mels(tmp_path):
    """The recommended budget (two hop-256 frames of 128 mel bins per token, 43 tokens/s): half the tokens of the
    default, codes decode back to every frame in order, and the settings survive save/load."""
    tok2 = AudioTokenizer.fit([tones(4, FREQS, s) for s in range(3)], codebook_size=64, iters=8, seed=0,
                              n_mels=128, patch_frames=2)  # fmt: skip
    assert tok2.codebook.shape == (64, 256) and abs(tok2.tokens_per_second - 43.07) < 0.01
    x = tones(2, FREQS, seed=7)
    frames = 1 + len(x) // 256
    ids = tok2.encode(x, SR)
    assert len(ids) == tok2.n_tokens(2.0) == -(-frames // 2)
    db = tok2.codes_to_db(ids)  # (128, 2 * tokens): each code's two frames, in order
    assert db.shape == (128, 2 * len(ids))
    patches = tok2.codebook[torch.tensor(ids) - AUDIO_OFFSET]
    assert torch.equal(db[:, 0], patches[0, :128]) and torch.equal(db[:, 1], patches[0, 128:])
    assert torch.equal(db[:, 2], patches[1, :128])
    y, _ = tok2.decode(ids)
    assert len(y) == (2 * len(ids) - 1) * 256
    ref = tok2.log_mel(x, SR)
    q = rms_db(tok2, ref, db)
    assert q < 6.0 and rms_db(tok2, ref, tok2.log_mel(y, SR)) < 9.0, q
    tok2.save(tmp_path / "t2")
    back = AudioTokenizer.load(tmp_path / "t2")
    assert (back.config.n_mels, back.config.patch_frames) == (128, 2) and back.encode(x, SR) == ids
