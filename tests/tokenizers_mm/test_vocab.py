import numpy as np
import pytest

from tokenizers_mm import vocab as V
from tokenizers_mm import (
    FeatureTracker, TokenizerError, Vocabulary, allowed_range, build_sequence, position_features, split_sequence,
)  # fmt: skip


def test_constants_and_ranges_are_disjoint():
    assert V.VOCAB_SIZE % 64 == 0 and V.VOCAB_SIZE >= V.SPECIAL_OFFSET + 16
    ranges = [allowed_range(m) for m in ("text", "image", "audio", "num")]
    assert ranges == [(0, 256), (256, 512), (512, 4608), (4608, 5632)]
    specials = [V.PAD, V.BOS, V.EOS, V.TEXT_BEGIN, V.TEXT_END, V.IMAGE_BEGIN, V.IMAGE_END, V.AUDIO_BEGIN,
                V.AUDIO_END, V.SEP]  # fmt: skip
    assert specials == list(range(5632, 5642))
    v = Vocabulary()
    assert v.size == 5696 and v.range("audio") == (512, 4608)
    assert [v.modality_of(t) for t in (0, 300, 600, 5000, 5633)] == ["text", "image", "audio", "num", "special"]
    assert v.name(5633) == "BOS" and v.name(65) == "byte:0x41" and v.name(300) == "px:44"
    assert Vocabulary.from_dict(v.to_dict()) == v
    with pytest.raises(TokenizerError):
        Vocabulary.from_dict({**v.to_dict(), "audio_offset": 1})


def _pix(n, seed=0):
    return list(np.random.default_rng(seed).integers(256, 512, n))


@pytest.mark.parametrize("prompt", ["a red apple 🍎", b"\xff\xfe", [104, 105], None, ""])
def test_image_round_trip(prompt):
    tgt = _pix(2 * 3 * 3)
    seq = build_sequence(prompt, "image", tgt, height=2, width=3)
    assert seq[:2] == [V.BOS, V.TEXT_BEGIN] and seq[-2:] == [V.IMAGE_END, V.EOS]
    p = split_sequence(seq)
    assert (p.modality, p.height, p.width, p.target, p.complete) == ("image", 2, 3, tgt, True)
    expected_ids = {None: [], "": []}.get(prompt) if prompt in (None, "") else (
        list(prompt.encode()) if isinstance(prompt, str) else list(prompt))
    assert p.prompt_ids == expected_ids
    # the prefix + partial target parses as incomplete
    pre = build_sequence(prompt, "image", tgt[:5], height=2, width=3, complete=False)
    assert pre == seq[: len(pre)] and pre[-7:-5] == [V.NUM_OFFSET + 2, V.NUM_OFFSET + 3]
    q = split_sequence(pre)
    assert q.target == tgt[:5] and not q.complete and q.height == 2


def test_unconditional_layout():
    seq = build_sequence(None, "image", _pix(3), height=1, width=1)
    assert seq[:6] == [V.BOS, V.TEXT_BEGIN, V.TEXT_END, V.SEP, V.IMAGE_BEGIN, V.NUM_OFFSET + 1]


def test_audio_round_trip_and_header():
    codes = list(np.random.default_rng(1).integers(512, 4608, 2050))
    seq = build_sequence("chorale", "audio", codes)
    i = seq.index(V.AUDIO_BEGIN)
    assert seq[i + 1 : i + 3] == [V.NUM_OFFSET + 2, V.NUM_OFFSET + 2]  # 2050 = 2*1024 + 2
    p = split_sequence(seq)
    assert (p.modality, p.n_audio_tokens, p.target, p.prompt, p.complete) == ("audio", 2050, codes, "chorale", True)
    pre = build_sequence("chorale", "audio", codes[:10], n_audio_tokens=2050, complete=False)
    assert pre == seq[: len(pre)]
    assert split_sequence(pre).n_audio_tokens == 2050


