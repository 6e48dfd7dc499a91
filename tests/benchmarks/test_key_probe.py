"""benchmarks/key_probe.py: captions' keys are edited as named, and the opening's bits are the model's own NLL of
exactly those audio tokens under each caption."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import key_probe as KP
from benchmarks import music_quality as MQ


def test_edited_moves_the_key_and_keeps_the_rest():
    cap = "bach chorale bwv1.6 in F major, 4/4 time"
    assert KP.edited(cap, "tritone") == "bach chorale bwv1.6 in B major, 4/4 time"
    assert KP.edited(cap, "fifth") == "bach chorale bwv1.6 in C major, 4/4 time"
    assert KP.edited(cap, "mode") == "bach chorale bwv1.6 in F minor, 4/4 time"
    assert KP.edited(cap, "empty") == ""
    flat = "bach chorale bwv226.2 in B- major, 4/4 time"
    assert MQ.parse_key(KP.edited(flat, "tritone")) == (4, "major")  # B-flat + 6 = E
    assert MQ.parse_key(KP.edited("chorale in C# minor", "mode")) == (1, "major")


def test_main_scores_the_opening_under_each_caption(tmp_path):
    """End to end on a small random model: the true caption's bits equal one direct forward pass over
    [BOS][TEXT_BEGIN] caption [TEXT_END][SEP][AUDIO_BEGIN] audio..., summed over the opening's audio tokens
    (the opening fits in the 32 latents of the debug model, so one window scores it, as the probe's does)."""
    import soundfile as sf
    import torch

    from perceiverar import PerceiverAR, PerceiverARConfig, load_checkpoint
    from perceiverar.data import is_val
    from tests.benchmarks.test_music_quality import SR, major_cadence, progression, save_tiny_audio_checkpoint
    from tokenizers_mm.vocab import build_sequence, position_features

    data = tmp_path / "data"
    data.mkdir()
    name = next(n for n in (f"c{i}.wav" for i in range(400)) if is_val(n))
    sf.write(data / name, progression(major_cadence(67)[:4], seconds=0.4), SR)
    caption = "a cadence in G major"
    (data / "captions.jsonl").write_text(json.dumps({"file": name, "text": caption}) + "\n")
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug")).eval()
    with torch.no_grad():  # the zero-initialised head is uniform: every caption would cost the same
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ck = tmp_path / "ck"
    at = save_tiny_audio_checkpoint(ck, model)
    res = KP.main(["--checkpoint", str(ck), "--data", str(data), "--items", "1", "--seconds", "0.3",
                   "--out", str(tmp_path / "r.json")])  # fmt: skip
    n = res["tokens_scored_per_clip"]
    assert n == round(0.3 * at.tokens_per_second) <= 32 and json.loads((tmp_path / "r.json").read_text())["items"] == 1

    from perceiverar.data.codec import load_audio_codec

    target = load_audio_codec(ck / "audio_tokenizer").tokenizer.encode_file(str(data / name))  # the saved codebook's
    model = load_checkpoint(ck).model.eval()  # the saved weights, as the probe loaded them

    def direct_bits(text: str) -> float:
        ids = np.asarray(build_sequence(text, "audio", list(target)), np.int64)
        start = 2 + len(text.encode()) + 5  # the first audio token: after [TEXT_END][SEP][AUDIO_BEGIN] + 2-token length
        ids = ids[: start + n]
        tok = torch.from_numpy(ids)[None]
        feats = torch.from_numpy(position_features(ids.tolist()))[None]
        with torch.no_grad():
            nll, _ = model.token_nll(tok, feats)  # (1, 32): the last 32 targets
        return float(nll[0, -n:].sum()) / np.log(2)

    true = direct_bits(caption)
    assert abs(res["per_item"][0]["true_bits"] - true) < 0.02, (res["per_item"][0], true)
    for kind in ("tritone", "mode", "empty"):
        want = direct_bits(KP.edited(caption, kind)) - true
        assert abs(res["per_item"][0][kind] - want) < 0.02, (kind, res["per_item"][0], want)
    assert any(abs(res["per_item"][0][k]) > 0.01 for k in KP.EDITS)  # the captions do change the bits
