"""The engine's prefix cache: readings after prompts already read, so a prompt that extends one reads only the rest.

A reading after START + prompt is exact whatever follows it, so a later prompt that starts with a kept prompt
continues from its reading (docs/design.md §5: continuing a state equals reading the whole text). The cache is
bounded by the bytes it holds (states, logits, prompts), least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from glactl.inference.reading import Reading, copy_reading
from glactl.models.layers import tensor_nbytes


def reading_nbytes(prompt: bytes, reading: Reading) -> int:
    """What keeping `reading` under `prompt` costs: its state and logits tensors and the prompt's bytes."""
    return int(tensor_nbytes(reading.state)) + reading.logits.numel() * reading.logits.element_size() + len(prompt)


class PrefixCache:
    """Readings keyed by prompt, at most `max_bytes` in all (0: keeps nothing); safe to use from several threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[bytes, tuple[Reading, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def longest(self, prompt: bytes) -> tuple[int, Reading] | None:
        """The longest kept prompt that `prompt` starts with: (its length, a copy of its reading), or None."""
        with self._lock:
            best = max((key for key in self._entries if prompt.startswith(key)), key=len, default=None)
            if best is None:
                return None
            self._entries.move_to_end(best)
            reading = self._entries[best][0]
        return len(best), copy_reading(reading)

    def keep(self, prompt: bytes, reading: Reading) -> None:
        """Remember a copy of the reading after START + `prompt`, dropping the least recently used to stay in bounds."""
        prompt = bytes(prompt)
        size = reading_nbytes(prompt, reading)
        if size > self.max_bytes:
            return
        with self._lock:
            if prompt in self._entries:
                self._entries.move_to_end(prompt)
                return
        copy = copy_reading(reading)
        with self._lock:
            if prompt in self._entries:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
            self._entries[prompt] = (copy, size)
            self._bytes += size
