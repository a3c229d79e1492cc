"""Session routes: create (from a text or an uploaded state file), describe, delete, download and upload a session's state.

A session is a model state kept under an unguessable id: the state after its text and every completion that
continued it (`"session"` on /v1/completions). Its state file is the --save-state format, so it works with
`glactl generate --state` too. Uploads are checked like --state and never unpickled; ids that are not session ids
are 404, never a path.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from glactl.serve.http_errors import ApiError, validation_error
from glactl.serve.schemas import SessionCreate
from glactl.serve.served import Backend, backend

router = APIRouter()
STATE_TYPE = "application/octet-stream"


def _unknown(session_id: str) -> ApiError:
    return ApiError(404, f"no session {session_id!r}", "session_id", "session_not_found")


def describe(served: Backend, session_id: str) -> dict[str, Any]:
    """The session document {id, object, bytes_read, state_bytes, file_bytes, model, version, created, updated}, or 404."""
    try:
        return {**served.sessions.info(session_id), "object": "session", "model": served.settings.model_name}
    except (KeyError, ValueError, FileNotFoundError):
        raise _unknown(session_id) from None


def is_state_upload(request: Request) -> bool:
    """Whether the body is a state file (application/octet-stream) rather than JSON."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == STATE_TYPE


@router.post("/v1/sessions")
async def create_session(request: Request) -> dict[str, Any]:
    """A new session: the START and an optional {"text": ...} read after it, or an uploaded state file as it is."""
    served = backend(request)
    data = await request.body()
    if is_state_upload(request):
        session_id = await run_in_threadpool(served.sessions.upload, None, data)
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if data and content_type != "application/json":  # a plain form post from another web page is refused
            raise ApiError(
                415, "send the session's text as application/json, or a state file as application/octet-stream"
            )
        try:
            text = SessionCreate.model_validate_json(data or b"{}").text.encode("utf-8")
        except ValidationError as e:
            raise validation_error(e.errors()) from None
        limit = served.settings.max_prompt_bytes
        if len(text) > limit:
            raise ApiError(400, f"text holds {len(text):,} bytes; at most {limit:,}", "text", "prompt_too_long")
        reading = await run_in_threadpool(served.engine.read, text)
        session_id = await run_in_threadpool(served.sessions.create, reading)
    return await run_in_threadpool(describe, served, session_id)


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(describe, backend(request), session_id)


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, request: Request) -> dict[str, Any]:
    served = backend(request)
    try:
        await run_in_threadpool(served.sessions.delete, session_id)
    except (KeyError, ValueError):
        raise _unknown(session_id) from None
    return {"id": session_id, "object": "session", "deleted": True}


@router.get("/v1/sessions/{session_id}/state")
async def download_state(session_id: str, request: Request) -> Response:
    """The session's state file (the --save-state format)."""
    served = backend(request)

    def read() -> bytes:
        describe(served, session_id)
        try:
            return served.sessions.state_file(session_id)
        except KeyError:  # deleted meanwhile
            raise _unknown(session_id) from None

    data = await run_in_threadpool(read)
    disposition = f'attachment; filename="{session_id}.state"'
    return Response(data, media_type=STATE_TYPE, headers={"Content-Disposition": disposition})


@router.put("/v1/sessions/{session_id}/state")
async def upload_state(session_id: str, request: Request) -> dict[str, Any]:
    """Replace the session's state with an uploaded state file (checked like --state: another model's or a hostile file is 400)."""
    served = backend(request)
    await run_in_threadpool(describe, served, session_id)
    data = await request.body()
    await run_in_threadpool(served.sessions.upload, session_id, data)
    return await run_in_threadpool(describe, served, session_id)
