"""Squeeze-and-excite with the ×2 output gain of normalizer-free networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelSpecError


class SqueezeExcite(nn.Module):
    """``x · gain · sigmoid(fc1(relu(fc0(mean_hw(x)))))``.

    The sigmoid gate has expected value 0.5 at init, so NF networks use ``gain=2`` to keep the signal's
    variance (official code: ``out = 2 * se(out) * out``); the inner ReLU has no γ. Linear layers are
    named fc0/fc1 as in the official Haiku module so checkpoints map one-to-one.
    """

    def __init__(self, channels: int, hidden: int, gain: float = 2.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if hidden < 1:
            raise ModelSpecError(f"SE hidden width must be at least 1, got {hidden}")
        self.fc0 = nn.Linear(channels, hidden, device=device, dtype=dtype)
        self.fc1 = nn.Linear(hidden, channels, device=device, dtype=dtype)
        self.gain = float(gain)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``scale`` multiplies the (small) gate, so a block can fold its output scalars in here."""
        h = self.fc1(F.relu(self.fc0(x.mean(dim=(2, 3)))))
        return x * (torch.sigmoid(h) * (self.gain * scale))[:, :, None, None]

    def extra_repr(self) -> str:
        return f"gain={self.gain:g}"
