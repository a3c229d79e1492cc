"""The version of glactl, in a module of its own so that any layer can name it without importing the api."""

__version__ = "0.1.0"
