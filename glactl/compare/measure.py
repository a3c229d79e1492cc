"""Measuring a trained compare run: its metrics and curves, then generation speed, state memory and a sample."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from glactl.compare.options import CompareOptions
from glactl.errors import RunFailure

# --compile auto for the speed columns: compile the step (tens of seconds on a 2-core CPU) when the run
# trained at least this long, so the compile adds at most about a tenth to the run's time
COMPILE_MIN_TRAINING_SECONDS = 300
WARMUP_STEPS = 2  # untimed steps before the timed decode steps
PREFILL_PIECE = 1024  # bytes per parallel-form call while reading a context
SAMPLE_TEMPERATURE = 0.8
PROMPT_BYTES = 48


def measure_run(folder: Path, options: CompareOptions, text: bytes, prompt: bytes, seed: int) -> dict[str, Any]:
    """Parameters, training speed, validation curve (metrics.jsonl); generation speed, state, sample (checkpoint)."""
    from glactl.inference.compiled_step import configure
    from glactl.inference.precision import apply_precision, resolve_precision
    from glactl.runtime.devices import select_device
    from glactl.storage.checkpoint import load_model

    device = select_device(options.device)
    model, _ = load_model(folder, device)
    records = read_metrics(folder)
    curve = validation_curve(records)
    if not curve:
        raise RunFailure(f"{folder}: metrics.jsonl holds no validation result")
    parameters = model.num_parameters()  # before the precision swap, which keeps int8 and transposed weights as buffers
    apply_precision(model, resolve_precision(options.precision, device))
    configure(model, measurement_compile(options.compile, records))
    speeds, sizes, compiled = measure_generation(model, text, options.contexts, options.decode_steps)
    return {
        "parameters": parameters,
        "train_tokens_per_second": round(training_speed(records), 1),
        "val_bits_per_byte": curve[-1]["val_bits_per_byte"],
        "curve": curve,
        "generate_tokens_per_second": speeds,
        "decode": {"precision": model.precision, "compiled": compiled},
        "state_bytes": sizes,
        "sample": draw_sample(model, prompt, options.sample_bytes, seed),
        "config": model.config.to_dict(),
        "run": str(folder),
    }


def measure_task_run(folder: Path, options: CompareOptions, task: Any) -> dict[str, Any]:
    """Parameters, training speed, test-set curve and last accuracy (metrics.jsonl); state after one task sequence."""
    from glactl.data.tasks import TaskBatches
    from glactl.runtime.devices import select_device
    from glactl.storage.checkpoint import load_model

    model, _ = load_model(folder, select_device(options.device))
    records = read_metrics(folder)
    curve = accuracy_curve(records)
    if not curve:
        raise RunFailure(f"{folder}: metrics.jsonl holds no test-set result")
    x, _, _ = TaskBatches(task, 0, test_size=1).test_set()
    with torch.inference_mode():
        _, state = model(x.to(model.device))
    last = curve[-1]
    return {
        "parameters": model.num_parameters(),
        "train_tokens_per_second": round(training_speed(records), 1),
        "accuracy": last["accuracy"],
        **({"sequence_accuracy": last["sequence_accuracy"]} if "sequence_accuracy" in last else {}),
        "val_loss": last["val_loss"],
        "curve": curve,
        "state_bytes": {str(task.seq_len): int(model.state_nbytes(state))},
        "config": model.config.to_dict(),
        "run": str(folder),
    }


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in file order (unreadable lines are left out)."""
    from glactl.training.run_folder import METRICS_FILE

    records = []
    try:
        lines = (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        raise RunFailure(f"{folder}: no {METRICS_FILE} to read the training results from") from None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("wall_time"), (int, float)):
            records.append(record)
    return records


def validation_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{step, tokens, val_bits_per_byte}] by step; a step evaluated twice (after a resume) keeps the later value."""
    by_step = {}
    for r in records:
        if r.get("kind") == "eval" and isinstance(r.get("val_bpb"), (int, float)):
            by_step[int(r["step"])] = {
                "step": int(r["step"]),
                "tokens": int(r["tokens"]),
                "val_bits_per_byte": round(float(r["val_bpb"]), 6),
            }
    return [by_step[step] for step in sorted(by_step)]


def accuracy_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{step, tokens, val_loss, accuracy[, sequence_accuracy]}] of a task run by step; a repeated step keeps the later."""
    by_step = {}
    for r in records:
        if r.get("kind") == "eval" and isinstance(r.get("accuracy"), (int, float)):
            point = {
                "step": int(r["step"]),
                "tokens": int(r["tokens"]),
                "val_loss": round(float(r["val_loss"]), 6),
                "accuracy": round(float(r["accuracy"]), 6),
            }
            if isinstance(r.get("sequence_accuracy"), (int, float)):
                point["sequence_accuracy"] = round(float(r["sequence_accuracy"]), 6)
            by_step[point["step"]] = point
    return [by_step[step] for step in sorted(by_step)]


