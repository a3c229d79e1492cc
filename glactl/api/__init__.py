"""The programming interface: `glactl.load(...)` returns a Model that reads, generates, completes and scores."""

from glactl.api.loading import load
from glactl.api.model import Model
from glactl.api.prompts import read_prompt

__all__ = ["Model", "load", "read_prompt"]
