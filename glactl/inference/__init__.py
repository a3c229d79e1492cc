"""Running a trained model: reading text, sampling, generation, completion, scoring, precision, compiled steps."""

from typing import Any


def __getattr__(name: str) -> Any:
    """Names of the module this package replaced resolve to the modules that hold them now."""
    from glactl._moved import package_attribute

    return package_attribute(__name__, name)
