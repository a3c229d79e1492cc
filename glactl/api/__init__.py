"""The programming interface: `glactl.load(...)` returns a Model that reads, generates, completes and scores."""

from glactl.api.model import Model, load, read_prompt

__all__ = ["Model", "load", "read_prompt"]
