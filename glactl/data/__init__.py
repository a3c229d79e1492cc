"""Training data: local text and Hugging Face datasets encoded once into a cache, windows, probe tasks."""

from typing import Any


def __getattr__(name: str) -> Any:
    """Names of the module this package replaced resolve to the modules that hold them now."""
    from glactl._moved import package_attribute

    return package_attribute(__name__, name)
