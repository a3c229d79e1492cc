"""What `Model.info()` reports: architecture, parameters, the state's size per token of context, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def describe(model: Any, document: dict[str, Any], path: str) -> dict[str, Any]:
    """The description of a loaded model (`model`, its checkpoint `document`, the folder `path` or "")."""
    from glactl.inference.scoring import state_growth

    short, long = state_growth(model, 10, 100)
    per_token = (long - short) / 90
    window = model.config.context
    if long != short and window is not None and window < 100:
        # A window caps the cache: measure the growth per token below it, not across the cap.
        top = max(2, window)
        low = max(1, min(10, top // 2))
        below_low, below_top = state_growth(model, low, top)
        per_token = (below_top - below_low) / (top - low)
    folder = Path(path) if path else None
    files = {}
    if folder is not None and folder.is_dir():
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {
        "model": path,
        "architecture": model.config.to_dict(),
        "parameters": int(document.get("parameters", model.num_parameters())),
        "weights_dtype": document.get("weights_dtype", "float32"),
        "state": {
            "bytes_after_10_tokens": short,
            "bytes_after_100_tokens": long,
            "growth": "constant" if long == short else "growing",
            "bytes_per_token": per_token,
            "context": model.config.context,
        },
        "training": document.get("training", {}),
        "files": files,
        "total_file_bytes": sum(files.values()),
    }
