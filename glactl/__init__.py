"""glactl: train, sample and evaluate small byte-level language models (GLA and friends)."""

from typing import Any

from glactl import _moved
from glactl.version import __version__

_moved.install()
__all__ = ["load", "__version__"]


def __getattr__(name: str) -> Any:
    """`glactl.load` is imported on first use, so `import glactl` stays fast (no torch)."""
    if name == "load":
        from glactl.api.loading import load

        return load
    raise AttributeError(f"module 'glactl' has no attribute {name!r}")
