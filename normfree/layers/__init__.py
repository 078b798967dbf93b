"""Building blocks: Scaled-WS convolution, γ-scaled activations, stochastic depth, squeeze-excite."""
from .activations import GAMMAS, GammaAct, activation_names, estimate_gamma, get_activation, get_gamma
from .factory import NORMS, LayerFactory
from .norms import BatchNorm2d, EvoNormB0, EvoNormS0, GroupNorm2d, ScalarBias, input_batch_norm
from .conv import (AvgPoolSame, HeConv2d, MaxPoolSame, ScaledStdConv1d, ScaledStdConv2d, ScaledStdConv3d,
                   pad_same, same_pad_amounts)
from .regularization import StochasticDepth, block_drop_rates
from .se import SqueezeExcite

__all__ = [
    "GAMMAS", "GammaAct", "activation_names", "estimate_gamma", "get_activation", "get_gamma",
    "AvgPoolSame", "MaxPoolSame", "ScaledStdConv1d", "ScaledStdConv2d", "ScaledStdConv3d", "HeConv2d",
    "pad_same", "same_pad_amounts",
    "StochasticDepth", "block_drop_rates", "SqueezeExcite", "LayerFactory", "NORMS",
    "BatchNorm2d", "EvoNormB0", "EvoNormS0", "GroupNorm2d", "ScalarBias", "input_batch_norm",
]
