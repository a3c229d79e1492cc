"""`glactl serve`: an OpenAI-compatible local HTTP server whose sessions are saved model states (needs the serve extra)."""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import typer

from glactl.cli.common import load_model, runs_as_process
from glactl.cli.options import (
    CompileOption,
    ContextOption,
    DeviceOption,
    KernelsOption,
    ModelOption,
    PrecisionOption,
    ThreadsOption,
)

EXTRA_MISSING = "glactl serve needs the serve extra: pip install 'glactl[serve]'"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_flags(
    host: str, port: int, max_batch: int, max_sessions: int, api_key: str | None, context: int | None
) -> None:
    """One-line InputError for values no server starts with."""
    from glactl.errors import InputError
    from glactl.inference.sampling import check_positive

    if not 0 <= port <= 65535:
        raise InputError(f"--port must be 0..65535 (0: any free port), got {port}")
    check_positive("--max-batch", max_batch, 1024)
    check_positive("--max-sessions", max_sessions, 1 << 20)
    if context is not None:
        check_positive("--context", context, 1 << 24)
    if api_key is not None and not api_key.strip():
        raise InputError("--api-key must not be empty")
    if api_key is None and not is_loopback(host):
        raise InputError(f"--host {host} lets other machines connect: give --api-key KEY (or GLACTL_API_KEY) as well")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening on host:port, so a taken port fails here in one line, before anything loads."""
    from glactl.errors import RunFailure

    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as e:
        raise RunFailure(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    model: ModelOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    kernels: KernelsOption = None,
    precision: PrecisionOption = None,
    compile: CompileOption = None,
    context: ContextOption = None,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (default 127.0.0.1; any other needs --api-key)."
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one (default 8000)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Requests decoded together as one batch (default 16)."),
    sessions: str | None = typer.Option(
        None,
        "--sessions",
        metavar="DIR",
        help="Folder of the sessions' state files (default: the glactl cache, sessions/<the weights' sha256, 12 hex>).",
    ),
    max_sessions: int = typer.Option(
        64, "--max-sessions", help="Sessions kept in memory; the others are read back from DIR on use (default 64)."
    ),
    prefix_cache: int = typer.Option(
        256,
        "--prefix-cache",
        metavar="MIB",
        help="MiB of prompt states kept so a prompt that extends a kept one reads only its new bytes (0 = off; default 256).",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="GLACTL_API_KEY",
        metavar="KEY",
        help="Require 'Authorization: Bearer KEY' on every route but /health and / (default: none).",
    ),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions) with sessions."""
    check_flags(host, port, max_batch, max_sessions, api_key, context)
    if prefix_cache < 0:
        from glactl.errors import InputError

        raise InputError(f"--prefix-cache {prefix_cache}: must be 0 (off) or more MiB")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        from glactl.errors import InputError

        raise InputError(EXTRA_MISSING) from None
    from glactl.inference.compiled_step import COMPILE_CHOICES
    from glactl.inference.precision import PRECISION_CHOICES, check_choice
    from glactl.report.display import run_name
    from glactl.runtime.devices import select_device, select_kernels
    from glactl.runtime.threads import thread_choices
    from glactl.serve.app import create_app
    from glactl.serve.served import Settings, stderr_line
    from glactl.storage.model_paths import resolve_model

    check_choice("--precision", precision, PRECISION_CHOICES)
    check_choice("--compile", compile, COMPILE_CHOICES)
    select_kernels(kernels, select_device(device or "auto"))  # the checks loading makes, before the server listens
    folder = resolve_model(model)
    name = run_name(folder)
    load = dict(
        device=device,
        threads=thread_choices("decoding", threads)[0],
        context=context,
        kernels=kernels,
        precision=precision,
        compile=compile,
    )
    listener = listening_socket(host, port)
    if runs_as_process():  # before the server's threads start (glactl/runtime/process_memory.py)
        from glactl.runtime.process_memory import share_one_heap

        share_one_heap()
    app = create_app(None, None, Settings(model_name=name, api_key=api_key))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = closing_server(uvicorn)(config)
    opener = partial(open_backend, str(folder), load, sessions, max_batch, max_sessions, prefix_cache << 20)
    loader = server.on_exit = Loader(app, server, opener)
    bound_host, bound_port = listener.getsockname()[:2]
    stderr_line(f"listening on http://{_url_host(bound_host)}:{bound_port} (loading {name})")
    threading.Thread(target=loader.run, name="glactl-serve-loader", daemon=True).start()
    try:
        server.run(sockets=[listener])
    finally:
        loader.close()
    if loader.error is not None:
        raise loader.error
    if server.interrupted:  # uvicorn re-raises a caught Ctrl-C, but a late one can be lost as the loop ends
        raise KeyboardInterrupt


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def closing_server(uvicorn: Any) -> type:
    """A uvicorn Server that closes the engine as soon as shutdown begins: open requests then end with their 503
    (a stream with its error event) within the grace period, instead of being cut by the shutdown."""

    class ClosingServer(uvicorn.Server):
        on_exit: Any = None
        interrupted = False  # a Ctrl-C (SIGINT) stopped it: the command exits 130

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            if self.on_exit is not None:
                self.on_exit.close()
            super().handle_exit(sig, frame)

    return ClosingServer


def open_backend(
    folder: str, load: dict[str, Any], sessions: str | None, max_batch: int, max_sessions: int, prefix_bytes: int
) -> tuple[Any, Any, str]:
    """Load the model, make its engine (not started) and open its sessions; also the line that says so."""
    from glactl.runtime.cache import cache_root
    from glactl.serve.engine import Engine
    from glactl.serve.sessions import SessionStore

    lm = load_model(folder, **load)
    owner = lm.state_owner()
    where = Path(sessions).expanduser() if sessions else cache_root() / "sessions" / owner.weights_sha256[:12]
    store = SessionStore(where, owner, max_in_memory=max_sessions, model=lm)
    line = (
        f"ready: {lm.config.mixer} model from {lm.path} ({lm.precision}, {lm.threads or 1} thread(s), "
        f"loaded in {lm.load_seconds:.2f} s), sessions in {where}"
    )
    return Engine(lm, max_batch=max_batch, prefix_cache_bytes=prefix_bytes), store, line


class Loader:
    """Opens the backend in a thread while the server already answers (/health says "loading"), then attaches it."""

    def __init__(self, app: Any, server: Any, opener: Callable[[], tuple[Any, Any, str]]) -> None:
        self.app, self.server, self.opener = app, server, opener
        self.engine: Any = None
        self.error: BaseException | None = None
        self.closed = False
        self.lock = threading.Lock()

    def run(self) -> None:
        """Open the backend and serve it; on failure stop the server (serve() re-raises the error)."""
        import time

        from glactl.serve.app import attach
        from glactl.serve.served import stderr_line

        try:
            engine, store, line = self.opener()
            began = time.perf_counter()
            engine.prepare()  # while /health still says "loading": --compile compiles here, not on a client's request
            with self.lock:
                if self.closed:  # the server stopped while the model loaded
                    return
                engine.start()
                self.engine = engine
            attach(self.app, engine, store)
            stderr_line(f"{line}; decode step ready in {time.perf_counter() - began:.2f} s")
        except BaseException as e:  # noqa: BLE001 - re-raised by serve() once the server has stopped
            self.error = e
            self.server.should_exit = True

    def close(self) -> None:
        """Stop the engine, if it started (its open streams end as cancelled)."""
        with self.lock:
            self.closed, engine = True, self.engine
        if engine is not None:
            engine.close()
