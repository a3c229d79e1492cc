"""The serve engine: exact continuation and prompt scores, the prefix cache, per-row sampling that batching never
changes, cancellation, and long prompts read in chunks between the other rows' decode steps.

Tiny random models run in float64 (saved as checkpoints and loaded with glactl.load, so states have an owner);
the shipped gla-enwiki checks batching at the precision glactl.load gives by default.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import rel_err

import glactl
from glactl.errors import InputError, RunFailure
from glactl.inference.precision import int8_kernel_vectorized
from glactl.inference.reading import Reading
from glactl.inference.sampling import SamplingParams
from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import MIXERS
from glactl.serve.engine import Engine
from glactl.serve.jobs import Done, Job, Stream, Token
from glactl.serve.prefix_cache import PrefixCache
from glactl.storage.checkpoint import save_model

TEXT_A = "The history of the world is long.\n Caf\u00e9 na\u00efve \u4e2d\u6587 and more words ".encode()
TEXT_B = b"then it goes on: a second part.\nEnd"
CONFIGS = {
    "gla": ModelConfig.tiny(mixer="gla", d_model=32, n_layers=2, n_heads=4, gla_gate_rank=4),
    "transformer": ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=4, context=24, sink_tokens=2),
}
WARM = SamplingParams(temperature=1.3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    out = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(7 + i)
        out[name] = save_model(root / name, LanguageModel(config).double(), training={"steps": 0})
    return out


@pytest.fixture
def load(folders: dict[str, Path], float64_loading: None) -> Any:
    """glactl.load of a tiny model in float64."""
    return lambda name: glactl.load(folders[name], threads=1)


def running(model: Any, **options: Any) -> Engine:
    engine = Engine(model, **options)
    engine.start()
    return engine


def events(stream: Stream) -> tuple[list[Token], Done]:
    """Every Token of a stream, and its Done."""
    *tokens, done = list(stream)
    assert all(isinstance(t, Token) for t in tokens) and isinstance(done, Done)
    return tokens, done


def cached_read(engine: Engine, text: bytes) -> Reading:
    """The reading after `text` through a plain job, which keeps its prompt in the prefix cache (Engine.read does not)."""
    reading = engine.submit(Job(text, 0, WARM, keep_reading=True)).result().reading
    assert reading is not None
    return reading


def direct_logits(module: torch.nn.Module, data: bytes) -> torch.Tensor:
    """Logits [T, V] of one forward pass over "\\n" + data: the reference."""
    with torch.inference_mode():
        return module(torch.tensor([list(b"\n" + data)]))[0][0]


def count_calls(module: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, name: str, log: list) -> None:
    """Record the first argument's shape of every call of module.<name> (forward: prompt pieces; step: decode steps)."""
    original = getattr(module, name)

    def counted(tokens: torch.Tensor, state: Any = None) -> Any:
        log.append(tuple(tokens.shape))
        return original(tokens, state)

    monkeypatch.setattr(module, name, counted)


# ---- exactness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_continuing_a_reading_equals_reading_the_whole_text(name: str, load: Any) -> None:
    model = load(name)
    engine = running(model, prompt_chunk=9)
    try:
        after_a = engine.read(TEXT_A)
        assert after_a.bytes_read == len(TEXT_A) and after_a.tail == (b"\n" + TEXT_A)[-64:]
        whole = direct_logits(model.model, TEXT_A + TEXT_B)
        assert rel_err(after_a.logits, whole[len(TEXT_A)]) < 1e-10
        continued = engine.read(TEXT_B, start=after_a)
        assert rel_err(continued.logits, whole[-1]) < 1e-10
        assert continued.bytes_read == len(TEXT_A + TEXT_B)
        # The same seed samples the same bytes after the reading as after the whole text, and as the library's
        # generation does (the engine samples with its functions).
        job = Job(TEXT_B, 40, WARM, seed=5, start=after_a)
        from_reading = engine.submit(job).result()
        whole_text = engine.submit(Job(TEXT_A + TEXT_B, 40, WARM, seed=5, use_prefix_cache=False)).result()
        assert from_reading.text == whole_text.text
        assert from_reading.text == model.generate(TEXT_A + TEXT_B, max_new_tokens=40, temperature=1.3, seed=5)
        assert (from_reading.prompt_tokens, whole_text.prompt_tokens) == (len(TEXT_B), len(TEXT_A + TEXT_B) + 1)
        assert engine.read(b"", start=after_a).logits.equal(after_a.logits)  # the start is never changed
    finally:
        engine.close()


