"""Scoring a probe task: the loss over its answer positions, and answers and whole sequences right.

Kept apart from the tasks' sequences (glactl/data/tasks.py) because training, compare and the tasks' own
trivial floors all count with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def masked_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy (nats) over the answer positions only: logits elsewhere do not count."""
    picked = logits[mask]
    return F.cross_entropy(picked.float(), y[mask], reduction=reduction)


@dataclass
class TaskScore:
    """Sums over scored batches: masked loss, answers right (teacher-forced argmax), whole sequences right."""

    loss_sum: float = 0.0
    answers: int = 0
    correct: int = 0
    sequences: int = 0
    sequences_right: int = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        """Score a batch: logits [B, T, V], y [B, T], mask [B, T]."""
        self.loss_sum += masked_cross_entropy(logits, y, mask, reduction="sum").item()
        self.add_guesses(logits.argmax(-1), y, mask)

    def add_guesses(self, guesses: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        """Count answers and whole sequences right: guesses, y, mask [B, T] (no loss: a guess has no probabilities)."""
        right = (guesses == y) & mask
        self.answers += int(mask.sum())
        self.correct += int(right.sum())
        whole = (right | ~mask).all(-1) & mask.any(-1)
        self.sequences += int(mask.any(-1).sum())
        self.sequences_right += int(whole.sum())

    def totals(self) -> list[float]:
        return [self.loss_sum, self.answers, self.correct, self.sequences, self.sequences_right]

    @classmethod
    def from_totals(cls, totals: list[float]) -> TaskScore:
        loss, answers, correct, sequences, right = totals
        return cls(float(loss), int(answers), int(correct), int(sequences), int(right))

    def metrics(self, whole_sequence: bool) -> dict[str, float]:
        """val_loss (nats per answer), accuracy (per answer) and, where it applies, sequence_accuracy."""
        out = {"val_loss": self.loss_sum / max(1, self.answers), "accuracy": self.correct / max(1, self.answers)}
        if whole_sequence:
            out["sequence_accuracy"] = self.sequences_right / max(1, self.sequences)
        return out