def test_text_round_trip():
    seq = build_sequence("to be", "text", list(b" or not"))
    assert seq == [V.BOS, V.TEXT_BEGIN, *b"to be or not", V.TEXT_END, V.EOS]
    p = split_sequence(seq)
    assert (p.modality, p.prompt, p.complete) == ("text", "to be or not", True)
    pre = build_sequence("to be", "text", complete=False)
    assert pre == [V.BOS, V.TEXT_BEGIN, *b"to be"]
    assert not split_sequence(pre).complete and split_sequence(pre).modality == "text"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(modality="image", target=[256] * 6, height=1, width=1), "header says 3"),
        (dict(modality="image", target=[256, 600, 256], height=1, width=1), "id 600 .* position 1"),
        (dict(modality="image", target=[256] * 3, height=0, width=1), "height=0"),
        (dict(modality="image", target=None, height=1, width=257), "width=257"),
        (dict(modality="audio", target=[512, 5]), "id 5 .* position 1"),
        (dict(modality="audio", target=[]), "n_audio_tokens=0"),
        (dict(modality="audio", target=[512], complete=False), "needs n_audio_tokens"),
        (dict(modality="text", target=[300]), "id 300"),
        (dict(modality="video"), "unknown modality"),
    ],
)
def test_build_validation(kwargs, match):
    with pytest.raises(TokenizerError, match=match):
        build_sequence("x", **kwargs)
    with pytest.raises(TokenizerError, match="prompt id 999"):
        build_sequence([1, 999], "text")


def test_split_never_crashes_on_garbage():
    rng = np.random.default_rng(0)
    for n in range(0, 200, 7):
        ids = rng.integers(-3, V.VOCAB_SIZE + 5, n)
        split_sequence(ids)
        # garbage with plausible structure
        split_sequence([V.BOS, V.TEXT_BEGIN, 0xFF, V.TEXT_END, V.SEP, V.IMAGE_BEGIN, *ids])
        split_sequence([V.BOS, V.TEXT_BEGIN, V.TEXT_END, V.SEP, V.AUDIO_BEGIN, V.NUM_OFFSET, *ids])
    assert split_sequence([]).modality is None


def test_position_features_image():
    tgt = _pix(2 * 3 * 3)
    seq = build_sequence("hi", "image", tgt, height=2, width=3)
    f = position_features(seq)
    assert f.shape == (len(seq), 5) and f.dtype == np.int64
    assert (f.max(0) < np.array(V.FEATURE_SIZES)).all()
    assert f[2:4, 3].all() and not f[4:, 3].any()  # "hi": the word slot; nothing else is a word byte
    assert f[2:4, 4].tolist() == [1, 1] and not f[4:, 4].any()  # the prompt's first paragraph; no text after
    f = f[:, :3]
    start = seq.index(V.IMAGE_BEGIN) + 3
    pix = f[start : start + 18]
    # token 10 of a 2x3 image: row 1, col 0, channel 1 -> (2, 1, 2)
    assert tuple(pix[10]) == (2, 1, 2) and tuple(pix[0]) == (1, 1, 1) and tuple(pix[17]) == (2, 3, 3)
    assert not f[:start].any() and not f[start + 18 :].any()


def test_position_features_audio_and_big_image():
    seq = build_sequence("", "audio", [600] * 5)
    f = position_features(seq)
    i = seq.index(V.AUDIO_BEGIN) + 3
    assert (f[i : i + 5] == [0, 0, 1, 0, 0]).all() and not f[:i].any()
    seq = build_sequence("", "image", [256] * (256 * 256 * 3), height=256, width=256)
    f = position_features(seq)
    assert (f.max(0) < np.array(V.FEATURE_SIZES)).all() and tuple(f[-3]) == (256, 256, 3, 0, 0)


def _mixed_sequence(rng):
    parts = [build_sequence("p", "image", _pix(2 * 2 * 3), height=2, width=2),
             build_sequence("q", "audio", list(rng.integers(512, 4608, 7))),
             build_sequence("r", "image", _pix(5), height=1, width=2, complete=False),  # overflows its header
             [V.IMAGE_BEGIN, V.NUM_OFFSET + 1, 300, 301],  # malformed header
             list(rng.integers(0, V.VOCAB_SIZE, 60))]  # fmt: skip
    return np.concatenate([np.asarray(p) for p in parts])


def test_tracker_agrees_and_is_causal():
    rng = np.random.default_rng(0)
    seq = _mixed_sequence(rng)
    full = position_features(seq)
    # one token at a time
    t = FeatureTracker()
    assert np.array_equal(np.stack([t.push(x) for x in seq]), full)
    # random chunks
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(seq)), 6, replace=False))
        t = FeatureTracker()
        got = np.concatenate([t.extend(c) for c in np.split(seq, cuts)])
        assert np.array_equal(got, full)
    # causality: features of every prefix equal the prefix of the features
    for k in range(0, len(seq), 5):
        assert np.array_equal(position_features(seq[:k]), full[:k])
