"""Checkpoint converters: official DeepMind (Haiku) and timm weights into normfree models."""
from .deepmind import from_deepmind
from .timm import TIMM_MODELS, from_timm

__all__ = ["from_deepmind", "from_timm", "TIMM_MODELS"]
