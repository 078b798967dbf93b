"""Model families. Importing this package registers every model with :mod:`normfree.registry`."""
from .baselines import BASELINES, fixup_init, fixup_param_groups, revisited_bn_param_groups
from .blocks import ConvSpec, ResidualBlock, build_stages
from .builder import Family, NetConfig, NetOptions, build_network
from .net import ResidualNetwork
from .resnet import IMAGENET_DEPTHS, resnet, resnet_config
from .regnet import NF_REGNET_VARIANTS, nf_regnet
from .nfnet import NFNET_VARIANTS, nfnet
from . import speedrun  # noqa: F401  (registers the speedrun nets)

__all__ = ["ConvSpec", "ResidualBlock", "build_stages", "ResidualNetwork", "Family", "NetConfig", "NetOptions",
           "build_network", "IMAGENET_DEPTHS", "resnet", "resnet_config", "BASELINES", "fixup_init",
           "fixup_param_groups", "revisited_bn_param_groups", "NF_REGNET_VARIANTS", "nf_regnet",
           "NFNET_VARIANTS", "nfnet"]
