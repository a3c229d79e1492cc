"""The page `glactl serve` serves at "/", driven in a real headless Chromium against a real server on 127.0.0.1.

The browser is Debian's chromium (`apt-get install chromium`) driven by Playwright from PyPI (`pip install playwright`;
never `playwright install`: the test launches the system binary). Skips with its reason without either, or without
fastapi/uvicorn. The server runs in-process on a thread over a tiny random model, with an API key, so the page's
key field is exercised too.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import save_model

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
API_KEY = "page-test-key"
WAIT_MS = 30_000  # every browser wait is bounded
PROMPT = "The history of the world"


@pytest.fixture
def sync_api() -> Any:
    """Playwright's sync API, or skip with the reason (before any server starts)."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A running server over a tiny random GLA model with an API key; yields its base URL, shut down after."""
    pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'glactl[serve]')")
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'glactl[serve]')")
    import glactl
    from glactl.serve.app import create_app
    from glactl.serve.engine import Engine
    from glactl.serve.served import Settings
    from glactl.serve.sessions import SessionStore

    torch.manual_seed(0)
    config = ModelConfig.tiny(d_model=32, n_layers=2, n_heads=2, gla_gate_rank=4)
    folder = save_model(tmp_path / "model", LanguageModel(config), training={"steps": 0})
    model = glactl.load(folder, threads=1)
    engine = Engine(model)
    engine.start()
    sessions = SessionStore(tmp_path / "sessions", model.state_owner(), model=model)
    app = create_app(engine, sessions, Settings(model_name="tiny", api_key=API_KEY))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(30)
        engine.close()
        listener.close()
        assert not thread.is_alive(), "the server did not stop within 30 s"


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def get_bytes(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def active_streams(base: str) -> float:
    """glactl_active_streams from /metrics."""
    lines = get_bytes(base + "/metrics").decode().splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith("glactl_active_streams ")))


def text_of(page: Any, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.textContent")


def test_page_generates_streams_and_continues_a_session(sync_api: Any, server: str, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=WAIT_MS)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 1000}, accept_downloads=True)
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server + "/")
            # Without a key, /v1/models is refused and the page says so; with it, the page names the model.
            page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
            page.fill("#api-key", API_KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            assert text_of(page, "#health") == "ready"

            # Generate: the streamed text is the seeded continuation the API gives, and the rate a number.
            page.fill("#prompt", PROMPT)
            page.fill("#max-tokens", "40")
            page.fill("#seed", "1")
            page.fill("#temperature", "0.8")
            page.click("#generate")
            page.wait_for_function("document.getElementById('finish').textContent === 'length'")
            page.wait_for_function("document.getElementById('status').className === 'ok'")
            expected = post_json(
                server + "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "seed": 1, "temperature": 0.8}
            )["choices"][0]["text"]
            assert text_of(page, "#echo") == PROMPT
            assert text_of(page, "#completion") == expected and expected
            assert text_of(page, "#output") == PROMPT + expected
            assert float(text_of(page, "#rate")) > 0
            assert float(text_of(page, "#ttfb")) >= 0
            assert text_of(page, "#generated") == "40"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            png = (tmp_path / "page.png").read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

            # Stop: a long generation is cut off by the Stop button (the server cancels its row).
            page.fill("#max-tokens", "100000")
            page.fill("#seed", "")
            page.click("#generate")
            page.wait_for_function("Number(document.getElementById('generated').textContent) > 0")
            page.click("#stop")
            page.wait_for_function("document.getElementById('finish').textContent === 'stopped'")
            assert page.is_enabled("#generate") and not page.is_enabled("#stop")
            deadline = time.monotonic() + 30  # the aborted fetch closed the stream: the server cancelled its row
            while active_streams(server) > 0:
                assert time.monotonic() < deadline, "the stopped generation still runs on the server"
                time.sleep(0.05)

            # Sessions: a new session reads the box; Continue reads the box after it and stores prompt + completion.
            page.fill("#max-tokens", "40")
            page.fill("#prompt", "Once upon a time")
            page.click("#new-session")
            page.wait_for_function("document.getElementById('session-id').textContent !== 'none'")
            page.wait_for_function("document.getElementById('bytes-read').textContent === '16'")
            session_id = text_of(page, "#session-id")
            assert len(session_id) >= 20
            page.fill("#prompt", ", there")
            page.click("#continue")
            page.wait_for_function("document.getElementById('bytes-read').textContent === String(16 + 7 + 40)")
            assert text_of(page, "#session-id") == session_id
            assert text_of(page, "#status").startswith("Done")

            # Download state: the file the browser saves is the session's state.
            with page.expect_download(timeout=WAIT_MS) as download:
                page.click("#download")
            saved = Path(download.value.path())
            assert download.value.suggested_filename == f"{session_id}.state"
            assert saved.read_bytes() == get_bytes(f"{server}/v1/sessions/{session_id}/state") != b""

            # Upload state: the downloaded file becomes a new session at the same point.
            page.set_input_files("#upload-file", str(saved))
            page.wait_for_function(
                f"!['none', {session_id!r}].includes(document.getElementById('session-id').textContent)"
            )
            page.wait_for_function("document.getElementById('status').className === 'ok'")
            assert text_of(page, "#bytes-read") == str(16 + 7 + 40)

            page.screenshot(path=str(tmp_path / "sessions.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
