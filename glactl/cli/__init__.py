"""The command line: one module per command, the shared options declared once."""

from typing import Any

from glactl.cli.app import main

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    """Names of the module this package replaced resolve to the modules that hold them now."""
    from glactl._moved import package_attribute

    return package_attribute(__name__, name)
