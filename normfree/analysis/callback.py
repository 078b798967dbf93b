"""Record SPPs during training: ``recorder(model, step)`` from any training loop, every ``every`` steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .spp import SPPResult, make_inputs, save_csv, save_json, signal_propagation


class SPPRecorder:
    """Measures an SPP every ``every`` steps on one fixed batch, so curves are comparable across steps.

    The batch is ``inputs`` or seeded N(0, 1) images of ``input_shape`` (made on the first call, on the
    model's device). Measuring leaves the model's modes and BatchNorm running statistics unchanged.
    With ``out_dir`` every record is also appended to ``spp_history.json`` / ``.csv`` there.
    Extra keyword arguments go to :func:`~normfree.analysis.signal_propagation` (e.g. ``gradients=True``).
    """

    def __init__(self, every: int, inputs: torch.Tensor | None = None,
                 input_shape: Sequence[int] | None = None, out_dir: str | Path | None = None,
                 seed: int = 0, **spp_kwargs: Any) -> None:
        if every < 1:
            raise ConfigError(f"every must be a positive number of steps, got {every}")
        self.every = every
        self.inputs = inputs
        self.input_shape = input_shape
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed = seed
        self.spp_kwargs = spp_kwargs
        self.history: list[SPPResult] = []

    def __call__(self, model: nn.Module, step: int) -> SPPResult | None:
        """Measure if ``step`` is a multiple of ``every``; returns the new result or None."""
        if step % self.every:
            return None
        if self.inputs is None:
            self.inputs = make_inputs(model, self.input_shape, self.seed)
        result = signal_propagation(model, self.inputs, seed=self.seed, **self.spp_kwargs)
        result.step = step
        self.history.append(result)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.history, self.out_dir / "spp_history.json")
            save_csv(self.history, self.out_dir / "spp_history.csv")
        return result
