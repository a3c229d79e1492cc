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

from glactl.models.state import clone_state, compact_state

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

    def __post_init__(self) -> None:
        # Kept at rest in the compact form: a decode step's preallocated window would be written in place by
        # whoever steps on from it, and state files store the compact form.
        object.__setattr__(self, "state", compact_state(self.state))

    @property
    def tokens_read(self) -> int:
        """Bytes the model has read, START included."""
        return self.bytes_read + len(START)


def next_logits(logits: torch.Tensor) -> torch.Tensor:
    """The logits kept for the next byte: float32 or float64, whatever the model computed in."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def copy_reading(reading: Reading) -> Reading:
    """A reading that shares no tensor memory with `reading`: what whoever continues from a reading gets."""
    return Reading(clone_state(reading.state), reading.logits.clone(), reading.bytes_read, reading.tail)


def read_piece(model: torch.nn.Module, piece: bytes, before: Reading | None) -> tuple[Reading, torch.Tensor]:
    """Read `piece` in one forward call after `before` (None: `piece` begins with START): the reading after it, and
    the logits [len(piece), vocab] at every position. `before`'s state is handed to the model (a copy, or owned)."""
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    inputs = torch.frombuffer(bytearray(piece), dtype=torch.uint8).to(device, torch.long)
    logits, state = model(inputs[None], None if before is None else before.state)
    logits = next_logits(logits[0])
    read_bytes = len(piece) - (len(START) if before is None else 0)
    reading = Reading(
        state,
        logits[-1].clone(),  # not a view: the reading keeps one row, not the piece's [len(piece), vocab]
        read_bytes + (before.bytes_read if before is not None else 0),
        extend_tail(before.tail if before is not None else b"", piece),
    )
    return reading, logits


def read(model: torch.nn.Module, data: bytes, start: Reading | None = None, window: int = READ_WINDOW) -> Reading:
    """Read `data` after `start` (None: after START) in `window`-byte pieces; `start` is left as it was."""
    data = bytes(data)
    reading = copy_reading(start) if start is not None else None
    feed = data if start is not None else START + data
    with torch.inference_mode():
        for begin in range(0, len(feed), window):
            reading, _ = read_piece(model, feed[begin : begin + window], reading)
    assert reading is not None  # feed holds at least START, or start was given
    return reading


def extend_tail(tail: bytes, data: bytes) -> bytes:
    """The last TAIL_BYTES bytes of `tail` followed by `data`."""
    return (bytes(tail) + bytes(data))[-TAIL_BYTES:]