@pytest.mark.parametrize("name", CONFIGS)
def test_kept_reading_includes_the_completion_and_its_stop_string(name: str, load: Any) -> None:
    model = load(name)
    engine = running(model)
    try:
        free = engine.submit(Job(TEXT_A, 30, WARM, seed=3)).result()
        stop = free.text[12:14]
        tokens, done = events(engine.submit(Job(TEXT_A, 30, WARM, seed=3, stop=[stop], keep_reading=True)))
        assert done.finish_reason == "stop" and done.text == free.text[: free.text.index(stop)]
        assert "".join(t.text for t in tokens) == done.text
        generated = bytes(t.byte for t in tokens)
        assert done.completion_tokens == len(generated) and generated.decode(errors="replace").endswith(stop)
        assert isinstance(done.reading, Reading) and done.reading.bytes_read == len(TEXT_A + generated)
        assert rel_err(done.reading.logits, direct_logits(model.model, TEXT_A + generated)[-1]) < 1e-10
        assert done.reading.tail == (b"\n" + TEXT_A + generated)[-64:]
        # max_tokens 0 reads (and keeps) the prompt only; "length" when max_tokens ends it.
        only = engine.submit(Job(TEXT_A, 0, WARM, keep_reading=True)).result()
        assert (only.completion_tokens, only.finish_reason, only.text) == (0, "length", "")
        assert rel_err(only.reading.logits, direct_logits(model.model, TEXT_A)[-1]) < 1e-10
        assert engine.submit(Job(TEXT_A, 7, WARM, seed=1)).result().finish_reason == "length"
    finally:
        engine.close()


def test_prompt_logprobs_add_up_to_what_perplexity_scores(load: Any) -> None:
    model = load("gla")
    engine = running(model, prompt_chunk=7)
    try:
        cached_read(engine, TEXT_A[:20])  # a kept prefix must not cut the scores short
        done = engine.submit(Job(TEXT_A, 0, WARM, logprobs=3, prompt_logprobs=True)).result()
        assert len(done.prompt_logprobs) == len(TEXT_A) and len(done.prompt_top) == len(TEXT_A)
        assert sum(done.prompt_logprobs) == pytest.approx(model.score(TEXT_A).loglik, abs=1e-9)
        reference = torch.log_softmax(direct_logits(model.model, TEXT_A)[:-1], -1)
        expected = reference.gather(-1, torch.tensor(list(TEXT_A))[:, None])[:, 0]
        assert torch.allclose(torch.tensor(done.prompt_logprobs, dtype=torch.float64), expected, atol=1e-10)
        for top, row in zip(done.prompt_top, reference):
            assert len(top) == 3 and max(top.values()) == pytest.approx(float(row.max()), abs=1e-10)
        # After a reading: the first byte is scored from the reading's logits, as perplexity --state does.
        after_a = engine.read(TEXT_A)
        continued = engine.submit(Job(TEXT_B, 0, WARM, start=after_a, prompt_logprobs=True)).result()
        assert continued.prompt_top is None and len(continued.prompt_logprobs) == len(TEXT_B)
        state_a = model.read(TEXT_A)
        assert sum(continued.prompt_logprobs) == pytest.approx(model.score(TEXT_B, state=state_a).loglik, abs=1e-9)
    finally:
        engine.close()


