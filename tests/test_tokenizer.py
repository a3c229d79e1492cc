"""The byte tokenizer: round trips and the streaming decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.tokenizer import VOCAB_SIZE, StreamDecoder, decode, encode


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_round_trip(data: bytes) -> None:
    tokens = encode(data)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)
    assert bytes(tokens) == data


@pytest.mark.slow
@settings(deadline=None, max_examples=200)
@given(st.text(max_size=200))
def test_text_round_trip(text: str) -> None:
    assert decode(encode(text)) == text


def test_multibyte_text_round_trip() -> None:
    text = "naïve café — 東京 🚀 Ελληνικά"
    tokens = encode(text)
    assert len(tokens) > len(text)
    assert decode(tokens) == text


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=200))
def test_stream_decoder_byte_by_byte_equals_decode(text: str) -> None:
    decoder = StreamDecoder()
    pieces = [decoder.feed(b) for b in text.encode("utf-8")]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text


def test_stream_decoder_never_emits_half_a_character() -> None:
    decoder = StreamDecoder()
    rocket = "🚀".encode()
    assert [decoder.feed(b) for b in rocket] == ["", "", "", "🚀"]


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_stream_decoder_invalid_bytes_match_replace_decoding(data: bytes) -> None:
    decoder = StreamDecoder()
    out = "".join(decoder.feed(b) for b in data) + decoder.flush()
    assert out == data.decode("utf-8", errors="replace")
