"""normfree: normalizer-free deep networks (NF-ResNet, NF-RegNet, NFNet) for PyTorch."""
from . import layers, models
from .deploy import deploy
from .pretrained import create_transform, data_config, load
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["deploy", "create_model", "list_models", "register_model", "load", "data_config", "create_transform",
           "layers", "models", "__version__"]
