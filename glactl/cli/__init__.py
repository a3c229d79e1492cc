"""The command line: one module per command, the shared options declared once."""

from glactl.cli.app import app, main

__all__ = ["app", "main"]