def training_speed(records: list[dict[str, Any]]) -> float:
    """Training tokens per second with evaluation time left out.

    The time from any record to the next training record is training time (a training
    record closes a logging window; an evaluation record closes the evaluation after it), so
    evaluations do not count. The first window holds start-up and the step-0 evaluation and
    is dropped when there are others.
    """
    windows = []
    previous = None
    for r in records:
        if previous is not None and r.get("kind") == "train":
            seconds = float(r["wall_time"]) - float(previous["wall_time"])
            tokens = int(r.get("tokens", 0)) - int(previous.get("tokens", 0))
            if seconds > 0 and tokens > 0:
                windows.append((tokens, seconds))
        previous = r
    if len(windows) > 1:
        windows = windows[1:]
    seconds = sum(s for _, s in windows)
    return sum(t for t, _ in windows) / seconds if seconds > 0 else 0.0


def measurement_compile(choice: str, records: list[dict[str, Any]]) -> str:
    """--compile for the speed columns: on/off as given; auto is on when the run trained long enough to pay for it."""
    if choice != "auto":
        return choice
    trained = max((float(r.get("wall_time", 0.0)) for r in records), default=0.0)
    return "on" if trained >= COMPILE_MIN_TRAINING_SECONDS else "off"


def measure_generation(
    model: Any, text: bytes, contexts: list[int], decode_steps: int
) -> tuple[dict[str, float], dict[str, int], bool]:
    """Generation tokens/s and state bytes after each context length, and whether the step ran compiled.

    The context is read with the parallel form in pieces carrying the state; at each length
    the state's size is taken, then `decode_steps` greedy steps are timed on a copy of the state,
    so the reading goes on from exactly that many bytes. The step is the one `glactl generate`
    runs (`glactl.inference.precision.stepper`: compiled where the model's --compile choice says so).
    """
    from glactl.inference.compiled_step import stepper
    from glactl.models.state import expand_state

    speeds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    device = model.device
    step = stepper(model, 1, decode_steps)
    with torch.inference_mode():
        state, logits, done = None, None, 0
        for length in contexts:
            while done < length:
                piece = text[done : min(length, done + PREFILL_PIECE)]
                out, state = model(torch.tensor([list(piece)], dtype=torch.long, device=device), state)
                logits = out[:, -1]
                done += len(piece)
            sizes[str(length)] = int(model.state_nbytes(state))
            speeds[str(length)] = round(decode_speed(step, device, expand_state(state, 1), logits, decode_steps), 1)
    return speeds, sizes, bool(getattr(step, "ran_compiled", False))


def decode_speed(step: Any, device: torch.device, state: Any, logits: torch.Tensor, steps: int) -> float:
    """Tokens per second of `steps` greedy decode steps (batch 1) after a short untimed warm-up (and compile)."""
    token = logits.argmax(-1)
    for _ in range(WARMUP_STEPS):
        logits, state = step(token, state)
        token = logits.argmax(-1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = step(token, state)
        token = logits.argmax(-1)
    _synchronize(device)
    return steps / max(time.perf_counter() - start, 1e-9)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_sample(model: Any, prompt: bytes, length: int, seed: int) -> str:
    """`length` bytes sampled after the prompt (temperature 0.8, the run's seed): the same draw for every model."""
    from glactl.inference.generation import generate
    from glactl.inference.sampling import SamplingParams

    stats = generate(
        model, prompt, max_new_tokens=length, params=SamplingParams(temperature=SAMPLE_TEMPERATURE), seed=seed
    )
    return stats.samples[0]


def reference_text(data: Any, length: int) -> bytes:
    """`length` bytes of real text for the context measurements: validation text if long enough, else training text."""
    for stream in [*data.valid, *data.train]:
        if len(stream) >= length:
            return bytes(stream.tokens[:length])
    longest = max([*data.valid, *data.train], key=len)
    body = bytes(longest.tokens[:])
    return (body * (length // max(1, len(body)) + 1))[:length]  # a short text is repeated to reach the length


def default_prompt(data: Any) -> bytes:
    """The start of the first whole line of the validation text, cut at a space: the same prompt for every model."""
    head = bytes(data.valid[0].tokens[:4096])
    newline = head.find(b"\n")
    line = head[newline + 1 :] if 0 <= newline < len(head) - 1 else head
    line = line.split(b"\n")[0] if line.split(b"\n")[0].strip() else line.lstrip()
    piece = line[:PROMPT_BYTES]
    if len(line) > PROMPT_BYTES and b" " in piece.strip():
        piece = piece[: piece.rstrip().rfind(b" ") + 1]
    prompt = piece.decode("utf-8", errors="ignore").encode("utf-8")
    return prompt if prompt.strip() else b"The "