def test_sampled_bytes_carry_their_model_logprobs(load: Any) -> None:
    model = load("gla")
    engine = running(model)
    try:
        tokens, done = events(engine.submit(Job(TEXT_A, 12, SamplingParams(temperature=0.7, top_k=5), 2, logprobs=2)))
        generated = bytes(t.byte for t in tokens)
        reference = torch.log_softmax(direct_logits(model.model, TEXT_A + generated)[len(TEXT_A) :], -1)
        for token, row in zip(tokens, reference):
            assert token.logprob == pytest.approx(float(row[token.byte]), abs=1e-10)  # temperature 1, nothing removed
            assert len(token.top) == 2 and max(token.top.values()) == pytest.approx(float(row.max()), abs=1e-10)
        plain = events(engine.submit(Job(TEXT_A, 3, WARM, 2)))[0]
        assert all(t.logprob is None and t.top is None for t in plain)
    finally:
        engine.close()


# ---- the prefix cache --------------------------------------------------------------------------------
def test_prefix_cache_keeps_the_longest_prefix_within_its_bytes(load: Any) -> None:
    model = load("gla")
    readings = {text: model.read(text).reading for text in (b"ab", b"abcd", b"xyz")}
    size = PrefixCache(1 << 30)
    size.keep(b"ab", readings[b"ab"])
    each = size.nbytes
    cache = PrefixCache(2 * each + 2)  # room for two readings of 2-4 byte prompts, not three
    assert cache.longest(b"abcdef") is None
    cache.keep(b"ab", readings[b"ab"])
    cache.keep(b"abcd", readings[b"abcd"])
    length, reading = cache.longest(b"abcdef")
    assert length == 4 and reading.logits.equal(readings[b"abcd"].logits)
    assert reading.logits is not readings[b"abcd"].logits  # a copy: whoever continues it changes nothing kept
    assert cache.longest(b"abx")[0] == 2 and cache.longest(b"a") is None
    cache.keep(b"xyz", readings[b"xyz"])  # evicts the least recently used: "abcd" (b"ab" was just used)
    assert len(cache) == 2 and cache.longest(b"abcdef")[0] == 2 and cache.longest(b"xyz!")[0] == 3
    assert cache.nbytes <= cache.max_bytes
    empty = PrefixCache(0)
    empty.keep(b"ab", readings[b"ab"])
    assert len(empty) == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_reads_only_what_follows_a_kept_prompt(name: str, load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load(name)
    reference = direct_logits(model.model, TEXT_A + TEXT_B)[-1]
    pieces: list = []
    count_calls(model.model, monkeypatch, "forward", pieces)
    engine = running(model)
    try:
        engine.read(TEXT_A)  # a session's text: not kept in the prefix cache
        assert len(engine.prefix_cache) == 0
        cached_read(engine, TEXT_A)
        assert pieces == [(1, len(TEXT_A) + 1)] * 2
        del pieces[0]
        extended = cached_read(engine, TEXT_A + TEXT_B)
        assert pieces[1:] == [(1, len(TEXT_B))]  # only the bytes after the kept prompt
        assert rel_err(extended.logits, reference) < 1e-10
        assert extended.bytes_read == len(TEXT_A + TEXT_B) and extended.tail == (b"\n" + TEXT_A + TEXT_B)[-64:]
        again = cached_read(engine, TEXT_A + TEXT_B)  # the whole prompt kept: nothing to read
        assert len(pieces) == 2 and again.logits.equal(extended.logits)
        engine.submit(Job(TEXT_A + TEXT_B, 0, WARM, use_prefix_cache=False)).result()
        assert pieces[2:] == [(1, len(TEXT_A + TEXT_B) + 1)]
    finally:
        engine.close()


# ---- batching never changes a seeded job --------------------------------------------------------------
def test_windowed_attention_rows_share_a_batch_and_an_unlimited_cache_steps_rows_alone(tmp_path: Path) -> None:
    shared = {}
    for context in (24, None):
        config = ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=1, n_heads=4, context=context)
        folder = save_model(tmp_path / str(context), LanguageModel(config), training={"steps": 0})
        engine = Engine(glactl.load(folder, threads=1))
        shared[context] = engine._batch.shared
        stream = engine.submit(Job(b"ab", 5, WARM, seed=1))
        engine.start()
        try:
            assert len(events(stream)[0]) == 5
        finally:
            engine.close()
    assert shared == {24: True, None: False}


