"""Model families. Importing this package registers every model with :mod:`normfree.registry`."""
from .blocks import ConvSpec, ResidualBlock, build_stages
from .net import ResNet
from .resnet import IMAGENET_DEPTHS, resnet

__all__ = ["ConvSpec", "ResidualBlock", "build_stages", "ResNet", "IMAGENET_DEPTHS", "resnet"]
