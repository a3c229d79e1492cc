"""Stop strings: where a stream of generated text is cut, the same cut however the text arrives in pieces."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Cuts a stream of text before the first stop string in it (stop string not shown), however the text arrives.

    Text that may begin a stop string is held back. A stop string that has appeared ends the sample
    only once no stop string that would begin earlier can still complete (stops "c" and "aca": after
    "ac" the matcher waits for one more character), so the cut is the same whether the text comes
    character by character or in one piece.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, text: str) -> str:
        """Add decoded text; return what is safe to show now."""
        if self.done or not text:
            return ""
        if not self.stops:
            return text
        self.pending += text
        hit = self._first_stop()
        still_open = self._first_open_start()
        if hit is not None and still_open >= hit:
            return self._finish(hit)
        out, self.pending = self.pending[:still_open], self.pending[still_open:]
        return out

    def flush(self) -> str:
        """What is still held back at the end of generation (cut before a stop string found in it)."""
        if self.done:
            return ""
        hit = self._first_stop()
        if hit is not None:
            return self._finish(hit)
        out, self.pending = self.pending, ""
        return out

    def _first_stop(self) -> int | None:
        """Where the earliest complete stop string in the held text begins, or None."""
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _first_open_start(self) -> int:
        """Where the earliest unfinished stop string may begin: the held text's longest suffix that is a proper
        prefix of a stop string starts there (len(pending) when there is none)."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:k]):
                    hold = k
                    break
        return len(self.pending) - hold

    def _finish(self, cut: int) -> str:
        out, self.pending, self.done = self.pending[:cut], "", True
        return out
