"""GET /metrics: the engine's counters and gauges in Prometheus's text format (zeros while the model loads)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from glactl.serve.served import Backend

router = APIRouter()
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, Prometheus type, key in Engine.stats, help text
METRICS = (
    ("glactl_requests_total", "counter", "requests", "Jobs the engine has taken (one per choice)."),
    ("glactl_generated_bytes_total", "counter", "generated_bytes", "Bytes (tokens) generated."),
    ("glactl_queue_depth", "gauge", "queue_depth", "Jobs waiting for a row in the batch."),
    ("glactl_active_streams", "gauge", "active_streams", "Jobs reading their prompt or generating."),
    ("glactl_batch_size", "gauge", "batch_size", "Rows in the last decode step."),
    ("glactl_step_seconds", "gauge", "step_seconds", "Seconds the last decode step took."),
)


def number(value: float) -> str:
    """A sample value: whole numbers without a fraction, others exactly."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def prometheus_text(stats: dict[str, float], loaded: bool) -> str:
    """Every metric with its HELP and TYPE lines, and glactl_model_loaded (0 while the model loads)."""
    lines = []
    rows = [*METRICS, ("glactl_model_loaded", "gauge", None, "1 once the model has loaded, else 0.")]
    for name, kind, key, text in rows:
        value = (1 if loaded else 0) if key is None else stats.get(key, 0)
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {number(value)}"]
    return "\n".join(lines) + "\n"


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    served: Backend = request.app.state.backend
    stats = served.engine.stats if served.engine is not None else {}
    return PlainTextResponse(prometheus_text(stats, served.engine is not None), media_type=PROMETHEUS_TYPE)
