"""The cache folder every layer shares (encoded data, compiled decode steps, dtype calibrations), below them all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where glactl caches what it builds once (encoded data, compiled steps): $GLACTL_CACHE or ~/.cache/glactl."""
    return Path(os.environ.get("GLACTL_CACHE") or Path.home() / ".cache" / "glactl")
