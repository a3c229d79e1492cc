"""Running a request's jobs on the engine and answering: one JSON document, or server-sent events as bytes arrive.

Either way a client that goes away cancels its streams (their rows leave the batch), and a request that continues
a session stores the state after it into the session when every choice has finished.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from glactl.serve.choices import ChoiceBuilder
from glactl.serve.http_errors import ApiError, error_body
from glactl.serve.jobs import Done, Job, Stream
from glactl.serve.served import Backend
from glactl.serve.sessions import SessionConflict


class Shape(Protocol):
    """How one kind of response writes its documents (completions, chat completions)."""

    id_prefix: str
    object: str
    chunk_object: str

    def choice(self, builder: ChoiceBuilder, done: Done) -> dict[str, Any]: ...
    def opening(self, builder: ChoiceBuilder) -> dict[str, Any] | None: ...
    def piece(self, builder: ChoiceBuilder, text: str) -> dict[str, Any]: ...
    def closing(self, builder: ChoiceBuilder, finish_reason: str) -> dict[str, Any]: ...


@dataclass
class Planned:
    """One choice to run: its builder, its job, and whether its prompt's tokens count in the usage (once per prompt)."""

    builder: ChoiceBuilder
    job: Job
    counts_prompt: bool


@dataclass(frozen=True)
class SessionTarget:
    """The session a request continues, at the version it was read."""

    id: str
    version: int


async def respond(
    request: Request,
    served: Backend,
    plan: list[Planned],
    shape: Shape,
    stream: bool,
    include_usage: bool,
    session: SessionTarget | None = None,
) -> Response:
    """Submit every job, then answer as one document or as a stream of events."""
    streams: list[Stream] = []
    try:
        for planned in plan:
            streams.append(served.engine.submit(planned.job))
    except BaseException:
        for submitted in streams:
            submitted.cancel()
        raise
    request.state.tokens = 0
    head = {
        "id": shape.id_prefix + request.state.request_id,
        "created": int(time.time()),
        "model": served.settings.model_name,
    }
    run = Run(request, served, plan, streams, session)
    if stream:
        return EventStream(run, run.events(shape, head, include_usage))
    dones = await run.collect()
    await run.store(dones)
    choices = [shape.choice(p.builder, done) for p, done in zip(plan, dones)]
    return JSONResponse({**head, "object": shape.object, "choices": choices, "usage": run.usage(dones)})


class Run:
    """The streams of one request while they run, and what is done with them at the end."""

    def __init__(
        self,
        request: Request,
        served: Backend,
        plan: list[Planned],
        streams: list[Stream],
        session: SessionTarget | None,
    ) -> None:
        self.request, self.served, self.plan, self.streams, self.session = request, served, plan, streams, session
        self.finished: set[int] = set()

    def cancel_unfinished(self) -> None:
        for i, stream in enumerate(self.streams):
            if i not in self.finished:
                stream.cancel()

    async def _watch_disconnect(self) -> None:
        """Cancel every stream once the client has gone (the request body is read: only a disconnect can come)."""
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        self.cancel_unfinished()

    async def _collect_one(self, i: int) -> Done:
        builder = self.plan[i].builder
        async for event in self.streams[i]:
            if isinstance(event, Done):
                self.finished.add(i)
                return event
            builder.add(event)
        raise RuntimeError("an engine stream ended without Done")

    async def collect(self) -> list[Done]:
        """Every stream's Done (the builders fed on the way); 503 if any was cancelled while the client waits."""
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            dones = await asyncio.gather(*(self._collect_one(i) for i in range(len(self.streams))))
        finally:
            watcher.cancel()
            self.cancel_unfinished()
        self.request.state.tokens = sum(d.completion_tokens for d in dones)
        if any(d.finish_reason == "cancelled" for d in dones):
            raise ApiError(503, "the request was cancelled: the server is shutting down", code="cancelled")
        return dones

    def usage(self, dones: list[Done]) -> dict[str, int]:
        """Tokens are bytes; a prompt counts once however many choices read it (START included, as the model reads it)."""
        prompt = sum(d.prompt_tokens for p, d in zip(self.plan, dones) if p.counts_prompt)
        completion = sum(d.completion_tokens for d in dones)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def store(self, dones: list[Done]) -> None:
        """Store the state after prompt + completion into the session continued (409 if another request changed it)."""
        if self.session is None:
            return
        try:
            await run_in_threadpool(self.served.sessions.put, self.session.id, dones[0].reading, self.session.version)
        except SessionConflict:
            raise ApiError(
                409,
                f"session {self.session.id} was changed by another request while this one ran; the result was not stored",
                "session",
                "session_conflict",
            ) from None

    async def _feed(self, i: int, queue: asyncio.Queue) -> None:
        async for event in self.streams[i]:
            await queue.put((i, event))

    async def events(self, shape: Shape, head: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: chunks shaped like the response with each text piece, then usage if asked, then [DONE]."""
        head = {**head, "object": shape.chunk_object}
        queue: asyncio.Queue = asyncio.Queue()
        feeders = [asyncio.create_task(self._feed(i, queue)) for i in range(len(self.streams))]
        dones: dict[int, Done] = {}
        try:
            for planned in self.plan:
                opening = shape.opening(planned.builder)
                if opening is not None:
                    yield _event({**head, "choices": [opening]})
            while len(dones) < len(self.streams):
                i, event = await queue.get()
                builder = self.plan[i].builder
                if isinstance(event, Done):
                    dones[i] = event
                    self.finished.add(i)
                    if event.finish_reason == "cancelled":
                        yield _event(error_body(503, "the request was cancelled: the server is shutting down"))
                        return
                    tail = event.text[builder.released :]
                    if tail:
                        yield _event({**head, "choices": [shape.piece(builder, tail)]})
                    yield _event({**head, "choices": [shape.closing(builder, event.finish_reason)]})
                    continue
                builder.add(event)
                self.request.state.tokens += 1
                if event.text:
                    yield _event({**head, "choices": [shape.piece(builder, event.text)]})
            ordered = [dones[i] for i in range(len(self.streams))]
            try:
                await self.store(ordered)
            except ApiError as e:
                yield _event(error_body(e.status, e.message, e.param, e.code))
                return
            if include_usage:
                yield _event({**head, "choices": [], "usage": self.usage(ordered)})
            yield "data: [DONE]\n\n"
        finally:
            for feeder in feeders:  # a feeder cancelled mid-stream cancels its stream (Stream.__aiter__)
                feeder.cancel()


class EventStream(StreamingResponse):
    """text/event-stream that cancels the run's unfinished streams however it ends (even before its first event)."""

    def __init__(self, run: Run, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel_unfinished()


def _event(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n"
