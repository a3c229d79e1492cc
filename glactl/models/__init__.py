"""Models: the LanguageModel skeleton, its config and the registry of sequence mixers."""

from glactl.models.config import ModelConfig
from glactl.models.lm import LanguageModel

__all__ = ["ModelConfig", "LanguageModel"]
