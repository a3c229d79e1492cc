"""Chat completions on a plain-text model: the transcript template and the chat.completion response shapes."""

from __future__ import annotations

from typing import Any

from glactl.serve.choices import ChoiceBuilder
from glactl.serve.jobs import Done
from glactl.serve.schemas import ChatMessage

SPEAKERS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
TURN_STOP = "\nUser:"


def transcript(messages: list[ChatMessage]) -> str:
    """The messages as a plain transcript for the model to continue: "System: ...\\nUser: ...\\nAssistant:".

    The shipped models are byte-level models trained on plain text, not chat-tuned: this only frames the messages as
    a dialogue to continue, and generation also stops at "\\nUser:" (TURN_STOP), where the model starts the next turn.
    """
    return "".join(f"{SPEAKERS[m.role]}: {m.text}\n" for m in messages) + "Assistant:"


class ChatShape:
    """chat.completion responses and chat.completion.chunk stream events."""

    id_prefix, object, chunk_object = "chatcmpl-", "chat.completion", "chat.completion.chunk"

    def choice(self, builder: ChoiceBuilder, done: Done) -> dict[str, Any]:
        return {
            "index": builder.index,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": None,
            "finish_reason": done.finish_reason,
        }

    def opening(self, builder: ChoiceBuilder) -> dict[str, Any] | None:
        return {"index": builder.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}

    def piece(self, builder: ChoiceBuilder, text: str) -> dict[str, Any]:
        builder.release(text)
        return {"index": builder.index, "delta": {"content": text}, "finish_reason": None}

    def closing(self, builder: ChoiceBuilder, finish_reason: str) -> dict[str, Any]:
        return {"index": builder.index, "delta": {}, "finish_reason": finish_reason}
