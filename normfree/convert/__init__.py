"""Checkpoint converters: official DeepMind (Haiku) and timm weights into normfree models, and back to timm."""
from .deepmind import from_deepmind
from .timm import TIMM_MODELS, from_timm, to_timm

__all__ = ["from_deepmind", "from_timm", "to_timm", "TIMM_MODELS"]
