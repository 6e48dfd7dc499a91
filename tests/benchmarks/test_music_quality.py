"""benchmarks/music_quality.py: the key finder names the key of synthesized progressions, clarity tells notes from
noise, captions' keys parse, and the held-out bits/token are perceiverar-eval's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import music_quality as MQ

SR = 22050


def tone(midi: int, seconds: float, partials: int) -> np.ndarray:
    """A plucked harmonic tone: ``partials`` harmonics at 1/k amplitude, 10 ms attack, exponential decay."""
    t = np.arange(int(seconds * SR)) / SR
    f = 440.0 * 2 ** ((midi - 69) / 12)
    env = np.minimum(1.0, t / 0.01) * np.exp(-1.5 * t)
    return env * sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, partials + 1))


def progression(chords, partials: int = 4, seconds: float = 0.5) -> np.ndarray:
    return (0.1 * np.concatenate([sum(tone(m, seconds, partials) for m in c) for c in chords])).astype(np.float32)


def save_tiny_audio_checkpoint(ck, model):
    """Save ``model`` at ``ck`` as an audio checkpoint with a random 16-code, 80-mel audio tokenizer; returns it."""
    import torch

    from perceiverar import save_checkpoint
    from perceiverar.pipeline import make_tokenizer_config
    from tokenizers_mm.audio import AudioConfig, AudioTokenizer

    g = torch.Generator().manual_seed(0)
    at = AudioTokenizer(AudioConfig(codebook_size=16, griffin_lim_iters=2, nnls_iters=2),
                        torch.randn(16, 80, generator=g) * 10 - 30)  # fmt: skip
    save_checkpoint(ck, model, make_tokenizer_config(["audio"], audio_seconds=1.0),
                    extra_files=lambda d: at.save(d / "audio_tokenizer"))  # fmt: skip
    return at


def major_cadence(tonic: int) -> list[list[int]]:
    """I-IV-V-I twice, then the scale up: the key stated the way a chorale states it."""
    chords = [[0, 4, 7], [5, 9, 12], [7, 11, 14], [0, 4, 7]] * 2 + [[s] for s in (0, 2, 4, 5, 7, 9, 11, 12)]
    return [[tonic + n for n in c] for c in chords]


def minor_cadence(tonic: int) -> list[list[int]]:
    """i-iv-V-i (raised leading note in V) twice, then the harmonic minor scale up."""
    chords = [[0, 3, 7], [5, 8, 12], [7, 11, 14], [0, 3, 7]] * 2 + [[s] for s in (0, 2, 3, 5, 7, 8, 11, 12)]
    return [[tonic + n for n in c] for c in chords]


@pytest.mark.parametrize("partials", [1, 4])
@pytest.mark.parametrize(
    "key, notes",
    [((0, "major"), major_cadence(60)), ((9, "minor"), minor_cadence(57)), ((7, "major"), major_cadence(55)),
     ((2, "minor"), minor_cadence(62)), ((10, "major"), major_cadence(58)), ((6, "minor"), minor_cadence(54))],
)  # fmt: skip
def test_key_finder_names_the_key_of_a_cadence(key, notes, partials):
    est, r = MQ.estimate_key(MQ.chroma(progression(notes, partials), SR))
    assert est == key, (MQ.key_name(est), MQ.key_name(key))
    assert r > 0.8


def test_key_finder_tells_relative_keys_apart():
    """C major and A minor share their notes: only the weighting (tonic, leading note G#) separates them."""
    c = MQ.estimate_key(MQ.chroma(progression(major_cadence(60)), SR))[0]
    a = MQ.estimate_key(MQ.chroma(progression(minor_cadence(57)), SR))[0]
    assert (c, a) == ((0, "major"), (9, "minor"))
    assert MQ.mirex_score(a, c) == 0.3 and MQ.mirex_score(c, a) == 0.3


def test_key_finder_on_silence_is_defined():
    assert MQ.estimate_key(np.zeros((12, 10))) == ((0, "major"), 0.0)


def test_clarity_chord_beats_noise():
    chord = progression([[60, 64, 67]] * 8)
    noise = np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32) * 0.1
    c_chord = MQ.chroma_clarity(MQ.chroma(chord, SR))
    c_noise = MQ.chroma_clarity(MQ.chroma(noise, SR))
    assert c_chord > 0.7 and c_noise < 0.4, (c_chord, c_noise)
    m_chord, m_noise = MQ.clip_measures(chord, SR, (0, "major")), MQ.clip_measures(noise, SR)
    assert m_chord["spectral_flatness"] < 0.1 < m_noise["spectral_flatness"]
    assert m_chord["key_correct"] and m_chord["mode_correct"] and m_chord["mirex"] == 1.0
    assert MQ.chroma_clarity(np.ones((12, 5))) == pytest.approx(0.25)  # a flat chroma: 3 of 12 classes


