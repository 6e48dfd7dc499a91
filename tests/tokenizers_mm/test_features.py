"""The word slot of the position features: a text byte names the word it ends; the same word anywhere the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiverar.data.filler import prompted_sequence
from perceiverar.layers import TokenEmbedding
from tokenizers_mm.features import MAX_WORD, FeatureTracker, position_features, text_features, word_features
from tokenizers_mm.ids import FEATURE_SIZES, PIXEL_OFFSET, WORD_BUCKETS, WORD_SLOT
from tokenizers_mm.vocab import TokenizerError, Vocabulary, build_sequence


def b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).astype(np.int64)


def at_end(text: str, word: str, nth: int = 0) -> int:
    """The word slot at the last byte of the nth occurrence of ``word`` in ``text``."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(word, i + 1)
    return int(word_features(b(text))[i + len(word) - 1])


def test_a_word_is_named_by_its_bytes_not_by_its_neighbours():
    text = "large red square; tired face; hundred points; Red apple; der"
    red = at_end(text, "red")
    assert red != 0 and at_end(text, "Red") == red  # case folded
    assert at_end(text, "tired") != red and at_end(text, "hundred") != red  # what a 4-byte window cannot tell
    assert at_end(text, "der") != red  # the bytes of "red" in another order
    f = word_features(b(text))
    assert (f[b(text) == ord(" ")] == 0).all() and (f[b(text) == ord(";")] == 0).all()  # not word bytes
    assert ((f >= 0) & (f < WORD_BUCKETS)).all()
    # the slot at a byte depends only on its word so far: "re" inside "red" is "re" anywhere
    assert word_features(b("re"))[-1] == word_features(b("red"))[1] == word_features(b("a red"))[3]


def test_long_words_non_ascii_and_media_ids():
    long = "x" * (MAX_WORD + 5)
    f = word_features(b(long + " " + long[:-1] + "y"))
    assert f[MAX_WORD - 1] != 0 and f[len(long) - 1] == f[len(long) - 2]  # past MAX_WORD bytes: the last MAX_WORD
    assert word_features(b("café"))[-1] != 0  # UTF-8 bytes are word bytes
    ids = np.concatenate([b("red"), [PIXEL_OFFSET + 5, PIXEL_OFFSET + 6]])
    assert list(word_features(ids)[3:]) == [0, 0]  # colour ids are not text


@pytest.mark.parametrize("cut", [1, 5, 9, 30])
def test_tracker_token_by_token_equals_the_whole_sequence(cut):
    """Generation pushes one id at a time (words span the pushes); training featurizes whole items."""
    seq = build_sequence("a large red square; geometric; twitter style", "image", [PIXEL_OFFSET] * 12, height=2,
                         width=2)  # fmt: skip
    seq = [*seq, *b("Once upon a midnight dreary, " + "z" * 20).tolist()]
    full = position_features(seq)
    tr = FeatureTracker()
    got = np.concatenate([tr.extend(seq[:cut]), np.stack([tr.push(t) for t in seq[cut:]])])
    assert np.array_equal(got, full)
    assert full[:, WORD_SLOT].any() and not full[full[:, 2] > 0, WORD_SLOT].any()  # pixels have no word


def test_text_and_prompt_shortcuts_equal_the_tracker():
    text = b("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind")
    assert np.array_equal(text_features(text), position_features(text))
    rest = np.asarray(build_sequence("", "image", [PIXEL_OFFSET] * 12, height=2, width=2)[2:], np.int64)
    ids, feats = prompted_sequence(b("a long prompt, then the caption: red heart"), rest)
    assert np.array_equal(feats, position_features(ids))


def test_checkpoints_before_the_word_slot_still_load():
    """A checkpoint's vocabulary with the first three slots is accepted (its model reads only those); another
    list of slots is refused; a model with three slots reads the first three columns of four."""
    old = {**Vocabulary().to_dict(), "n_features": 3, "feature_sizes": list(FEATURE_SIZES[:3])}
    assert Vocabulary.from_dict(old) == Vocabulary()
    with pytest.raises(TokenizerError, match="not a prefix"):
        Vocabulary.from_dict({**old, "feature_sizes": [257, 257, 18]})
    torch.manual_seed(0)
    emb = TokenEmbedding(64, 8, FEATURE_SIZES[:3])
    tokens = torch.randint(0, 64, (2, 5))
    feats = torch.stack([torch.randint(0, 17, (2, 5)) for _ in range(4)], -1)  # (2, 5, 4)
    assert torch.equal(emb(tokens, feats), emb(tokens, feats[..., :3]))
    with pytest.raises(ValueError, match="features must have shape"):
        TokenEmbedding(64, 8, FEATURE_SIZES)(tokens, feats[..., :3])
