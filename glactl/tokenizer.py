"""UTF-8 byte tokenizer: the vocabulary is the 256 byte values, so every input can be encoded."""

from __future__ import annotations

import codecs

VOCAB_SIZE = 256
TOKENIZER_NAME = "utf8-bytes"


def encode(text: str | bytes) -> list[int]:
    """Token ids of a text (UTF-8 encoded) or of raw bytes (taken as they are)."""
    data = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8")
    return list(data)


def decode(tokens: list[int] | bytes, errors: str = "replace") -> str:
    """Text of a token sequence; invalid UTF-8 becomes U+FFFD by default."""
    return bytes(tokens).decode("utf-8", errors=errors)


class StreamDecoder:
    """Incremental decoder for streaming output.

    Holds back an incomplete multi-byte sequence until it completes, and replaces
    an invalid one, so a character is never printed half and no byte ever raises.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int | bytes) -> str:
        """Add one byte (or several) and return whatever text is now complete."""
        data = bytes([token]) if isinstance(token, int) else bytes(token)
        return self._decoder.decode(data)

    def flush(self) -> str:
        """Return what is held back at the end of the stream (replaced if incomplete)."""
        return self._decoder.decode(b"", final=True)
