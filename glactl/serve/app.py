"""The HTTP app of `glactl serve`: create_app(engine, sessions, settings) -> FastAPI, with every route, limit and error handler.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models (and /v1/models/{id}), /v1/sessions
(POST, GET, DELETE, and GET/PUT .../state), GET /health, GET /metrics, GET / (the web page). The engine and
sessions may come later (`attach`): until then /health answers 503 {"status": "loading"} and model routes 503.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from glactl.serve import metrics, openai_api, session_routes
from glactl.serve.engine import Engine
from glactl.serve.http_errors import install_error_handlers
from glactl.serve.middleware import ApiKey, BodyLimit, RequestLog
from glactl.serve.served import Backend, Settings
from glactl.serve.sessions import SessionStore
from glactl.version import __version__

WEB_PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def create_app(engine: Engine | None, sessions: SessionStore | None, settings: Settings) -> FastAPI:
    """The app serving `engine` and `sessions` (None, None while the model loads: see `attach`)."""
    app = FastAPI(title="glactl serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = Backend(settings, engine, sessions)
    install_error_handlers(app, settings.log)
    for module in (openai_api, session_routes, metrics):
        app.include_router(module.router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", web_page, methods=["GET"])
    # Outermost last: the log line sees every answer, the key is checked before the body is read.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(ApiKey, settings=settings)
    app.add_middleware(RequestLog, settings=settings)
    return app


def attach(app: FastAPI, engine: Engine, sessions: SessionStore) -> None:
    """Serve `engine` and `sessions` from now on (the model has loaded)."""
    served: Backend = app.state.backend
    served.sessions = sessions
    served.engine = engine  # last: a request that sees the engine sees the sessions too


async def health(request: Request) -> JSONResponse:
    """503 {"status": "loading"} until the model has loaded, then {"status": "ok"}."""
    loaded = request.app.state.backend.engine is not None
    return JSONResponse({"status": "ok" if loaded else "loading"}, status_code=200 if loaded else 503)


async def web_page() -> Response:
    """glactl/serve/static/index.html where it is installed."""
    if not WEB_PAGE.is_file():
        return PlainTextResponse("no web page is installed (glactl/serve/static/index.html)\n", status_code=404)
    return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))