def mixed_jobs() -> list[Job]:
    """16 jobs with prompts of different lengths (they join the batch at different steps) and their own settings."""
    settings = [
        SamplingParams(temperature=1.3),
        SamplingParams(temperature=0.8, top_k=20),
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=1.1, repetition_penalty=1.3),
        SamplingParams(temperature=0),
    ]
    return [
        Job(TEXT_A[: 3 + 5 * i], 25 + i, settings[i % len(settings)], seed=100 + i, stop=["zq"] if i % 3 else [])
        for i in range(16)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_a_seeded_job_samples_the_same_bytes_alone_and_among_15_others(
    name: str, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load(name)
    steps: list = []
    count_calls(model.model, monkeypatch, "step", steps)
    jobs = mixed_jobs()
    engine = running(model, prompt_chunk=6, prefix_cache_bytes=0)
    try:
        alone = [events(engine.submit(job)) for job in jobs]
        alone_steps, steps[:] = list(steps), []
        streams = [engine.submit(job) for job in jobs]
        together = [events(stream) for stream in streams]
        assert engine.stats["requests"] == 32 and engine.stats["active_streams"] == 0
    finally:
        engine.close()
    assert {shape[0] for shape in alone_steps} == {1}
    # one batched step for all decoding rows, up to all 16 (a windowed attention cache steps in its decode form:
    # a preallocated window and a position per row, so rows at different positions share a step)
    assert max(shape[0] for shape in steps) == 16 and len(steps) < len(alone_steps)
    for (tokens_a, done_a), (tokens_b, done_b) in zip(alone, together):
        assert [t.byte for t in tokens_a] == [t.byte for t in tokens_b]
        assert (done_a.text, done_a.finish_reason) == (done_b.text, done_b.finish_reason)
    # The library's own generation of the first job (Model.generate) samples what the engine sampled.
    first = jobs[0]
    assert alone[0][1].text == model.generate(first.prompt, max_new_tokens=first.max_tokens, temperature=1.3, seed=100)


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_architecture_batches_and_continues_exactly(mixer: str, tmp_path: Path, float64_loading: None) -> None:
    """Each registered mixer, whether its rows share one batch state or step one by one."""
    overrides = {"performer": {"performer_features": 16}, "infinite": {"infinite_segment": 16, "infinite_basis": 4}}
    config = ModelConfig.tiny(mixer=mixer, d_model=32, n_layers=3, n_heads=4, **overrides.get(mixer, {}))
    torch.manual_seed(3)
    model = glactl.load(save_model(tmp_path / mixer, LanguageModel(config), training={"steps": 0}), threads=1)
    jobs = mixed_jobs()[:4]
    engine = running(model, prompt_chunk=8)
    try:
        alone = [engine.submit(job).result().text for job in jobs]
        together = [stream.result().text for stream in [engine.submit(job) for job in jobs]]
        continued = engine.read(TEXT_B, start=engine.read(TEXT_A))
    finally:
        engine.close()
    assert alone == together
    assert rel_err(continued.logits, direct_logits(model.model, TEXT_A + TEXT_B)[-1]) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_batching_keeps_a_seeded_job_on_the_shipped_model(precision: str) -> None:
    """gla-enwiki as glactl.load gives it (float32) and as the CLI's precision auto gives it on x86 (int8).

    int8 runs torch's int8 weight-only kernel row by row (up to 16 rows), so a row's logits are the same bits in any
    batch. In float32, MKL sums the product of 1-3 rows in another order than that of 4 or more, so a row's logits
    move by up to about 3e-5 between alone and batched; measured over 32,000 draws (16 rows x 2,000 bytes) the
    sampling distributions differed by 4.6e-7 in total variation on average and no draw changed: about one byte
    in two million would. These jobs keep their bytes, and the logits agree within 1e-4.
    """
    if precision == "int8" and not int8_kernel_vectorized(torch.device("cpu")):
        pytest.skip("the int8 kernel is not vectorised on this CPU")
    model = glactl.load("gla-enwiki", threads=1, precision=precision)
    words = ["France", "Rome", "art", "music", "the sea", "law", "gold", "ice"] * 2
    jobs = [
        Job(f"The history of {w}".encode(), 48, SamplingParams(temperature=1.0), seed=i) for i, w in enumerate(words)
    ]
    engine = running(model)
    try:
        alone = [engine.submit(job).result().text for job in jobs]
        together = [stream.result().text for stream in [engine.submit(job) for job in jobs]]
        assert engine.stats["batch_size"] == 16
    finally:
        engine.close()
    assert alone == together
    with torch.inference_mode():
        states = [model.read(job.prompt).reading.state for job in jobs]
        batch = [torch.cat(parts) for parts in zip(*states)]
        tokens = torch.full((16,), ord(" "))
        batched = model.model.step(tokens, batch)[0]
        single = torch.cat([model.model.step(tokens[:1], state)[0] for state in states])
    if precision == "int8":
        assert torch.equal(single, batched)
    else:
        assert rel_err(single, batched) < 1e-4


# ---- cancellation, long prompts, streams -------------------------------------------------------------
def test_a_cancelled_job_leaves_within_one_step_and_frees_its_row(load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load("gla")
    steps: list = []
    count_calls(model.model, monkeypatch, "step", steps)
    engine = running(model, max_batch=1)
    endless_job, steps_at_its_end = Job(TEXT_A, 10**9, WARM, seed=1), []
    end_rows = engine._end

    def end(rows: list, reason: str | None = None) -> None:  # the steps taken when the endless row leaves
        if any(row.job is endless_job for row in rows):
            steps_at_its_end.append(len(steps))
        end_rows(rows, reason)

    monkeypatch.setattr(engine, "_end", end)
    try:
        endless = engine.submit(endless_job)
        waiting = engine.submit(Job(TEXT_B, 5, WARM, seed=2))  # no row is free until the first job leaves
        dropped = engine.submit(Job(TEXT_B, 5, WARM, seed=3))
        dropped.cancel()  # cancelled while queued: never admitted
        received = 0
        for event in endless:
            received += 1
            if received == 3:
                endless.cancel()
                before = len(steps)
            if isinstance(event, Done):
                break
        assert steps_at_its_end[0] - before <= 1  # at most the step already under way (then the waiting job steps)
        assert event.finish_reason == "cancelled" and event.reading is None
        assert waiting.result().completion_tokens == 5
        gone = dropped.result()
        assert (gone.finish_reason, gone.completion_tokens, gone.first_token_seconds) == ("cancelled", 0, None)
        assert engine.stats["active_streams"] == 0 and engine.stats["queue_depth"] == 0
    finally:
        engine.close()


def test_a_short_job_is_answered_while_a_long_prompt_is_read(load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The long prompt is read 16 bytes per iteration; the short job submitted meanwhile decodes between its chunks."""
    model = load("gla")
    chunk, chunks = 16, 60
    long_prompt = b"x" * (chunk * chunks - 1)  # with START: exactly `chunks` full pieces
    reading_began, short_submitted = threading.Event(), threading.Event()
    seen = {"pieces": 0}
    original = model.model.forward

    def forward(tokens: torch.Tensor, state: Any = None) -> Any:
        if tokens.shape[1] == chunk:
            seen["pieces"] += 1
            if seen["pieces"] == 1:
                reading_began.set()
                assert short_submitted.wait(60)
            if seen["pieces"] == chunks:  # the long prompt's last piece: the short job is already done
                seen["at_last_piece"] = dict(engine.stats)
        return original(tokens, state)

    monkeypatch.setattr(model.model, "forward", forward)
    engine = running(model, prompt_chunk=chunk)
    try:
        long_job = engine.submit(Job(long_prompt, 3, WARM, seed=1))
        assert reading_began.wait(60)
        short = engine.submit(Job(b"hi", 8, WARM, seed=2))
        short_submitted.set()
        tokens, done = events(short)
        long_done = long_job.result()
    finally:
        engine.close()
    assert len(tokens) == 8 and done.finish_reason == "length"
    assert seen["at_last_piece"]["active_streams"] == 1  # only the long job is left
    assert seen["at_last_piece"]["generated_bytes"] == 8  # all of the short job's bytes, none of the long one's
    assert long_done.prompt_tokens == len(long_prompt) + 1 and long_done.completion_tokens == 3


def test_streams_read_from_asyncio_and_cancel_when_the_reader_stops(load: Any) -> None:
    model = load("gla")
    engine = running(model)
    idle = Engine(model)  # never started: its streams wait

    async def scenario() -> tuple[list, Done, Stream]:
        received = [event async for event in engine.submit(Job(TEXT_A, 10, WARM, seed=4))]
        stream = engine.submit(Job(TEXT_A, 10**9, WARM, seed=4))
        reader = stream.__aiter__()
        await reader.__anext__()
        await reader.aclose()  # the reader goes away after one event
        waiting = idle.submit(Job(TEXT_A, 5, WARM))
        task = asyncio.ensure_future(anext(aiter(waiting)))
        await asyncio.sleep(0)
        task.cancel()  # a handler cancelled while it waits for an event
        with pytest.raises(asyncio.CancelledError):
            await task
        return received, stream.result(), waiting

    try:
        received, abandoned, waiting = asyncio.run(scenario())
        alone = engine.submit(Job(TEXT_A, 10, WARM, seed=4)).result()
    finally:
        engine.close()
        idle.close()
    assert isinstance(received[-1], Done) and received[-1].text == alone.text == "".join(t.text for t in received[:-1])
    assert abandoned.finish_reason == "cancelled" and waiting.cancelled


def test_close_cancels_what_is_pending_and_submit_checks_its_job(load: Any) -> None:
    model = load("gla")
    engine = Engine(model)  # not started: jobs wait in the queue
    queued = engine.submit(Job(TEXT_A, 5, WARM))
    engine.close()
    assert queued.result().finish_reason == "cancelled"
    engine = Engine(model)
    bad = [
        Job("text", 5, WARM),  # type: ignore[arg-type]
        Job(b"x", -1, WARM),
        Job(b"x", 5, SamplingParams(temperature=-1)),
        Job(b"x", 5, WARM, seed=-1),
        Job(b"x", 5, WARM, stop="stop"),  # type: ignore[arg-type]
        Job(b"x", 5, WARM, logprobs=6),
        Job(b"x", 5, WARM, start=Reading(None, torch.zeros(3), 0, b"\n")),
    ]
    for job in bad:
        with pytest.raises(InputError):
            engine.submit(job)
    with pytest.raises(InputError, match="max_batch"):
        Engine(model, max_batch=0)


def test_a_failing_prompt_ends_its_own_stream_and_a_failing_step_ends_the_batch(
    load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load("gla")
    original_forward, original_step = model.model.forward, model.model.step
    broken = {"step": False}

    def forward(tokens: torch.Tensor, state: Any = None) -> Any:
        if int(tokens[0, -1]) == ord("!"):
            raise MemoryError("no room for this prompt")
        return original_forward(tokens, state)

    def step(tokens: torch.Tensor, state: Any) -> Any:
        if broken["step"]:
            raise RuntimeError("the step broke")
        return original_step(tokens, state)

    monkeypatch.setattr(model.model, "forward", forward)
    monkeypatch.setattr(model.model, "step", step)
    engine = running(model)
    try:
        failing = engine.submit(Job(b"boom!", 5, WARM, seed=1))
        fine = engine.submit(Job(b"fine", 5, WARM, seed=1))
        with pytest.raises(RunFailure, match="no room"):
            failing.result()
        assert fine.result().completion_tokens == 5
        broken["step"] = True
        with pytest.raises(RunFailure, match="the step broke"):
            engine.submit(Job(b"fine", 5, WARM, seed=1)).result()
        broken["step"] = False
        assert engine.submit(Job(b"fine", 5, WARM, seed=1)).result().completion_tokens == 5  # the engine goes on
    finally:
        engine.close()
