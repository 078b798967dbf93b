"""Checkpoint converters: official DeepMind (Haiku) and timm weights into normfree models."""
from .deepmind import from_deepmind

__all__ = ["from_deepmind"]
