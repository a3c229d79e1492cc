"""The programming interface: `glactl.load(...)` returns a Model that reads, generates, completes and scores."""

from typing import Any

from glactl.api.loading import load
from glactl.api.model import Model
from glactl.api.prompts import read_prompt

__all__ = ["Model", "load", "read_prompt"]


def __getattr__(name: str) -> Any:
    """Names of the module this package replaced resolve to the modules that hold them now."""
    from glactl._moved import package_attribute

    return package_attribute(__name__, name)
