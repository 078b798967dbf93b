"""Record SPPs during training: ``recorder(model, step)`` from any training loop, every ``every`` steps;
``recorder.plot()`` draws them, one line per step (:func:`~normfree.analysis.plot.plot_spp_history`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .plot import plot_spp_history
from .spp import SPPResult, make_inputs, save_csv, save_json, signal_propagation


class SPPRecorder:
    """Measures an SPP every ``every`` steps on one fixed batch, so curves are comparable across steps.

    The batch is ``inputs`` or seeded N(0, 1) images of ``input_shape`` (made on the first call, on the
    model's device); ``inputs_label`` names given ``inputs`` in figure titles (e.g. "16 training images").
    Measuring leaves the model's modes and BatchNorm running statistics unchanged.
    With ``out_dir`` every record is also appended to ``spp_history.json`` / ``.csv`` there.
    Extra keyword arguments go to :func:`~normfree.analysis.signal_propagation` (e.g. ``gradients=True``).
    """

    def __init__(self, every: int, inputs: torch.Tensor | None = None,
                 input_shape: Sequence[int] | None = None, out_dir: str | Path | None = None,
                 seed: int = 0, inputs_label: str | None = None, **spp_kwargs: Any) -> None:
        if every < 1:
            raise ConfigError(f"every must be a positive number of steps, got {every}")
        self.every = every
        self.inputs = inputs
        self.input_shape = input_shape
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed = seed
        self.inputs_label = inputs_label if inputs is not None else "N(0,1)"
        self.spp_kwargs = spp_kwargs
        self.history: list[SPPResult] = []

    def __call__(self, model: nn.Module, step: int) -> SPPResult | None:
        """Measure if ``step`` is a multiple of ``every``; returns the new result or None."""
        if step % self.every:
            return None
        if self.inputs is None:
            self.inputs = make_inputs(model, self.input_shape, self.seed)
        result = signal_propagation(model, self.inputs, seed=self.seed, **self.spp_kwargs)
        result.step, result.inputs = step, self.inputs_label
        self.history.append(result)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.history, self.out_dir / "spp_history.json")
            save_csv(self.history, self.out_dir / "spp_history.csv")
        return result

    def plot(self, path: str | Path | None = None, title: str | None = None) -> Path | None:
        """Draw the history (default ``out_dir/spp_history.png``); None when nothing was recorded."""
        if path is None:
            if self.out_dir is None:
                raise ConfigError("give a path: this recorder has no out_dir")
            path = self.out_dir / "spp_history.png"
        return plot_spp_history(self.history, path, title) if self.history else None
