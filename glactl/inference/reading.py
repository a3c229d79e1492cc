"""Reading a text into a model: the state after "\\n" + text (or after an earlier reading) and the next-byte logits.

Every command reads a text after exactly one START byte (docs/design.md §2), so a `Reading` means the
same thing to generate, complete and perplexity, and can be saved to a file (glactl/storage/state_file.py).
Texts are read with the parallel form in pieces of `window` bytes, the state carried, so a long
text costs memory of one piece. A reading is never changed in place: whoever continues from one
gets a copy of its state (`clone_state`), whatever a mixer or a compiled step does with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from glactl.models.state import clone_state

START = b"\n"
TAIL_BYTES = 64  # bytes of the text kept with a state: the repetition penalty's window (sampling.REPETITION_WINDOW)
READ_WINDOW = 4096


@dataclass(frozen=True, eq=False)
class Reading:
    """The model state (batch of one) after START + `bytes_read` bytes of text, and the logits [vocab] for the next byte."""

    state: Any
    logits: torch.Tensor
    bytes_read: int
    tail: bytes  # the last TAIL_BYTES bytes read, START included while the text is shorter

    @property
    def tokens_read(self) -> int:
        """Bytes the model has read, START included."""
        return self.bytes_read + len(START)


def next_logits(logits: torch.Tensor) -> torch.Tensor:
    """The logits kept for the next byte: float32 or float64, whatever the model computed in."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def read(model: torch.nn.Module, data: bytes, start: Reading | None = None, window: int = READ_WINDOW) -> Reading:
    """Read `data` after `start` (None: after START) in `window`-byte pieces; `start` is left as it was."""
    data = bytes(data)
    if start is not None and not data:
        return Reading(clone_state(start.state), start.logits.clone(), start.bytes_read, start.tail)
    feed = data if start is not None else START + data
    state = clone_state(start.state) if start is not None else None
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    logits = None
    with torch.inference_mode():
        for begin in range(0, len(feed), window):
            piece = torch.frombuffer(bytearray(feed[begin : begin + window]), dtype=torch.uint8).to(device, torch.long)
            logits, state = model(piece[None], state)
    assert logits is not None  # feed holds at least START
    previous = start.tail if start is not None else b""
    return Reading(
        state,
        next_logits(logits[0, -1]),
        (start.bytes_read if start else 0) + len(data),
        (previous + feed)[-TAIL_BYTES:],
    )


def extend_tail(tail: bytes, data: bytes) -> bytes:
    """The last TAIL_BYTES bytes of `tail` followed by `data`."""
    return (bytes(tail) + bytes(data))[-TAIL_BYTES:]
