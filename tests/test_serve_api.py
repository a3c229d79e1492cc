"""`glactl serve`: a real uvicorn server on a free loopback port, driven by the official openai client and plain HTTP.

A tiny random GLA model runs in float64, so the exact claims are checked exactly: echoed prompt logprobs add up to
perplexity's log-likelihood, and a session continued twice samples what one request with the whole text samples.
"""

from __future__ import annotations

import http.client
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

for _module in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_module, reason=f"glactl serve tests need {_module} (pip install -e '.[test]')")

import openai  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from conftest import assert_one_line_error, child_env, run_cli  # noqa: E402

import glactl  # noqa: E402
from glactl.models import LanguageModel, ModelConfig  # noqa: E402
from glactl.serve.app import WEB_PAGE, attach, create_app  # noqa: E402
from glactl.serve.engine import Engine  # noqa: E402
from glactl.serve.served import Settings  # noqa: E402
from glactl.serve.sessions import SessionStore  # noqa: E402
from glactl.storage import checkpoint  # noqa: E402
from glactl.storage.checkpoint import save_model  # noqa: E402

KEY = "test-key"
TIMEOUT = 30


# ---- a server in a thread ------------------------------------------------------------------------
@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a background thread; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)


def request(url: str, method: str, path: str, body: Any = None, key: str | None = KEY, raw: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One plain HTTP request: (status, headers, body bytes)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def assert_error(status: int, body: bytes, expected: int, param: str | None = None) -> dict:
    """An answer in OpenAI's error shape with the expected status (and param)."""
    assert status == expected, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["type"] == ("server_error" if expected >= 500 else "invalid_request_error")
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def token_bytes(tokens: list[str]) -> bytes:
    """The bytes that logprob token names stand for ("bytes:\\xNN" or the character)."""
    return bytes(int(t[-2:], 16) if t.startswith("bytes:\\x") else ord(t) for t in tokens)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.tiny(mixer="gla", d_model=32, n_layers=2, n_heads=4, gla_gate_rank=4))
    with (
        torch.no_grad()
    ):  # peaked, context-dependent predictions: a fresh model's are near uniform, alike for any prompt
        model.embed.weight.mul_(10)
    return save_model(tmp_path_factory.mktemp("serve") / "tiny", model, training={"steps": 0})


