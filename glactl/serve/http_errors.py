"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, for every failure a request can meet; never a traceback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from glactl.errors import GlactlError, InputError
from glactl.serve.schemas import FIELD_TYPES


class ApiError(Exception):
    """A request that fails with `status` and one-line `message` (param: the request field at fault)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error document: invalid_request_error for the client's faults, server_error for ours."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def validation_error(errors: Sequence[Any]) -> ApiError:
    """One 400 from pydantic's errors: the first field at fault, said in words, never the input echoed whole."""
    first = errors[0]
    kind, loc = first.get("type"), [str(part) for part in first.get("loc", ()) if part != "body"]
    if kind == "json_invalid":
        return ApiError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
    if not loc:
        return ApiError(400, "the body must be a JSON object")
    field = loc[0]
    if kind == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {field}", field)
    if field in FIELD_TYPES and len([e for e in errors if tuple(e.get("loc", ()))[1:2] == (field,)]) > 1:
        return ApiError(400, f"{field} must be {FIELD_TYPES[field]}", field)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return ApiError(400, f"{'.'.join(loc)}: {message}", field)


def install_error_handlers(app: FastAPI, log: Any) -> None:
    """Every failure answers in OpenAI's shape: ours, the framework's (404, 405, validation) and unexpected ones."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _api(request, validation_error(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {message}")

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, str(exc).replace("\n", " "))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        known = isinstance(exc, GlactlError)
        first_line = next(iter(str(exc).splitlines()), "")
        log(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {first_line}")
        message = str(exc).replace("\n", " ") if known else f"internal error ({type(exc).__name__}; see the server log)"
        return error_response(500, message)