def test_parse_key_reads_captions():
    assert MQ.parse_key("bach chorale bwv1.6 in F major, 4/4 time") == (5, "major")
    assert MQ.parse_key("bach chorale bwv226.2 in B- major, 4/4 time") == (10, "major")
    assert MQ.parse_key("F# minor") == (6, "minor")
    assert MQ.parse_key("in E- minor") == (3, "minor")
    assert MQ.parse_key("Cb major") == (11, "major")
    with pytest.raises(ValueError, match="no key"):
        MQ.parse_key("bach chorale bwv1.6, 4/4 time")


def test_mirex_score_table():
    g_major = (7, "major")
    assert MQ.mirex_score(g_major, g_major) == 1.0
    assert MQ.mirex_score((2, "major"), g_major) == 0.5 and MQ.mirex_score((0, "major"), g_major) == 0.5
    assert MQ.mirex_score((4, "minor"), g_major) == 0.3  # E minor, the relative minor of G major
    assert MQ.mirex_score((7, "minor"), g_major) == 0.2
    assert MQ.mirex_score((1, "major"), g_major) == 0.0


def test_val_chorales_are_the_trainers_val_split(tmp_path):
    from perceiverar.data import is_val

    names = [f"piece{i}.mid" for i in range(200)]
    for n in names:
        (tmp_path / n).write_bytes(b"MThd")
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps({"file": n, "text": f"{n} in C major"}) + "\n"
                                                     for n in names))  # fmt: skip
    want = [n for n in names if is_val(n)]
    assert len(want) >= 3
    assert [r["file"] for r in MQ.val_chorales(tmp_path, 3)] == want[:3]
    with pytest.raises(SystemExit, match="held-out"):
        MQ.val_chorales(tmp_path, len(want) + 1)


def test_main_end_to_end_on_a_tiny_checkpoint(tmp_path):
    """The whole benchmark on a debug model: the real clips are the captioned files (cadences in their captions'
    keys, so the key finder gets them all), held-out bits/token is perceiverar-eval's over exactly those items
    (an untrained zero output layer is uniform: log2 of the vocabulary), and the PNG is written."""
    import math

    import soundfile as sf
    import torch

    from perceiverar import PerceiverAR, PerceiverARConfig
    from perceiverar.data import is_val
    from tokenizers_mm.vocab import VOCAB_SIZE

    data = tmp_path / "data"
    data.mkdir()
    names = [n for n in (f"c{i}.wav" for i in range(400)) if is_val(n)][:2] + ["train0.wav"]
    keys = [(7, "major"), (2, "minor"), (0, "major")]
    rows = []
    for name, (tonic, mode) in zip(names, keys):
        notes = major_cadence(60 + tonic) if mode == "major" else minor_cadence(60 + tonic)
        sf.write(data / name, progression(notes[:4], seconds=0.3), SR)
        rows.append({"file": name, "text": f"a cadence in {MQ.key_name((tonic, mode))}"})
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug")).eval()
    ck = tmp_path / "ck"
    at = save_tiny_audio_checkpoint(ck, model)
    (ck / "README.md").write_text("# tiny\n\nA card.\n")
    res = MQ.main(["--checkpoint", str(ck), "--data", str(data), "--items", "2", "--seconds", "1",
                   "--eval-items", "2", "--figure-rows", "2", "--model-card"])  # fmt: skip
    out = ck / "music_quality.json"
    saved = json.loads(out.read_text())
    card = (ck / "README.md").read_text()
    assert card.startswith("# tiny\n\nA card.\n\n<!-- music_quality -->") and "| key = caption's | 1 |" in card
    assert "![constant-Q spectrograms" in card and "(music_quality.png)" in card
    MQ.update_card(ck / "README.md", MQ.card_section(saved))  # a second run replaces the section
    assert (ck / "README.md").read_text() == card
    assert saved["summary"] == res["summary"] and out.with_suffix(".png").stat().st_size > 10_000
    real = saved["summary"]["real"]
    assert real["clips"] == 2 and real["key_accuracy"] == 1.0 and real["mode_accuracy"] == 1.0
    assert [c["file"] for c in saved["per_clip"]["generated"]] == names[:2]
    assert saved["summary"]["white_noise"]["chroma_clarity"] < real["chroma_clarity"]
    n_scored = sum(at.n_tokens(len(sf.read(data / n)[0]) / SR) for n in names[:2])
    held = saved["held_out"]
    assert held["audio_tokens_scored"] == n_scored
    assert held["bits_per_token"] == pytest.approx(math.log2(VOCAB_SIZE), abs=1e-4)
