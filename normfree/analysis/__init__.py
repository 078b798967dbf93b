"""Signal-propagation analysis for any PyTorch model: measure, diagnose, plot, record during training.

>>> import normfree
>>> from normfree.analysis import signal_propagation, diagnose
>>> model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=1.0)
>>> result = signal_propagation(model, input_shape=(8, 3, 32, 32))
>>> print(diagnose(result))  # doctest: +SKIP
"""
from .blocks import Block, find_blocks
from .callback import SPPRecorder
from .diagnose import Finding, diagnose, find_problems
from .grads import gradient_stats
from .plot import plot_spp, plot_spp_history, spp_figure, spp_history_figure
from .spp import (SPPResult, load_csv, load_json, measurement_mode, save_csv, save_json,
                  signal_propagation)
from .stats import channel_stats

__all__ = ["Block", "Finding", "SPPRecorder", "SPPResult", "channel_stats", "diagnose", "find_blocks",
           "find_problems", "gradient_stats", "load_csv", "load_json", "measurement_mode", "plot_spp",
           "plot_spp_history", "save_csv", "save_json", "signal_propagation", "spp_figure", "spp_history_figure"]
