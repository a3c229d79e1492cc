"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions and /v1/models, as the openai client and lm-eval send them.

Extensions: top_k, repetition_penalty, and on completions `session` (continue from a session's state and store the
state after prompt + completion into it). Tokens are bytes; a prompt may also be a list of byte values 0..255.
With echo the prompt's logprobs cover every byte, the first one too (conditioned on the "\\n" START or the session's
text; OpenAI gives null there), so with max_tokens 0 they add up to `glactl perplexity`'s log-likelihood.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from glactl.inference.sampling import SamplingParams
from glactl.serve.chat import TURN_STOP, ChatShape, transcript
from glactl.serve.choices import ChoiceBuilder
from glactl.serve.http_errors import ApiError
from glactl.serve.jobs import Done, Job
from glactl.serve.responses import Planned, SessionTarget, respond
from glactl.serve.schemas import MAX_CHOICES, SEED_BOUND, ChatRequest, CompletionRequest, Sampling
from glactl.serve.served import Backend, backend

router = APIRouter()


class CompletionShape:
    """text_completion responses and stream chunks (completions-shaped logprobs; with echo the prompt comes first)."""

    id_prefix, object, chunk_object = "cmpl-", "text_completion", "text_completion"

    def choice(self, builder: ChoiceBuilder, done: Done) -> dict[str, Any]:
        return builder.choice(done)

    def opening(self, builder: ChoiceBuilder) -> dict[str, Any] | None:
        if not builder.echo:
            return None
        return {"text": builder.prompt_text, "index": builder.index, "logprobs": None, "finish_reason": None}

    def piece(self, builder: ChoiceBuilder, text: str) -> dict[str, Any]:
        return {"text": text, "index": builder.index, "logprobs": builder.release(text), "finish_reason": None}

    def closing(self, builder: ChoiceBuilder, finish_reason: str) -> dict[str, Any]:
        return {"text": "", "index": builder.index, "logprobs": None, "finish_reason": finish_reason}


def sampling_params(body: Sampling) -> SamplingParams:
    """The engine's sampling parameters (top_p 1 and no top_k: the whole distribution)."""
    top_p = body.top_p if body.top_p < 1 else None
    return SamplingParams(body.temperature, body.top_k, top_p, body.repetition_penalty)


def choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a prompt samples with seed + i, so a seeded request gives n different choices, the same each time."""
    return None if seed is None else (seed + i) % SEED_BOUND


def check_prompts(served: Backend, prompts: list[bytes], n: int) -> None:
    """400 for more prompt bytes or choices than one request may ask for."""
    size, limit = sum(len(p) for p in prompts), served.settings.max_prompt_bytes
    if size > limit:
        raise ApiError(
            400, f"the prompts hold {size:,} bytes; at most {limit:,} per request", "prompt", "prompt_too_long"
        )
    if len(prompts) * n > MAX_CHOICES:
        raise ApiError(400, f"{len(prompts)} prompts x n {n} choices: at most {MAX_CHOICES} per request", "n")


async def session_start(served: Backend, session_id: str) -> tuple[Any, int]:
    """The session's reading and version, or 404 (also for ids that cannot be session ids)."""
    try:
        return await run_in_threadpool(served.sessions.get, session_id)
    except (KeyError, ValueError):
        raise ApiError(404, f"no session {session_id!r}", "session", "session_not_found") from None


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    served = backend(request)
    prompts = body.prompts()
    check_prompts(served, prompts, body.n)
    if body.stream and body.echo and body.logprobs is not None:
        raise ApiError(400, "echo with logprobs is not available when streaming (the prompt's come at the end)", "echo")
    start, target = None, None
    if body.session is not None:
        if body.n != 1 or len(prompts) != 1:
            raise ApiError(400, "a request that continues a session takes one prompt and n 1", "session")
        start, version = await session_start(served, body.session)
        target = SessionTarget(body.session, version)
    params, plan = sampling_params(body), []
    for prompt in prompts:
        for i in range(body.n):
            job = Job(
                prompt,
                body.max_tokens,
                params,
                seed=choice_seed(body.seed, i),
                stop=body.stop,
                start=start,
                logprobs=body.logprobs,
                prompt_logprobs=body.echo and body.logprobs is not None,
                keep_reading=target is not None,
            )
            builder = ChoiceBuilder(len(plan), prompt, body.echo, body.logprobs)
            plan.append(Planned(builder, job, counts_prompt=i == 0))
    return await respond(request, served, plan, CompletionShape(), body.stream, body.include_usage, target)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    served = backend(request)
    prompt = transcript(body.messages).encode("utf-8")
    check_prompts(served, [prompt], body.n)
    params, plan = sampling_params(body), []
    for i in range(body.n):
        job = Job(prompt, body.max_tokens, params, seed=choice_seed(body.seed, i), stop=[*body.stop, TURN_STOP])
        plan.append(Planned(ChoiceBuilder(i, prompt, False, None), job, counts_prompt=i == 0))
    return await respond(request, served, plan, ChatShape(), body.stream, body.include_usage)


def model_card(served: Backend) -> dict[str, Any]:
    return {"id": served.settings.model_name, "object": "model", "created": served.created, "owned_by": "glactl"}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(request.app.state.backend)]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    served: Backend = request.app.state.backend
    if model_id != served.settings.model_name:
        raise ApiError(
            404, f"no model {model_id!r}; this server runs {served.settings.model_name!r}", "model", "model_not_found"
        )
    return model_card(served)
