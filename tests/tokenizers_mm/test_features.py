"""The word and paragraph slots of the position features: a text byte names the word it ends (the same word
anywhere the same) and the paragraph of its prompt it sits in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiverar.data.filler import CAPTION_SEP, bury_caption, prompted_sequence
from perceiverar.layers import TokenEmbedding
from tokenizers_mm.features import (
    MAX_WORD, FeatureTracker, paragraph_features, position_features, text_features, word_features,
)  # fmt: skip
from tokenizers_mm.ids import (
    FEATURE_SIZES, PARAGRAPH_BUCKETS, PARAGRAPH_SLOT, PIXEL_OFFSET, TEXT_BEGIN, TEXT_END, TEXT_OFFSET, WORD_BUCKETS,
    WORD_SLOT,
)  # fmt: skip
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
    assert Vocabulary.from_dict({**old, "n_features": 4, "feature_sizes": list(FEATURE_SIZES[:4])}) == Vocabulary()
    with pytest.raises(TokenizerError, match="not a prefix"):
        Vocabulary.from_dict({**old, "feature_sizes": [257, 257, 18]})
    torch.manual_seed(0)
    emb = TokenEmbedding(64, 8, FEATURE_SIZES[:3])
    tokens = torch.randint(0, 64, (2, 5))
    feats = torch.stack([torch.randint(0, 17, (2, 5)) for _ in range(4)], -1)  # (2, 5, 4)
    assert torch.equal(emb(tokens, feats), emb(tokens, feats[..., :3]))
    with pytest.raises(ValueError, match="features must have shape"):
        TokenEmbedding(64, 8, FEATURE_SIZES)(tokens, feats[..., :3])


def paragraphs_one_by_one(ids) -> list[int]:
    """The paragraph slot as a plain state machine, one id at a time: the reference for the vectorised one."""
    out, para, run = [], 0, 0
    for t in ids:
        if not TEXT_OFFSET <= t < TEXT_OFFSET + 256:  # not text: a [TEXT_BEGIN] opens paragraph 1, others close
            para, run = (1 if t == TEXT_BEGIN else 0), 0
            out.append(0)
            continue
        if t == TEXT_OFFSET + ord("\n"):
            run += 1
        else:
            para, run = para + (para > 0 and run >= 2), 0
        out.append(min(para, PARAGRAPH_BUCKETS - 1))
    return out


def test_paragraph_slot_numbers_the_paragraphs_of_each_text_section():
    prompt = "red heart; twitter style\n\nTo be, or not to be:\nthat is the question.\n\n\nWhether 'tis nobler"
    seq = build_sequence(prompt, "image", [PIXEL_OFFSET] * 12, height=2, width=2)
    f = position_features(seq)[:, PARAGRAPH_SLOT]
    text = np.frombuffer(prompt.encode(), np.uint8)
    want = np.where(np.arange(len(text)) < prompt.index("To be"), 1,
                    np.where(np.arange(len(text)) < prompt.index("Whether"), 2, 3))  # fmt: skip
    assert f[2 : 2 + len(text)].tolist() == want.tolist()  # a single newline is not a paragraph break
    assert not f[: 2].any() and not f[2 + len(text) :].any()  # [BOS], [TEXT_BEGIN], the image: none
    # many paragraphs share the last bucket; a byte with no [TEXT_BEGIN] before it has none (a crop)
    many = "\n\n".join("p" * 3 for _ in range(10))
    g = paragraph_features([TEXT_BEGIN, *b(many)])[0]
    assert g.max() == PARAGRAPH_BUCKETS - 1 and g[1] == 1 and g[-1] == PARAGRAPH_BUCKETS - 1
    assert not paragraph_features(b(many))[0].any()
    # a caption buried at the start of filler is the first paragraph whatever follows it
    filler = b("Shakespeare, " * 50 + "\n\nmore")
    buried = bury_caption(b("red heart"), filler, 0.0)
    ids, feats = prompted_sequence(buried, np.asarray([TEXT_END], np.int64))
    assert feats[2 : 2 + len("red heart"), PARAGRAPH_SLOT].tolist() == [1] * 9
    assert (feats[2 + 9 + len(CAPTION_SEP) : -1, PARAGRAPH_SLOT] >= 2).all()


def test_paragraph_slot_equals_its_reference_in_any_chunks():
    """Random runs of newlines, letters, [TEXT_BEGIN], [TEXT_END] and media ids: the vectorised slot equals the
    one-id-at-a-time reference, and the tracker fed in random chunks equals both (generation's way)."""
    rng = np.random.default_rng(0)
    alphabet = np.array([TEXT_OFFSET + 10] * 3 + [TEXT_OFFSET + ord("a"), TEXT_OFFSET + ord(" "), TEXT_BEGIN, TEXT_END,
                         PIXEL_OFFSET + 3])  # fmt: skip
    for _ in range(300):
        n = int(rng.integers(1, 80))
        ids = rng.choice(alphabet, n, p=[0.12, 0.12, 0.12, 0.34, 0.1, 0.08, 0.06, 0.06])
        want = paragraphs_one_by_one(ids.tolist())
        assert paragraph_features(ids)[0].tolist() == want
        tr, got, prev = FeatureTracker(), [], 0
        for cut in [*sorted(rng.integers(0, n + 1, 3).tolist()), n]:
            got += tr.extend(ids[prev:cut])[:, PARAGRAPH_SLOT].tolist()
            prev = cut
        assert got == want
