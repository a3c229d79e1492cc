"""What every request passes through (plain ASGI, so streamed responses pass untouched): the log line, the key, the body limit."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glactl.serve.http_errors import error_response
from glactl.serve.served import Settings

OPEN_PATHS = ("/", "/health")  # the web page (it asks for the key) and the health check


class RequestLog:
    """Gives each request an id (x-request-id) and logs one line when it ends: status, bytes in/out, seconds, tokens/s."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex[:24]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        counts: dict[str, Any] = {"in": 0, "out": 0, "status": "-"}

        async def counted_receive() -> Message:
            message = await receive()
            counts["in"] += len(message.get("body", b""))
            return message

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, counted_receive, counted_send)
        except Exception:
            counts["status"] = 500  # answered by the outermost error handler
            raise
        finally:
            seconds = time.perf_counter() - started
            line = (
                f"{request_id} {scope['method']} {scope['path']} {counts['status']}: {counts['in']} B in, "
                f"{counts['out']} B out, {seconds:.3f} s"
            )
            tokens = state.get("tokens")
            if tokens is not None:
                line += f", {tokens} tokens, {tokens / seconds if seconds > 0 else 0.0:.1f} tokens/s"
            self.settings.log(line)


class ApiKey:
    """With a key set, every route but OPEN_PATHS needs "Authorization: Bearer KEY" (401 in OpenAI's shape otherwise)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.settings.api_key
        if scope["type"] != "http" or key is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), key.encode()):
            return await self.app(scope, receive, send)
        message = "missing API key (Authorization: Bearer KEY)" if not given else "invalid API key"
        response = error_response(401, message, code="invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


class BodyLimit:
    """413 for a body over the limit (a state file upload has its own, larger one), by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit(self, scope: Scope) -> int:
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        upload = content_type == b"application/octet-stream"
        return self.settings.max_state_bytes if upload else self.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope)
        too_large = error_response(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            return await too_large(scope, receive, send)
        seen = {"bytes": 0, "over": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            seen["bytes"] += len(message.get("body", b""))
            if seen["bytes"] > limit:
                seen["over"] = True
                return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced by the 413
            return message

        async def replacing_send(message: Message) -> None:
            if not seen["over"]:
                await send(message)
            elif not seen["answered"]:
                seen["answered"] = True
                await too_large(scope, receive, send)

        try:
            await self.app(scope, limited_receive, replacing_send)
        except Exception:
            if not seen["over"]:
                raise
        if seen["over"] and not seen["answered"]:
            await too_large(scope, receive, send)
