"""Initialization methods that set a network's weight scales before training: GradInit and AutoInit.

Both work on models built here and, within their supported layers, on others. The trainer applies one
through ``TrainConfig.init`` (``--init``): ``"auto"`` is the one the model's registered baseline names
(``gradinit_*``, ``autoinit_*``), else none. See docs/baselines.md.
"""
from .autoinit import AutoInitReport, autoinit
from .gradinit import GradInitResult, gradinit

__all__ = ["AutoInitReport", "GradInitResult", "autoinit", "gradinit"]