@pytest.fixture(scope="module")
def served(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The server under test: the tiny model in float64, an API key, a 1 MiB body limit, log lines kept."""
    original = checkpoint.load_model

    def load64(path: Path, device: str = "cpu") -> tuple[Any, dict]:
        model, document = original(path, device)
        return model.double(), document

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "load_model", load64)
        lm = glactl.load(folder, threads=1)
    engine = Engine(lm, max_batch=8)
    engine.start()
    sessions = SessionStore(tmp_path_factory.mktemp("sessions"), lm.state_owner(), model=lm)
    lines: list[str] = []
    settings = Settings(model_name="tiny", api_key=KEY, max_body_bytes=1 << 20, log=lines.append)
    app = create_app(engine, sessions, settings)
    try:
        with running(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=TIMEOUT, max_retries=0)
            yield SimpleNamespace(url=url, client=client, lm=lm, engine=engine, sessions=sessions, lines=lines)
    finally:
        engine.close()


# ---- completions ---------------------------------------------------------------------------------
def test_completion_seed_stream_and_usage(served: SimpleNamespace) -> None:
    client = served.client
    first = client.completions.create(model="tiny", prompt="Hello", max_tokens=24, seed=7)
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=24, seed=7)
    assert first.object == "text_completion" and first.id.startswith("cmpl-") and first.model == "tiny"
    assert first.choices[0].finish_reason == "length" and first.choices[0].text == again.choices[0].text
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (6, 24, 30)
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=24, seed=7, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert any(line.startswith(first.id.removeprefix("cmpl-")) and "tokens/s" in line for line in served.lines)


def test_prompt_lists_n_and_stop(served: SimpleNamespace) -> None:
    client = served.client
    many = client.completions.create(model="tiny", prompt=["ab", "cd"], n=2, max_tokens=6, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and many.usage.prompt_tokens == 6
    alone = client.completions.create(model="tiny", prompt="cd", max_tokens=6, seed=3)
    assert many.choices[2].text == alone.choices[0].text  # prompt 2, choice 0: the same seed
    assert many.choices[2].text != many.choices[3].text and many.choices[0].text != many.choices[2].text
    extensions = {"top_k": 50, "repetition_penalty": 1.2}
    options = {"model": "tiny", "prompt": "The", "max_tokens": 40, "seed": 0, "extra_body": extensions}
    text = client.completions.create(**options).choices[0].text
    k = next(k for k in range(8, 38) if "\ufffd" not in text[k : k + 2] and text.find(text[k : k + 2]) == k)
    cut = client.completions.create(**options, stop=[text[k : k + 2]], logprobs=0).choices[0]
    assert cut.text == text[:k] and cut.finish_reason == "stop"
    assert token_bytes(cut.logprobs.tokens).decode("utf-8", errors="replace") == cut.text  # the stop's bytes left out
    pieces = client.completions.create(**options, stop=[text[k : k + 2]], stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == cut.text


def test_echoed_prompt_logprobs_add_up_to_perplexity(served: SimpleNamespace) -> None:
    text = "The history of Caf\u00e9 \u4e2d\u6587 is long.\n"
    out = served.client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=2)
    choice = out.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    logprobs = choice.logprobs
    assert token_bytes(logprobs.tokens) == text.encode() and logprobs.tokens[18] == "bytes:\\xc3"
    assert logprobs.token_logprobs[0] is not None  # conditioned on the "\n" START (OpenAI gives null)
    assert logprobs.text_offset[:4] == [0, 1, 2, 3] and logprobs.text_offset[-1] == len(text) - 1
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert abs(sum(logprobs.token_logprobs) - served.lm.score(text).loglik) < 1e-6


def test_chat_completion(served: SimpleNamespace) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = served.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=2)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(b"\nSystem: Be brief.\nUser: Hi\nAssistant:")
    chunks = list(
        served.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=2, stream=True)
    )
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content
    with pytest.raises(openai.BadRequestError):  # logprobs live on /v1/completions
        served.client.chat.completions.create(model="tiny", messages=messages, logprobs=True)


# ---- errors and safety ---------------------------------------------------------------------------
def test_errors_answer_in_openai_shape(served: SimpleNamespace) -> None:
    client, url = served.client, served.url
    for options, param in (
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 100_001}, "max_tokens"),
        ({"n": 17}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"extra_body": {"top_k": "3"}}, "top_k"),
        ({"extra_body": {"bogus": 1}}, "bogus"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(**{"model": "tiny", "prompt": "x", "max_tokens": 1, **options})
        assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    assert_error(*request(url, "POST", "/v1/completions", raw=b'{"prompt": ')[::2], 400)
    assert_error(*request(url, "POST", "/v1/completions", body=["x"])[::2], 400)
    assert_error(*request(url, "POST", "/v1/completions", body={"prompt": [300]})[::2], 400, "prompt")
    assert_error(*request(url, "POST", "/v1/completions", raw=b" " * (2 << 20))[::2], 413)
    assert_error(*request(url, "GET", "/v1/nothing")[::2], 404)
    form = request(url, "POST", "/v1/sessions", raw=b"text=hi", content_type="application/x-www-form-urlencoded")
    assert_error(*form[::2], 415)  # another web page's plain form post makes no session
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", timeout=TIMEOUT, max_retries=0).models.list()
    assert_error(*request(url, "GET", "/metrics", key=None)[::2], 401)
    assert request(url, "GET", "/health", key=None)[0] == 200
    assert request(url, "GET", "/", key=None)[0] == (200 if WEB_PAGE.is_file() else 404)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny", prompt="x", max_tokens=1, extra_body={"session": "no-such-session"})
    assert_error(*request(url, "GET", "/v1/sessions/..%2F..%2Fetc%2Fpasswd")[::2], 404)


def test_models_metrics_and_a_client_that_leaves(served: SimpleNamespace) -> None:
    assert [m.id for m in served.client.models.list().data] == ["tiny"]
    host, port = served.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    body = json.dumps({"prompt": "x", "max_tokens": 100_000, "stream": True}).encode()
    connection.request(
        "POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()  # mid-stream: the stream is cancelled and its row leaves the batch
    deadline = time.monotonic() + 10
    while served.engine.stats["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.engine.stats["active_streams"] == 0
    status, headers, text = request(served.url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "requests_total",
        "generated_bytes_total",
        "queue_depth",
        "active_streams",
        "batch_size",
        "step_seconds",
    ):
        assert f"\nglactl_{name} " in "\n" + text.decode()


def test_health_says_loading_until_the_engine_is_attached(served: SimpleNamespace) -> None:
    app = create_app(None, None, Settings(model_name="tiny", log=lambda line: None))
    with running(app) as url:
        status, _, body = request(url, "GET", "/health")
        assert (status, json.loads(body)) == (503, {"status": "loading"})
        assert_error(*request(url, "POST", "/v1/completions", body={"prompt": "x"})[::2], 503)
        attach(app, served.engine, served.sessions)
        assert request(url, "GET", "/health")[::2] == (200, b'{"status":"ok"}')


# ---- sessions ------------------------------------------------------------------------------------
def continue_session(served: SimpleNamespace, session: str | None, prompt: str | list[int], seed: int) -> Any:
    extra = {"session": session} if session else {}
    out = served.client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, seed=seed, logprobs=1, extra_body=extra
    )
    return out.choices[0]


def test_a_session_continued_twice_equals_one_request(served: SimpleNamespace) -> None:
    status, _, body = request(served.url, "POST", "/v1/sessions", {"text": "Once upon a time"})
    session = json.loads(body)
    assert status == 200 and session["object"] == "session" and session["bytes_read"] == 16
    first = continue_session(served, session["id"], " there was", 5)
    second = continue_session(served, session["id"], " and then", 6)
    whole = b"Once upon a time there was" + token_bytes(first.logprobs.tokens) + b" and then"
    direct = continue_session(served, None, list(whole), 6)  # a prompt of byte values
    assert token_bytes(direct.logprobs.tokens) == token_bytes(second.logprobs.tokens)
    assert direct.text == second.text
    assert max(abs(a - b) for a, b in zip(direct.logprobs.token_logprobs, second.logprobs.token_logprobs)) < 1e-9
    info = json.loads(request(served.url, "GET", f"/v1/sessions/{session['id']}")[2])
    assert info["bytes_read"] == len(whole) + 10


def test_state_download_upload_and_hostile_files(served: SimpleNamespace) -> None:
    url = served.url
    original = json.loads(request(url, "POST", "/v1/sessions", {"text": "Some text to keep"})[2])["id"]
    status, headers, state = request(url, "GET", f"/v1/sessions/{original}/state")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    uploaded = json.loads(request(url, "POST", "/v1/sessions", raw=state, content_type="application/octet-stream")[2])[
        "id"
    ]
    replaced = json.loads(request(url, "POST", "/v1/sessions", {})[2])["id"]
    status, _, body = request(
        url, "PUT", f"/v1/sessions/{replaced}/state", raw=state, content_type="application/octet-stream"
    )
    assert status == 200 and json.loads(body)["bytes_read"] == 17
    outs = [continue_session(served, sid, " more", 9) for sid in (original, uploaded, replaced)]
    assert outs[0].text == outs[1].text == outs[2].text
    assert outs[0].logprobs.token_logprobs == outs[1].logprobs.token_logprobs == outs[2].logprobs.token_logprobs
    for hostile in (os.urandom(300), pickle.dumps({"state": [1, 2]}), b"\xff" * 8 + b"{}", state[:100]):
        status, _, body = request(
            url, "PUT", f"/v1/sessions/{replaced}/state", raw=hostile, content_type="application/octet-stream"
        )
        assert_error(status, body, 400)
    assert json.loads(request(url, "GET", f"/v1/sessions/{replaced}")[2])["bytes_read"] == 17 + 5 + 10
    assert request(url, "DELETE", f"/v1/sessions/{replaced}")[0] == 200
    assert_error(*request(url, "GET", f"/v1/sessions/{replaced}")[::2], 404)


@pytest.mark.slow
def test_a_session_changed_meanwhile_is_a_conflict(served: SimpleNamespace) -> None:
    session = json.loads(request(served.url, "POST", "/v1/sessions", {"text": "x"})[2])["id"]
    reading, version = served.sessions.get(session)
    failures: list[Exception] = []

    def long_continuation() -> None:
        try:
            served.client.completions.create(model="tiny", prompt="y", max_tokens=2000, extra_body={"session": session})
        except openai.APIError as e:
            failures.append(e)

    thread = threading.Thread(target=long_continuation)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not served.engine.stats["active_streams"]:
        assert time.monotonic() < deadline and thread.is_alive(), failures
        time.sleep(0.005)
    served.sessions.put(session, reading, version)  # another writer stores first
    thread.join(TIMEOUT)
    assert len(failures) == 1 and isinstance(failures[0], openai.ConflictError), failures
    assert failures[0].body["code"] == "session_conflict"
    assert json.loads(request(served.url, "GET", f"/v1/sessions/{session}")[2])["version"] == version + 1


# ---- the command ---------------------------------------------------------------------------------
def test_serve_refuses_bad_flags_and_a_missing_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    assert run_cli(["serve", "--help"], capsys)[0] == 0
    for argv, word in (
        (["--host", "0.0.0.0"], "--api-key"),
        (["--port", "70000"], "--port"),
        (["--max-batch", "0"], "--max-batch"),
        (["--precision", "float8"], "--precision"),
    ):
        assert_one_line_error(*run_cli(["serve", "--model", str(folder), *argv], capsys), word)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        code, out, err = run_cli(["serve", "--model", str(folder), "--port", str(taken.getsockname()[1])], capsys)
        assert code == 1 and "cannot listen" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert_one_line_error(*run_cli(["serve"], capsys), "pip install 'glactl[serve]'")


@pytest.mark.subprocess
@pytest.mark.slow
def test_serve_command_end_to_end(folder: Path, tmp_path: Path) -> None:
    """A request, then Ctrl-C while a long stream runs: the stream ends with its error event, the process with 130."""
    process, url = start_server(folder, tmp_path / "sessions")
    streamed: list[bytes] = []
    try:
        status, _, body = request(url, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 3}, key=None)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
        long_stream = {"prompt": "Hi", "max_tokens": 100000, "stream": True}
        reader = threading.Thread(
            target=lambda: streamed.append(request(url, "POST", "/v1/completions", long_stream, key=None)[2])
        )
        reader.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        reader.join(TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 130 and "POST /v1/completions 200" in err and "Traceback" not in err, err
    assert streamed and b"the server is shutting down" in streamed[0], streamed


def test_a_ctrl_c_is_remembered_so_the_command_exits_130_even_if_uvicorn_loses_it() -> None:
    """uvicorn re-raises a caught SIGINT as the event loop ends, where a late one can be lost; serve raises it again."""
    from glactl.cli.serve import closing_server

    for sig, interrupted in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        closed: list[bool] = []
        server = closing_server(uvicorn)(uvicorn.Config(lambda scope, receive, send: None))
        server.on_exit = SimpleNamespace(close=partial(closed.append, True))
        server.handle_exit(sig, None)
        assert (server.interrupted, server.should_exit, closed) == (interrupted, True, [True])


def start_server(folder: Path, sessions: Path) -> tuple[subprocess.Popen, str]:
    """`glactl serve` as a process on a free loopback port, its model loaded: (process, base URL)."""
    options = ["--port", "0", "--threads", "1", "--compile", "off", "--sessions", str(sessions)]
    command = [sys.executable, "-m", "glactl", "serve", "--model", str(folder), *options]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=child_env())
    line = process.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line
    url = line.split("listening on ")[1].split()[0]
    deadline = time.monotonic() + TIMEOUT
    while request(url, "GET", "/health", key=None)[0] != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.1)
    return process, url


def complete_in(url: str, body: dict) -> dict:
    status, _, answer = request(url, "POST", "/v1/completions", body, key=None)
    assert status == 200, answer
    return json.loads(answer)["choices"][0]


@pytest.mark.subprocess
@pytest.mark.slow
def test_an_acknowledged_session_survives_kill_9_and_continues_exactly(folder: Path, tmp_path: Path) -> None:
    greedy = {"max_tokens": 6, "temperature": 0, "logprobs": 1}
    process, url = start_server(folder, tmp_path / "sessions")
    try:
        status, _, body = request(url, "POST", "/v1/sessions", {"text": "Once upon"}, key=None)
        session = json.loads(body)["id"]
        first = complete_in(url, {"prompt": " a", "session": session, **greedy})["text"]
    finally:
        process.kill()  # SIGKILL: no clean shutdown, nothing flushed at exit
        process.communicate(timeout=TIMEOUT)
    process, url = start_server(folder, tmp_path / "sessions")
    try:
        status, _, body = request(url, "GET", f"/v1/sessions/{session}", key=None)
        assert status == 200 and json.loads(body)["bytes_read"] == len("Once upon a") + len(first.encode())
        after_restart = complete_in(url, {"prompt": " then", "session": session, **greedy})
        status, _, body = request(url, "POST", "/v1/sessions", {"text": "Once upon a" + first}, key=None)
        one_read = complete_in(url, {"prompt": " then", "session": json.loads(body)["id"], **greedy})
    finally:
        process.kill()
        process.communicate(timeout=TIMEOUT)
    assert after_restart["text"] == one_read["text"]
    for a, b in zip(after_restart["logprobs"]["token_logprobs"], one_read["logprobs"]["token_logprobs"]):
        assert abs(a - b) < 1e-4
