"""What the routes serve: the server's settings and, once the model has loaded, its engine and sessions."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from glactl.serve.engine import Engine
from glactl.serve.http_errors import ApiError
from glactl.serve.sessions import SessionStore


def stderr_line(line: str) -> None:
    """One log line on stderr (the server's log)."""
    try:
        sys.stderr.write(f"glactl serve: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # nobody reads stderr any more: serving goes on
        pass


@dataclass(frozen=True)
class Settings:
    """The server's limits and identity; `api_key` None: no key asked."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 8 << 20  # a JSON request (413 above)
    max_state_bytes: int = 256 << 20  # an uploaded state file (attention states grow with their window)
    max_prompt_bytes: int = 4 << 20  # every prompt of one request together, as bytes
    log: Callable[[str], None] = field(default=stderr_line)


@dataclass
class Backend:
    """The settings, and the engine and session store (None while the model loads)."""

    settings: Settings
    engine: Engine | None = None
    sessions: SessionStore | None = None
    created: int = field(default_factory=lambda: int(time.time()))  # the server's start, as the model's "created"


def backend(request: Request) -> Backend:
    """The app's backend, or 503 while the model is still loading."""
    served: Backend = request.app.state.backend
    if served.engine is None:
        raise ApiError(503, "the model is still loading; try again shortly", code="model_loading")
    return served
