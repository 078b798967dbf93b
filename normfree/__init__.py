"""normfree: normalizer-free deep networks (NF-ResNet, NF-RegNet, NFNet) for PyTorch."""
from . import layers, models
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "layers", "models", "__version__"]
