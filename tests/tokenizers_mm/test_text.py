import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizers_mm import TextTokenizer, TokenizerError


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_random_unicode(s):
    tok = TextTokenizer()
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=64))
def test_decode_arbitrary_bytes_never_crashes(ids):
    assert isinstance(TextTokenizer().decode(ids), str)


def test_invalid_utf8_replaced():
    assert TextTokenizer().decode([0x61, 0xFF, 0x62, 0xE2, 0x82]) == "a\ufffdb\ufffd"


def test_long_prompt():
    s = "Ünïcødé 🎵 " * 5000
    tok = TextTokenizer()
    assert tok.decode(tok.encode(s)) == s


def test_out_of_range_ids():
    tok = TextTokenizer()
    with pytest.raises(TokenizerError, match=r"id 300 .*position 1"):
        tok.decode([65, 300, 66])
    with pytest.raises(TokenizerError, match="id -1"):
        tok.decode([-1])
    assert tok.decode([65, 300, 5633, 66], strict=False) == "AB"
